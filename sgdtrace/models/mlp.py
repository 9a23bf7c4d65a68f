"""A small neural network by hand: one hidden layer, backpropagation layer by layer.

``--model mlp --hidden H --activation relu|tanh|sigmoid --loss mse|bce`` (DESIGN part 3)::

    z1 = X·W1ᵀ + b1       (n, H)    node_z1      the first layer (torch: addmm(b1, X, W1ᵀ))
    h  = act(z1)          (n, H)    node_h       relu, tanh or sigmoid, element by element
    z2 = h·W2ᵀ + b2       (n, 1)    node_z2      the output (ypred for mse, the logit for bce)
    l  = loss(z2, y)      ()        node_loss    mean squared error, or BCE with logits

Parameters, as ``nn.Sequential(nn.Linear(D, H), act, nn.Linear(H, 1))`` holds them: ``w1`` (H, D)
(``0.weight``), ``b1`` (H,) (``0.bias``), ``w2`` (1, H) (``2.weight``), ``b2`` (1,) (``2.bias``).

Backward, one factor per function, in matrix form (n samples, the shapes beside)::

    δ2 = dl/dz2            (n, 1)   dl_dz2       mse: (2/n)(z2 − y); bce: (σ(z2) − y)/n
    dl/dW2 = δ2ᵀ·h         (1, H)   grad_w2      a sum over the n samples
    dl/db2 = Σ_i δ2_i      (1,)     grad_b2
    dl/dh  = δ2·W2         (n, H)   dl_dh        one product per element (the inner dimension is 1)
    act'(z1)               (n, H)   act_prime    relu: 1 where z1 > 0; tanh: 1 − h²; sigmoid: h(1 − h)
    δ1 = dl/dh ⊙ act'(z1)  (n, H)   delta1       (torch: ReluBackward0, TanhBackward0, SigmoidBackward0)
    dl/dW1 = δ1ᵀ·X         (H, D)   grad_w1      a sum over the n samples
    dl/db1 = Σ_i δ1_i      (H,)     grad_b1

The hand side computes as torch's CPU kernels do, rule by rule where IEEE 754 fixes it (docs/
precision.md): in float32 and float64 each operation rounds its result to the type; in bfloat16
and float16 each torch operation computes in float32 and rounds its result once to 16 bits, and
the matrix products and sums accumulate in float32 and round once. The order in which a matrix
product adds its terms is the library's (MKL's blocking is not reproducible), and tanh, sigmoid
and exp are torch's vectorised approximations: the judge bounds both (γ_k of the magnitudes, and
the functions' measured ulp bounds), so no bit-for-bit claim is made for this model.

The initial values are torch's own default initialisation, as a learner gets it:
``torch.manual_seed(seed)`` immediately before building the ``nn.Sequential`` in float32 on the
CPU, then ``.to(dtype, device)`` (:func:`initial`; measured: building in float64 directly draws
other values). They are copied to the hand side and recorded under ``config.init``.

The torch side is :mod:`sgdtrace.models.mlp_torch` (this module imports torch only to draw the
initial values).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgdtrace import dtypes
from sgdtrace.models import Param

NAME = "mlp"
#: the losses this model takes (``--loss``), the first the default
LOSSES = ("mse", "bce")
#: the activations (``--activation``), the first the default
ACTIVATIONS = ("relu", "tanh", "sigmoid")
#: the hidden layer's default width (``--hidden``)
HIDDEN = 8
#: the torch side, as a learner writes it
TORCH_SIDE = "sgdtrace.models.mlp_torch"
#: torch's module for each activation (what ``nn.Sequential`` holds, and the graph shows)
TORCH_ACTIVATION = {"relu": "nn.ReLU()", "tanh": "nn.Tanh()", "sigmoid": "nn.Sigmoid()"}
#: torch's loss module for each loss
TORCH_LOSS = {"mse": "nn.MSELoss()", "bce": "nn.BCEWithLogitsLoss()"}


# ------------------------------------------------------------------ the parameters


def hidden(config) -> int:
    return int(getattr(config, "hidden", None) or HIDDEN)


def activation(config) -> str:
    return getattr(config, "activation", None) or ACTIVATIONS[0]


def params(config, features: int | None) -> tuple[Param, ...]:
    """``w1`` (H, D), ``b1`` (H,), ``w2`` (1, H), ``b2`` (1,): ``nn.Sequential``'s ``0.weight``,
    ``0.bias``, ``2.weight``, ``2.bias`` (D = 1 for one ``x`` column)."""
    D, H = features or 1, hidden(config)
    return (
        Param("w1", (H, D), "0.weight", "W1"),
        Param("b1", (H,), "0.bias", "b1"),
        Param("w2", (1, H), "2.weight", "W2"),
        Param("b2", (1,), "2.bias", "b2"),
    )


@functools.lru_cache(maxsize=16)
def _torch_init(seed: int, D: int, H: int) -> tuple[tuple[tuple[int, ...], tuple[float, ...]], ...]:
    """What ``torch.manual_seed(seed)`` then ``nn.Sequential(nn.Linear(D, H), act, nn.Linear(H, 1))``
    (float32, CPU) draws: each parameter's shape and values (the activation has no parameters, so
    draws nothing)."""
    from sgdtrace.models.mlp_torch import sequential

    net = sequential(D, H, "relu", seed)
    return tuple((tuple(p.shape), tuple(p.detach().double().reshape(-1).tolist())) for p in net.parameters())


def initial(config, model) -> dict[str, np.ndarray]:
    """torch's default initialisation under ``torch.manual_seed(--seed)`` (default 0), as float64
    arrays of each parameter's shape (float32 values, exactly)."""
    D, H = model.param("w1").shape[1], model.param("w1").shape[0]
    seed = 0 if getattr(config, "seed", None) is None else int(config.seed)
    drawn = _torch_init(seed, D, H)
    return {
        p.name: np.array(values, dtype=np.float64).reshape(shape) for p, (shape, values) in zip(model.params, drawn)
    }


