"""The manual engine: the article's Equations 1-11 worked by hand. No autograd, no torch.optim.

Forward pass, the article's DAG from the leaves (w, x, b, y) to the root::

    a = w * x          node_a          (Eq. 1, first half)
    c = a + b          node_c          (Eq. 1: ypred)
    d = c - y          node_d
    e = d ** 2         node_e
    l = (1/n) * sum e  node_l          (Eq. 2-3: the mean squared error)
    z = l              (the root the backward pass starts from: dz/dl = 1)

Backward pass, one factor per edge (the article's Eq. 6 and 9, with the correct names)::

    dl/de = 1/n        dl_de
    de/dd = 2d         de_dd
    dd/dc = 1          DD_DC
    dc/da = 1          DC_DA
    dc/db = 1          DC_DB
    da/dw = x          da_dw

    dl/dw = sum_i (dl/de)(de/dd)(dd/dc)(dc/da)(da/dw)   grad_w  (Eq. 7 = Eq. 8)
    dl/db = sum_i (dl/de)(de/dd)(dd/dc)(dc/db)          grad_b  (Eq. 10 = Eq. 11)

Update (Eq. 4-5, grown into torch.optim.SGD's documented algorithm): :mod:`sgdtrace.engines.optimizers.sgd`.

The engine protocol (:mod:`sgdtrace.engines.protocol`) joins the two parts: :func:`gradients`
here, the optimizer's ``update`` there.

The functions work on any array type with ``*``, ``+``, ``-`` and ``.sum()``: NumPy arrays on
the CPU (a NumPy call costs about a tenth of a torch call on tiny arrays), torch tensors on
CUDA. The arithmetic, the dtype and the order of operations are the same either way.

In bfloat16 and float16 (docs/precision.md) every operation rounds its result to the type, as
torch's do; the sums and the mean accumulate in float32 and round once (:func:`total`,
:func:`node_l`), and ``1/n`` is rounded to the type before it multiplies (torch's MSE backward
rounds ``2/n``; doubling is exact, so ``(1/n)(2d)`` and ``(2/n) d`` round alike).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgdtrace import dtypes
from sgdtrace.engines import optimizers, protocol
from sgdtrace.engines.protocol import Engine

# the constant factors of the chain rule; multiplying by an exact 1 changes no bit, so the
# fast path below leaves them out, and explain shows them
DD_DC = 1  # d = c - y
DC_DA = 1  # c = a + b
DC_DB = 1  # c = a + b


# ------------------------------------------------------------------ forward: the DAG's nodes


def node_a(w, x):
    """a = w * x (Equation 1, first half)."""
    return w * x


def node_c(a, b):
    """c = a + b: the prediction ypred = w*x + b (Equation 1)."""
    return a + b


def node_d(c, y):
    """d = c - y: the residual."""
    return c - y


def node_e(d):
    """e = d^2: the squared error per sample."""
    return d * d


def node_l(e, n):
    """l = (1/n) * sum e: the mean squared error (Equations 2-3), as sum / n.

    In 16 bits as torch's mean: the float32 sum divided by n in float32, rounded once.
    """
    if _reduced(e):
        return e.mean() if _is_tensor(e) else e.dtype.type(e.sum(dtype=np.float32) / np.float32(n))
    return e.sum() / n


# ------------------------------------------------------------------ 16-bit types (docs/precision.md)


def _reduced(v) -> bool:
    """A bfloat16 or float16 array (NumPy or torch): 2 bytes per value."""
    return getattr(v, "itemsize", 0) == 2


def _is_tensor(v) -> bool:
    return not isinstance(v, (np.ndarray, np.generic))


def total(v):
    """sum v as torch sums: a 16-bit array accumulates in float32 and rounds once.

    (NumPy's own ``sum`` of a bfloat16 array adds in bfloat16: 5,000 ones sum to 256.)
    """
    if _reduced(v) and not _is_tensor(v):
        return v.dtype.type(v.sum(dtype=np.float32))
    return v.sum()


def _rounded_like(v, s: float):
    """The Python number ``s`` rounded to ``v``'s 16-bit type (via float32, as torch converts a
    scalar); unchanged for the other types."""
    if not _reduced(v):
        return s
    return v.new_full((), s) if _is_tensor(v) else v.dtype.type(np.float32(s))


# ------------------------------------------------------------------ backward: the chain rule


def dl_de(n):
    """dl/de = 1/n (from l = (1/n) * sum e)."""
    return 1.0 / n


def de_dd(d):
    """de/dd = 2d (from e = d^2)."""
    return 2 * d


def da_dw(x):
    """da/dw = x (from a = w * x)."""
    return x


def dl_dd(d, n):
    """dl/dd_i = (dl/de)(de/dd) = (1/n) * 2 d_i: the factor both gradients share."""
    return _rounded_like(d, dl_de(n)) * de_dd(d)


def grad_w(upstream, x):
    """dl/dw = sum_i (1/n)(2 d_i)(1)(1)(x_i)   (Equation 7; expanded, Equation 8).

    ``upstream`` is dl/dd (:func:`dl_dd`); dd/dc = dc/da = 1 are exact and left out.
    """
    return total(upstream * da_dw(x))


def grad_b(upstream):
    """dl/db = sum_i (1/n)(2 d_i)(1)(1)   (Equation 10; expanded, Equation 11)."""
    return total(upstream)


# ------------------------------------------------------------------ the engine


@dataclass
class StepResult:
    """One batch worked by hand: every node and factor, for explain."""

    a: Any
    c: Any
    d: Any
    e: Any
    loss: Any
    dl_dd: Any
    grad_w: Any
    grad_b: Any


def forward_backward(w, b, x, y, n: int, scalar: Callable[[float], Any] = float) -> StepResult:
    """Equations 1-3 forward and 6-11 backward on one batch, keeping every intermediate."""
    a = node_a(w, x)
    c = node_c(a, b)
    d = node_d(c, y)
    e = node_e(d)
    loss = node_l(e, n if _reduced(e) else scalar(n))  # 16 bits: n in float32 (node_l), not rounded
    up = dl_dd(d, n)
    return StepResult(a, c, d, e, loss, up, grad_w(up, x), grad_b(up))


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

    def param(self, value: float):
        if self.kind == "numpy":
            return self.np_dtype.type(np.float32(value) if self.reduced else value)
        return self.torch.tensor(value, dtype=self.torch_dtype, device=self.device)

    def index(self, order):
        """An epoch's sample order where the backend indexes with it (copied to the device once)."""
        if order is None or self.kind == "numpy":
            return order
        return self.torch.as_tensor(order, device=self.device)

    def take(self, arr, order):
        if order is None:
            return arr
        return arr[order]

    def column(self, n: int):
        if self.kind == "numpy":
            return np.empty(n, dtype=self.np_dtype)
        return self.torch.empty(n, dtype=self.torch_dtype, device=self.device)

    def to_numpy(self, col) -> np.ndarray:
        if self.kind == "numpy":
            return col
        if self.reduced:  # NumPy has no torch.bfloat16: through float32, exactly
            return col.cpu().float().numpy().astype(dtypes.np_dtype(str(col.dtype).split(".")[-1]))
        return col.cpu().numpy()


