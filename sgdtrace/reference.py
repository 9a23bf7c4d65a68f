"""Ground truth beside the two engines: an exact replay of the run, and a finite-difference gradient check.

The exact witness (:func:`exact_reference`)
-------------------------------------------
Replays the run's batches (the same :class:`~sgdtrace.data.BatchPlan`) with no rounding at all:
every input is taken at the decimal value it was written as (``0.01`` is 1/100, not the nearest
binary float), and every step of Equations 1-11 and of torch.optim.SGD's update (momentum,
dampening, Nesterov, weight decay, maximize) is done in exact rational arithmetic
(:class:`fractions.Fraction`). Each engine's error against it is then its rounding error alone.

Exact rationals grow: every step multiplies the denominators of w and b by those of the data,
the learning rate and 1/n. While the largest numerator or denominator of the state stays within
:data:`MAX_DIGITS` decimal digits the replay stays exact; past that it switches, once, to
:data:`DECIMAL_DIGITS`-digit decimals (relative error about 1e-50 per operation, far below float64's
1e-16) and reports the step where it switched.

The gradient check (:func:`gradcheck`)
--------------------------------------
As ``torch.autograd.gradcheck`` does: central differences in float64,
``(L(p + h) - L(p - h)) / 2h`` with ``h = 1e-6``, against the analytic gradient, here the manual
engine's chain-rule formulas (:func:`sgdtrace.engines.manual.forward_backward`) evaluated in
float64 at the parameters the step started from. It passes where
``|analytic - numeric| <= atol + rtol * |numeric| + r`` with gradcheck's defaults ``atol = 1e-5``,
``rtol = 1e-3``, and ``r`` the rounding error of the difference quotient itself: the loss is a
quadratic, so the central difference has no truncation error, but each loss evaluation is rounded
by at most ``u * E[loss]`` (E as in :mod:`sgdtrace.divergence`), so ``r = 2 u E[loss] / 2h``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Context, Decimal, localcontext
from fractions import Fraction
from typing import Any

import numpy as np

#: the exact replay stays in Fractions while every numerator and denominator has at most this many digits
MAX_DIGITS = 600
#: precision of the decimal arithmetic after the switch
DECIMAL_DIGITS = 50
#: gradcheck's defaults (torch.autograd.gradcheck)
GRADCHECK_EPS, GRADCHECK_ATOL, GRADCHECK_RTOL = 1e-6, 1e-5, 1e-3

_LOG10_2 = math.log10(2)


def exact(value: float) -> Fraction:
    """A float at the decimal value it was written as: its shortest round-trip repr (0.01 -> 1/100)."""
    return Fraction(repr(float(value)))


def _digits(q: Fraction) -> int:
    """Decimal digits of the larger of a fraction's numerator and denominator (from the bit length)."""
    return int(max(abs(q.numerator).bit_length(), q.denominator.bit_length()) * _LOG10_2) + 1


def _to_decimal(q: Any) -> Decimal:
    if isinstance(q, Decimal):
        return q
    return Decimal(q.numerator) / Decimal(q.denominator)


def _as_float(q: Any) -> float:
    try:
        return float(q)
    except OverflowError:
        return math.inf if q > 0 else -math.inf


@dataclass
class _Hyper:
    lr: Any
    momentum: Any
    dampening: Any
    weight_decay: Any
    nesterov: bool
    maximize: bool


def _update(p, g, buf, h: _Hyper, first: bool):
    """torch.optim.SGD's documented update for one parameter, exactly (same algorithm as its docs)."""
    if h.maximize:
        g = -g
    if h.weight_decay != 0:
        g = g + h.weight_decay * p
    if h.momentum != 0:
        buf = g if first else h.momentum * buf + (1 - h.dampening) * g
        g = g + h.momentum * buf if h.nesterov else buf
    return p - h.lr * g, buf


def _batch(w, b, xs, ys):
    """Loss and gradients of one batch (Equations 3, 8 and 11), in whatever exact type the inputs have."""
    n = len(xs)
    d = [w * x + b - y for x, y in zip(xs, ys)]
    loss = sum(di * di for di in d) / n
    gw = 2 * sum(di * x for di, x in zip(d, xs)) / n
    gb = 2 * sum(d) / n
    return loss, gw, gb