def true_values(dataset, model) -> dict[str, np.ndarray] | None:
    """A network has no true parameters to compare against (its data's line has other shapes)."""
    return None


def synthetic(config, features: int | None):
    """``--synthetic N``: the linear model's draw for mse (y = x·true_w + true_b + noise); for bce the
    logistic model's, labels drawn 1 with probability σ(x·true_w + true_b)."""
    from sgdtrace import data

    if getattr(config, "loss", "mse") == "bce":
        from sgdtrace.models import logistic

        return logistic.synthetic(config, features)
    return data.synthetic(config.synthetic, config.true_w, config.true_b, config.noise, config.effective_seed, features)


def check_data(dataset, config) -> None:
    """A bce loss takes labels 0 and 1: another value is exit 2, naming the first such row."""
    if getattr(config, "loss", "mse") != "bce":
        return
    y = np.asarray(dataset.y)
    bad = np.flatnonzero((y != 0) & (y != 1))
    if bad.size:
        from sgdtrace.errors import DataError

        i = int(bad[0])
        raise DataError(
            f"y = {y[i]:g} in row {i + 1} of the data: --loss bce takes labels 0 and 1 only "
            f"({bad.size} row{'s' if bad.size != 1 else ''} with another value)"
        )


def inputs(model, x: np.ndarray) -> np.ndarray:
    """The samples as the hand side takes them: ``(n, D)``."""
    return x.reshape(x.shape[0], -1)


# ------------------------------------------------------------------ the shapes between layers


def _fields(t):
    """A Track's four arrays (value, magnitude, rounding, carry), or the array itself."""
    return (t.v, t.mag, t.rnd, t.carry) if hasattr(t, "carry") else None


def _reshaped(t, f):
    """``f`` applied to an array, or to each of a Track's arrays (a view of the same numbers)."""
    fields = _fields(t)
    if fields is None:
        return f(t)
    return type(t)(*(f(a) for a in fields))


def column(t):
    """(…, n) → (…, n, 1): a vector of samples as the layer's one-column output."""
    return _reshaped(t, lambda a: a[..., None])


def flat(t):
    """(…, n, 1) → (…, n): the output layer's one column as a vector of samples."""
    return _reshaped(t, lambda a: a[..., 0])


