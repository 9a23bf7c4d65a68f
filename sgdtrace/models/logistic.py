"""Logistic regression: ``z = w·x + b``, ``p = σ(z)``, labels 0/1, the binary cross-entropy.

Two losses, as learners write them (DESIGN part 3):

* ``bce`` (the default): ``nn.BCEWithLogitsLoss()`` on z, the recommended form. torch 2.13's
  kernel (aten/src/ATen/native/Loss.cpp, measured bit for bit on the CPU)::

      l_i   = (1 - y_i)·z_i - log σ(z_i)          (log σ: torch's log_sigmoid)
      l     = mean_i l_i
      dl/dz = (σ(z) - y) / n                      (BinaryCrossEntropyWithLogitsBackward0)

* ``bce-sigmoid``: ``nn.BCELoss()`` on ``p = torch.sigmoid(z)``, as many learners write it.
  torch's rules, which are not the textbook's::

      l_i   = (y_i - 1)·max(log(1 - p_i), -100) - y_i·max(log p_i, -100)   (each log clamped at -100,
                                                                           in the forward pass only)
      dl/dp = (p - y) / max((1 - p)·p, 1e-12) / n  (BinaryCrossEntropyBackward0: not the derivative
                                                    of the clamped loss)
      dl/dz = dl/dp · (1 - p)·p                    (SigmoidBackward0)

  so where σ saturates (p rounds to 1 or 0) torch's own gradient vanishes: ``(1 - p)·p`` is 0 and
  ``dl/dz = dl/dp·0``, while the textbook ``p - y`` is not. In float16, 1e-12 rounds to 0: a
  saturated p gives ``(p - y)/0``, torch's gradient is inf or nan (reported as torch's).

Both give, in exact arithmetic, ``dl/dz = (p - y)/n``; then (``nn.Linear``'s AddmmBackward0)::

    dl/dw = Xᵀ·dl/dz        dl/db = Σ_i dl/dz_i

The forward and backward are written once against ``ops`` (:mod:`sgdtrace.models.ops`): the hand
side runs them with :class:`~sgdtrace.models.ops.HandOps`, the judge with
:class:`~sgdtrace.models.ops.TrackOps` (E and C by the general rules; docs/tolerance.md). The torch
side is :mod:`sgdtrace.models.logistic_torch` (``nn.Linear(D, 1)``, D = 1 too).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sgdtrace import dtypes
from sgdtrace.errors import DataError
from sgdtrace.models import Param
from sgdtrace.models import linear as _linear
from sgdtrace.models import ops as _ops

NAME = "logistic"
#: the losses this model takes (``--loss``), the first the default
LOSSES = ("bce", "bce-sigmoid")
TORCH_SIDE = "sgdtrace.models.logistic_torch"
#: written against the ops algebra: ``forward_backward(ops, params, x, y, loss)`` (explain reads it)
OPS = True
#: BCELoss's clamp of each log (forward only) and the floor of its backward's denominator: torch's
#: ``constexpr float EPSILON = 1e-12`` (Loss.cpp), a float32 constant, so 9.99999996e-13 in a
#: float64 run, not 1e-12 (measured: a float64 run's saturated gradients differ by 4e-9 relative
#: with the double 1e-12), and 0 in float16
LOG_CLAMP = -100.0
EPSILON = float(np.float32(1e-12))


# ------------------------------------------------------------------ the parameters


def params(config, features: int | None) -> tuple[Param, ...]:
    """``w`` (D,) and ``b`` (1,): ``nn.Linear(D, 1)``'s ``weight[0]`` and ``bias`` (D = 1 for one column)."""
    D = 1 if features is None else features
    return (Param("w", (D,), "weight", "w"), Param("b", (1,), "bias", "b"))


