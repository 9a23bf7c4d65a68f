"""The manual engine: the model's hand forward and backward, beside a hand-worked optimizer.
No autograd, no torch.optim.

The article's Equations 1-11 (the nodes a, c, d, e, l and the chain rule's factors) are the
linear model's, :mod:`sgdtrace.models.linear`, re-exported here under their 0.1 names
(``node_a``, ``grad_w``, ``forward_backward``, ``gradients``, ...). The update (Eq. 4-5, grown
into torch.optim's algorithms) is :mod:`sgdtrace.engines.optimizers`'. The engine protocol
(:mod:`sgdtrace.engines.protocol`) joins the two parts.

The functions work on any array type with ``*``, ``+``, ``-`` and ``.sum()``: NumPy arrays on
the CPU (a NumPy call costs about a tenth of a torch call on tiny arrays), torch tensors on
CUDA. :class:`ArrayBackend` says which; the arithmetic, the dtype and the order of operations
are the same either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from sgdtrace import dtypes
from sgdtrace.engines import optimizers, protocol
from sgdtrace.engines.protocol import Engine
from sgdtrace.models.linear import (  # noqa: F401  (the article's equations, by their 0.1 names)
    DC_DA,
    DC_DB,
    DD_DC,
    StepResult,
    _count,
    _is_tensor,
    _reduced,
    _rounded_like,
    da_dw,
    de_dd,
    dl_dd,
    dl_de,
    forward_backward,
    grad_b,
    grad_w,
    gradients,
    node_a,
    node_c,
    node_d,
    node_e,
    node_l,
    total,
)


class ArrayBackend:
    """Where the manual engine's arrays live: NumPy on the CPU, torch tensors on a device."""

    def __init__(self, kind: str, dtype: str, device: Any = "cpu"):
        self.kind = kind
        self.device = device
        self.reduced = dtype in dtypes.REDUCED
        if kind == "numpy":
            self.np_dtype = dtypes.np_dtype(dtype)
        elif kind == "torch":
            import torch

            self.torch = torch
            self.torch_dtype = getattr(torch, dtype)
        else:  # pragma: no cover - internal misuse
            raise ValueError(kind)

    def asarray(self, values: np.ndarray):
        """Samples (float64) rounded to the run's dtype, on the backend's device."""
        if self.kind == "numpy":
            if self.reduced:  # torch converts float64 to 16 bits through float32
                values = np.asarray(values, dtype=np.float32)
            return np.ascontiguousarray(values, dtype=self.np_dtype)
        return self.torch.as_tensor(values, dtype=self.torch_dtype).to(self.device)

    def scalar(self, value: float):
        """A hyperparameter or parameter value as the engine computes with it."""
        if self.kind == "numpy":
            return self.np_dtype.type(np.float32(value) if self.reduced else value)
        if self.reduced:  # a 16-bit scalar: torch's add(alpha=) rounds its alpha to the type
            return self.param(value)
        return float(value)  # torch rounds a Python float to the tensor's dtype in each op

    def kept(self, value: float):
        """A scalar torch keeps in float32 for a 16-bit tensor (``mul_(scalar)``); else :meth:`scalar`."""
        if not self.reduced:
            return self.scalar(value)
        return np.float32(value) if self.kind == "numpy" else float(value)

    def rounded(self, value):
        """A float32 result rounded to the run's 16-bit type (NumPy; torch's operations round their own)."""
        return self.np_dtype.type(value) if self.kind == "numpy" and self.reduced else value

    def param(self, value):
        """A parameter's value (a Python float, or a float64 array of the parameter's shape) in the
        run's dtype: a NumPy scalar for a scalar, an array otherwise."""
        if self.kind == "numpy":
            if np.ndim(value) == 0:
                return self.np_dtype.type(np.float32(value) if self.reduced else value)
            values = np.asarray(value, dtype=np.float32 if self.reduced else np.float64)
            return values.astype(self.np_dtype)
        return self.torch.tensor(np.asarray(value, dtype=np.float64), dtype=self.torch_dtype, device=self.device)

    def index(self, order):
        """An epoch's sample order where the backend indexes with it (copied to the device once)."""
        if order is None or self.kind == "numpy":
            return order
        return self.torch.as_tensor(order, device=self.device)

    def take(self, arr, order):
        if order is None:
            return arr
        return arr[order]

    def column(self, n: int, shape: tuple[int, ...] = ()):
        """A column of ``n`` steps of a value of ``shape``."""
        if self.kind == "numpy":
            return np.empty((n, *shape), dtype=self.np_dtype)
        return self.torch.empty((n, *shape), dtype=self.torch_dtype, device=self.device)

    def to_numpy(self, col) -> np.ndarray:
        if self.kind == "numpy":
            return col
        if self.reduced:  # NumPy has no torch.bfloat16: through float32, exactly
            return col.cpu().float().numpy().astype(dtypes.np_dtype(str(col.dtype).split(".")[-1]))
        return col.cpu().numpy()


def engine(config, backend: ArrayBackend, plan=None, model=None, schedule=None) -> Engine:
    """sgdtrace's own engine: the model's gradients by hand (:func:`gradients` for the article's
    form), and the hand-worked optimizer of ``config`` (with a schedule, its per-step
    hyper-parameters over ``plan``; ``schedule``: the run's schedule table, when worked out already).
    The scalars follow the 16-bit rules of docs/precision.md (``kept``; SGD's ``rounded``).
    ``model``: a :class:`sgdtrace.models.Model` (default: the article's)."""
    opt = optimizers.get(config.optimizer)
    extra = {"kept": backend.kept}
    if config.optimizer == "sgd":
        extra["rounded"] = backend.rounded
    hp_at, lr_at = (
        optimizers.step_hypers(config, backend.scalar, plan, schedule, **extra) if plan is not None else (None, None)
    )
    model = model or protocol.article_model(config)
    return Engine(
        "hand",
        model.module.engine_gradients(model, config),
        opt.update,
        opt.hyper(config, backend.scalar, **extra),
        opt.state_keys(config),
        hp_at,
        lr_at,
        model.params,
    )


def run(
    x: np.ndarray,
    y: np.ndarray,
    plan,
    config,
    backend: ArrayBackend,
    progress: Callable[[int], None] | None = None,
    loop_context: Callable[[], Any] = contextlib.nullcontext,
) -> dict[str, np.ndarray]:
    """Train by hand over ``plan``: :func:`sgdtrace.engines.protocol.run` with :func:`engine`.
    ``x`` of one column (or 1-D) is the article's form unless ``config.features`` is set."""
    model = protocol.model_for(config, x)
    return protocol.run(
        engine(config, backend, plan, model),
        x,
        y,
        plan,
        model.module.initial(config, model),
        backend,
        progress,
        loop_context,
    )
