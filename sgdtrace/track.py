"""The judge's one way of bounding rounding: a value both engines compute, with its bounds (a
:class:`Track`), and torch's kernels as operations on it (the optimizers' updates; the models' ops
algebra, :mod:`sgdtrace.models.ops`, builds on it).

A :class:`Track` is one value both engines compute at every step (an array over the steps):

``v``      the hand engine's value (signed, float64)
``mag``    a bound on |value| in either engine
``rnd``    a bound on the rounding error ONE engine makes in it, in units of the unit roundoff u
``carry``  hand minus torch in exact arithmetic, made from the measured (signed) differences of
           the values the step started from: exact for sums and products, and for ``sqrt``,
           division and ``maximum`` too (each is worked out in a form free of cancellation:
           ``sqrt(x) - sqrt(x - c) = c / (sqrt(x) + sqrt(x - c))``)
``cerr``   a bound on the error of ``carry`` as the judge computes it, in float64 (absolute, not
           in units of u): the measured differences ``a - b`` round, and so does each operation's
           carry formula. Where the engines' runs have parted (a chaotic run) the carry is as
           large as the values, and in a float64 run ``u64|carry|`` is as large as the engines'
           own rounding (docs/tolerance.md, "The judge's own rounding")

Each operation adds its own rounding, the size of its own result (``u|result|``), and carries
the inputs' rounding through (the derivative, first order); operations torch fuses (``lerp_``,
``addcmul_``, ``add`` with ``alpha``: one rounding where the textbook has two) are counted with
the textbook's two, an upper bound for both. ``sqrt`` counts ``2N + 1`` with ``N =``
:data:`SQRT_ULPS`: torch's root is at most N ulp from the correctly rounded one, so within N + 1/2
ulp of the exact root, and an ulp is at most 2u|result|. The derivation of every term is in
docs/optimizers.md.

A coefficient (a rate, a beta, a weight) is a Python float both engines round to the run's type;
the carry is worked with the unrounded one, so each product by a coefficient also counts
``|c||C_x|`` (:func:`_coefficient`).

``combine``, ``scaled`` and ``where`` have :class:`sgdtrace.divergence._Bound`'s meaning (SGD's
``update_bound`` uses them), with coefficients that may vary per step (a schedule's rate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the unit roundoff of the float64 arithmetic the judge computes the carries in
U64 = 2.0**-53

#: N: how far (in ulps) torch's CPU ``sqrt`` may be from the correctly rounded root. On x86 torch
#: calls MKL's ``vsSqrt``/``vdSqrt`` in its high-accuracy mode (``ATen/cpu/vml.h``: ``VML_HA``),
#: documented to err by at most 1 ulp from the exact root, so at most 1 ulp from the correctly
#: rounded one; elsewhere (and for 16-bit tensors, rounded from a float32 root) it is the
#: processor's correctly rounded instruction (N = 0). Measured on every machine by
#: :mod:`sgdtrace.probe` (``sgdtrace doctor``): 18% of float32 roots 1 ulp off on an AMD EPYC,
#: 0.6% on an Intel Xeon, never 2.
SQRT_ULPS = 1


def _finite_mag(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.fmax(np.where(np.isfinite(a), np.abs(a), np.nan), np.where(np.isfinite(b), np.abs(b), np.nan))


def _is_one(c) -> np.ndarray | bool:
    return np.asarray(c) == 1


def _coefficient(c, carry) -> np.ndarray:
    """The carry of ``c * x`` as the engines form it: both take a Python float ``c`` rounded to the
    run's type (torch's kernels; the hand side's ``scalar``), so their difference is
    ``fl(c) * C_x``, not ``c * C_x``: off by at most ``u|c||C_x|``, counted here as a rounding (in
    units of u; none for +-1, exact in every type). It matters where the engines' trajectories have
    parted (a chaotic run: RMSprop centered with alpha near 0) and the carried difference is as
    large as the values."""
    c = np.abs(c)
    return np.where(_is_one(c), 0.0, c * np.where(np.isfinite(carry), np.abs(carry), 0.0))


def held(v, carry) -> np.ndarray:
    """A computed value's magnitude: the larger of the two engines' (hand ``v``, torch ``v - carry``)."""
    return np.fmax(np.abs(v), np.abs(v - carry))


@dataclass
class Track:
    v: np.ndarray
    mag: np.ndarray
    rnd: np.ndarray
    carry: np.ndarray
    cerr: np.ndarray | float = 0.0

    # ---------------------------------------------------------------- making one

    @staticmethod
    def measured(a: np.ndarray, b: np.ndarray) -> Track:
        """A value both engines recorded (hand ``a``, torch ``b``): its difference is measured."""
        a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            carry = a64 - b64
            return Track(a64, _finite_mag(a64, b64), np.zeros_like(a64), carry, U64 * np.abs(carry))

    @staticmethod
    def const(value, like: np.ndarray) -> Track:
        """A value both engines hold exactly alike (an initial state, a coefficient)."""
        v = np.broadcast_to(np.asarray(value, dtype=np.float64), np.shape(like)).copy()
        return Track(v, np.abs(v), np.zeros_like(v), np.zeros_like(v))

    # ---------------------------------------------------------------- _Bound's operations

    def combine(self, coef, other: Track, result: np.ndarray | None = None) -> Track:
        """``self + coef * other``: the product rounds (unless coef is +-1), then the sum rounds."""
        c = np.abs(coef)
        with np.errstate(invalid="ignore", over="ignore"):
            v = self.v + coef * other.v
            carry = self.carry + coef * other.carry
            mag = self.mag + c * other.mag
            prod = np.where(_is_one(c), 0.0, c * other.mag)
            rnd = self.rnd + c * other.rnd + prod + (mag if result is None else result) + _coefficient(c, other.carry)
            # the carry's product (unless coef is +-1) and sum, each rounded in float64
            own = np.where(_is_one(c), 0.0, c * np.abs(other.carry)) + np.abs(carry)
            cerr = self.cerr + c * other.cerr + U64 * own
        return Track(v, mag, rnd, carry, cerr)

    def scaled(self, coef) -> Track:
        """``coef * self``, its product's rounding included (none for +-1)."""
        c = np.abs(coef)
        with np.errstate(invalid="ignore", over="ignore"):
            rnd = c * self.rnd + np.where(_is_one(c), 0.0, c * self.mag) + _coefficient(c, self.carry)
            cerr = c * self.cerr + np.where(_is_one(c), 0.0, U64 * c * np.abs(self.carry))
            return Track(coef * self.v, c * self.mag, rnd, coef * self.carry, cerr)

    def where(self, mask: np.ndarray, other: Track) -> Track:
        return Track(
            *(np.where(mask, getattr(other, f), getattr(self, f)) for f in ("v", "mag", "rnd", "carry", "cerr"))
        )


