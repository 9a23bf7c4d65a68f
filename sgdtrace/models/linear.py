"""Linear regression with the mean squared error: the article's line, and the same on D features.

Two forms of one model (DESIGN part 3):

* **the article's form** (one ``x`` column and no ``--features``): ``ypred = w*x + b`` with two
  scalar parameters ``w`` and ``b``, the torch side the article's ``LinearModel`` (``x * weight +
  bias`` on 1-D x). Its hand side is the article's Equations 1-11, below, worked on NumPy scalars
  (the engine protocol's four-argument ``gradients(w, b, x, y)``);
* **D features** (``--features D``, or CSV columns ``x1..xD``): ``ypred = w·x + b`` with ``w`` of
  shape ``(D,)`` and ``b`` of shape ``(1,)``, the torch side ``nn.Linear(D, 1)`` (``w`` is
  ``weight[0]``, ``b`` is ``bias``), fed ``(n, D)`` inputs and ``(n, 1)`` targets.

Forward pass, the article's DAG from the leaves (w, x, b, y) to the root::

    a = w * x          node_a          (Eq. 1, first half; D features: a = X·w, a dot product per sample)
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
    da/dw = x          da_dw           (D features: da_i/dw_j = x_ij)

    dl/dw = sum_i (dl/de)(de/dd)(dd/dc)(dc/da)(da/dw)   grad_w  (Eq. 7 = Eq. 8; D features: Xᵀ·dl/dd)
    dl/db = sum_i (dl/de)(de/dd)(dd/dc)(dc/db)          grad_b  (Eq. 10 = Eq. 11)

The functions work on any array type with ``*``, ``+``, ``-`` and ``.sum()``: NumPy arrays on
the CPU, torch tensors on CUDA. In bfloat16 and float16 (docs/precision.md) every operation
rounds its result to the type, as torch's do; the sums, the mean and the dot products
accumulate in float32 and round once (:func:`total`, :func:`node_l`, :func:`node_c_features`),
and ``1/n`` is rounded to the type before it multiplies (torch's MSE backward rounds ``2/n``;
doubling is exact, so ``(1/n)(2d)`` and ``(2/n) d`` round alike).

The judge's terms (:func:`gradient_terms`), the blow-up analysis's Hessians
(:func:`batch_hessians`) and what the views show are below the engine. The torch side, as a
learner writes it, is :mod:`sgdtrace.models.linear_torch` (this module imports no torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgdtrace import dtypes
from sgdtrace.errors import ConfigError
from sgdtrace.models import Param

NAME = "linear"
#: the losses this model takes (``--loss``), the first the default (declared in the registry)
LOSSES = ("mse",)
#: the torch side, as a learner writes it
TORCH_SIDE = "sgdtrace.models.linear_torch"

# the constant factors of the chain rule; multiplying by an exact 1 changes no bit, so the
# fast path below leaves them out, and explain shows them
DD_DC = 1  # d = c - y
DC_DA = 1  # c = a + b
DC_DB = 1  # c = a + b


# ------------------------------------------------------------------ the parameters


def params(config, features: int | None) -> tuple[Param, ...]:
    """The article's form (``features`` None): ``w``, ``b`` scalars; D features: ``w`` (D,), ``b`` (1,)
    (``nn.Linear(D, 1)``'s ``weight[0]`` and ``bias``)."""
    if features is None:
        return (Param("w", (), "weight", "w"), Param("b", (), "bias", "b"))
    return (Param("w", (features,), "weight", "w"), Param("b", (1,), "bias", "b"))


def _values(value, shape: tuple[int, ...], key: str, config, what: str) -> np.ndarray:
    """``--init-w`` (a number, or a list of D) as a float64 array of ``shape``."""
    if isinstance(value, (tuple, list)):
        size = int(np.prod(shape)) if shape else 1
        if len(value) != size:
            origin = getattr(config, "origin", {}).get(key) or "--" + key.replace("_", "-")
            raise ConfigError(
                f"{origin} has {len(value)} value{'s' if len(value) != 1 else ''} but {what} "
                f"has {size}: give one number, or {size}"
            )
        return np.array(value, dtype=np.float64).reshape(shape)
    return np.full(shape, float(value), dtype=np.float64)


def initial(config, model) -> dict[str, np.ndarray]:
    """The initial values (float64 arrays of each parameter's shape), as given: ``--init-w`` (a
    number, or a list of D) and ``--init-b``."""
    w, b = model.param("w"), model.param("b")
    what = f"the model's w (D = {w.shape[0]} features)" if w.shape else "the article's w (one x column)"
    return {
        "w": _values(config.init_w, w.shape, "init_w", config, what),
        "b": _values(config.init_b, b.shape, "init_b", config, "b"),
    }


def true_values(dataset, model) -> dict[str, np.ndarray] | None:
    """The parameters the data were made with (synthetic data, the article's), or None."""
    if dataset.true_w is None or dataset.true_b is None:
        return None
    w, b = model.param("w"), model.param("b")
    return {
        "w": np.broadcast_to(np.asarray(dataset.true_w, dtype=np.float64), w.shape).copy(),
        "b": np.broadcast_to(np.asarray(dataset.true_b, dtype=np.float64), b.shape).copy(),
    }


def inputs(model, x: np.ndarray) -> np.ndarray:
    """The samples as the hand side takes them: ``(n,)`` for the article's form (``w*x`` on 1-D x),
    ``(n, D)`` for D features."""
    if model.scalar:
        return np.ascontiguousarray(x.reshape(x.shape[0], -1)[:, 0]) if x.ndim > 1 else x
    return x.reshape(x.shape[0], -1)


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


# ------------------------------------------------------------------ D features: the same nodes on vectors


def _matvec(x, v, add=None):
    """``x @ v (+ add)`` as torch computes it: a 16-bit product accumulates in float32 (the bias
    added there too) and rounds once (measured: nn.Linear's addmm in bfloat16 and float16 on the
    CPU); float32 and float64 in their own type (the summation order is the library's)."""
    if _reduced(x) and not _is_tensor(x):
        out = x.astype(np.float32) @ v.astype(np.float32)
        if add is not None:
            out = out + add.astype(np.float32)
        return out.astype(x.dtype)
    out = x @ v
    return out if add is None else out + add


def node_c_features(x, w, b):
    """c = X·w + b: each sample's prediction, a dot product of D terms plus the bias (torch's
    ``addmm(bias, X, weightᵀ)``; a = X·w and c = a + b in one, as torch's graph has them)."""
    return _matvec(x, w, b)


def grad_w_features(upstream, x):
    """dl/dw_j = sum_i dl/dd_i · x_ij: ``Xᵀ·dl/dd`` (torch: ``grad_outputᵀ @ X``, mm)."""
    return _matvec(x.T, upstream)


def grad_b_features(upstream):
    """dl/db = sum_i dl/dd_i: shape (1,) (torch's bias gradient, ``grad_output.sum(0)``)."""
    return total(upstream).reshape(1)


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
    """Equations 1-3 forward and 6-11 backward on one batch, keeping every intermediate.

    D features (``x`` of shape (n, D), ``w`` (D,), ``b`` (1,)): ``a = X·w`` and ``c = X·w + b`` as
    torch rounds it (one rounding in 16 bits: ``a`` is then for the page only)."""
    features = np.ndim(w) > 0
    if features:
        a = _matvec(x, w)
        c = node_c_features(x, w, b)
    else:
        a = node_a(w, x)
        c = node_c(a, b)
    d = node_d(c, y)
    e = node_e(d)
    loss = node_l(e, n if _reduced(e) else scalar(n))  # 16 bits: n in float32 (node_l), not rounded
    up = dl_dd(d, n)
    if features:
        return StepResult(a, c, d, e, loss, up, grad_w_features(up, x), grad_b_features(up))
    return StepResult(a, c, d, e, loss, up, grad_w(up, x), grad_b(up))


def _count(x, n: int):
    """The batch size as the arrays compute with it: a scalar of their dtype (NumPy), else an int.

    (16-bit types divide in float32: :func:`node_l`.)"""
    dtype = getattr(x, "dtype", None)
    if isinstance(dtype, np.dtype) and dtype.itemsize == 2:
        return np.float32(n)
    return dtype.type(n) if isinstance(dtype, np.dtype) else n


def gradients(w, b, x, y):
    """The engine protocol's ``gradients`` part in the article's form: Equations 1-3 forward,
    6-11 backward, on one batch.

    Returns ``(loss, grad_w, grad_b)`` at the parameters (w, b) the batch starts from.
    """
    n = x.shape[0]
    # forward (Eq. 1-3): the nodes a, c, d, e, l
    d = node_d(node_c(node_a(w, x), b), y)
    loss = node_l(node_e(d), _count(x, n))
    # backward (Eq. 6-11): the shared factor (1/n)(2d), then each gradient
    up = dl_dd(d, n)
    return loss, grad_w(up, x), grad_b(up)


def gradients_features(params: dict, x, y):
    """The engine protocol's ``gradients`` part for every model: ``(loss, {"w": (D,), "b": (1,)})``
    on one batch, ``x`` of shape (n, D) and ``y`` (n,)."""
    w, b = params["w"], params["b"]
    n = x.shape[0]
    d = node_d(node_c_features(x, w, b), y)
    loss = node_l(node_e(d), _count(x, n))
    up = dl_dd(d, n)
    return loss, {"w": grad_w_features(up, x), "b": grad_b_features(up)}


def engine_gradients(model, config=None) -> Callable:
    """The hand side's ``gradients`` part: the article's four-argument form, or the dict form
    (``config``: the run's, for a model whose gradients depend on its loss or dtype; unused here)."""
    return gradients if model.scalar else gradients_features


# ------------------------------------------------------------------ the judge's terms (docs/tolerance.md)

#: samples per chunk when summing over batches (see :func:`_batch_sums`)
CHUNK_SAMPLES = 1 << 16


def residual_roundings(model, dtype: str, any_order: bool = False) -> float:
    """How many u of ``M_i`` bound the rounding of the residual ``d_i = w·x_i + b - y_i`` (the rho
    of docs/tolerance.md): 3 in the article's form (``w*x``, ``+ b``, ``- y``: one rounding each);
    on D features a dot product of D + 2 terms, ``gamma_{D+2}/u``, and in 16 bits (the dot
    product and the bias in float32, one rounding to the type, then ``- y``)
    ``gamma_{D+1}(u_f32)/u + 2``. ``any_order``: a user's engine, which may form the dot product in
    the run's own type (``gamma_{D+2}`` of its u, 16 bits too)."""
    if model.scalar:
        return 3
    D = model.param("w").shape[0]
    acc = dtypes.accumulation(dtype)
    u = dtypes.unit_roundoff(dtype)
    if acc != dtype and not any_order:
        return dtypes.gamma(D + 1, acc) / u + 2
    return dtypes.gamma(D + 2, dtype) / u


def user_side(config) -> bool:
    """Is a user's engine on the hand side (``--engine``, ``--engine-cmd``)? Its sums and dot
    products are judged as added in any order in the run's own type (:func:`sgdtrace.dtypes.sum_depth`)."""
    return getattr(config, "engine", None) is not None or getattr(config, "engine_cmd", None) is not None


def gradient_terms(model, starts, bounds, x, y, plan, config) -> dict[str, dict[str, np.ndarray]]:
    """The judge's terms of the loss and the gradients, per step (docs/tolerance.md).

    ``starts``: the hand side's parameters at each step's start (float64, ``(steps, *shape)``);
    ``bounds``: each parameter's :class:`sgdtrace.divergence._Bound` at the step's start (its
    largest magnitude ``mag`` in either engine, and ``carry``, hand minus torch); ``x`` (n, D) and
    ``y`` (n,) as both engines saw them (float64 values of the run's dtype).

    Returns ``{"E", "C", "peak", "both"}``, each a dict by field (``grad_w``, ``grad_b``,
    ``loss``): the rounding scale E (in units of u), the carried difference C, the bound on the
    intermediates' magnitude (the overflow rule) and where a sum can overflow either way.
    """
    u = dtypes.unit_roundoff(config.dtype)
    n = np.tile(plan.batch_sizes(), plan.epochs).astype(np.float64)
    depth = dtypes.sum_depth(n, config.dtype, any_order=user_side(config))
    # C is computed here in float64: its own error, in units of the run's u
    c64 = dtypes.unit_roundoff("float64") / u
    if model.scalar:
        return _article_terms(x, y, plan, starts, bounds, n, depth, c64, u, config.dtype)
    return _feature_terms(model, x, y, plan, starts, bounds, n, depth, c64, u, config)


def _article_terms(x, y, plan, starts, bounds, n, depth, c64, u, dtype):
    """The article's form (divergence's derivation with D = 1, rho = 3), in sums of x and x^2."""
    x = x.reshape(x.shape[0], -1)[:, 0] if x.ndim > 1 else x
    dw, db = bounds["w"].carry, bounds["b"].carry  # signed: manual minus torch, at the step's start
    s = _batch_sums(x, y, plan, starts["w"], starts["b"], bounds["w"].mag, bounds["b"].mag, dw, db, u)
    with np.errstate(over="ignore", invalid="ignore"):
        adw, adb = np.abs(dw), np.abs(db)
        E = {
            "grad_w": (2 / n)
            * (3 * s["xM"] + (3 + depth) * s["dx"] + c64 * (4 + depth) * (s["xx"] * adw + s["ax"] * adb)),
            "grad_b": (2 / n) * (3 * s["M"] + (2 + depth) * s["d"] + c64 * (4 + depth) * (s["ax"] * adw + n * adb)),
            "loss": (1 / n)
            * (6 * s["dM"] + (2 + depth) * s["dd"] + c64 * 6 * s["eM"] + c64 * (5 + depth) * (2 * s["de"] + s["ee"])),
        }
        carried = {
            "grad_w": (2 / n) * (s["xx"] * dw + s["x"] * db),
            "grad_b": (2 / n) * (s["x"] * dw + n * db),
            "loss": (1 / n)
            * (2 * s["sdx"] * dw + 2 * s["sd"] * db - (s["xx"] * dw * dw + 2 * s["x"] * dw * db + n * db * db)),
        }
        peak = {"grad_w": 2 * (s["M"] + s["xM"]), "grad_b": 2 * s["M"], "loss": s["M"] + s["M"] * s["M"]}
        big = float(dtypes.finfo(dtype).max)
        # a sum of terms of both signs can overflow either way in engines adding in different orders
        both = {
            "grad_w": ~(2 * s["pw"] < big) & ~(2 * s["nw"] < big),
            "grad_b": ~(2 * s["pb"] < big) & ~(2 * s["nb"] < big),
        }
    return {"E": E, "C": carried, "peak": peak, "both": both}


def _batch_sums(
    x: np.ndarray,
    y: np.ndarray,
    plan,
    w_start: np.ndarray,
    b_start: np.ndarray,
    w_mag: np.ndarray,
    b_mag: np.ndarray,
    dw: np.ndarray,
    db: np.ndarray,
    u: float,
) -> dict[str, np.ndarray]:
    """Per step, sums over the batch's samples (float64, vectorised over all steps of an epoch).

    ``sd`` is the manual engine's residual at its starting (w, b), ``e = x*dw + db`` what the
    measured differences make of it, so ``sd - e`` is torch's. ``d`` (the d-bar of the module's
    docstring) bounds |the residual either engine computed|: ``max(|sd|, |sd - e|) + 3u*M``.
    ``dp``, ``dn`` bound its positive and negative parts (the overflow rule's signs).
    ``M`` uses the largest |w|, |b| either engine started from.
    """
    spe = plan.steps_per_epoch
    sizes = plan.batch_sizes()
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    keys = ("x", "ax", "xx", "M", "xM", "d", "dx", "dd", "dM", "sd", "sdx", "eM", "de", "ee", "pb", "nb", "pw", "nw")
    out = {k: np.empty(plan.n_steps) for k in keys}
    # whole batches at a time, about CHUNK_SAMPLES samples per chunk: the per-sample temporaries
    # stay small on a ten-million-sample epoch, and each batch's sums are the same as in one go
    per_chunk = max(1, CHUNK_SAMPLES // max(1, plan.batch_size))
    for epoch in range(plan.epochs):
        order = plan.epoch_order(epoch)
        for j0 in range(0, spe, per_chunk):
            j1 = min(spe, j0 + per_chunk)
            lo = int(starts[j0])
            hi = lo + int(sizes[j0:j1].sum())
            idx = order[lo:hi]
            xe, ye = x[idx], y[idx]
            sl = slice(epoch * spe + j0, epoch * spe + j1)
            rep = sizes[j0:j1]
            ws, bs = np.repeat(w_start[sl], rep), np.repeat(b_start[sl], rep)
            wm, bm = np.repeat(w_mag[sl], rep), np.repeat(b_mag[sl], rep)
            ax = np.abs(xe)
            with np.errstate(over="ignore", invalid="ignore"):
                M = wm * ax + bm + np.abs(ye)
                sd = ws * xe + bs - ye
                e = xe * np.repeat(dw[sl], rep) + np.repeat(db[sl], rep)
                st = sd - e
                slack = 3 * u * M
                d = np.fmax(np.abs(sd), np.abs(st)) + slack
                # a nan residual (inf - inf) gives 0 here: it needs a non-finite w, b or x, and then
                # C is not finite and the step's values are held to nothing (see _distances)
                dp = np.fmax(np.fmax(sd, st) + slack, 0.0)
                dn = np.fmax(np.fmax(-sd, -st) + slack, 0.0)
                pos = xe >= 0
                per_sample = {
                    "x": xe,
                    "ax": ax,
                    "xx": xe * xe,
                    "M": M,
                    "xM": ax * M,
                    "d": d,
                    "dx": d * ax,
                    "dd": d * d,
                    "dM": d * M,
                    "sd": sd,
                    "sdx": sd * xe,
                    "eM": np.abs(e) * M,
                    "de": d * np.abs(e),
                    "ee": e * e,
                    "pb": dp,
                    "nb": dn,
                    "pw": dp + np.where(pos, dp, dn) * ax,
                    "nw": dn + np.where(pos, dn, dp) * ax,
                }
                for k in keys:
                    out[k][sl] = np.add.reduceat(per_sample[k], starts[j0:j1] - lo)
    return out


def _feature_terms(model, x, y, plan, starts, bounds, n, depth, c64, u, config):
    """D features (docs/tolerance.md, "D features"): the article's derivation with the residual a
    dot product (rho u M_i, :func:`residual_roundings`) and, per element j, ``x_ij`` in place of
    ``x_i``; C from the carried differences ``e_i = x_i·dw + db``, exact (the step is quadratic
    in the state)."""
    D = model.param("w").shape[0]
    rho = residual_roundings(model, config.dtype, any_order=user_side(config))
    dw, db = bounds["w"].carry, bounds["b"].carry[:, 0]  # (steps, D), (steps,)
    s = _feature_sums(
        x, y, plan, starts["w"], starts["b"][:, 0], bounds["w"].mag, bounds["b"].mag[:, 0], dw, db, u * rho
    )
    nd = n[:, None]
    dep = depth[:, None]
    with np.errstate(over="ignore", invalid="ignore"):
        E = {
            "grad_w": (2 / nd) * (rho * s["xM"] + (3 + dep) * s["dx"] + c64 * (D + 3 + dep) * s["xae"]),
            "grad_b": ((2 / n) * (rho * s["M"] + (2 + depth) * s["d"] + c64 * (D + 3 + depth) * s["ae"]))[:, None],
            "loss": (1 / n)
            * (
                2 * rho * s["dM"]
                + (2 + depth) * s["dd"]
                + c64 * 2 * (D + 2) * s["eM"]
                + c64 * (D + 4 + depth) * (2 * s["de"] + s["ee"])
            ),
        }
        carried = {
            "grad_w": (2 / nd) * s["xe"],
            "grad_b": ((2 / n) * s["e"])[:, None],
            "loss": (1 / n) * (2 * s["sde"] - s["ee_signed"]),
        }
        peak = {
            "grad_w": 2 * (s["M"][:, None] + s["xM"]),
            "grad_b": (2 * s["M"])[:, None],
            "loss": s["M"] + s["M"] ** 2,
        }
        big = float(dtypes.finfo(config.dtype).max)
        both = {
            "grad_w": ~(2 * s["pw"] < big) & ~(2 * s["nw"] < big),
            "grad_b": (~(2 * s["pb"] < big) & ~(2 * s["nb"] < big))[:, None],
        }
    return {"E": E, "C": carried, "peak": peak, "both": both}


def _feature_sums(x, y, plan, w_start, b_start, w_mag, b_mag, dw, db, slack_u):
    """Per step, the batch's sums for D features: (steps,) for the per-sample quantities,
    (steps, D) for those of each feature. ``slack_u`` is rho*u (the residual's rounding per M)."""
    spe = plan.steps_per_epoch
    sizes = plan.batch_sizes()
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    D = x.shape[1]
    scalar_keys = ("M", "d", "dd", "dM", "e", "ae", "sde", "eM", "de", "ee", "ee_signed", "pb", "nb")
    vector_keys = ("xM", "dx", "xe", "xae", "pw", "nw")
    out = {k: np.empty(plan.n_steps) for k in scalar_keys}
    out.update({k: np.empty((plan.n_steps, D)) for k in vector_keys})
    per_chunk = max(1, CHUNK_SAMPLES // max(1, plan.batch_size * D))
    for epoch in range(plan.epochs):
        order = plan.epoch_order(epoch)
        for j0 in range(0, spe, per_chunk):
            j1 = min(spe, j0 + per_chunk)
            lo = int(starts[j0])
            hi = lo + int(sizes[j0:j1].sum())
            idx = order[lo:hi]
            xe, ye = x[idx], y[idx]
            sl = slice(epoch * spe + j0, epoch * spe + j1)
            rep = sizes[j0:j1]
            ws, bs = np.repeat(w_start[sl], rep, axis=0), np.repeat(b_start[sl], rep)
            wm, bm = np.repeat(w_mag[sl], rep, axis=0), np.repeat(b_mag[sl], rep)
            dws, dbs = np.repeat(dw[sl], rep, axis=0), np.repeat(db[sl], rep)
            ax = np.abs(xe)
            with np.errstate(over="ignore", invalid="ignore"):
                M = (wm * ax).sum(axis=1) + bm + np.abs(ye)
                sd = (ws * xe).sum(axis=1) + bs - ye  # the hand side's residual, exactly (to float64)
                e = (xe * dws).sum(axis=1) + dbs  # what the carried differences make of it
                ae = (ax * np.abs(dws)).sum(axis=1) + np.abs(dbs)  # |e| bounded term by term
                st = sd - e  # torch's residual
                slack = slack_u * M
                d = np.fmax(np.abs(sd), np.abs(st)) + slack
                dp = np.fmax(np.fmax(sd, st) + slack, 0.0)
                dn = np.fmax(np.fmax(-sd, -st) + slack, 0.0)
                pos = xe >= 0
                per_sample = {
                    "M": M,
                    "d": d,
                    "dd": d * d,
                    "dM": d * M,
                    "e": e,
                    "ae": ae,
                    "sde": sd * e,
                    "eM": ae * M,
                    "de": d * ae,
                    "ee": ae * ae,
                    "ee_signed": e * e,
                    "pb": dp,
                    "nb": dn,
                    "xM": ax * M[:, None],
                    "dx": ax * d[:, None],
                    "xe": xe * e[:, None],
                    "xae": ax * ae[:, None],
                    "pw": dp[:, None] + np.where(pos, dp[:, None], dn[:, None]) * ax,
                    "nw": dn[:, None] + np.where(pos, dn[:, None], dp[:, None]) * ax,
                }
                for k, v in per_sample.items():
                    out[k][sl] = np.add.reduceat(v, starts[j0:j1] - lo, axis=0)
    return out


# ------------------------------------------------------------------ the blow-up analysis (sgdtrace.blowup)


def batch_hessians(model, x: np.ndarray, plan, dtype: str, epochs: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per batch, the Hessian of the batch loss without weight decay: ``n`` (K,) and ``H`` (E, K,
    m, m), m = D + 1, in float64 from x rounded to the run's dtype. The loss is quadratic in
    (w, b), so ``H = (2/n) [[XᵀX, Xᵀ1], [1ᵀX, n]]`` is exact (and the same at every point)."""
    xr = dtypes.cast(x, dtype).astype(np.float64)
    xr = xr.reshape(xr.shape[0], -1)
    D = xr.shape[1]
    sizes = plan.batch_sizes()
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    n_used = int(sizes.sum())
    H = np.empty((len(epochs), sizes.size, D + 1, D + 1))
    n = sizes.astype(np.float64)
    full = int(np.sum(sizes == plan.batch_size))  # the whole batches come first; then a partial one
    B = plan.batch_size
    for row, e in enumerate(epochs):
        xe = xr[plan.epoch_order(e)[:n_used]]
        aug = np.concatenate((xe, np.ones((xe.shape[0], 1))), axis=1)
        # per batch [x 1]ᵀ[x 1] as one matrix product per batch (no (n, m, m) temporary)
        whole = aug[: full * B].reshape(full, B, D + 1)
        gram = np.empty((sizes.size, D + 1, D + 1))
        gram[:full] = np.matmul(whole.transpose(0, 2, 1), whole)
        if full < sizes.size:
            rest = aug[int(starts[full]) :]
            gram[full] = rest.T @ rest
        H[row] = 2 * gram / n[:, None, None]
    return n, H


def full_loss(dataset, w: float, b: float) -> float:
    """The mean squared error over the whole data set at the article's (w, b), in float64."""
    x = dataset.x[:, 0]  # (n, 1): the article's one column
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.mean((w * x + b - dataset.y) ** 2))


def loss_path(dataset, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The whole-data loss in float64 at each of the article's (w, b), from centred sums (O(1) per point)::

    L = (w^2 Sxx - 2 w Sxy + Syy) / n + (w mean(x) + b - mean(y))^2   (S.. about the means)
    """
    x, y = dataset.x[:, 0], dataset.y  # float64 (Dataset), x (n, 1): the article's one column
    xm, ym = x.mean(), y.mean()
    xc, yc = x - xm, y - ym
    sxx, sxy, syy = (xc * xc).mean(), (xc * yc).mean(), (yc * yc).mean()
    w, b = np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.maximum(w * w * sxx - 2 * w * sxy + syy, 0.0) + (w * xm + b - ym) ** 2


def data_loss(model, dataset, values: dict[str, np.ndarray]):
    """The mean squared error over the whole data set, in float64, at the parameters ``values``:
    one value per parameter (a float), or a path (one row per point: an array)."""
    w = np.asarray(values["w"], dtype=np.float64)
    b = np.asarray(values["b"], dtype=np.float64)
    shape = model.param("w").shape
    if w.ndim == len(shape):  # one point
        if model.scalar:
            return full_loss(dataset, float(w), float(b))
        with np.errstate(over="ignore", invalid="ignore"):
            return float(np.mean((dataset.x @ w + b[0] - dataset.y) ** 2))
    if model.scalar:
        return loss_path(dataset, w, b)
    x = dataset.x  # float64 (Dataset)
    # sum_i (x_i·w + b - y_i)^2 from the data's second moments: O(D^2) per point
    aug = np.concatenate((x, np.ones((x.shape[0], 1)), -dataset.y[:, None]), axis=1)
    gram = aug.T @ aug / x.shape[0]
    v = np.concatenate((w, b, np.ones((w.shape[0], 1))), axis=1)
    return np.maximum(np.einsum("pi,ij,pj->p", v, gram, v), 0.0)  # (einsum and matmul never warn)


# ------------------------------------------------------------------ what the views show


#: how tables label each field: the article's notation (a field not named here is its own label)
LABELS = {"grad_w": "dl/dw", "grad_b": "dl/db", "loss": "loss", "w": "w", "b": "b"}


def equation(model) -> str:
    """The model's forward equation, as titles write it."""
    return "ypred = w·x + b"


def describe(model) -> str:
    """One line: the model, its parameters' shapes and the torch side."""
    if model.scalar:
        return "the article's line ypred = w·x + b (w, b scalars; torch: x * weight + bias on 1-D x)"
    D = model.param("w").shape[0]
    return f"ypred = w·x + b on {D} feature{'s' if D != 1 else ''} (w ({D},), b (1,); torch: nn.Linear({D}, 1))"