def _count(x, n: int):
    """The batch size as the arrays compute with it: a scalar of their dtype (NumPy), else an int.

    (16-bit types divide in float32: :func:`node_l`.)"""
    dtype = getattr(x, "dtype", None)
    if isinstance(dtype, np.dtype) and dtype.itemsize == 2:
        return np.float32(n)
    return dtype.type(n) if isinstance(dtype, np.dtype) else n


def gradients(w, b, x, y):
    """The engine protocol's ``gradients`` part: Equations 1-3 forward, 6-11 backward, on one batch.

    Returns ``(loss, grad_w, grad_b)`` at the parameters (w, b) the batch starts from.
    """
    n = x.shape[0]
    # forward (Eq. 1-3): the nodes a, c, d, e, l
    d = node_d(node_c(node_a(w, x), b), y)
    loss = node_l(node_e(d), _count(x, n))
    # backward (Eq. 6-11): the shared factor (1/n)(2d), then each gradient
    up = dl_dd(d, n)
    return loss, grad_w(up, x), grad_b(up)


def engine(config, backend: ArrayBackend, plan=None) -> Engine:
    """sgdtrace's own engine: :func:`gradients` by hand, and the hand-worked optimizer of ``config``
    (with a schedule, its per-step hyper-parameters over ``plan``). The scalars follow the 16-bit
    rules of docs/precision.md (``kept``; SGD's ``rounded``)."""
    opt = optimizers.get(config.optimizer)
    extra = {"kept": backend.kept}
    if config.optimizer == "sgd":
        extra["rounded"] = backend.rounded
    hp_at, lr_at = optimizers.step_hypers(config, backend.scalar, plan, **extra) if plan is not None else (None, None)
    return Engine(
        "hand", gradients, opt.update, opt.hyper(config, backend.scalar, **extra), opt.state_keys(config), hp_at, lr_at
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
    """Train by hand over ``plan``: :func:`sgdtrace.engines.protocol.run` with :func:`engine`."""
    return protocol.run(
        engine(config, backend, plan), x, y, plan, config.init_w, config.init_b, backend, progress, loop_context
    )