# ------------------------------------------------------------------ forward: the nodes
#
# Each function takes ``ops`` first (sgdtrace.models.ops): HandOps computes the values as torch
# does, TrackOps bounds what either side's rounding makes of them (the judge). Shapes are the
# batch's; the judge adds a leading axis of steps.


def node_z1(ops, x, w1, b1):
    """z1 = X·W1ᵀ + b1: (n, D)·(D, H) + (H,) = (n, H), a dot product of D terms per element
    (torch: ``addmm(b1, X, W1ᵀ)``)."""
    return ops.linear(x, w1, b1)


def node_h(ops, z1, act: str):
    """h = act(z1): (n, H), element by element (relu exact; tanh and σ within their ulp bounds)."""
    return getattr(ops, act)(z1)


def node_z2(ops, h, w2, b2):
    """z2 = h·W2ᵀ + b2: (n, H)·(H, 1) + (1,) = (n, 1), a dot product of H terms per sample."""
    return ops.linear(h, w2, b2)


def mse_loss(ops, z, y):
    """l = (1/n)·Σ (z_i − y_i)²: ``nn.MSELoss()``, z and y of shape (n,)."""
    d = ops.sub(z, y)
    return ops.mean(ops.mul(d, d))


def bce_loss(ops, z, y):
    """l = (1/n)·Σ [(1 − y_i)·z_i − log σ(z_i)]: ``nn.BCEWithLogitsLoss()`` (torch's formula,
    ``(1 - target).mul_(input).sub_(log_sigmoid(input))``, then the mean)."""
    one = ops.const(1.0, y)
    return ops.mean(ops.sub(ops.mul(ops.sub(one, y), z), ops.log_sigmoid(z)))


LOSS = {"mse": mse_loss, "bce": bce_loss}


# ------------------------------------------------------------------ backward: the chain rule's factors


def dl_dz2(ops, z, y, loss: str, n: int):
    """δ2 = dl/dz2, (n,). mse: (z − y)·(2/n), as torch's MSE backward computes it (``2/n`` rounded
    to the type); bce: (σ(z) − y)/n (torch: ``(input.sigmoid() - target)``, then ``div_(n)``)."""
    if loss == "mse":
        d = ops.sub(z, y)
        return ops.mul(d, ops.const(2.0 / n, d))
    return ops.div_n(ops.sub(ops.sigmoid(z), y), n)


def grad_w2(ops, delta2, h):
    """dl/dW2 = δ2ᵀ·h: (1, n)·(n, H) = (1, H), a sum over the samples of δ2_i·h_i."""
    return ops.matmul(ops.T(column(delta2)), h)


def grad_b2(ops, delta2):
    """dl/db2 = Σ_i δ2_i: (1,)."""
    return ops.sum(delta2, keep=True)


def dl_dh(ops, delta2, w2):
    """dl/dh = δ2·W2: (n, 1)·(1, H) = (n, H), one product per element (W2 as the step began)."""
    return ops.matmul(column(delta2), w2)


def act_prime(ops, z1, h, act: str):
    """act'(z1), (n, H), for the page: relu 1 where z1 > 0; tanh 1 − h²; sigmoid h·(1 − h)."""
    if act == "relu":
        return ops.relu_mask(z1)
    one = ops.const(1.0, h)
    if act == "tanh":
        return ops.sub(one, ops.mul(h, h))
    return ops.mul(ops.sub(one, h), h)


def delta1(ops, upstream, z1, h, act: str):
    """δ1 = dl/dh ⊙ act'(z1): (n, H), as torch's backward kernels compute it: relu keeps dl/dh
    where z1 > 0 (ReluBackward0, exact: the mask's branch is ambiguous only where |z1| lies within
    its rounding of 0), tanh ``g·(1 − h²)`` (TanhBackward0), sigmoid ``g·(1 − h)·h``
    (SigmoidBackward0)."""
    if act == "relu":
        return ops.mul(upstream, ops.relu_mask(z1))
    if act == "tanh":
        return ops.tanh_backward(upstream, h)
    return ops.sigmoid_backward(upstream, h)


