"""Data-parallel training by hand: each rank's gradients, DDP's average, one update.

Per step, every rank works the model's gradients on its own batch (the engine's ``gradients``
part: sgdtrace's :mod:`sgdtrace.engines.manual`, or a user's file); DistributedDataParallel then
averages them as its reducer computes it (torch/csrc/distributed/c10d/reducer.cpp: with no
communication hook, ``mark_variable_ready_dense`` copies each gradient into its bucket as
``at::mul_out(bucket_view, grad, wrapped_scalar_tensor(1.0 / div_factor))``, and the bucket, one
flat tensor of every parameter's elements, is then all-reduced with a sum)::

    avg = fl( fl(g_0 * fl(1/N)) + fl(g_1 * fl(1/N)) + ... + fl(g_{N-1} * fl(1/N)) )

``1/N`` is a double wrapped as a scalar tensor, so the multiply computes in the gradient's type
and rounds ``1/N`` to it (float32: ``fl32(1/3)``; bfloat16: ``fl16(1/3)``); each product rounds
once. gloo sums the bucket in its type, each addition rounded to it (16 bits too), with its ring
algorithm: the bucket is cut into N chunks, one per rank, and chunk ``c``'s elements are summed
as they travel the ring towards rank ``c``::

    t_c + (t_{c+1} + (... + (t_{c+N-2} + t_{c+N-1})))          (ranks mod N)

so an element's association depends on its position in the bucket (:func:`ring_chunks`; for the
article's two-element bucket every element is in chunk 0). Measured bit for bit on torch 2.13's
gloo at world sizes 2-4, float32 and bfloat16, and probed again by the tests
(tests/test_ddp.py); where a gloo sums otherwise, the judge's allowance for the all-reduce
(:func:`sgdtrace.divergence.compare_allreduce`, every order) still bounds it. Every rank then
makes the same update with the average (the engine's ``update`` part).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sgdtrace.engines.protocol import LR, Engine, _restart, samples, state_field

#: gloo's ring all-reduce: at least 2 segments per rank (one in flight while the other is reduced)
SEGMENTS_PER_RANK = 2


def scaled(grad, world: int, backend):
    """One rank's term of the all-reduce: ``grad * (1/N)``, computed in the multiply's compute type
    (the gradient's; float32 for the 16-bit types) with ``1/N`` rounded to it, the product rounded
    once to the gradient's type."""
    if backend.reduced:
        return (np.float32(grad) * np.float32(1.0 / world)).astype(backend.np_dtype)
    return grad * backend.scalar(1.0 / world)


def ring_chunks(length: int, world: int) -> np.ndarray:
    """The rank whose chunk each element of a bucket of ``length`` elements is, in gloo's ring
    all-reduce (gloo/allreduce.cc, ``ring``): ``2N`` segments of ``ceil(length / 2N)`` elements,
    two per rank, in rank order (the last chunks may be short or empty)."""
    segments = SEGMENTS_PER_RANK * world
    seg = max(1, -(-length // segments))
    return (np.arange(length) // seg) // SEGMENTS_PER_RANK


def allreduce_sum(terms: list, chunks: np.ndarray | None = None) -> Any:
    """gloo's sum of the ranks' terms, element by element: chunk ``c`` from rank ``c - 1`` down
    the ring to ``c`` (see the module's docstring). ``chunks``: each element's chunk
    (:func:`ring_chunks` of its position in the bucket); None: every element in chunk 0,
    ``t_0 + (t_1 + (... + t_{N-1}))``."""
    world = len(terms)
    if chunks is None or np.ndim(terms[0]) == 0 or not np.any(chunks):
        c = int(chunks) if chunks is not None and np.ndim(chunks) == 0 else 0
        total = terms[(c + world - 1) % world]
        for j in range(world - 2, -1, -1):
            total = terms[(c + j) % world] + total
        return total
    out = terms[0].copy()
    for c in np.unique(chunks):
        sel = chunks == c
        total = terms[(c + world - 1) % world][sel]
        for j in range(world - 2, -1, -1):
            total = terms[(c + j) % world][sel] + total
        out[sel] = total
    return out


def average(grads: list, backend, chunks: np.ndarray | None = None) -> Any:
    """DDP's average of the ranks' gradients (see the module's docstring)."""
    return allreduce_sum([scaled(g, len(grads), backend) for g in grads], chunks)


def bucket_layout(shapes: dict[str, tuple[int, ...]], world: int, rebuilt: bool = False) -> dict[str, np.ndarray]:
    """Each parameter's elements' chunks in DDP's bucket (every model here fits one bucket).

    DDP builds its first bucket from the parameters in the module's order, each flattened
    (row-major); at the start of the second step it rebuilds it in the order the gradients became
    ready in the first backward pass, which autograd produces from the loss back to the input:
    the parameters in reverse order (``rebuilt``; measured: ``nn.Linear``'s bias before its
    weight, ``rebuilt_per_bucket_param_indices`` = ``1 0`` in DDP's logging data, tested)."""
    names = list(shapes)[::-1] if rebuilt else list(shapes)
    sizes = {p: int(np.prod(shapes[p], dtype=np.int64)) for p in names}
    chunks = ring_chunks(sum(sizes.values()), world)
    out, start = {}, 0
    for p in names:
        out[p] = chunks[start : start + sizes[p]].reshape(shapes[p])
        start += sizes[p]
    return {p: out[p] for p in shapes}


def run(
    engine: Engine,
    x: np.ndarray,
    y: np.ndarray,
    dplan,
    init: dict[str, Any],
    backend,
    reset: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Train by hand over a :class:`sgdtrace.data.DistributedPlan`.

    ``init``: each parameter's initial value by name. Returns the step's columns (the averaged
    gradients the update used, the parameters, the optimizer's state, under a schedule the rate
    ``lr``; ``loss`` is filled by the caller from the ranks' losses) and the ranks' own columns
    ``grad_<p>`` and ``loss``, each ``(steps, N, *shape)``. DDP averages element by element, in
    its bucket's order (:func:`bucket_layout`); the optimizer keeps one state per parameter, the
    same on every rank.

    ``reset`` (``--judge step``): torch's columns (rank 0's), by field; each step from the second
    on starts, on every rank, from their values at the previous step's end: every parameter and
    every recorded state entry (as :func:`sgdtrace.engines.protocol.run` does in one process).
    """
    world = dplan.world_size
    one = dplan.rank_plan(0)
    steps = one.n_steps
    sizes = one.batch_sizes().tolist()
    names = engine.names
    shapes = {p: () for p in names} if engine.params is None else {p.name: p.shape for p in engine.params}
    layouts = (bucket_layout(shapes, world), bucket_layout(shapes, world, rebuilt=True))
    of = {f: p for p in names for f in (p, "grad_" + p, *(state_field(k, p) for k in engine.state_keys))}
    cols = {f: backend.column(steps, shapes.get(of.get(f), ())) for f in engine.fields}
    per_rank = {"grad_" + p: backend.column(steps * world, shapes[p]) for p in names}
    per_rank["loss"] = backend.column(steps * world)
    article = engine.article_form
    params = {p: backend.param(init[p]) for p in names}
    xs, ys = backend.asarray(samples(x, article)), backend.asarray(y)
    states: dict[str, dict[str, Any]] = {p: {} for p in names}
    recorded = [(cols[state_field(key, p)], states[p], key) for key in engine.state_keys for p in names]
    restart = None if reset is None else _restart(reset, shapes, engine.state_keys, backend)
    gradients, update, hp, hp_at, lr_at = engine.gradients, engine.update, engine.hp, engine.hp_at, engine.lr_at
    lrs = np.empty(steps, dtype=np.float64) if hp_at is not None else None
    k = 0
    with np.errstate(all="ignore"):
        for orders in dplan.rank_orders:
            batches = [(backend.take(xs, backend.index(o)), backend.take(ys, backend.index(o))) for o in orders]
            start = 0
            for n in sizes:
                if restart is not None and k > 0:  # --judge step: the step starts from torch's values
                    restart(k, params, states)
                if hp_at is not None:  # a schedule: this step's rate (and momentum or beta1), on every rank
                    hp = hp_at(k)
                    lrs[k] = lr_at(k)
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
                chunks = layouts[k > 0]  # DDP's bucket: as built, then rebuilt after the first step
                for p in names:
                    g = average(grads[p], backend, chunks[p])  # DDP's all-reduce
                    params[p] = update(params[p], g, states[p], hp)
                    cols["grad_" + p][k] = g
                    cols[p][k] = params[p]
                for col, st, key in recorded:
                    col[k] = st[key]
                k += 1
    out = {f: backend.to_numpy(c) for f, c in cols.items() if f != "loss"}
    if lrs is not None:
        out[LR] = lrs
    ranks = {f: backend.to_numpy(c).reshape(steps, world, *c.shape[1:]) for f, c in per_rank.items()}
    return out, ranks
