"""Blow-ups: did training blow up, where, why, and which learning rate would not.

For ``ypred = w*x + b`` with the mean squared error, every update torch.optim.SGD makes is
AFFINE in the state: ``s' = M s + c`` with ``s = (w, b)`` (plain SGD) or
``s = (w, b, buf_w, buf_b)`` (momentum). Batch k's loss has the Hessian
``H_k = (2/n) [[sum x^2, sum x], [sum x, n]]`` (+ ``weight_decay * I``), and with
``d = 1 - dampening``, ``mu = momentum``::

    plain SGD   M = I - lr H
    heavy ball  M = [[I - lr d H, -lr mu I], [d H, mu I]]          (buf' = mu buf + d g; p' = p - lr buf')
    Nesterov    M = [[I - lr (1 + mu d) H, -lr mu^2 I], [d H, mu I]] (p' = p - lr (g + mu buf'))

So the linear analysis is exact, not an approximation: a run blows up exactly when the
product of one epoch's matrices, ``P = M_K ... M_1``, has spectral radius above 1.

One batch alone, per eigenvalue lambda of H (``s = lr lambda``), the 2x2 recurrence has the
characteristic polynomial ``z^2 + p z + q``; it is stable iff ``|q| < 1`` and ``|p| < 1 + q``:

* heavy ball: ``z^2 - (1 + mu - d s) z + mu``: stable iff ``mu < 1`` and ``0 < d s < 2 (1 + mu)``,
  so ``lr < 2 (1 + mu) / (d lambda_max)``;
* Nesterov: ``z^2 - (1 + mu - s (1 + mu d)) z + mu (1 - s)``: ``1 - p + q > 0`` gives
  ``s < 2 (1 + mu) / (1 + (2 - tau) mu)``, and ``|q| < 1`` (``s < 1 + 1/mu``) is weaker whenever
  ``mu tau < 1``; torch forbids dampening with Nesterov, so ``lr < 2 (1 + mu) / ((1 + 2 mu) lambda_max)``;
* plain SGD: ``lr < 2 / lambda_max``.

A CYCLE of batches can be unstable although each batch alone is stable (the matrices do not
commute), which is why :func:`epoch_log_radius` multiplies them out, in float64.

The same holds for every model whose loss is quadratic in its parameters, with the model's batch
Hessians in place of the 2x2 ones (:func:`sgdtrace.models.linear.batch_hessians`: on D features
``H_k = (2/n) [[XᵀX, Xᵀ1], [1ᵀX, n]]``, (D + 1) x (D + 1), exact): ``I`` and ``H`` are then
(D + 1)-square blocks, and ``lambda_max`` is the largest eigenvalue of ``H_k``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from sgdtrace import data as data_mod
from sgdtrace import dtypes
from sgdtrace.config import Config
from sgdtrace.verdict import BlowUp, OneSidedBlowUp, json_number

#: a finite run counts as blown up when the loss over the whole data set ends this many times
#: above where it started AND the epoch's update product is unstable (spectral radius > 1)
GROWTH = 10.0
#: spectral radius above 1 + this counts as unstable (the null direction of a singular Hessian
#: has an eigenvalue of exactly 1, which float64 products put within ~1e-15 of it)
RADIUS_SLACK = 1e-9
#: the hint's rate is rounded down from this share of the largest stable rate
HINT_SHARE = 0.9


# ------------------------------------------------------------------ one batch alone


def batch_limit(lam: np.ndarray | float, cfg: Config) -> np.ndarray | float:
    """The largest stable rate for a batch whose Hessian's top eigenvalue is ``lam`` (module docstring)."""
    mu, tau = cfg.momentum, cfg.dampening
    if mu == 0:
        return 2 / lam
    if cfg.nesterov:
        return 2 * (1 + mu) / ((1 + (2 - tau) * mu) * lam)
    return 2 * (1 + mu) / (max(1 - tau, 1e-300) * lam)


