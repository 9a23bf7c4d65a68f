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
    #: per parameter: the spacing of the dtype's values around it, beside the update lr·d (the stall)
    spacing: dict[str, dict[str, Any]] | None = None

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
                       _value(r.loss), _value(r.grad_w), _value(r.grad_b), _value(w1), _value(b1), state1, matches,
                       _spacing(trace, k, {"w": (w0, _value(r.grad_w)), "b": (b0, _value(r.grad_b))}, state1))


def _spacing(trace, k: int, params: dict, state1: dict) -> dict[str, dict[str, Any]]:
    """Per parameter: the gaps to the neighbouring values of the dtype (below, above), the update
    ``lr·d`` (float64), and whether the step stalled (as the trace recorded it)."""
    from sgdtrace import stall
    from sgdtrace.engines import optimizers

    cfg = trace.config
    out = {}
    for p, (p0, g) in params.items():
        state = {key: state1[state_field(key, p)] for key in optimizers.get("sgd").state_keys(cfg)}
        below, above = stall.spacing(p0, cfg.dtype)
        step = cfg.lr * float(optimizers.get("sgd").direction(p0, g, state, cfg))
        out[p] = {"below": below, "above": above, "update": step,
                  "stalled": bool(trace.stalled["manual"][f"stalled_{p}"][k]) if trace.stalled else False}
    return out