def grad_w1(ops, d1, x):
    """dl/dW1 = δ1ᵀ·X: (H, n)·(n, D) = (H, D), a sum over the samples of δ1_ij·x_ik."""
    return ops.matmul(ops.T(d1), x)


def grad_b1(ops, d1):
    """dl/db1 = Σ_i δ1_i: (H,), the sum over the samples."""
    return ops.sum(ops.T(d1))


@dataclass
class StepResult:
    """One batch worked by hand: every node and factor (explain shows them)."""

    z1: Any
    h: Any
    z2: Any
    loss: Any
    delta2: Any
    grad_w2: Any
    grad_b2: Any
    dl_dh: Any
    delta1: Any
    grad_w1: Any
    grad_b1: Any

    @property
    def grads(self) -> dict[str, Any]:
        return {"w1": self.grad_w1, "b1": self.grad_b1, "w2": self.grad_w2, "b2": self.grad_b2}


def forward_backward(ops, params: dict, x, y, act: str = "relu", loss: str = "mse") -> StepResult:
    """One batch: the forward pass node by node, then the backward pass factor by factor, layer by
    layer from the loss back to W1 (every intermediate kept). ``x`` (n, D), ``y`` (n,)."""
    n = np.shape(y.v if hasattr(y, "carry") else y)[-1]
    w1, b1, w2, b2 = params["w1"], params["b1"], params["w2"], params["b2"]
    # forward
    z1 = node_z1(ops, x, w1, b1)
    h = node_h(ops, z1, act)
    z2 = node_z2(ops, h, w2, b2)
    z = flat(z2)
    l_ = LOSS[loss](ops, z, y)
    # backward: the output layer
    d2 = dl_dz2(ops, z, y, loss, n)
    gw2, gb2 = grad_w2(ops, d2, h), grad_b2(ops, d2)
    # backward: through W2 (as the step began: the update comes after) and the activation
    up = dl_dh(ops, d2, w2)
    d1 = delta1(ops, up, z1, h, act)
    return StepResult(z1, h, z2, l_, d2, gw2, gb2, up, d1, grad_w1(ops, d1, x), grad_b1(ops, d1))


@functools.lru_cache(maxsize=8)
def hand_ops(dtype: str):
    """The hand side's arithmetic in ``dtype``: torch's rounding rules on NumPy arrays."""
    from sgdtrace.models.ops import HandOps

    class NetworkOps(HandOps):
        """torch's 16-bit activation backward kernels (``tanh_backward``, ``sigmoid_backward``)
        compute the whole expression in float32 and round once (measured, and read in
        ``BinaryOpsKernel.cpp``: ``float(a) * (1 - float(b) * float(b))``)."""

        def tanh_backward(self, g, t):
            if not self.reduced:
                return super().tanh_backward(g, t)
            g32, t32 = self._w(g), self._w(t)
            return self._out(g32 * (np.float32(1) - t32 * t32))

        def sigmoid_backward(self, g, p):
            if not self.reduced:
                return super().sigmoid_backward(g, p)
            g32, p32 = self._w(g), self._w(p)
            return self._out((g32 * (np.float32(1) - p32)) * p32)

    return NetworkOps(dtype)


def engine_gradients(model, config=None) -> Callable:
    """The hand side's ``gradients(params, x, y) -> (loss, grads)`` (the engine protocol's dict form)."""
    act, loss = model.activation, model.loss

    def gradients(params: dict, x, y):
        ops = hand_ops(np.dtype(x.dtype).name)
        r = forward_backward(ops, params, x, y, act, loss)
        return r.loss, r.grads

    return gradients


# ------------------------------------------------------------------ the judge's terms (docs/tolerance.md)


