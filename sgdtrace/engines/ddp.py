"""Data-parallel SGD by hand: each rank's Equations 1-11, DDP's average, one update.

Per step, every rank works the article's gradients on its own batch (the engine's
``gradients`` part, :mod:`sgdtrace.engines.manual`); DistributedDataParallel then averages
them as its reducer computes it (torch/csrc/distributed/c10d/reducer.cpp: with no
communication hook, ``mark_variable_ready_dense`` copies each gradient into the bucket as
``at::mul_out(bucket_view, grad, wrapped_scalar_tensor(1.0 / div_factor))``, and the bucket is
then all-reduced with a sum)::

    avg = fl( fl(g_0 * fl(1/N)) + fl(g_1 * fl(1/N)) + ... + fl(g_{N-1} * fl(1/N)) )

``1/N`` is a double wrapped as a scalar tensor, so the multiply computes in the gradient's type
and rounds ``1/N`` to it (float32: ``fl32(1/3)``); each product rounds once; gloo's sum adds the
N terms in the order :func:`allreduce_sum` replays (measured bit for bit on gloo, tested). Every
rank then makes the same update with the average (the engine's ``update`` part).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sgdtrace.engines.protocol import Engine, samples, state_field


def scaled(grad, world: int, backend):
    """One rank's term of the all-reduce: ``grad * (1/N)``, ``1/N`` rounded to the gradient's type."""
    return grad * backend.scalar(1.0 / world)


def allreduce_sum(terms: list) -> Any:
    """gloo's sum of the ranks' terms, as measured on torch 2.13's gloo for DDP's two-element
    bucket (world sizes 2-4, every association tried on 300 random float32 vectors, one matched):
    from the last rank down, ``t_0 + (t_1 + (... + (t_{N-2} + t_{N-1})))``."""
    total = terms[-1]
    for t in reversed(terms[:-1]):
        total = t + total
    return total


def average(grads: list, backend) -> Any:
    """DDP's average of the ranks' gradients (see the module's docstring)."""
    return allreduce_sum([scaled(g, len(grads), backend) for g in grads])


def run(
    engine: Engine, x: np.ndarray, y: np.ndarray, dplan, init: dict[str, Any], backend
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Train by hand over a :class:`sgdtrace.data.DistributedPlan`.

    ``init``: each parameter's initial value by name. Returns the step's columns (the averaged
    gradients the update used, the parameters, the optimizer's state; ``loss`` is filled by the
    caller from the ranks' losses) and the ranks' own columns ``grad_<p>`` and ``loss``, each
    ``(steps, N, *shape)``. DDP averages element by element.
    """
    world = dplan.world_size
    one = dplan.rank_plan(0)
    steps = one.n_steps
    sizes = one.batch_sizes().tolist()
    names = engine.names
    shapes = {p: () for p in names} if engine.params is None else {p.name: p.shape for p in engine.params}
    of = {f: p for p in names for f in (p, "grad_" + p, *(state_field(k, p) for k in engine.state_keys))}
    cols = {f: backend.column(steps, shapes.get(of.get(f), ())) for f in engine.fields}
    per_rank = {"grad_" + p: backend.column(steps * world, shapes[p]) for p in names}
    per_rank["loss"] = backend.column(steps * world)
    article = engine.article_form
    params = {p: backend.param(init[p]) for p in names}
    xs, ys = backend.asarray(samples(x, article)), backend.asarray(y)
    states: dict[str, dict[str, Any]] = {p: {} for p in names}
    recorded = [(cols[state_field(key, p)], states[p], key) for key in engine.state_keys for p in names]
    gradients, update, hp = engine.gradients, engine.update, engine.hp
    k = 0
    with np.errstate(all="ignore"):
        for orders in dplan.rank_orders:
            batches = [(backend.take(xs, backend.index(o)), backend.take(ys, backend.index(o))) for o in orders]
            start = 0
            for n in sizes:
                grads: dict[str, list] = {p: [] for p in names}
                for r, (xe, ye) in enumerate(batches):  # each rank, on its own batch
                    xb, yb = xe[start : start + n], ye[start : start + n]
                    if article:
                        loss, *gs = gradients(params["w"], params["b"], xb, yb)
                        own = dict(zip(names, gs))
                    else:
                        loss, own = gradients(dict(params), xb, yb)
                    for p in names:
                        per_rank["grad_" + p][k * world + r] = own[p]
                        grads[p].append(own[p])
                    per_rank["loss"][k * world + r] = loss
                start += n
                for p in names:
                    g = average(grads[p], backend)  # DDP's all-reduce
                    params[p] = update(params[p], g, states[p], hp)
                    cols["grad_" + p][k] = g
                    cols[p][k] = params[p]
                for col, st, key in recorded:
                    col[k] = st[key]
                k += 1
    out = {f: backend.to_numpy(c) for f, c in cols.items() if f != "loss"}
    ranks = {f: backend.to_numpy(c).reshape(steps, world, *c.shape[1:]) for f, c in per_rank.items()}
    return out, ranks
