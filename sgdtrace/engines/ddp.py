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

from sgdtrace.engines.protocol import Engine, state_field


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
    engine: Engine, x: np.ndarray, y: np.ndarray, dplan, init_w: float, init_b: float, backend
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Train by hand over a :class:`sgdtrace.data.DistributedPlan`.

    Returns the step's columns (the averaged ``grad_w``, ``grad_b`` the update used, the
    parameters, the optimizer's state; ``loss`` is filled by the caller from the ranks' losses)
    and the ranks' own columns ``grad_w``, ``grad_b``, ``loss``, each ``(steps, N)``.
    """
    world = dplan.world_size
    one = dplan.rank_plan(0)
    steps = one.n_steps
    sizes = one.batch_sizes().tolist()
    cols = {f: backend.column(steps) for f in engine.fields}
    per_rank = {f: backend.column(steps * world) for f in ("grad_w", "grad_b", "loss")}
    w, b = backend.param(init_w), backend.param(init_b)
    xs, ys = backend.asarray(x), backend.asarray(y)
    state_w: dict[str, Any] = {}
    state_b: dict[str, Any] = {}
    recorded = [
        (cols[state_field(key, p)], st, key) for key in engine.state_keys for p, st in (("w", state_w), ("b", state_b))
    ]
    gradients, update, hp = engine.gradients, engine.update, engine.hp
    k = 0
    with np.errstate(all="ignore"):
        for orders in dplan.rank_orders:
            batches = [(backend.take(xs, backend.index(o)), backend.take(ys, backend.index(o))) for o in orders]
            start = 0
            for n in sizes:
                gws, gbs = [], []
                for r, (xe, ye) in enumerate(batches):  # each rank, on its own batch
                    loss, gw, gb = gradients(w, b, xe[start : start + n], ye[start : start + n])
                    per_rank["grad_w"][k * world + r] = gw
                    per_rank["grad_b"][k * world + r] = gb
                    per_rank["loss"][k * world + r] = loss
                    gws.append(gw)
                    gbs.append(gb)
                start += n
                gw, gb = average(gws, backend), average(gbs, backend)  # DDP's all-reduce
                w = update(w, gw, state_w, hp)
                b = update(b, gb, state_b, hp)
                cols["grad_w"][k] = gw
                cols["grad_b"][k] = gb
                cols["w"][k] = w
                cols["b"][k] = b
                for col, st, key in recorded:
                    col[k] = st[key]
                k += 1
    out = {f: backend.to_numpy(c) for f, c in cols.items() if f != "loss"}
    ranks = {f: backend.to_numpy(c).reshape(steps, world) for f, c in per_rank.items()}
    return out, ranks
