"""Ground truth beside the two engines: a high-precision replay of the run, the judge of who is
right where the sides part, and a finite-difference gradient check.

The ground truth (:func:`exact_reference`)
------------------------------------------
Replays the run's batches (the same :class:`~sgdtrace.data.BatchPlan`) for every optimizer and
schedule, with no rounding where the arithmetic allows it. Every input is taken at the decimal value
it was written as (``0.01`` is 1/100, not the nearest binary float), and every step of Equations
1-11 and of the optimizer's documented algorithm (:mod:`sgdtrace.engines.optimizers`: SGD's
momentum, dampening, Nesterov, weight decay, maximize; Adam's and AdamW's moments, bias
corrections and amsgrad; RMSprop's averages, centering and momentum; Adagrad's sum and rate decay)
is computed in one of two arithmetics:

* **exact rationals** (:class:`fractions.Fraction`) where the whole run is rational in its inputs:
  SGD at a constant rate or under StepLR, MultiStepLR, ExponentialLR, LinearLR or a linear
  OneCycleLR. Each engine's error against it is then its rounding error alone.
* **decimals of** :data:`DECIMAL_DIGITS` **significant digits** (:mod:`decimal`, each operation
  correctly rounded to that precision) where a step takes a square root (Adam, AdamW, RMSprop,
  Adagrad) or a schedule takes a cosine (CosineAnnealingLR, OneCycleLR's default cos annealing:
  ``cos(pi*r)`` of a rational r, summed by its Taylor series to that precision after an exact
  reduction of r to [0, 1/2]). A relative error of about 1e-50 per operation is 34 orders of
  magnitude below float64's rounding.

A schedule's rate is its closed form (``eta_min + (base - eta_min)(1 + cos(pi t/T))/2``, ``base *
gamma**t``, ...), which torch's chainable recursion equals in exact arithmetic.

Exact rationals grow: every step multiplies the denominators of the state by those of the data,
the learning rate and 1/n. While the largest numerator or denominator of the state stays within
:data:`MAX_DIGITS` decimal digits the replay stays exact; past that it switches, once, to
:data:`DECIMAL_DIGITS`-digit decimals and reports the step where it switched.

Who is right (:func:`closer`)
-----------------------------
Where the sides diverge, the first divergent step is worked out once more, by each side's own
start: the state that side recorded after the step before (parameters, gradients' inputs, the
optimizer's state; the initial values at step 1), the batch and the rate of that step, and the
inputs as written, in the ground truth's arithmetic. The side whose value lies nearer its exact
step is ``closer`` ("hand" or "torch"); null where the two are equally far (to the arithmetic's
precision), or a side's start is not finite. One step, not the run: cheap at any run's length. The
start's parameters are binary floats, so exact; the batch's loss and gradients then come exactly
from its moments (the sums of x, y, x^2, xy, y^2 as written, in integers: :func:`moments`).
A state the hand side does not keep (a user's engine) starts from torch's recorded value, as the
judge does.

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

import decimal
import math
from dataclasses import dataclass, field
from decimal import Context, Decimal, localcontext
from fractions import Fraction
from typing import Any

import numpy as np

#: the exact replay stays in Fractions while every numerator and denominator has at most this many digits
MAX_DIGITS = 600
#: significant digits of the decimal arithmetic (irrational steps, and rational ones after the switch)
DECIMAL_DIGITS = 50
#: gradcheck's defaults (torch.autograd.gradcheck)
GRADCHECK_EPS, GRADCHECK_ATOL, GRADCHECK_RTOL = 1e-6, 1e-5, 1e-3
#: the schedules whose rate is rational in their arguments (the others take a cosine)
RATIONAL_SCHEDULES = ("StepLR", "MultiStepLR", "ExponentialLR", "LinearLR")

_LOG10_2 = math.log10(2)


def exact(value: float) -> Fraction:
    """A float at the decimal value it was written as: its shortest round-trip repr (0.01 -> 1/100)."""
    return Fraction(repr(float(value)))


def rational(cfg) -> bool:
    """Is every step of the run rational in its inputs, so exact fractions can replay it?

    SGD's update is; Adam's, AdamW's, RMSprop's and Adagrad's take a square root. The rate of
    CosineAnnealingLR, and of OneCycleLR with its default cos annealing, takes a cosine.
    """
    if cfg.optimizer != "sgd":
        return False
    s = cfg.scheduler
    if s is None or s.name in RATIONAL_SCHEDULES:
        return True
    return s.name == "OneCycleLR" and s.get("anneal_strategy") == "linear"


def irrational_because(cfg) -> str | None:
    """Why the run needs decimals (a phrase), or None where exact rationals replay it."""
    if rational(cfg):
        return None
    if cfg.optimizer != "sgd":
        from sgdtrace.config import OPTIMIZER_CLASSES

        return f"{OPTIMIZER_CLASSES[cfg.optimizer]} takes square roots"
    return f"{cfg.scheduler.name} takes cosines"


def decimal_context(digits: int | None = None) -> Context:
    """The decimal arithmetic: ``digits`` (default :data:`DECIMAL_DIGITS`) significant digits, an
    exponent range no training run reaches, and no traps (a blow-up is a result: inf and nan pass)."""
    return Context(
        prec=digits or DECIMAL_DIGITS,
        Emax=decimal.MAX_EMAX,
        Emin=decimal.MIN_EMIN,
        traps=[],
        rounding="ROUND_HALF_EVEN",
    )


def _digits(q: Fraction) -> int:
    """Decimal digits of the larger of a fraction's numerator and denominator (from the bit length)."""
    return int(max(abs(q.numerator).bit_length(), q.denominator.bit_length()) * _LOG10_2) + 1