def initial(config, model) -> dict[str, np.ndarray]:
    """``--init-w`` (a number, or a list of D) and ``--init-b``."""
    w, b = model.param("w"), model.param("b")
    what = f"the model's w (D = {w.shape[0]} feature{'s' if w.shape[0] != 1 else ''})"
    return {
        "w": _linear._values(config.init_w, w.shape, "init_w", config, what),
        "b": _linear._values(config.init_b, b.shape, "init_b", config, "b"),
    }


true_values = _linear.true_values


def inputs(model, x: np.ndarray) -> np.ndarray:
    """The samples as the hand side takes them: ``(n, D)``."""
    return x.reshape(x.shape[0], -1)


# ------------------------------------------------------------------ the data


def synthetic(config, features: int | None):
    """``--synthetic N``: x as the linear model draws it (uniform in [0, 10)^D, ``--seed``), and each
    label drawn from Bernoulli(σ(x·true_w + true_b)) with a generator seeded by the same seed."""
    from sgdtrace import data

    base = data.synthetic(config.synthetic, config.true_w, config.true_b, 0.0, config.effective_seed, features)
    x = base.x.reshape(base.x.shape[0], -1)
    w = np.broadcast_to(np.asarray(config.true_w, dtype=np.float64), (x.shape[1],))
    with np.errstate(over="ignore"):
        p = _ops._sigmoid(x @ w + config.true_b)
    rng = np.random.default_rng([config.effective_seed, 1])
    y = (rng.uniform(size=x.shape[0]) < p).astype(np.float64)
    info = dict(base.info)
    info.pop("noise", None)
    info["labels"] = "Bernoulli(σ(x·true_w + true_b))"
    return data.Dataset(base.x, y, info, base.true_w, base.true_b, base.features)


def check_data(dataset, config) -> None:
    """Labels 0 or 1 (the binary cross-entropy's): another is exit 2 naming the row."""
    bad = np.flatnonzero((dataset.y != 0) & (dataset.y != 1))
    if bad.size:
        i = int(bad[0])
        src = dataset.info.get("source")
        where = (
            f"--data {dataset.info.get('path')!r}: data row {i + 1}"
            if src == "csv"
            else ("the article's data" if src == "article" else f"--{src} data") + f": y[{i}]"
        )
        raise DataError(
            f"{where}: label y = {dataset.y[i]:g}; --model logistic takes labels 0 and 1 "
            f"({bad.size} row{'s' if bad.size != 1 else ''} not 0 or 1)"
        )


# ------------------------------------------------------------------ forward and backward, against ops


def forward_backward(ops, params: dict, x, y, loss: str = "bce") -> dict:
    """One batch, every node kept (explain reads them): z, p, the loss terms, the loss, dl/dz and the
    gradients. ``x`` (n, D), ``y`` (n,); ``params`` ``w`` (D,), ``b`` (1,)."""
    n = ops.rows(x)
    one = ops.const(1.0, y)
    z = node_z(ops, x, params["w"], params["b"])
    p = ops.sigmoid(z)
    if loss == "bce":
        terms = bce_terms(ops, z, y, one)
        dl_dz = dl_dz_bce(ops, p, y, n)
        nodes = {}
    else:
        terms = bce_sigmoid_terms(ops, p, y, one)
        dl_dp = dl_dp_bce(ops, p, y, one, n)
        dl_dz = ops.sigmoid_backward(dl_dp, p)
        nodes = {"dl_dp": dl_dp}
    return {
        "z": z,
        "p": p,
        "terms": terms,
        "loss": ops.mean(terms),
        "dl_dz": dl_dz,
        "grad_w": ops.vecmat(dl_dz, x),
        "grad_b": ops.sum(dl_dz, keep=True),
        **nodes,
    }


def node_z(ops, x, w, b):
    """z = X·w + b: each sample's logit (torch's addmm: the bias added inside the sum)."""
    return ops.matvec(x, w, b)


def bce_terms(ops, z, y, one):
    """BCEWithLogitsLoss per sample: (1 - y)·z - log σ(z) (torch's form, free of overflow)."""
    return ops.sub(ops.mul(ops.sub(one, y), z), ops.log_sigmoid(z))