def gradient_terms(model, starts, bounds, x, y, plan, config) -> dict[str, dict[str, np.ndarray]]:
    """The judge's terms of the loss and the four gradients, every step at once: the same
    :func:`forward_backward`, run by :class:`sgdtrace.models.ops.TrackOps` on the steps' starting
    parameters (each the hand side's value, the larger magnitude of either side and the carried
    difference hand − torch), on the batches both sides saw (:func:`sgdtrace.models.ops.judge_terms`).

    Returns ``{"E", "C", "peak", "both", "ambiguous"}``: per field the rounding scale E (in units of
    u) and the carried difference C of each element, the intermediates' bound (the overflow rule),
    and per step how many of relu's branches were ambiguous."""
    from sgdtrace.models.ops import judge_terms

    def terms(ops, params, xb, yb):
        r = forward_backward(ops, params, xb, yb, model.activation, model.loss)
        return {"loss": r.loss} | {"grad_" + p: g for p, g in r.grads.items()}

    return judge_terms(model, terms, starts, bounds, x, y, plan, config)


# ------------------------------------------------------------------ the usual mistakes, for the diagnosis

#: the classic mistakes of a network's backward pass the diagnosis can name, each by what it does
MISTAKES = {
    "transpose": "W1 used without its transpose: z1 = X·W1 where X·W1ᵀ is meant",
    "derivative_at_z": "the activation's derivative taken at z1 instead of at its output h",
    "relu_one_below_zero": "relu's derivative taken as 1 below zero too (δ1 = dl/dh without relu's mask)",
    "bias_axis": "dl/db1 summed over the hidden units instead of over the samples",
    "missing_1_over_n": "the 1/n of the mean missing in the first layer's gradients",
    "w2_updated_first": "W2 updated before δ1 was computed from it (dl/dh = δ2·W2 with the new W2)",
}


def _mistaken(ops, params, x, y, act: str, loss: str, kind: str, w2_new=None) -> dict:
    """One step with the mistake ``kind`` (one of :data:`MISTAKES`), the rest as :func:`forward_backward`."""
    w1, b1, w2, b2 = params["w1"], params["b1"], params["w2"], params["b2"]
    n = np.shape(y)[-1]
    z1 = ops.add(ops.matmul(x, w1), b1) if kind == "transpose" else node_z1(ops, x, w1, b1)
    h = node_h(ops, z1, act)
    z = flat(node_z2(ops, h, w2, b2))
    out = {"loss": LOSS[loss](ops, z, y)}
    d2 = dl_dz2(ops, z, y, loss, n)
    out["grad_w2"], out["grad_b2"] = grad_w2(ops, d2, h), grad_b2(ops, d2)
    up = dl_dh(ops, d2, w2_new if kind == "w2_updated_first" else w2)
    if kind == "derivative_at_z":
        d1 = delta1(ops, up, z1, z1, act)  # the derivative's formula fed z1 where it takes h
    elif kind == "relu_one_below_zero":
        d1 = up
    else:
        d1 = delta1(ops, up, z1, h, act)
    if kind == "missing_1_over_n":
        d1 = ops.scale(d1, float(n))
    out["grad_w1"] = grad_w1(ops, d1, x)
    out["grad_b1"] = ops.sum(d1) if kind == "bias_axis" else grad_b1(ops, d1)
    return out


def _applies(kind: str, act: str, n: int, H: int, D: int) -> bool:
    """Whether mistake ``kind`` is a different computation here (and has the shapes to run)."""
    return {
        "transpose": H == D,
        "derivative_at_z": act != "relu",
        "relu_one_below_zero": act == "relu",
        "bias_axis": n == H,
    }.get(kind, True)