@dataclass
class Reference:
    """The exact witness: per step the true value of every field, and how it was computed."""

    fields: tuple[str, ...]
    values: dict[str, list]  # Fraction (exact) or Decimal (after the switch)
    exact_steps: int  # steps computed in exact rationals; the rest in decimals
    n_steps: int
    switch_digits: int | None = None  # size of the fractions when the switch happened
    floats: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def arithmetic(self) -> str:
        if self.exact_steps >= self.n_steps:
            return "exact rationals"
        if self.exact_steps == 0:
            return f"{DECIMAL_DIGITS}-digit decimals"
        return f"exact rationals to step {self.exact_steps}, then {DECIMAL_DIGITS}-digit decimals"

    def describe(self) -> str:
        """One line saying what the third column is."""
        text = f"exact: the run replayed without rounding ({self.arithmetic})"
        if self.switch_digits is not None:
            text += f"; switched when the fractions reached {self.switch_digits} digits (limit {MAX_DIGITS})"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "exact",
            "arithmetic": "fraction" if self.exact_steps >= self.n_steps else "decimal",
            "exact_steps": self.exact_steps,
            "decimal_digits": DECIMAL_DIGITS,
            "max_digits": MAX_DIGITS,
            "switch_digits": self.switch_digits,
            "description": self.describe(),
        }

    def errors(self, columns: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{field: (abs, rel)}``: an engine's error against the truth, computed exactly, then rounded."""
        out = {}
        ctx = Context(prec=DECIMAL_DIGITS + 10)
        for f in self.fields:
            col = columns[f].tolist()
            ab, rel = np.empty(self.n_steps), np.empty(self.n_steps)
            for k, (v, t) in enumerate(zip(col, self.values[f])):
                if not math.isfinite(v):
                    ab[k] = rel[k] = math.nan if math.isnan(v) else math.inf
                    continue
                diff = abs(Fraction(v) - t) if isinstance(t, Fraction) else abs(ctx.subtract(Decimal(v), t))
                a = _as_float(diff)
                ab[k] = a
                rel[k] = (0.0 if diff == 0 else math.inf) if t == 0 else _as_float(diff / abs(t))
            out[f] = (ab, rel)
        return out


def exact_reference(trace) -> Reference:
    """Replay ``trace``'s run (its data, plan and options) without rounding."""
    cfg, plan, ds = trace.config, trace.plan, trace.dataset
    fields = tuple(trace.fields)
    xs = [exact(v) for v in ds.x[:, 0].tolist()]
    ys = [exact(v) for v in ds.y.tolist()]
    h = _Hyper(
        exact(cfg.lr), exact(cfg.momentum), exact(cfg.dampening), exact(cfg.weight_decay), cfg.nesterov, cfg.maximize
    )
    w, b = exact(cfg.init_w), exact(cfg.init_b)
    buf_w = buf_b = None
    values: dict[str, list] = {f: [] for f in fields}
    exact_steps = plan.n_steps
    switch_digits = None
    decimal = False
    with localcontext(Context(prec=DECIMAL_DIGITS)):
        for k, (epoch, _j, start, stop) in enumerate(plan.spans()):
            if not decimal:
                size = max(_digits(q) for q in (w, b, buf_w, buf_b) if q is not None)
                if size > MAX_DIGITS:
                    decimal, exact_steps, switch_digits = True, k, size
                    xs, ys = [_to_decimal(v) for v in xs], [_to_decimal(v) for v in ys]
                    h = _Hyper(
                        *(_to_decimal(v) for v in (h.lr, h.momentum, h.dampening, h.weight_decay)),
                        h.nesterov,
                        h.maximize,
                    )
                    w, b = _to_decimal(w), _to_decimal(b)
                    buf_w = None if buf_w is None else _to_decimal(buf_w)
                    buf_b = None if buf_b is None else _to_decimal(buf_b)
            idx = plan.epoch_order(epoch)[start:stop].tolist()
            loss, gw, gb = _batch(w, b, [xs[i] for i in idx], [ys[i] for i in idx])
            w, buf_w = _update(w, gw, buf_w, h, k == 0)
            b, buf_b = _update(b, gb, buf_b, h, k == 0)
            row = {"grad_w": gw, "grad_b": gb, "loss": loss, "w": w, "b": b, "buf_w": buf_w, "buf_b": buf_b}
            for f in fields:
                values[f].append(row[f])
    ref = Reference(fields, values, exact_steps, plan.n_steps, switch_digits)
    ref.floats = {f: np.array([_as_float(v) for v in values[f]], dtype=np.float64) for f in fields}
    return ref


# ------------------------------------------------------------------ the finite-difference check


@dataclass
class GradCheck:
    """Per step: numeric (central differences) and analytic (chain rule) gradients in float64."""

    numeric: dict[str, np.ndarray]  # grad_w, grad_b
    analytic: dict[str, np.ndarray]
    abs: dict[str, np.ndarray]
    tol: dict[str, np.ndarray]
    ok: np.ndarray  # bool per step; False also where a value is not finite
    finite: np.ndarray
    eps: float = GRADCHECK_EPS
    atol: float = GRADCHECK_ATOL
    rtol: float = GRADCHECK_RTOL

    @property
    def all_ok(self) -> bool:
        return bool(self.ok[self.finite].all())

    def summary(self) -> str:
        worst = (
            max((float(np.max(self.abs[f][self.finite])) for f in self.abs), default=0.0)
            if self.finite.any()
            else math.nan
        )
        bad = int((~self.ok & self.finite).sum())
        skipped = int((~self.finite).sum())
        text = f"gradcheck (central differences in float64, h = {self.eps:g}): max |analytic - numeric| {worst:.2g}; "
        text += (
            "every step within atol 1e-05 + rtol 0.001"
            if bad == 0
            else f"{bad} step(s) outside atol 1e-05 + rtol 0.001"
        )
        if skipped:
            text += f"; {skipped} step(s) not checked (non-finite values)"
        return text


def _loss64(w: float, b: float, x: np.ndarray, y: np.ndarray) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.mean((w * x + b - y) ** 2))