def dl_dz_bce(ops, p, y, n: int):
    """dl/dz = (σ(z) - y)/n (BinaryCrossEntropyWithLogitsBackward0)."""
    return ops.div_n(ops.sub(p, y), n)


def bce_sigmoid_terms(ops, p, y, one):
    """BCELoss per sample: (y - 1)·max(log(1 - p), -100) - y·max(log p, -100)."""
    log_q = ops.clamp_min(ops.log(ops.sub(one, p)), LOG_CLAMP)
    log_p = ops.clamp_min(ops.log(p), LOG_CLAMP)
    return ops.sub(ops.mul(ops.sub(y, one), log_q), ops.mul(y, log_p))


def dl_dp_bce(ops, p, y, one, n: int):
    """dl/dp = (p - y)/max((1 - p)·p, 1e-12)/n (BinaryCrossEntropyBackward0; 1e-12 in the run's type)."""
    floor = ops.const(EPSILON, p)
    return ops.div_n(ops.div(ops.sub(p, y), ops.maximum(ops.mul(ops.sub(one, p), p), floor)), n)


def engine_gradients(model, config=None) -> Callable:
    """The hand side's ``gradients(params, x, y) -> (loss, grads)``: :func:`forward_backward` with
    :class:`~sgdtrace.models.ops.HandOps` in the run's dtype."""
    loss = getattr(config, "loss", "bce")
    dtype = getattr(config, "dtype", "float32")
    return _ops.hand_gradients(lambda o, p, x, y: forward_backward(o, p, x, y, loss), model.names, dtype)


def gradient_terms(model, starts, bounds, x, y, plan, config) -> dict:
    """The judge's terms by the general rules (:func:`sgdtrace.models.ops.judge_terms`)."""
    return _ops.judge_terms(
        model, lambda o, p, xb, yb: forward_backward(o, p, xb, yb, config.loss), starts, bounds, x, y, plan, config
    )


# ------------------------------------------------------------------ the diagnosis (sgdtrace.diagnosis)

#: why a constant factor 2 or 1/2 (the linear model's texts speak of its d² and MSE)
FACTOR_WHY = {
    "2": "a factor 2 too many (the mean squared error's 2 carried over, or the loss summed twice)",
    "1/2": "half the right value (a 1/2 in front of the loss, or the gradient averaged twice)",
}
#: what a flipped sign of a gradient usually is here
SIGN_TEXT = "y - p taken for p - y (dl/dz = p - y for the binary cross-entropy)"


def _exact(w, b, x, y):
    """z and p in float64 on a batch (``x`` (n, D), ``w`` (D,), ``b`` (1,))."""
    z = x @ np.asarray(w, dtype=np.float64) + float(np.ravel(b)[0])
    return z, _ops._sigmoid(z)


def sample_terms(field: str, w, b, x, y, config) -> np.ndarray:
    """Per sample, what the field sums before dividing by n, in float64 by the textbook rule:
    ``(p - y) x`` (n, D), ``p - y`` (n, 1), the loss term."""
    z, p = _exact(w, b, x, y)
    r = p - y
    if field == "grad_w":
        return r[:, None] * x
    if field == "grad_b":
        return r[:, None]
    with np.errstate(divide="ignore"):
        if getattr(config, "loss", "bce") == "bce-sigmoid":
            return -(y * np.maximum(np.log(p), LOG_CLAMP) + (1 - y) * np.maximum(np.log1p(-p), LOG_CLAMP))
        return (1 - y) * z - _ops._log_sigmoid(z)


def right_value(field: str, w, b, x, y, config, index=()) -> float:
    """The field as torch's rules give it from these inputs, in the run's dtype (the hand side's
    own engine: BCELoss's clamped backward included)."""
    ops = HandOps_for(config)
    cast = lambda v: dtypes.cast(np.asarray(v, dtype=np.float64), config.dtype)  # noqa: E731
    out = forward_backward(ops, {"w": cast(w), "b": cast(np.ravel(b))}, cast(x), cast(y), config.loss)
    value = np.asarray(out[field], dtype=np.float64)
    return float(value[index] if index else value)