# -------------------------------------------------------------------- torch's kernels, as terms


def neg(x: Track) -> Track:
    """``-x``: exact."""
    return Track(-x.v, x.mag, x.rnd, -x.carry, x.cerr)


def mul(x: Track, y: Track) -> Track:
    """``x * y``: one rounding; carried ``xy - (x - cx)(y - cy) = cx y + x cy - cx cy``. Each
    input's error is scaled by the other input as large as either engine has it."""
    with np.errstate(invalid="ignore", over="ignore"):
        v = x.v * y.v
        carry = x.carry * y.v + x.v * y.carry - x.carry * y.carry
        # the carry's three products and two sums, in float64; the inputs' carries' errors
        # scaled by the other input as torch has it (d carry / d cx = y - cy)
        p1, p2, p3 = np.abs(x.carry * y.v), np.abs(x.v * y.carry), np.abs(x.carry * y.carry)
        cerr = x.cerr * y.mag + y.cerr * x.mag + U64 * (3 * (p1 + p2) + 2 * p3)
        mag = held(v, carry)
        return Track(v, mag, x.rnd * y.mag + x.mag * y.rnd + mag, carry, cerr)


def _smaller(t: Track) -> np.ndarray:
    """The smaller of the two engines' magnitudes of a value (hand ``v``, torch ``v - carry``)."""
    return np.fmin(np.abs(t.v), np.abs(t.v - t.carry))