def gradcheck(
    trace, eps: float = GRADCHECK_EPS, atol: float = GRADCHECK_ATOL, rtol: float = GRADCHECK_RTOL
) -> GradCheck:
    """Check the manual engine's chain-rule gradients against central differences, step by step."""
    from sgdtrace.engines.manual import forward_backward

    cfg, plan, ds = trace.config, trace.plan, trace.dataset
    steps = plan.n_steps
    u = 2.0**-53
    w_col = trace.manual["w"].astype(np.float64)
    b_col = trace.manual["b"].astype(np.float64)
    num = {f: np.full(steps, math.nan) for f in ("grad_w", "grad_b")}
    ana = {f: np.full(steps, math.nan) for f in ("grad_w", "grad_b")}
    ab = {f: np.full(steps, math.nan) for f in ("grad_w", "grad_b")}
    tol = {f: np.full(steps, math.nan) for f in ("grad_w", "grad_b")}
    ok = np.zeros(steps, dtype=bool)
    finite = np.zeros(steps, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(steps):
            w = cfg.init_w if k == 0 else float(w_col[k - 1])
            b = cfg.init_b if k == 0 else float(b_col[k - 1])
            if not (math.isfinite(w) and math.isfinite(b)):
                continue
            idx = plan.indices(k)
            x, y = ds.x[idx, 0], ds.y[idx]
            n = len(idx)
            r = forward_backward(np.float64(w), np.float64(b), x, y, n, np.float64)
            ana_k = {"grad_w": float(r.grad_w), "grad_b": float(r.grad_b)}
            # rounding of one loss evaluation, u * E[loss] (see divergence's tolerance model)
            d = np.abs(r.d)
            m = np.abs(w * x) + abs(b) + np.abs(y)
            e_loss = u * (6 * float(np.sum(d * m)) + (n + 2) * float(np.sum(d * d))) / n
            if not math.isfinite(e_loss):
                continue
            row_ok = True
            for f, (wp, bp, wm, bm) in (("grad_w", (w + eps, b, w - eps, b)), ("grad_b", (w, b + eps, w, b - eps))):
                step = (wp - wm) if f == "grad_w" else (bp - bm)
                # h vanishes next to a huge parameter (a blown-up run): no difference quotient then
                numeric = (_loss64(wp, bp, x, y) - _loss64(wm, bm, x, y)) / step if step else math.nan
                t = atol + rtol * abs(numeric) + (2 * e_loss / step if step else math.inf)
                num[f][k], ana[f][k], tol[f][k] = numeric, ana_k[f], t
                ab[f][k] = abs(ana_k[f] - numeric)
                row_ok &= bool(ab[f][k] <= t)  # nan compares False
            finite[k] = all(
                math.isfinite(v) for v in (num["grad_w"][k], num["grad_b"][k], ana["grad_w"][k], ana["grad_b"][k])
            )
            ok[k] = row_ok and finite[k]
    return GradCheck(num, ana, ab, tol, ok, finite, eps, atol, rtol)