def HandOps_for(config):  # noqa: N802
    return _ops.HandOps(config.dtype)


def gradient_mistakes(field: str, w, b, x, y, config, index=()) -> list[tuple[str, float, str]]:
    """The logistic model's own classic mistakes, each as ``(kind, the value it gives, the text)``:
    the MSE's gradient used for the cross-entropy, and (``bce-sigmoid``) the textbook ``p - y``
    where torch's clamped rule gives another value (σ saturated)."""
    if field not in ("grad_w", "grad_b"):
        return []
    n = x.shape[0]
    z, p = _exact(w, b, x, y)
    col = x[:, index[0]] if field == "grad_w" and index else (x[:, 0] if field == "grad_w" else np.ones(n))
    out = [
        (
            "zero_gradient",
            0.0,
            "is 0: no gradient for this step (the previous step's kept, none before the first, or the "
            "gradient zeroed after backward)",
        ),
        (
            "mse_gradient",
            float(np.sum(2 * (p - y) * p * (1 - p) * col) / n),
            "is the mean squared error's gradient, 2(p - y)·σ'(z), not the cross-entropy's (p - y)",
        ),
        (
            "mse_gradient",
            float(np.sum(2 * (p - y) * col) / n),
            "uses 2(p - y), the mean squared error's dl/dp, where the cross-entropy's dl/dz is p - y",
        ),
    ]
    if getattr(config, "loss", "bce") == "bce-sigmoid":
        out.append(
            (
                "textbook_bce_sigmoid",
                float(np.sum((p - y) * col) / n),
                "is the textbook (p - y)/n; torch's BCELoss backward is (p - y)/max((1 - p)·p, 1e-12), "
                "which vanishes where σ(z) rounds to 1 or 0: torch's own gradient is smaller there",
            )
        )
    return out


# ------------------------------------------------------------------ who is right (closer)

#: decimal digits the exact step is worked in (and again with 20 more, to bound its own error)
CLOSER_DIGITS = 50


def _exact_field(field: str, w, b, x, y, loss: str, index, digits: int):
    """The field at (w, b) on the batch in ``digits``-digit arithmetic (mpmath), by torch's rules
    in exact arithmetic: BCEWithLogits' loss and (σ(z) - y)/n; BCELoss's logs clamped at -100 and
    its backward (p - y)/max((1 - p)p, 1e-12)/n times (1 - p)p."""
    import mpmath

    with mpmath.workdps(digits):
        n = x.shape[0]
        mp = mpmath.mpf
        ws = [mp(float(v)) for v in np.ravel(w)]
        bias = mp(float(np.ravel(b)[0]))
        total = mp(0)
        for i in range(n):
            z = sum((mp(float(x[i, j])) * ws[j] for j in range(len(ws))), mp(0)) + bias
            p = 1 / (1 + mpmath.exp(-z))
            yi = mp(float(y[i]))
            if field == "loss":
                if loss == "bce-sigmoid":
                    lq = max(mpmath.log(1 - p), mp(LOG_CLAMP)) if p < 1 else mp(LOG_CLAMP)
                    lp = max(mpmath.log(p), mp(LOG_CLAMP)) if p > 0 else mp(LOG_CLAMP)
                    total += (yi - 1) * lq - yi * lp
                else:
                    total += (1 - yi) * z + mpmath.log(1 + mpmath.exp(-z))
                continue
            if loss == "bce-sigmoid":
                q = (1 - p) * p
                dz = (p - yi) / max(q, mp(EPSILON)) * q
            else:
                dz = p - yi
            total += dz * (mp(float(x[i, index[0]])) if field == "grad_w" else 1)
        return total / n