def diagnose(trace, k: int, field: str, index: tuple, value: float, tol: float) -> dict | None:
    """The likely mistake at step ``k`` (0-based) on ``field``'s element ``index``: the one mistake of
    :data:`MISTAKES` whose step, worked from the same starting values (the hand side's; torch's under
    ``--judge step``) in float64, gives the hand side's value within the step's allowance, where the
    correct step does not; None where none or several do (the numbers support no single guess)."""
    if field != "loss" and not field.startswith("grad_"):
        return None
    from sgdtrace.models.ops import HandOps

    model, cfg = trace.model, trace.config
    step_mode = getattr(cfg, "judge", "carry") == "step"
    cols = trace.torch if step_mode else trace.manual
    params = {p: np.asarray(trace.initial[p] if k == 0 else cols[p][k - 1], dtype=np.float64) for p in model.names}
    if k == 0:
        params = {p: dtypes.cast(v, cfg.dtype).astype(np.float64) for p, v in params.items()}
    idx = trace.indices(k)
    x = dtypes.cast(trace.dataset.x[idx].reshape(len(idx), -1), cfg.dtype).astype(np.float64)
    y = dtypes.cast(np.asarray(trace.dataset.y[idx], dtype=np.float64), cfg.dtype).astype(np.float64)
    ops = HandOps("float64")
    H, D = model.param("w1").shape
    w2_new = np.asarray(trace.manual["w2"][k], dtype=np.float64)
    slack = tol + 4 * dtypes.unit_roundoff(cfg.dtype) * abs(value)

    def at(out) -> float:
        v = np.asarray(out[field], dtype=np.float64)
        return float(v[index] if index else v)

    with np.errstate(all="ignore"):
        right = at(_mistaken(ops, params, x, y, model.activation, model.loss, "", w2_new))
        if abs(value - right) <= slack:
            return None
        found = [
            kind
            for kind in MISTAKES
            if _applies(kind, model.activation, len(idx), H, D)
            and abs(value - at(_mistaken(ops, params, x, y, model.activation, model.loss, kind, w2_new))) <= slack
        ]
    if len(found) != 1:
        return None
    return {"kind": found[0], "factor": None, "text": MISTAKES[found[0]]}


# ------------------------------------------------------------------ what the views show

#: how tables label each field
LABELS = {
    "grad_w1": "dl/dW1",
    "grad_b1": "dl/db1",
    "grad_w2": "dl/dW2",
    "grad_b2": "dl/db2",
    "loss": "loss",
    "w1": "W1",
    "b1": "b1",
    "w2": "W2",
    "b2": "b2",
}


def title(model, config=None) -> str:
    """The network as titles name it."""
    H, D = model.param("w1").shape
    out = "ypred" if model.loss == "mse" else "z"
    return (
        f"h = {model.activation}(W1·x + b1), {out} = W2·h + b2, H = {H} on {D} feature{'s' if D != 1 else ''} "
        f"(nn.Sequential, {TORCH_LOSS[model.loss]})"
    )


def equation(model) -> str:
    return f"h = {model.activation}(W1·x + b1), ypred = W2·h + b2"


def describe(model) -> str:
    """One line: the network, its parameters' shapes and the torch side."""
    H, D = model.param("w1").shape
    return (
        f"a network h = {model.activation}(W1·x + b1), {'ypred' if model.loss == 'mse' else 'z'} = W2·h + b2 "
        f"(W1 ({H}, {D}), b1 ({H},), W2 (1, {H}), b2 (1,); torch: nn.Sequential(nn.Linear({D}, {H}), "
        f"{TORCH_ACTIVATION[model.activation]}, nn.Linear({H}, 1)), {TORCH_LOSS[model.loss]})"
    )


def data_loss(model, dataset, values: dict[str, np.ndarray]):
    """The loss over the whole data set, in float64, at the parameters ``values`` (one point), or at
    each row of a path."""
    x = dataset.x.reshape(len(dataset), -1).astype(np.float64)
    y = np.asarray(dataset.y, dtype=np.float64)
    w1 = np.asarray(values["w1"], dtype=np.float64)
    path = w1.ndim == 3
    rows = range(w1.shape[0]) if path else [None]
    out = []
    for r in rows:
        p = {
            k: np.asarray(values[k], dtype=np.float64)[r] if path else np.asarray(values[k], dtype=np.float64)
            for k in values
        }
        with np.errstate(all="ignore"):
            z1 = x @ p["w1"].T + p["b1"]
            h = {"relu": lambda v: np.maximum(v, 0.0), "tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[
                model.activation
            ](z1)
            z = (h @ p["w2"].T + p["b2"])[:, 0]
            if model.loss == "mse":
                out.append(float(np.mean((z - y) ** 2)))
            else:
                out.append(float(np.mean((1 - y) * z + np.logaddexp(0.0, -z))))
    return np.array(out) if path else out[0]
