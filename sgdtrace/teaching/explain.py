"""One batch worked equation by equation: the numbers ``sgdtrace explain`` shows.

Every number comes from the hand engine's own functions (:func:`sgdtrace.engines.manual.forward_backward`
and the optimizer's ``update`` through the engine protocol), run at the parameters (and optimizer
state) the batch started from, in the run's dtype, so the page shows exactly what the engine
computed; :func:`explain_step` checks that they equal the trace's columns bit for bit. Torch's
values for the same batch come from the trace, i.e. from the real autograd + torch.optim loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sgdtrace.engines import manual
from sgdtrace.engines.protocol import state_field


@dataclass
class Explanation:
    """One batch: where it sits in the run, its samples, every node and factor, the update, torch's values."""

    trace: Any
    step: int  # 0-based global step
    epoch: int  # 1-based
    batch: int  # 1-based
    indices: np.ndarray
    x: np.ndarray  # the batch's samples in the run's dtype (float64 values)
    y: np.ndarray
    w0: float  # parameters (and optimizer state, by field: buf_w, ...) the batch started from
    b0: float
    state0: dict[str, float | None]
    nodes: dict[str, np.ndarray]  # a, c, d, e, dl_dd per sample (float64 copies of the dtype's values)
    loss: float
    grad_w: float
    grad_b: float
    w1: float
    b1: float
    state1: dict[str, float | None]
    matches_trace: bool  # the recomputed values equal the manual trace's columns bit for bit

    @property
    def n(self) -> int:
        return int(self.indices.shape[0])

    @property
    def fields(self) -> list[str]:
        """The recorded fields, in the order the page lists them."""
        return ["loss", "grad_w", "grad_b", "w", "b", *self.state1]

    @property
    def values(self) -> dict[str, float | None]:
        """The hand engine's values for this step, by field."""
        return {"loss": self.loss, "grad_w": self.grad_w, "grad_b": self.grad_b, "w": self.w1, "b": self.b1,
                **self.state1}

    def torch_value(self, field: str) -> float:
        return float(self.trace.torch[field][self.step])

    def ulp(self, field: str) -> int:
        return int(self.trace.divergence[field].ulp[self.step])


def _value(v: Any) -> float:
    return float(v.item()) if hasattr(v, "item") else float(v)


def _array(v: Any) -> np.ndarray:
    if hasattr(v, "cpu"):
        v = v.cpu().numpy()
    return np.asarray(v, dtype=np.float64)


def backend_for(trace) -> manual.ArrayBackend:
    """The array back end the run's hand engine used: NumPy on the CPU, torch tensors on a device."""
    cfg = trace.config
    if trace.device == "cpu":
        return manual.ArrayBackend("numpy", cfg.dtype)
    import torch

    return manual.ArrayBackend("torch", cfg.dtype, torch.device(trace.device))


def explain_step(trace, batch: int, epoch: int = 1) -> Explanation:
    """Recompute one step with the hand engine's functions, from the trace's state before it."""
    k = trace.plan.step(batch, epoch)
    cfg = trace.config
    backend = backend_for(trace)
    eng = manual.engine(cfg, backend)
    man = trace.manual

    def start(field: str, init: float | None) -> float | None:
        return init if k == 0 else float(man[field][k - 1])

    w0, b0 = start("w", cfg.init_w), start("b", cfg.init_b)
    state0 = {state_field(key, p): start(state_field(key, p), None) for key in eng.state_keys for p in ("w", "b")}

    idx = trace.indices(k)
    xb = backend.asarray(trace.dataset.x[idx])
    yb = backend.asarray(trace.dataset.y[idx])
    w, b = backend.param(w0), backend.param(b0)
    r = manual.forward_backward(w, b, xb, yb, len(idx), backend.scalar)
    states = {p: {key: backend.param(state0[state_field(key, p)]) for key in eng.state_keys
                  if state0[state_field(key, p)] is not None} for p in ("w", "b")}
    w1 = eng.update(w, r.grad_w, states["w"], eng.hp)
    b1 = eng.update(b, r.grad_b, states["b"], eng.hp)
    state1 = {state_field(key, p): _value(states[p][key]) for key in eng.state_keys for p in ("w", "b")}

    got = {"grad_w": r.grad_w, "grad_b": r.grad_b, "loss": r.loss, "w": w1, "b": b1, **state1}
    dtype = man["w"].dtype
    matches = all(np.array(_value(v), dtype=dtype).tobytes() == man[f][k:k + 1].tobytes() for f, v in got.items())
    nodes = {name: _array(getattr(r, name)) for name in ("a", "c", "d", "e", "dl_dd")}
    e, j = divmod(k, trace.plan.steps_per_epoch)
    return Explanation(trace, k, e + 1, j + 1, idx, _array(xb), _array(yb), w0, b0, state0, nodes,
                       _value(r.loss), _value(r.grad_w), _value(r.grad_b), _value(w1), _value(b1), state1, matches)