def closer(trace):
    """At the first divergent step, which side is nearer the exact value from its own start, for the
    loss and the gradients (``(side, {"hand", "torch"})``; the update's fields: ``(None, None)``,
    not worked out). The exact value is worked at 50 digits and again at 70: two distances closer
    than twice their difference are a tie (None)."""
    first = trace.verdict.first_divergent_step
    if first is None or first.field not in ("loss", "grad_w", "grad_b"):
        return None, None
    k, field, index = first.step - 1, first.field, tuple(first.index)
    cfg = trace.config
    idx = trace.indices(k)
    x = dtypes.cast(trace.dataset.x[idx].reshape(len(idx), -1), cfg.dtype).astype(np.float64)
    y = trace.dataset.y[idx].astype(np.float64)
    step = getattr(cfg, "judge", "carry") == "step"
    errors, rough = {}, {}
    for side, cols in (("hand", trace.torch if step else trace.manual), ("torch", trace.torch)):
        start = {
            p: (dtypes.cast(np.asarray(trace.initial[p], dtype=np.float64), cfg.dtype) if k == 0 else cols[p][k - 1])
            for p in ("w", "b")
        }
        start = {p: np.asarray(v, dtype=np.float64) for p, v in start.items()}
        value = float((trace.manual if side == "hand" else trace.torch)[field][(k, *index)])
        if not np.isfinite(value):
            errors[side] = None
            continue
        truth = _exact_field(field, start["w"], start["b"], x, y, cfg.loss, index, CLOSER_DIGITS + 20)
        coarse = _exact_field(field, start["w"], start["b"], x, y, cfg.loss, index, CLOSER_DIGITS)
        errors[side] = abs(truth - value)
        rough[side] = abs(truth - coarse)
    shown = {s: float("inf") if e is None else float(e) for s, e in errors.items()}
    h, t = errors["hand"], errors["torch"]
    if h is None or t is None:
        return (None if h is None and t is None else ("torch" if h is None else "hand")), shown
    if abs(h - t) <= 2 * max(rough.values()):
        return None, shown
    return ("hand" if h < t else "torch"), shown


# ------------------------------------------------------------------ the blow-up analysis


def batch_hessians(model, x: np.ndarray, plan, dtype: str, epochs: list[int]):
    """A bound on each batch loss's Hessian, the same at every point: the Hessian is
    ``(1/n) Σ σ'(z_i) [x_i 1]ᵀ[x_i 1]`` with ``σ' <= 1/4``, so it is at most (in the positive
    semi-definite order) ``(1/(4n)) [[XᵀX, Xᵀ1], [1ᵀX, n]]``: the linear model's with 2 replaced by
    1/4. A rate below ``2/λ_max`` of this bound cannot raise the batch loss (the descent lemma)."""
    n, H = _linear.batch_hessians(model, x, plan, dtype, epochs)
    return n, H / 8.0