def stable_lr(x: np.ndarray, plan: data_mod.BatchPlan, cfg: Config, model=None) -> np.ndarray:
    """Per step, the largest learning rate for which the update on that batch alone does not amplify.

    ``2 / lambda_max`` of the batch loss's Hessian (+ weight_decay); with momentum
    ``2 (1 + mu) / ((1 - tau) lambda_max)``, with Nesterov ``2 (1 + mu) / ((1 + 2 mu) lambda_max)``
    (derived in the module docstring). Maximize climbs the loss: no rate is stable (0).
    ``model``: where not the article's form, its batch Hessians (``lambda_max`` by ``eigvalsh``).
    """
    if cfg.maximize:
        return np.zeros(plan.n_steps)
    if model is not None and not hasattr(model.module, "batch_hessians"):
        return np.full(plan.n_steps, np.nan)  # a loss that is not quadratic: no single rate bounds it
    sums = batch_sums(x, plan, cfg, model=model)
    if len(sums) == 3:  # the article's 2x2 Hessian: its largest eigenvalue in closed form
        n, sx, sxx = sums
        lam = (sxx + n + np.sqrt((sxx - n) ** 2 + 4 * sx * sx)) / n + cfg.weight_decay
    else:
        _, H = sums
        with np.errstate(invalid="ignore", over="ignore"):
            finite = np.isfinite(H).all(axis=(-2, -1))
            lam = np.full(H.shape[:2], np.inf)
            if finite.any():
                lam[finite] = np.linalg.eigvalsh(H[finite])[..., -1]
        lam = lam + cfg.weight_decay
    out = batch_limit(lam, cfg)
    return np.broadcast_to(out, (plan.epochs, plan.steps_per_epoch)).reshape(-1).copy()


def batch_sums(
    x: np.ndarray, plan: data_mod.BatchPlan, cfg: Config, epochs: list[int] | None = None, model=None
) -> tuple[np.ndarray, ...]:
    """Per batch: n (K,), sum x and sum x^2 (E, K), in float64 from x rounded to the run's dtype.

    One row per epoch in ``epochs`` (all by default); a run without shuffle has one row only,
    since every epoch has the same batches. A ``model`` not in the article's form gives its batch
    Hessians instead: ``(n, H)``, H of shape (E, K, m, m) (:func:`sgdtrace.models.linear.batch_hessians`).
    """
    if epochs is None:
        epochs = list(range(plan.epochs)) if any(o is not None for o in plan.orders) else [0]
    if model is not None and not model.scalar:
        return model.module.batch_hessians(model, x, plan, cfg.dtype, epochs)
    xr = dtypes.cast(np.asarray(x), cfg.dtype).astype(np.float64).reshape(-1)
    sizes = plan.batch_sizes()
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    n_used = int(sizes.sum())
    sx = np.empty((len(epochs), sizes.size))
    sxx = np.empty_like(sx)
    for row, e in enumerate(epochs):
        xe = xr[plan.epoch_order(e)[:n_used]]
        sx[row], sxx[row] = np.add.reduceat(xe, starts), np.add.reduceat(xe * xe, starts)
    return sizes.astype(np.float64), sx, sxx


# ------------------------------------------------------------------ one epoch: the product