# ------------------------------------------------------------------ data-parallel SGD (--world-size N)


class _RankView:
    """One rank of a ``--world-size N`` trace, seen as a one-process trace: its own batch, its
    own gradients and loss (by hand and torch's, judged); w, b and the state are the run's."""

    def __init__(self, trace, rank: int):
        rt = trace.ranks
        self.rank, self.config, self.device, self.dataset = rank, trace.config, trace.device, trace.dataset
        self.plan = trace.plan
        self._plan = rt.plan.rank_plan(rank)
        self.manual = dict(trace.manual, **{f: rt.manual[f][:, rank] for f in rt.manual})
        self.torch = dict(trace.torch, **{f: rt.torch[f][:, rank] for f in rt.torch})
        self.divergence = dict(trace.divergence)
        for f, d in rt.divergence.items():
            self.divergence[f] = type(d)(*(getattr(d, name)[:, rank] for name in d.__dataclass_fields__))

    def indices(self, step: int) -> np.ndarray:
        return self._plan.indices(step)


@dataclass
class DistributedExplanation:
    """One step of a DDP run: each rank's Equations 1-3 and 6-11 on its batch, DDP's average of
    the ranks' gradients (the all-reduce), and the one update every rank makes with it."""

    ranks: list[Explanation]  # each rank's forward and backward (their update parts are not used)
    step: Explanation  # the step: the averaged gradients, the update, the run's torch values
    inv_n: float  # 1/N as the multiply used it (rounded to the run's dtype)
    matches_trace: bool


def explain_distributed(trace, batch: int, epoch: int = 1) -> DistributedExplanation:
    """Recompute one step of a DDP run with the hand engine's functions, rank by rank."""
    import dataclasses

    from sgdtrace.engines import ddp

    ranks = [explain_step(_RankView(trace, r), batch, epoch) for r in range(trace.ranks.world_size)]
    k = ranks[0].step
    backend = backend_for(trace)
    eng = manual.engine(trace.config, backend)
    grads = {p: ddp.average([backend.scalar(getattr(ex, "grad_" + p)) for ex in ranks], backend) for p in ("w", "b")}
    first = ranks[0]
    states = {p: {key: backend.param(first.state0[state_field(key, p)]) for key in eng.state_keys
                  if first.state0[state_field(key, p)] is not None} for p in ("w", "b")}
    w1 = eng.update(backend.param(first.w0), grads["w"], states["w"], eng.hp)
    b1 = eng.update(backend.param(first.b0), grads["b"], states["b"], eng.hp)
    state1 = {state_field(key, p): _value(states[p][key]) for key in eng.state_keys for p in ("w", "b")}
    loss = float(np.mean([ex.loss for ex in ranks]))
    idx = trace.indices(k)
    step = dataclasses.replace(first, trace=trace, indices=idx, loss=loss, grad_w=_value(grads["w"]),
                               grad_b=_value(grads["b"]), w1=_value(w1), b1=_value(b1), state1=state1)
    man = trace.manual
    got = {"grad_w": step.grad_w, "grad_b": step.grad_b, "w": step.w1, "b": step.b1, **state1}
    dtype = man["w"].dtype
    matches = all(np.array(v, dtype=dtype).tobytes() == man[f][k:k + 1].tobytes() for f, v in got.items())
    matches &= all(np.array(ex.grad_w, dtype=dtype).tobytes() == trace.ranks.manual["grad_w"][k, r:r + 1].tobytes()
                   for r, ex in enumerate(ranks))
    return DistributedExplanation(ranks, step, float(backend.scalar(1.0 / len(ranks))), matches)