def data_loss(model, dataset, values: dict[str, np.ndarray]):
    """The mean binary cross-entropy over the whole data set, in float64, at ``values`` (a point, or
    a path: one row per point)."""
    x = dataset.x.reshape(len(dataset), -1).astype(np.float64)
    y = dataset.y.astype(np.float64)
    w = np.asarray(values["w"], dtype=np.float64)
    b = np.asarray(values["b"], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if w.ndim == 1:
            z = x @ w + b[0]
            return float(np.mean((1 - y) * z - _ops._log_sigmoid(z)))
        z = w @ x.T + b[:, :1]
        return np.mean((1 - y) * z - _ops._log_sigmoid(z), axis=1)


# ------------------------------------------------------------------ what the views show

LABELS = {"grad_w": "dl/dw", "grad_b": "dl/db", "loss": "loss", "w": "w", "b": "b"}
#: the per-sample nodes explain shows (from :func:`forward_backward`)
EXPLAIN_NODES = ("z", "p", "terms", "dl_dz", "dl_dp")


def equation(model) -> str:
    return "p = σ(w·x + b)"


def describe(model) -> str:
    D = model.param("w").shape[0]
    return (
        f"logistic regression p = σ(w·x + b) on {D} feature{'s' if D != 1 else ''} "
        f"(w ({D},), b (1,); torch: nn.Linear({D}, 1))"
    )


def graph(config) -> dict:
    """``sgdtrace graph``'s view of the model: the manual DAG in vector form, which torch backward
    node computes which manual node (the first its output), the nodes torch's chain must cover, and
    dl/d(node) from one batch's explanation."""

    # (name, forward, backward, inputs): sgdtrace.teaching.graph's ManualNode fields
    def ManualNode(*fields):  # noqa: N802
        return fields

    sigmoid_form = getattr(config, "loss", "bce") == "bce-sigmoid"
    dag = [
        ManualNode("l", "l = (1/n)·Σ l_i", "dl/dl_i = 1/n", ("t",)),
        ManualNode(
            "t",
            "l_i = (y − 1)·max(log(1 − p), −100) − y·max(log p, −100) (n,)"
            if sigmoid_form
            else "l_i = (1 − y)·z − log σ(z) (n,)",
            "dl/dp = (p − y)/max((1 − p)·p, 1e-12)/n (torch's rule)" if sigmoid_form else "dl/dz = (σ(z) − y)/n",
            ("p", "y") if sigmoid_form else ("z", "y"),
        ),
    ]
    if sigmoid_form:
        dag.append(ManualNode("p", "p = σ(z) (n,)", "dp/dz = (1 − p)·p: dl/dz = dl/dp·(1 − p)·p", ("z",)))
    dag += [
        ManualNode("z", "z = X·w + b (n,)", "dz_i/dw_j = x_ij, dz/db = 1: dl/dw = Xᵀ·dl/dz", ("w", "b", "x")),
        ManualNode("w", "leaf (parameter, (D,))", "accumulates dl/dw"),
        ManualNode("b", "leaf (parameter, (1,))", "accumulates dl/db"),
        ManualNode("x", "leaf (input X, (n, D), no gradient)", "—"),
        ManualNode("y", "leaf (labels 0/1, no gradient)", "—"),
    ]
    mapping = {
        "AddmmBackward0": ("z",),
        "BinaryCrossEntropyWithLogitsBackward0": ("l", "t"),
        "BinaryCrossEntropyBackward0": ("l", "t"),
        "SigmoidBackward0": ("p",),
    }

    def grads(ex) -> dict:
        out = {"l": np.array([1.0]), "z": ex.nodes["dl_dz"], "w": ex.grads["w"], "b": ex.grads["b"]}
        if sigmoid_form:
            out["p"] = ex.nodes["dl_dp"]
        return out

    return {
        "dag": tuple(dag),
        "torch_to_manual": mapping,
        "expected": ("l", "t", "p", "z") if sigmoid_form else ("l", "t", "z"),
        "grads": grads,
        "criterion": "nn.BCELoss() on torch.sigmoid" if sigmoid_form else "nn.BCEWithLogitsLoss()",
    }


#: the plot's loss axis
LOSS_LABEL = "batch loss (binary cross-entropy)"


def decision_boundary(values: dict, x1: np.ndarray) -> np.ndarray | None:
    """On two features, x2 along the line w·x + b = 0 (p = 1/2) at ``x1``; None where w2 is 0."""
    w, b = np.ravel(values["w"]), float(np.ravel(values["b"])[0])
    if w.shape[0] != 2 or w[1] == 0:
        return None
    return -(w[0] * x1 + b) / w[1]


def title(model, config) -> str:
    """How titles name the model: the equation, D and the torch side with its loss."""
    D = model.param("w").shape[0]
    loss = "nn.BCELoss on torch.sigmoid" if getattr(config, "loss", "bce") == "bce-sigmoid" else "nn.BCEWithLogitsLoss"
    return f"p = σ(w·x + b) on {D} feature{'s' if D != 1 else ''} (nn.Linear({D}, 1), {loss})"


def reduced(dtype: str) -> bool:
    return dtype in dtypes.REDUCED