def epoch_log_radius(sums: tuple[np.ndarray, ...], lrs: np.ndarray, cfg: Config, chunk: int = 256) -> np.ndarray:
    """log of the spectral radius of one epoch's update product, per epoch row and learning rate.

    ``sums`` from :func:`batch_sums` (E rows): the article's ``(n, sum x, sum x^2)``, or a model's
    ``(n, H)``; ``lrs`` (G,). Returns (E, G). The product is renormalised after every batch (its
    scale kept as a log), so it neither overflows nor underflows however many batches an epoch has.
    """
    n, H = hessians(sums)
    lrs = np.asarray(lrs, dtype=np.float64)
    out = np.empty((H.shape[0], lrs.size))
    chunk = max(1, chunk * 4 // H.shape[-1] ** 2)  # the products' memory: (chunk, G, 2m, 2m)
    for lo in range(0, H.shape[0], chunk):
        out[lo : lo + chunk] = _log_radius(n, H[lo : lo + chunk], lrs, cfg)
    return out


def hessians(sums: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(n, H)``: the batch Hessians (E, K, m, m) without weight decay; from the article's sums
    ``H = (2/n) [[sum x^2, sum x], [sum x, n]]``."""
    if len(sums) == 2:
        return sums
    n, sx, sxx = sums
    gram = np.empty(sx.shape + (2, 2))
    gram[..., 0, 0], gram[..., 0, 1], gram[..., 1, 0], gram[..., 1, 1] = sxx, sx, sx, n
    return n, 2 * gram / n[:, None, None]


def _log_radius(n, H, lrs, cfg: Config) -> np.ndarray:
    mu, d, wd = cfg.momentum, 1 - cfg.dampening, cfg.weight_decay
    E, K, m = H.shape[0], H.shape[1], H.shape[-1]
    lr = lrs[None, :, None, None]  # (1, G, 1, 1)
    eye = np.eye(m)
    dim = m if mu == 0 else 2 * m
    P = np.broadcast_to(np.eye(dim), (E, lrs.size, dim, dim)).copy()
    log_scale = np.zeros((E, lrs.size))
    alpha, beta = (1.0, 0.0) if mu == 0 else ((1 + mu * d, mu * mu) if cfg.nesterov else (d, mu))
    M = np.zeros_like(P)
    for k in range(K):
        h = (H[:, k] + wd * eye)[:, None]  # (E, 1, m, m): the batch's Hessian with weight decay
        M[..., :m, :m] = eye - lr * alpha * h
        if dim > m:
            M[..., :m, m:] = -lr * beta * eye
            M[..., m:, :m] = d * h
            M[..., m:, m:] = mu * eye
        P = M @ P
        scale = np.abs(P).max(axis=(-2, -1))
        scale[~(scale > 0) | ~np.isfinite(scale)] = 1.0
        P /= scale[..., None, None]
        log_scale += np.log(scale)
    ok = np.isfinite(P).all(axis=(-2, -1))  # a rate so large that the entries overflowed: unstable
    radius = np.full(ok.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if ok.any():
            radius[ok] = np.abs(np.linalg.eigvals(P[ok])).max(axis=-1)
        return np.where(ok, log_scale + np.log(radius), np.inf)


def unstable(log_radius: np.ndarray) -> np.ndarray:
    return log_radius > math.log1p(RADIUS_SLACK)


def largest_stable_lr(sums, cfg: Config, reference: float) -> float:
    """The largest rate below which one epoch's update product (first row of ``sums``) is stable.

    Scanned upward from far below ``reference`` (a single batch's limit): 100 rates a decade from
    1e-4 to 1e3 times it, since with momentum instability can come in narrow bands below stable
    rates; then the bracket around the first unstable rate refined twice (to 2.3e-5 relative).
    ``0.0`` when no rate is stable (momentum >= 1), ``inf`` when every rate scanned is.
    """
    one = _row(sums, 0)
    reference = min(max(reference, 1e-200), 1e200)  # dampening 1 makes a single batch's limit infinite
    grid = reference * np.geomspace(1e-4, 1e3, 701)
    for _ in range(3):
        bad = unstable(epoch_log_radius(one, grid, cfg)[0])
        if not bad.any():
            return math.inf
        i = int(np.argmax(bad))
        if i == 0:
            return 0.0
        grid = np.linspace(grid[i - 1], grid[i], 33)
    return float(grid[int(np.argmax(unstable(epoch_log_radius(one, grid, cfg)[0]))) - 1])


def _row(sums: tuple[np.ndarray, ...], row: int) -> tuple[np.ndarray, ...]:
    """One epoch row of :func:`batch_sums` (the batch sizes are the same for every row)."""
    return (sums[0],) + tuple(a[row : row + 1] for a in sums[1:])


def _batches(sums: tuple[np.ndarray, ...]) -> int:
    """The batches per epoch of :func:`batch_sums`."""
    return int(sums[0].shape[0])


# ------------------------------------------------------------------ the loss over the data


# the article's whole-data loss (single values, and along a path) is the linear model's
from sgdtrace.models.linear import full_loss, loss_path  # noqa: E402, F401

# ------------------------------------------------------------------ the diagnosis


def diagnose(
    cfg: Config,
    dataset: data_mod.Dataset,
    man: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    epoch: np.ndarray,
    batch: np.ndarray,
    stable: np.ndarray | Callable[[], np.ndarray],
    plan: data_mod.BatchPlan | None = None,
    model=None,
) -> BlowUp | None:
    """Did training blow up? ``None``, or where it first went wrong, why, and a hint.

    A :class:`~sgdtrace.verdict.BlowUp` record (its ``to_json``: the verdict's ``diverged_training``).
    Blown up means either:

    * a value went non-finite (inf or nan) in either engine: marked at the first such step; or
    * the loss over the whole data set (float64, from the hand engine's w and b) ended more than
      ``GROWTH`` times above where it started, AND one epoch's update product is unstable at
      this rate (spectral radius > 1; with --maximize, always): marked at the step that left the
      lowest loss of the run behind (from there on it never came back that low).

    A run whose loss rose and would come down again (an overshoot: every epoch's product is
    stable) is not a blow-up, however high it went.

    ``stable``: each step's largest stable rate (:func:`stable_lr`), or a function that computes
    it, called only where a blow-up is found.
    """
    steps = epoch.shape[0]
    if steps == 0:
        return None
    if plan is None:
        plan = data_mod.plan(len(dataset), cfg)
    if model is None:
        from sgdtrace import models

        model = models.build(cfg, dataset.features)
    initial = model.module.initial(cfg, model)
    sides = [_nonfinite(cols, steps) for cols in (man, ref)]
    # a value that went non-finite on one side only is a divergence between the sides, not a
    # blow-up of the training (:func:`one_sided`)
    nonfinite = (sides[0] | sides[1]) if sides[0].any() and sides[1].any() else np.zeros(steps, dtype=bool)
    data_loss = model.module.data_loss
    start_loss = float(data_loss(model, dataset, initial))
    end_loss = float(data_loss(model, dataset, {p: man[p][-1].astype(np.float64) for p in model.names}))
    if not nonfinite.any() and not end_loss > GROWTH * start_loss:
        return None
    quadratic = hasattr(model.module, "batch_hessians")
    if (cfg.optimizer != "sgd" or not quadratic) and not nonfinite.any():
        return None  # the stability analysis below is SGD's on a quadratic loss; else a blow-up is inf or nan
    # from here on a blow-up is likely: the epoch products at this rate (one per shuffled order)
    sums = None if cfg.maximize or not quadratic else batch_sums(dataset.x, plan, cfg, model=model)
    radius = None if sums is None else epoch_log_radius(sums, np.array([cfg.lr]), cfg)[:, 0]
    if nonfinite.any():
        k = int(np.flatnonzero(nonfinite)[0])
        went = []
        for who, cols in (("by hand", man), ("in torch", ref)):
            bad = [_nonfinite_value(f, v[k]) for f, v in cols.items() if not np.isfinite(v[k]).all()]
            if bad:
                went.append(", ".join(bad) + " " + who)
        reason = "a value became inf or nan: " + "; ".join(went)
        if len(went) == 1:  # the other side went later
            later = int(np.flatnonzero(sides[1] if sides[0][k] else sides[0])[0])
            reason += f" ({'torch' if sides[0][k] else 'by hand'} from step {later + 1} on)"
        cause = nan_cause(cfg, man if sides[0][k] else ref, k)
        if cause is not None:
            reason += "; " + cause[0]
    else:
        if not (cfg.maximize or unstable(radius).any()):
            return None  # an overshoot that every epoch's product pulls back: not a blow-up
        path = data_loss(
            model, dataset, {p: np.concatenate((initial[p][None], man[p].astype(np.float64))) for p in model.names}
        )
        k = int(np.argmin(path))  # the lowest point (index 0: the start); step k + 1 is where the rise began
        reason = (
            f"the loss over the whole data set grew from {start_loss:.6g} to {end_loss:.6g}; it was lowest, "
            f"{path[k]:.6g}, just before this step"
        )
    e = int(epoch[k]) - 1
    row = e if radius is not None and radius.size > 1 else 0
    if cfg.maximize:
        why = {
            "hint": "--maximize climbs the loss: gradient ascent on a convex loss grows without bound",
            "stable_lr": None,
            "stable_lr_batch": None,
            "stable_lr_epoch": None,
            "radius": None,
            "lr_hint": None,
        }
    elif cfg.optimizer != "sgd" or not quadratic:  # the stability analysis is SGD's, on a quadratic loss
        cause = nan_cause(cfg, man if sides[0][k] else ref, k) if nonfinite.any() else None
        why = {
            "hint": cause[1]
            if cause is not None
            else f"the values left the range of {cfg.dtype} under {cfg.optimizer}: try a smaller --lr, "
            "or check the data's scale and the initial w, b",
            "stable_lr": None,
            "stable_lr_batch": None,
            "stable_lr_epoch": None,
            "radius": None,
            "lr_hint": None,
        }
    else:
        stable = stable() if callable(stable) else stable  # computed where a blow-up needs it
        why = _explain(cfg, plan, sums, radius, row, stable, k, bool(nonfinite.any()))
    return BlowUp(int(epoch[k]), int(batch[k]), k + 1, reason, loss_start=start_loss, loss_end=end_loss, **why)


def _nonfinite_value(field: str, value: np.ndarray) -> str:
    """``w = inf``, or for an array the first element that is not finite: ``w[2] = nan``."""
    if np.ndim(value) == 0:
        return f"{field} = {json_number(value)}"
    i = np.unravel_index(int(np.flatnonzero(~np.isfinite(value))[0]), np.shape(value))
    return f"{field}[{','.join(map(str, i))}] = {json_number(value[i])}"


def _nonfinite(cols: dict[str, np.ndarray], steps: int) -> np.ndarray:
    """Per step: did any of one side's values (any element) go inf or nan?"""
    out = np.zeros(steps, dtype=bool)
    for values in cols.values():
        out |= ~np.isfinite(values).reshape(steps, -1).all(axis=1)
    return out


def one_sided(
    cfg: Config,
    man: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    epoch: np.ndarray,
    batch: np.ndarray,
    div: dict[str, Any],
) -> OneSidedBlowUp | None:
    """A value that became inf or nan on one side only, over the whole run: where, which side, why.

    Not a blow-up of the training (the other side trains on): a divergence between the sides,
    which the judge fails, except where both are within rounding of the type's largest value
    (``allowed``: engines that round differently may overflow a step apart; docs/tolerance.md).
    ``div``: the judged fields (:func:`sgdtrace.divergence.compare_columns`).
    """
    steps = epoch.shape[0]
    hand, torch = _nonfinite(man, steps), _nonfinite(ref, steps)
    if hand.any() == torch.any():
        return None
    side, cols = ("hand", man) if hand.any() else ("torch", ref)
    k = int(np.flatnonzero(hand if hand.any() else torch)[0])
    bad = [f for f, v in cols.items() if not np.isfinite(v[k]).all()]
    values = ", ".join(_nonfinite_value(f, cols[f][k]) for f in bad)
    allowed = all(bool(np.all(div[f].ok[k])) for f in bad if f in div)
    cause = nan_cause(cfg, cols, k)
    return OneSidedBlowUp(
        int(epoch[k]), int(batch[k]), k + 1, side, values, None if cause is None else cause[0], allowed
    )


def nan_cause(cfg: Config, cols: dict[str, np.ndarray], k: int) -> tuple[str, str] | None:
    """Why a parameter became inf or nan at step ``k`` (0-based) in one side's columns, where the
    optimizer's own arithmetic in 16 bits explains it: ``(reason, hint)``, or None.

    * ``eps`` rounds to 0 in the type (float16: 1e-8 and 1e-10 do) and the square root the step
      divides by is 0 (a gradient that has been 0, or whose square underflowed): ``0/(0 + 0)`` is
      nan, anything else over 0 infinite, on both sides alike.
      torch's fused kernels (Adam, AdamW, Adagrad) keep eps in float32 and do not.
    * centered RMSprop: ``square_avg - grad_avg**2`` rounds below 0 (two nearly equal numbers in
      8 or 11 bits), and its square root is nan.
    """
    if cfg.optimizer == "sgd" or cfg.dtype not in dtypes.REDUCED:
        return None
    from sgdtrace.engines.optimizers import _fused

    nd = dtypes.np_dtype(cfg.dtype).type
    eps = float(dtypes.cast(np.array([cfg.eps]), cfg.dtype)[0])
    from sgdtrace.engines.optimizers import registry

    root = registry.spec(cfg.optimizer).sqrt_of  # the state whose square root divides the step
    if cfg.optimizer in ("adam", "adamw") and cfg.amsgrad:
        root = "max_exp_avg_sq"
    for p in (f for f in cols if "grad_" + f in cols):  # the model's parameters
        value = np.asarray(cols[p][k])
        bad = np.flatnonzero(~np.isfinite(value.reshape(-1)))
        if not bad.size:
            continue
        i = np.unravel_index(int(bad[0]), value.shape)  # () for a scalar parameter
        at = "" if value.ndim == 0 else f"[{','.join(map(str, i))}]"  # the element, for a shaped one
        centered = cfg.optimizer == "rmsprop" and cfg.centered
        needed = (f"square_avg_{p}", f"grad_avg_{p}") if centered else (f"{root}_{p}",)
        if any(f not in cols for f in needed):  # a user's update keeps it under a name of its own: not seen
            continue
        if centered:
            v = np.float32(np.asarray(cols[f"square_avg_{p}"][k])[i])
            ga = np.float32(np.asarray(cols[f"grad_avg_{p}"][k])[i])
            arg = float(nd(v - ga * ga))  # square_avg.addcmul(grad_avg, grad_avg, value=-1): one rounding
            if arg < 0 and np.isnan(value[i]):
                diff = f"{float(v):g} − {_squared(float(ga))}"
                return (
                    f"the centered variance square_avg_{p}{at} − grad_avg_{p}{at}² = {diff} rounds to {arg:g} in "
                    f"{cfg.dtype}, below 0 (two nearly equal numbers), and its square root is nan",
                    f"a rounding of {cfg.dtype}, not the learning rate: centered RMSprop subtracts two nearly "
                    f"equal numbers here; use --dtype float32, or leave out --centered",
                )
            zero = arg == 0
        else:
            zero = float(np.asarray(cols[f"{root}_{p}"][k])[i]) == 0
        if zero and eps == 0 and _fused.form(cfg) is None:
            smallest = float(dtypes.finfo(cfg.dtype).smallest_subnormal)
            fused = (
                ", or torch's fused kernel (--fused), which keeps eps in float32" if cfg.optimizer != "rmsprop" else ""
            )
            step = "0/(0 + 0) = nan" if np.isnan(value[i]) else "a division by 0 + 0"
            return (
                f"eps = {cfg.eps:g} rounds to 0 in {cfg.dtype} and {root}_{p}{at} is 0 ({p}{at}'s gradient has been "
                f"0, or its square underflowed), so the step is {step}, by hand and in torch alike",
                f"{cfg.dtype} holds no eps this small: set --eps to at least {smallest:.3g}, its smallest value{fused}",
            )
    return None


def _squared(v: float) -> str:
    return f"({v:g})²" if v < 0 else f"{v:g}²"


def _explain(
    cfg: Config, plan, sums, radius: np.ndarray, row: int, stable: np.ndarray, k: int, first_nonfinite: bool
) -> dict[str, Any]:
    """The hint and the limits behind it, for a run that is not --maximize."""
    single = float(stable.min())
    epoch_sums = _row(sums, row)
    batches = _batches(sums)
    limit = largest_stable_lr(epoch_sums, cfg, single)
    log_r = float(radius[row])
    per_epoch = math.exp(log_r) if log_r < 700 else math.inf
    with_mu = (
        ""
        if cfg.momentum == 0
        else (f" with Nesterov momentum {cfg.momentum:g}" if cfg.nesterov else f" with momentum {cfg.momentum:g}")
    )
    lr_hint = None
    at_once = k == 0 and first_nonfinite  # before any update could amplify anything
    if at_once:
        hint = (
            f"the values left the range of {cfg.dtype} at the very first step, before the learning rate "
            f"could matter: check the data's scale and the initial w, b"
        )
        if unstable(radius).any() and limit > 0:
            lr_hint = _hint_rate(cfg, sums, limit)
            hint += (
                f"; lr {cfg.lr:g} is too large as well (the largest stable rate is {_sig(limit)}): "
                f"try --lr {_fmt(lr_hint)}"
            )
    elif not unstable(radius).any():
        hint = (
            f"lr {cfg.lr:g}{with_mu} is stable over every epoch's batches (the largest stable rate is "
            f"{_sig(limit)}), yet the values left the range of {cfg.dtype}: check the data's scale and the "
            f"initial w, b"
        )
    elif limit == 0.0:
        hint = (
            f"no learning rate is stable{with_mu}: a momentum of 1 or more never lets the buffer decay; "
            f"use --momentum below 1 (0.9 is usual)"
        )
    else:
        lr_hint = _hint_rate(cfg, sums, limit)
        scope = "over one epoch's sequence of batches" if batches > 1 else "on this data"
        alone = ""
        if batches > 1 and limit < single * 0.999:
            alone = f" (each batch alone is stable up to {_sig(single)}: the cycle of batches is not)"
        elif batches > 1 and limit > single * 1.001:
            alone = f" (above {_sig(single)} some batch alone is not stable, but the cycle of batches is)"
        hint = (
            f"lr {cfg.lr:g}{with_mu} is above the largest stable rate {scope}, {_sig(limit)}{alone}; "
            f"at lr {cfg.lr:g} one epoch multiplies the distance to the solution by up to {_times(log_r)}; "
            f"try --lr {_fmt(lr_hint)}"
        )
    if cfg.dtype == "float16" and (at_once or not unstable(radius).any()):  # float16's range ends at 65504
        hint += "; float16 holds values only up to 65504: scale the data down, or use --dtype bfloat16"
    return {
        "hint": hint,
        "stable_lr": single,
        "stable_lr_batch": float(stable[k]),
        "stable_lr_epoch": None if not math.isfinite(limit) else limit,
        "radius": per_epoch,
        "lr_hint": lr_hint,
    }


def _hint_rate(cfg: Config, sums, limit: float) -> float:
    """A round rate (one significant digit) below ``HINT_SHARE * limit`` at which EVERY epoch's
    product is stable (a shuffled run's other epochs may be less stable than the blown one)."""
    rate = round_down(HINT_SHARE * limit)
    for _ in range(40):
        if not unstable(epoch_log_radius(sums, np.array([rate]), cfg)).any():
            break
        rate = round_down(rate * 0.99)
    return rate


def round_down(rate: float) -> float:
    """The largest number with one significant digit that is <= ``rate`` (0.0178 -> 0.01, 3.7 -> 3)."""
    if not rate > 0 or not math.isfinite(rate):
        return rate
    exp = math.floor(math.log10(rate))
    lead = math.floor(rate / 10.0**exp + 1e-12)
    if lead < 1:  # rate / 10**exp rounded below 1
        exp, lead = exp - 1, 9
    return float(f"{lead}e{exp}")


def _fmt(rate: float) -> str:
    """A learning rate as a user types it: %g-style, never ``0.`` and never a row of zeros."""
    return f"{rate:.6g}"


def _times(log_r: float) -> str:
    """A factor given by its natural log, readable however large (2.793, 1.2e+154)."""
    if log_r < 700:
        return _sig(math.exp(log_r))
    exp10 = log_r / math.log(10)
    return f"{10 ** (exp10 - math.floor(exp10)):.2g}e+{math.floor(exp10)}"


def _sig(value: float) -> str:
    return f"{value:.4g}"


def _round_down(rate: float) -> str:
    """A round learning rate just below ``rate`` (one significant digit), formatted for the hint."""
    return _fmt(round_down(rate))