def _to_decimal(q: Any) -> Decimal:
    """A Fraction as a decimal of the current context's precision (a Decimal stays as it is)."""
    if isinstance(q, Decimal):
        return q
    return Decimal(q.numerator) / Decimal(q.denominator)


def _as_float(q: Any) -> float:
    try:
        return float(q)
    except OverflowError:
        return math.inf if q > 0 else -math.inf


# ------------------------------------------------------------------ the arithmetic


_PI: dict[int, Decimal] = {}


def _pi(digits: int) -> Decimal:
    """pi to ``digits`` significant digits (the decimal module's documented recipe), cached."""
    if digits not in _PI:
        with localcontext(decimal_context(digits + 5)):
            three = Decimal(3)
            lasts, t, s, n, na, d, da = 0, three, 3, 1, 0, 0, 24
            while s != lasts:
                lasts = s
                n, na = n + na, na + 8
                d, da = d + da, da + 32
                t = (t * n) / d
                s += t
        with localcontext(decimal_context(digits)):
            _PI[digits] = +s
    return _PI[digits]


def cos_pi(r: Fraction, digits: int = DECIMAL_DIGITS) -> Decimal:
    """``cos(pi * r)`` for a rational ``r``, to ``digits`` significant digits (absolute error below
    ``10**-digits``): ``r`` is reduced exactly to [0, 1/2] (cos is even, 2-periodic, and
    ``cos(pi(1 - r)) = -cos(pi r)``), the exact values at 0, 1/3 and 1/2 kept, the rest summed by
    the Taylor series in ``digits + 10`` digits."""
    r = Fraction(r) % 2
    if r > 1:
        r = 2 - r
    sign = 1
    if r > Fraction(1, 2):
        r, sign = 1 - r, -1
    exact_values = {Fraction(0): Decimal(1), Fraction(1, 3): Decimal("0.5"), Fraction(1, 2): Decimal(0)}
    if r in exact_values:
        return sign * exact_values[r]
    with localcontext(decimal_context(digits + 10)):
        x = _pi(digits + 10) * Decimal(r.numerator) / Decimal(r.denominator)
        x2 = x * x
        i, lasts, s, term = 0, 0, Decimal(1), Decimal(1)
        while s != lasts:
            lasts = s
            i += 2
            term = -term * x2 / (i * (i - 1))
            s += term
    with localcontext(decimal_context(digits)):
        return sign * +s


