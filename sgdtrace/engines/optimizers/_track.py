"""The tolerance model's bookkeeping for an optimizer's update, one operation at a time.

A :class:`Track` is one value both engines compute at every step (an array over the steps):

``v``      the hand engine's value (signed, float64)
``mag``    a bound on |value| in either engine
``rnd``    a bound on the rounding error ONE engine makes in it, in units of the unit roundoff u
``carry``  hand minus torch in exact arithmetic, made from the measured (signed) differences of
           the values the step started from: exact for sums and products, and for ``sqrt``,
           division and ``maximum`` too (each is worked out in a form free of cancellation:
           ``sqrt(x) - sqrt(x - c) = c / (sqrt(x) + sqrt(x - c))``)

Each operation adds its own rounding, the size of its own result (``u|result|``), and carries
the inputs' rounding through (the derivative, first order); operations torch fuses (``lerp_``,
``addcmul_``, ``add`` with ``alpha``: one rounding where the textbook has two) are counted with
the textbook's two, an upper bound for both. ``sqrt`` counts 3: torch's CPU ``sqrt`` is off the
correctly rounded result by one ulp for 0.6% of inputs (measured: see docs/optimizers.md), so its
error is within 1.5 ulp <= 3u|result|. The derivation of every term is in docs/optimizers.md.

``combine``, ``scaled`` and ``where`` have :class:`sgdtrace.divergence._Bound`'s meaning (SGD's
``update_bound`` uses them), with coefficients that may vary per step (a schedule's rate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _finite_mag(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.fmax(np.where(np.isfinite(a), np.abs(a), np.nan), np.where(np.isfinite(b), np.abs(b), np.nan))


def _is_one(c) -> np.ndarray | bool:
    return np.asarray(c) == 1


@dataclass
class Track:
    v: np.ndarray
    mag: np.ndarray
    rnd: np.ndarray
    carry: np.ndarray

    # ---------------------------------------------------------------- making one

    @staticmethod
    def measured(a: np.ndarray, b: np.ndarray) -> Track:
        """A value both engines recorded (hand ``a``, torch ``b``): its difference is measured."""
        a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            return Track(a64, _finite_mag(a64, b64), np.zeros_like(a64), a64 - b64)

    @staticmethod
    def const(value, like: np.ndarray) -> Track:
        """A value both engines hold exactly alike (an initial state, a coefficient)."""
        v = np.broadcast_to(np.asarray(value, dtype=np.float64), np.shape(like)).copy()
        return Track(v, np.abs(v), np.zeros_like(v), np.zeros_like(v))

    def _out(self, v, rnd, carry) -> Track:
        """A computed value: its magnitude is the larger of the two engines' (hand ``v``, torch ``v - carry``)."""
        with np.errstate(invalid="ignore", over="ignore"):
            return Track(v, np.fmax(np.abs(v), np.abs(v - carry)), rnd, carry)

    # ---------------------------------------------------------------- _Bound's operations

    def combine(self, coef, other: Track, result: np.ndarray | None = None) -> Track:
        """``self + coef * other``: the product rounds (unless coef is +-1), then the sum rounds."""
        c = np.abs(coef)
        with np.errstate(invalid="ignore", over="ignore"):
            v = self.v + coef * other.v
            carry = self.carry + coef * other.carry
            mag = self.mag + c * other.mag
            prod = np.where(_is_one(c), 0.0, c * other.mag)
            rnd = self.rnd + c * other.rnd + prod + (mag if result is None else result)
        return Track(v, mag, rnd, carry)

    def scaled(self, coef) -> Track:
        """``coef * self``, its product's rounding included (none for +-1)."""
        c = np.abs(coef)
        with np.errstate(invalid="ignore", over="ignore"):
            return Track(
                coef * self.v, c * self.mag, c * self.rnd + np.where(_is_one(c), 0.0, c * self.mag), coef * self.carry
            )

    def where(self, mask: np.ndarray, other: Track) -> Track:
        return Track(*(np.where(mask, getattr(other, f), getattr(self, f)) for f in ("v", "mag", "rnd", "carry")))


# -------------------------------------------------------------------- torch's kernels, as terms