def div(x: Track, y: Track) -> Track:
    """``x / y``: one rounding; the inputs' relative errors add, over the smaller divisor of the two
    engines (where their runs have parted, torch's divisor can be far smaller than the hand's);
    carried ``x/y - (x - cx)/(y - cy) = (cx y - x cy) / (y (y - cy))``."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        v = x.v / y.v
        theirs = y.v - y.carry  # torch's divisor
        den = y.v * theirs
        carry = (x.carry * y.v - x.v * y.carry) / den
        # in float64: the numerator's two products and difference, the divisor's difference and
        # product, the quotient; the inputs' carries' errors through d/dcx = 1/(y - cy) and
        # d/dcy = -(x - cx)/(y - cy)^2
        num = np.abs(x.carry * y.v) + np.abs(x.v * y.carry)
        cerr = x.cerr / np.abs(theirs) + y.cerr * np.abs(x.v - x.carry) / theirs**2
        cerr = cerr + U64 * (2 * num / np.abs(den) + 3 * np.abs(carry))
        mag = held(v, carry)
        ay = _smaller(y)
        return Track(v, mag, x.rnd / ay + mag * y.rnd / ay + mag, carry, cerr)


def sqrt(x: Track, u: float) -> Track:
    """``sqrt(x)``: torch's CPU kernel is within N + 1/2 ulp of the exact root, at most
    ``(2N + 1)u|result|`` (N = :data:`SQRT_ULPS`; see the module docstring).

    Where the argument is within its own rounding error of zero (RMSprop's centered ``v - g_avg**2``
    with alpha near 0) the root is rounding noise or nan in either engine: its bound is infinite.

    An error ``D = u*rnd`` in x moves sqrt(x) by at most ``min(D / (sqrt(x) + sqrt(max(x - D, 0))), sqrt(D))``,
    x the smaller argument of the two engines (the root is steepest there); carried
    ``sqrt(x) - sqrt(x - c) = c / (sqrt(x) + sqrt(x - c))``.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        xv = np.maximum(x.v, 0.0)
        v = np.sqrt(xv)
        other = np.sqrt(np.maximum(xv - x.carry, 0.0))
        den = v + other
        carry = np.where(den > 0, x.carry / np.where(den > 0, den, 1.0), 0.0)
        D = u * x.rnd
        low = np.fmin(v, other)  # the smaller root of the two engines'
        moved = np.minimum(D / (low + np.sqrt(np.maximum(low * low - D, 0.0))), np.sqrt(D))
        moved = np.where(D > 0, moved, 0.0)
        # in float64: x - c, its root, the sum and the quotient (at most 4 u64 of the carry); the
        # argument's carry's error moves the numerator, and torch's root as D moves a root above
        delta = np.where(np.isfinite(x.cerr), x.cerr, np.inf)
        shift = np.minimum(delta / (other + np.sqrt(np.maximum(other * other - delta, 0.0))), np.sqrt(delta))
        shift = np.where(delta > 0, shift, 0.0)
        cerr = np.where(den > 0, delta / np.where(den > 0, den, 1.0), 0.0) + shift + 4 * U64 * np.abs(carry)
        mag = held(v, carry)
        # an argument within its rounding of zero can be negative in either engine: the root is
        # then nan or rounding noise, and so is all that follows from it (not judged: inf)
        noise = (D > 0) & (x.v - D <= 0)
        return Track(v, mag, np.where(noise, np.inf, moved / u + (2 * SQRT_ULPS + 1) * mag), carry, cerr)


def lerp(x: Track, end: Track, w) -> Track:
    """``x.lerp_(end, w)``: torch's kernel is ``fma(w, end - x, x)`` for w < 0.5 and
    ``fma(-(end - x), 1 - w, end)`` otherwise; two roundings of ``end - x`` scaled by the smaller
    of w and 1 - w, and one of the result. Carried: ``(1 - w) cx + w cend`` (linear)."""
    w = np.asarray(w, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        # the hand's value by torch's own form: ``x + w (end - x)`` loses u64 |end - x| where
        # w >= 0.5 and the result is small, more than the roundings counted below (in a float64
        # run the carries downstream are computed from it)
        step = end.v - x.v
        v = np.where(w < 0.5, x.v + w * step, end.v - step * (1 - w))
        carry = (1 - w) * x.carry + w * end.carry
        small = np.minimum(w, 1 - w)
        # in float64: 1 - w, the two products and the sum
        own = 3 * np.abs((1 - w) * x.carry) + 2 * np.abs(w * end.carry)
        cerr = np.abs(1 - w) * x.cerr + np.abs(w) * end.cerr + U64 * own
        mag = held(v, carry)
        rnd = (1 - w) * x.rnd + w * end.rnd + 2 * small * (x.mag + end.mag) + mag
        # the weight as the engines round it: |w - fl(w)| |C_end - C_x| (see _coefficient)
        rnd = rnd + _coefficient(w, x.carry) + _coefficient(w, end.carry)
        return Track(v, mag, rnd, carry, cerr)


def maximum(x: Track, y: Track) -> Track:
    """``torch.maximum``: no rounding; 1-Lipschitz in each input."""
    with np.errstate(invalid="ignore", over="ignore"):
        v = np.maximum(x.v, y.v)
        carry = v - np.maximum(x.v - x.carry, y.v - y.carry)
        # in float64: torch's two values recovered (each a difference), the result's difference
        cerr = np.maximum(x.cerr, y.cerr) + U64 * (np.fmax(x.mag, y.mag) + np.abs(carry))
        return Track(v, np.fmax(x.mag, y.mag), np.maximum(x.rnd, y.rnd), carry, cerr)


def fit(x: Track, measured: Track) -> Track:
    """A computed value that is also recorded: its rounding is the model's, its magnitude the
    larger of the model's and the measured one."""
    return Track(x.v, np.fmax(x.mag, measured.mag), x.rnd, x.carry, x.cerr)