class Numbers:
    """The replay's number type: exact fractions, or decimals (use inside :func:`decimal_context`).

    ``written(v)``: an input at the decimal value it was written as; ``held(v)``: a value an engine
    recorded, at its exact binary value; ``of(q)``: a rational (a Fraction) in this type.
    """

    def __init__(self, decimal: bool):
        self.decimal = decimal

    def of(self, q: Fraction) -> Any:
        return _to_decimal(q) if self.decimal else q

    def written(self, v: float) -> Any:
        return self.of(exact(v))

    def held(self, v: float) -> Any:
        return +Decimal(float(v)) if self.decimal else Fraction(float(v))

    def fit(self, q: Any) -> Any:
        """A value in this type: an exact Fraction rounded once to a decimal where the type is decimal."""
        return self.of(q) if self.decimal and isinstance(q, Fraction) else q

    def sqrt(self, x: Any) -> Any:
        """A square root (decimals only: a rational run takes none); a negative argument, which the
        exact algorithms never make (RMSprop's centered ``v - g_avg**2`` is >= 0), is taken as 0."""
        return x.sqrt() if x > 0 else Decimal(0)

    def cos_pi(self, r: Fraction) -> Any:
        return cos_pi(r, decimal.getcontext().prec)


# ------------------------------------------------------------------ the schedules, in closed form