def neg(x: Track) -> Track:
    """``-x``: exact."""
    return Track(-x.v, x.mag, x.rnd, -x.carry)


def mul(x: Track, y: Track) -> Track:
    """``x * y``: one rounding; carried ``xy - (x - cx)(y - cy) = cx y + x cy - cx cy``."""
    with np.errstate(invalid="ignore", over="ignore"):
        v = x.v * y.v
        carry = x.carry * y.v + x.v * y.carry - x.carry * y.carry
        out = x._out(v, 0.0, carry)
        out.rnd = x.rnd * np.abs(y.v) + np.abs(x.v) * y.rnd + out.mag
    return out


def div(x: Track, y: Track) -> Track:
    """``x / y``: one rounding; the inputs' relative errors add; carried
    ``x/y - (x - cx)/(y - cy) = (cx y - x cy) / (y (y - cy))``."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        v = x.v / y.v
        carry = (x.carry * y.v - x.v * y.carry) / (y.v * (y.v - y.carry))
        out = x._out(v, 0.0, carry)
        ay = np.abs(y.v)
        out.rnd = x.rnd / ay + np.abs(v) * y.rnd / ay + out.mag
    return out


def sqrt(x: Track, u: float) -> Track:
    """``sqrt(x)``: torch's CPU kernel is within 1.5 ulp (3u|result|, see the module docstring).

    Where the argument is within its own rounding error of zero (RMSprop's centered ``v - g_avg**2``
    with alpha near 0) the root is rounding noise or nan in either engine: its bound is infinite.

    An error ``D = u*rnd`` in x moves sqrt(x) by at most ``min(D / (sqrt(x) + sqrt(max(x - D, 0))), sqrt(D))``;
    carried ``sqrt(x) - sqrt(x - c) = c / (sqrt(x) + sqrt(x - c))``.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        xv = np.maximum(x.v, 0.0)
        v = np.sqrt(xv)
        other = np.sqrt(np.maximum(xv - x.carry, 0.0))
        den = v + other
        carry = np.where(den > 0, x.carry / np.where(den > 0, den, 1.0), 0.0)
        D = u * x.rnd
        moved = np.minimum(D / (v + np.sqrt(np.maximum(xv - D, 0.0))), np.sqrt(D))
        moved = np.where(D > 0, moved, 0.0)
        out = x._out(v, 0.0, carry)
        # an argument within its rounding of zero can be negative in either engine: the root is
        # then nan or rounding noise, and so is all that follows from it (not judged: inf)
        noise = (D > 0) & (x.v - D <= 0)
        out.rnd = np.where(noise, np.inf, moved / u + 3 * out.mag)
    return out


def lerp(x: Track, end: Track, w) -> Track:
    """``x.lerp_(end, w)``: torch's kernel is ``fma(w, end - x, x)`` for w < 0.5 and
    ``fma(-(end - x), 1 - w, end)`` otherwise; two roundings of ``end - x`` scaled by the smaller
    of w and 1 - w, and one of the result. Carried: ``(1 - w) cx + w cend`` (linear)."""
    w = np.asarray(w, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        v = x.v + w * (end.v - x.v)
        carry = (1 - w) * x.carry + w * end.carry
        small = np.minimum(w, 1 - w)
        out = x._out(v, 0.0, carry)
        out.rnd = (1 - w) * x.rnd + w * end.rnd + 2 * small * (x.mag + end.mag) + out.mag
    return out


def maximum(x: Track, y: Track) -> Track:
    """``torch.maximum``: no rounding; 1-Lipschitz in each input."""
    with np.errstate(invalid="ignore", over="ignore"):
        v = np.maximum(x.v, y.v)
        carry = v - np.maximum(x.v - x.carry, y.v - y.carry)
        return Track(v, np.fmax(x.mag, y.mag), np.maximum(x.rnd, y.rnd), carry)


def fit(x: Track, measured: Track) -> Track:
    """A computed value that is also recorded: its rounding is the model's, its magnitude the
    larger of the model's and the measured one."""
    return Track(x.v, np.fmax(x.mag, measured.mag), x.rnd, x.carry)