def schedule_values(cfg, pos: int, num: Numbers) -> dict[str, Any]:
    """The group's values at schedule position ``pos`` (torch's ``last_epoch``): ``lr``, and
    ``momentum`` or ``beta1`` where OneCycleLR cycles them; closed forms, in ``num``'s arithmetic."""
    from sgdtrace.engines.optimizers.schedules import cycles_momentum, momentum_key

    s = cfg.scheduler
    if s is None:
        return {"lr": num.written(cfg.lr)}
    a = dict(s.args)
    W = num.written
    base = W(cfg.lr)
    out: dict[str, Any] = {}
    if s.name == "StepLR":
        out["lr"] = base * W(a["gamma"]) ** (pos // a["step_size"])
    elif s.name == "MultiStepLR":
        out["lr"] = base * W(a["gamma"]) ** sum(1 for m in a["milestones"] if m <= pos)
    elif s.name == "ExponentialLR":
        out["lr"] = base * W(a["gamma"]) ** pos
    elif s.name == "CosineAnnealingLR":
        eta = W(a["eta_min"])
        out["lr"] = eta + (base - eta) * (1 + num.cos_pi(Fraction(pos, a["T_max"]))) / 2
    elif s.name == "LinearLR":
        sf, ef, n = W(a["start_factor"]), W(a["end_factor"]), a["total_iters"]
        out["lr"] = base * sf if n == 0 else base * (sf + (ef - sf) * num.of(Fraction(min(pos, n), n)))
    else:  # OneCycleLR
        out.update(_one_cycle(a, pos, num, cycles_momentum(cfg), momentum_key(cfg)))
    return out


def _one_cycle(a: dict[str, Any], pos: int, num: Numbers, cycling: bool, key: str) -> dict[str, Any]:
    """OneCycleLR's phases, as torch's ``get_lr`` anneals them, with exact phase boundaries."""
    total = a["total_steps"] if a.get("total_steps") is not None else a["epochs"] * a["steps_per_epoch"]
    pct = exact(a["pct_start"])
    initial = exact(a["max_lr"]) / exact(a["div_factor"])
    top = exact(a["max_lr"])
    low = initial / exact(a["final_div_factor"])
    hi_m, lo_m = exact(a["max_momentum"]), exact(a["base_momentum"])
    if a["three_phase"]:
        phases = [
            (pct * total - 1, (initial, top), (hi_m, lo_m)),
            (2 * pct * total - 2, (top, initial), (lo_m, hi_m)),
            (Fraction(total - 1), (initial, low), (hi_m, hi_m)),
        ]
    else:
        phases = [(pct * total - 1, (initial, top), (hi_m, lo_m)), (Fraction(total - 1), (top, low), (lo_m, hi_m))]
    start = Fraction(0)
    for i, (end, lrs, ms) in enumerate(phases):
        if pos <= end or i == len(phases) - 1:
            r = (pos - start) / (end - start)
            out = {"lr": _anneal(a["anneal_strategy"], lrs, r, num)}
            if cycling:
                out[key] = _anneal(a["anneal_strategy"], ms, r, num)
            return out
        start = end
    raise AssertionError("unreachable")  # pragma: no cover


def _anneal(kind: str, ends: tuple[Fraction, Fraction], r: Fraction, num: Numbers) -> Any:
    start, end = num.of(ends[0]), num.of(ends[1])
    if kind == "cos":
        return end + (start - end) / 2 * (num.cos_pi(r) + 1)
    return (end - start) * num.of(r) + start


# ------------------------------------------------------------------ one step, every optimizer


def written_ints(v: float) -> tuple[int, int]:
    """A float at the decimal value it was written as, ``m * 10**e`` (its shortest repr): ``(m, e)``."""
    sign, digits, e = Decimal(repr(float(v))).as_tuple()
    m = int("".join(map(str, digits)))
    return (-m if sign else m), int(e)


def moments(samples: list[tuple[tuple[int, int], tuple[int, int]]]) -> tuple[Fraction, ...]:
    """``(sum x, sum y, sum x^2, sum xy, sum y^2)`` of a batch of samples as written (pairs of
    :func:`written_ints`), exactly: in integers over one power of ten, a fraction of a microsecond
    a sample where Fractions take microseconds an operation."""
    low = min(min(ex, ey) for (_, ex), (_, ey) in samples)
    sx = sy = sxx = sxy = syy = 0
    for (mx, ex), (my, ey) in samples:
        x, y = mx * 10 ** (ex - low), my * 10 ** (ey - low)
        sx, sy, sxx, sxy, syy = sx + x, sy + y, sxx + x * x, sxy + x * y, syy + y * y
    s = Fraction(10) ** low
    return sx * s, sy * s, sxx * s * s, sxy * s * s, syy * s * s


def _batch_exact(w: Fraction, b: Fraction, n: int, m: tuple[Fraction, ...]):
    """:func:`_batch` for exact parameters, from the batch's :func:`moments`: the same sums,
    expanded (``sum (w x + b - y)^2 = w^2 sum x^2 + n b^2 + sum y^2 + 2wb sum x - 2w sum xy - 2b sum y``),
    equal in exact arithmetic."""
    sx, sy, sxx, sxy, syy = m
    loss = (w * w * sxx + n * b * b + syy + 2 * w * b * sx - 2 * w * sxy - 2 * b * sy) / n
    return loss, 2 * (w * sxx + b * sx - sxy) / n, 2 * (w * sx + n * b - sy) / n


def _batch(w, b, xs, ys):
    """Loss and gradients of one batch (Equations 3, 8 and 11), in whatever exact type the inputs have."""
    n = len(xs)
    d = [w * x + b - y for x, y in zip(xs, ys)]
    loss = sum(di * di for di in d) / n
    gw = 2 * sum(di * x for di, x in zip(d, xs)) / n
    gb = 2 * sum(d) / n
    return loss, gw, gb


class Stepper:
    """The run's step in a :class:`Numbers` arithmetic: the batch's loss and gradients, then the
    optimizer's documented update of each parameter (see each hand optimizer's docstring), with
    the schedule's closed-form rate. The state is ``{"w", "b", <state field>: value}`` by the
    recorded names (``buf_w``, ``exp_avg_sq_b``, ...); SGD's buffer is None before its first step."""

    def __init__(self, cfg, x: np.ndarray, y: np.ndarray, num: Numbers, cache: dict | None = None):
        from sgdtrace.engines import optimizers
        from sgdtrace.engines.protocol import state_field

        self.cfg, self.num = cfg, num
        self.keys = optimizers.get(cfg.optimizer).state_keys(cfg)
        self.field = state_field
        self._x, self._y = x, y
        #: each batch's exact moments, by its indices (shareable between steppers of one run)
        self._moments: dict[tuple[int, ...], tuple[Fraction, ...]] = {} if cache is None else cache
        self.refresh()

    def refresh(self) -> None:
        """(Re)build the inputs in the current arithmetic (after a switch to decimals); the samples
        are converted when a batch first uses them (one step of a large data set converts its batch)."""
        W, cfg = self.num.written, self.cfg
        self._samples: dict[int, tuple[Any, Any]] = {}
        self.h = {
            k: W(getattr(cfg, k))
            for k in ("momentum", "dampening", "weight_decay", "eps", "alpha", "lr_decay", "initial_accumulator_value")
            if getattr(cfg, k) is not None
        }
        self.h["beta1"], self.h["beta2"] = W(cfg.betas[0]), W(cfg.betas[1])

    def _sample(self, i: int) -> tuple[Any, Any]:
        """Sample ``i`` as written (x, y), in the current arithmetic."""
        got = self._samples.get(i)
        if got is None:
            got = self._samples[i] = (self.num.written(self._x[i]), self.num.written(self._y[i]))
        return got

    def initial(self) -> dict[str, Any]:
        """The state before the first step: the initial parameters, the optimizer's initial state."""
        W = self.num.written
        state: dict[str, Any] = {"w": W(self.cfg.init_w), "b": W(self.cfg.init_b)}
        for key in self.keys:
            for p in ("w", "b"):
                if self.cfg.optimizer == "sgd":
                    value = None  # the buffer is the first step's gradient
                elif key == "sum":
                    value = self.h["initial_accumulator_value"]
                else:
                    value = self.num.of(Fraction(0))
                state[self.field(key, p)] = value
        return state

    def batch_moments(self, idx: list[int]) -> tuple[Fraction, ...]:
        key = tuple(idx)
        if key not in self._moments:
            x, y = self._x, self._y
            self._moments[key] = moments([(written_ints(x[i]), written_ints(y[i])) for i in idx])
        return self._moments[key]

    def gradients(self, state: dict[str, Any], batches: list) -> dict[str, Any]:
        """The batch's loss and gradients at the state's parameters; several batches (data-parallel
        ranks) are averaged, as DDP's all-reduce does, and each rank's own kept as ``rank<r>.<f>``.

        Exact parameters (Fractions) take the batch's exact moments, and the results are then put in
        the arithmetic's type (rounded once, in decimals); decimal ones go sample by sample."""
        out: dict[str, Any] = {}
        parts = []
        w, b = state["w"], state["b"]
        for r, idx in enumerate(batches):
            if isinstance(w, Fraction) and isinstance(b, Fraction):
                loss, gw, gb = (self.num.fit(q) for q in _batch_exact(w, b, len(idx), self.batch_moments(idx)))
            else:
                xs, ys = zip(*(self._sample(i) for i in idx))
                loss, gw, gb = _batch(w, b, xs, ys)
            parts.append((loss, gw, gb))
            if len(batches) > 1:
                out.update({f"rank{r}.loss": loss, f"rank{r}.grad_w": gw, f"rank{r}.grad_b": gb})
        n = len(parts)
        out["loss"], out["grad_w"], out["grad_b"] = (
            sum(p[i] for p in parts) / n if n > 1 else parts[0][i] for i in range(3)
        )
        return out

    def step(self, t: int, pos: int, batches: list, state: dict[str, Any]) -> dict[str, Any]:
        """Step ``t`` (1-based) at schedule position ``pos`` on ``batches`` (index lists) from
        ``state``: every recorded field of the step (the new state included)."""
        row = self.gradients(state, batches)
        group = schedule_values(self.cfg, pos, self.num)
        if self.cfg.scheduler is not None:
            row["lr"] = group["lr"]
        for p in ("w", "b"):
            own = {key: state[self.field(key, p)] for key in self.keys}
            row[p] = self._update(self.num.fit(state[p]), row[f"grad_{p}"], own, group, t)
            row.update({self.field(key, p): own[key] for key in self.keys})
        return row

    def _update(self, p, g, st: dict[str, Any], group: dict[str, Any], t: int):
        """One parameter's documented update (``st`` updated in place), exactly as written in the
        algorithm boxes of :mod:`sgdtrace.engines.optimizers`' modules."""
        cfg, h, num = self.cfg, self.h, self.num
        lr = group["lr"]
        if cfg.maximize:
            g = -g
        name = cfg.optimizer
        if cfg.weight_decay != 0:
            if name == "adamw":
                p = p * (1 - lr * h["weight_decay"])
            else:
                g = g + h["weight_decay"] * p
        if name == "sgd":
            mu = group.get("momentum", h["momentum"])
            if mu != 0:
                buf = st["momentum_buffer"]
                buf = g if buf is None else mu * buf + (1 - h["dampening"]) * g
                st["momentum_buffer"] = buf
                g = g + mu * buf if cfg.nesterov else buf
            return p - lr * g
        if name in ("adam", "adamw"):
            b1, b2 = group.get("beta1", h["beta1"]), h["beta2"]
            m = st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * g
            v = st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * g * g
            if cfg.amsgrad:
                v = st["max_exp_avg_sq"] = max(st["max_exp_avg_sq"], v)
            bc1, bc2 = 1 - b1**t, 1 - b2**t
            denom = num.sqrt(v) / num.sqrt(bc2) + h["eps"]
            return p - lr / bc1 * m / denom
        if name == "rmsprop":
            alpha = h["alpha"]
            v = st["square_avg"] = alpha * st["square_avg"] + (1 - alpha) * g * g
            if cfg.centered:
                ga = st["grad_avg"] = alpha * st["grad_avg"] + (1 - alpha) * g
                avg = num.sqrt(v - ga * ga)
            else:
                avg = num.sqrt(v)
            avg = avg + h["eps"]
            mu = group.get("momentum", h["momentum"])
            if mu > 0:
                buf = st["momentum_buffer"] = mu * st["momentum_buffer"] + g / avg
                return p - lr * buf
            return p - lr * g / avg
        # adagrad
        clr = lr / (1 + (t - 1) * h["lr_decay"])
        total = st["sum"] = st["sum"] + g * g
        return p - clr * g / (num.sqrt(total) + h["eps"])


# ------------------------------------------------------------------ the replay


@dataclass
class Reference:
    """The ground truth: per step the true value of every field, and how it was computed."""

    fields: tuple[str, ...]
    values: dict[str, list]  # Fraction (exact) or Decimal (decimals)
    exact_steps: int  # steps computed in exact rationals; the rest in decimals
    n_steps: int
    switch_digits: int | None = None  # size of the fractions when the switch happened
    floats: dict[str, np.ndarray] = field(default_factory=dict)
    #: why the run is replayed in decimals from its first step (a phrase), or None
    irrational: str | None = None

    @property
    def arithmetic(self) -> str:
        if self.exact_steps >= self.n_steps:
            return "exact rationals"
        if self.exact_steps == 0:
            return f"{DECIMAL_DIGITS}-digit decimals"
        return f"exact rationals to step {self.exact_steps}, then {DECIMAL_DIGITS}-digit decimals"

    def describe(self) -> str:
        """One line saying what the third column is."""
        if self.irrational:
            return (
                f"exact: the run replayed in {DECIMAL_DIGITS}-digit decimals ({self.irrational}: each "
                f"operation correctly rounded to {DECIMAL_DIGITS} significant digits)"
            )
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
        ctx = decimal_context(DECIMAL_DIGITS + 10)
        for f in self.fields:
            col = columns[f].tolist()
            ab, rel = np.empty(self.n_steps), np.empty(self.n_steps)
            for k, (v, t) in enumerate(zip(col, self.values[f])):
                if not math.isfinite(v) or (isinstance(t, Decimal) and not t.is_finite()):
                    ab[k] = rel[k] = math.nan if math.isnan(v) or (isinstance(t, Decimal) and t.is_nan()) else math.inf
                    continue
                diff = abs(Fraction(v) - t) if isinstance(t, Fraction) else abs(ctx.subtract(Decimal(v), t))
                a = _as_float(diff)
                ab[k] = a
                if t == 0:
                    rel[k] = 0.0 if diff == 0 else math.inf
                else:
                    rel[k] = (
                        _as_float(diff / abs(t)) if isinstance(t, Fraction) else _as_float(ctx.divide(diff, abs(t)))
                    )
            out[f] = (ab, rel)
        return out


def _schedule_positions(cfg, plan) -> np.ndarray:
    if cfg.scheduler is None:
        return np.zeros(plan.n_steps, dtype=np.int64)
    from sgdtrace.engines.optimizers.schedules import index_of_step

    return index_of_step(cfg, plan)


def exact_reference(trace) -> Reference:
    """Replay ``trace``'s run (its data, plan, optimizer and schedule) in the ground truth's arithmetic."""
    cfg, plan, ds = trace.config, trace.plan, trace.dataset
    fields = tuple(trace.fields)
    why = irrational_because(cfg)
    num = Numbers(decimal=why is not None)
    values: dict[str, list] = {f: [] for f in fields}
    exact_steps = 0 if num.decimal else plan.n_steps
    switch_digits = None
    positions = _schedule_positions(cfg, plan).tolist()
    with localcontext(decimal_context()):
        stepper = Stepper(cfg, ds.x, ds.y, num)
        state = stepper.initial()
        for k, (epoch, _j, start, stop) in enumerate(plan.spans()):
            if not num.decimal:
                size = max(_digits(q) for q in state.values() if q is not None)
                if size > MAX_DIGITS:
                    exact_steps, switch_digits = k, size
                    num.decimal = True
                    stepper.refresh()
                    state = {f: None if q is None else _to_decimal(q) for f, q in state.items()}
            idx = plan.epoch_order(epoch)[start:stop].tolist()
            row = stepper.step(k + 1, positions[k], [idx], state)
            state = {f: row[f] for f in state}
            for f in fields:
                values[f].append(row[f])
    ref = Reference(fields, values, exact_steps, plan.n_steps, switch_digits, irrational=why)
    ref.floats = {f: np.array([_as_float(v) for v in values[f]], dtype=np.float64) for f in fields}
    return ref


# ------------------------------------------------------------------ who is right


@dataclass(frozen=True)
class Closer:
    """The first divergent step judged by the ground truth: which side is nearer its exact step
    (``side``: "hand", "torch" or None) and how far each is (``errors``: by side, None where not
    worked out)."""

    side: str | None
    errors: dict[str, float] | None


def _side_value(trace, side: str, field_name: str, k: int) -> float:
    cols = trace.manual if side == "hand" else trace.torch
    if field_name.startswith("rank") and "." in field_name:
        r, f = field_name.split(".", 1)
        ranks = trace.ranks.manual if side == "hand" else trace.ranks.torch
        return float(ranks[f][k, int(r[4:])])
    return float(cols[field_name][k])


def _exact_steps(trace, k: int, name: str, num: Numbers, batches: list, pos: int, cache: dict) -> dict[str, Any] | None:
    """Per side, the exact value of ``name`` at step ``k`` (0-based) worked from that side's own
    start (its parameters exactly, so the batch's loss and gradients are exact: one rounding to the
    arithmetic after them); None where a side's start is not finite."""
    stepper = Stepper(trace.config, trace.dataset.x, trace.dataset.y, num, cache)
    initial = stepper.initial()
    out = {}
    for side in ("hand", "torch"):
        cols = trace.manual if side == "hand" else trace.torch
        if k == 0:
            start = dict(initial, w=exact(trace.config.init_w), b=exact(trace.config.init_b))
        else:
            start = {}
            for f in initial:
                col = cols[f] if f in cols else trace.torch[f]  # a state the hand side does not keep: torch's
                v = float(col[k - 1])
                if not math.isfinite(v):
                    return None
                start[f] = Fraction(v) if f in ("w", "b") else num.held(v)
        row = stepper.step(k + 1, pos, batches, start)
        if name not in row:  # pragma: no cover - every judged field is a field of the step
            return None
        out[side] = row[name]
    return out


def closer(trace) -> Closer:
    """Who is right at ``trace``'s first divergent step (see the module's docstring); a
    :class:`Closer` of None and None without one.

    Decimals are worked at :data:`DECIMAL_DIGITS` + 20 digits and again at :data:`DECIMAL_DIGITS`:
    their difference bounds the error of the second, so of the first by far; two distances that
    differ by less than twice that are a tie. Exact rationals tie only where they are equal.
    """
    first = trace.verdict.first_divergent_step
    if first is None:
        return Closer(None, None)
    cfg, plan = trace.config, trace.plan
    k, name = first.step - 1, first.field
    ranks = getattr(trace, "ranks", None)
    if ranks is not None:
        batches = [ranks.indices(k, r).tolist() for r in range(ranks.world_size)]
    else:
        batches = [plan.indices(k).tolist()]
    pos = int(_schedule_positions(cfg, plan)[k])
    num = Numbers(decimal=not rational(cfg))
    cache: dict = {}
    if num.decimal:
        with localcontext(decimal_context()):
            rough = _exact_steps(trace, k, name, num, batches, pos, cache)
    with localcontext(decimal_context(DECIMAL_DIGITS + 20 if num.decimal else DECIMAL_DIGITS)):
        truths = _exact_steps(trace, k, name, num, batches, pos, cache)
        if truths is None:
            return Closer(None, None)
        errors: dict[str, Any] = {}
        for side, truth in truths.items():
            v = _side_value(trace, side, name, k)
            errors[side] = abs(num.held(v) - truth) if math.isfinite(v) else None
        shown = {s: math.inf if e is None else _as_float(e) for s, e in errors.items()}
        h, t = errors["hand"], errors["torch"]
        if h is None or t is None:
            return Closer(None if h is None and t is None else ("torch" if h is None else "hand"), shown)
        slack = 2 * max(abs(truths[s] - rough[s]) for s in truths) if num.decimal else 0
        if abs(h - t) <= slack:
            return Closer(None, shown)
        return Closer("hand" if h < t else "torch", shown)


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
            x, y = ds.x[idx], ds.y[idx]
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
