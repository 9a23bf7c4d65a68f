"""One algebra, two interpretations: a model's forward and backward written once, against ``ops``.

A model (other than the article's, whose closed forms are tighter) writes its batch's forward
and backward pass as a function of an operations namespace, one small named step per node and
chain-rule factor::

    def forward_backward(ops, params, x, y):
        z = ops.matvec(x, params["w"], params["b"])      # z = X·w + b   (F.linear, addmm)
        p = ops.sigmoid(z)
        dl_dz = ops.div_n(ops.sub(p, y), n)              # (p - y)/n
        return {"loss": ..., "grad_w": ops.vecmat(dl_dz, x), "grad_b": ops.sum(dl_dz, keep=True)}

and the same function is run by two implementations of ``ops``:

* :class:`HandOps` (the run's dtype): NumPy arrays with torch's rounding rules. A 16-bit
  sum, matmul or ``F.linear`` accumulates in float32 and rounds once; an element-wise operation
  rounds its result (computed in float32, as torch's 16-bit kernels do); the functions (exp, log,
  sigmoid, ...) are computed in float64 and rounded once. This IS the hand engine of such a model:
  readable, no autograd, no torch.
* :class:`TrackOps` (the judge): every value a :class:`~sgdtrace.track.Track`
  on arrays with a leading axis of steps (all steps of one batch size judged at once): the hand
  side's value ``v`` (float64, from the hand side's inputs), ``mag`` (|value| on either side),
  ``rnd`` (a bound on ONE engine's rounding, in units of the run's u) and ``carry`` (C: hand minus
  torch in exact arithmetic, from the measured differences the step started from). Each operation
  adds its own rounding and propagates its inputs' by the largest derivative over the interval the
  two sides' values (and their roundings) span; C is propagated by exact differences in forms
  free of cancellation (docs/tolerance.md, "C by difference propagation").

Shapes: the model's own (``x`` (n, D), ``w`` (D,), a matrix (H, D)); under :class:`TrackOps`
every value has one more leading axis (the steps), so a model indexes and reduces only trailing
axes (``axis=-1``), and ``matvec``/``vecmat``/``linear``/``matmul`` broadcast over leading axes.

Operations (both classes):

``const(value, like)``, ``add``, ``sub``, ``mul``, ``div``, ``neg``, ``scale(a, c)`` (``c`` a
Python float torch rounds to the run's type, or keeps in float32 for a 16-bit tensor),
``div_n(a, n)`` (torch's ``grad / numel``), ``sum(a, keep=False)`` (over the last axis),
``mean(a)``, ``matvec(x, w, b=None)`` (``X·w (+ b)``: (…, n, D)·(…, D) → (…, n), a dot product of
D (+1) terms per row), ``vecmat(g, x)`` (``Σ_i g_i x_i``: (…, n)·(…, n, D) → (…, D)),
``linear(x, W, b)`` (``F.linear``: (…, n, D), (…, H, D), (…, H) → (…, n, H)), ``matmul(a, b)``
(last two axes), ``T(a)`` (swap the last two axes), ``rows(x)`` (the batch size n),
``expand(a, axis)`` (a new axis of length 1, counted from the end: an outer product is
``matmul(expand(g, -1), expand(w, -2))``), ``exp``, ``log``, ``log1p``, ``sigmoid``,
``tanh``, ``log_sigmoid``, ``relu``, ``relu_mask(z)`` (relu's derivative, 0/1; where ``|z|`` is
within its own rounding of 0 the sides may take different branches: :class:`TrackOps` marks the
element ambiguous, a product with it adds the other factor's full magnitude to the bound, and
counts it in :attr:`TrackOps.ambiguous`), ``clamp_min(a, lo)``, ``maximum(a, b)``,
``sigmoid_backward(g, p)`` (torch's ``g·(1 - p)·p``), ``tanh_backward(g, t)`` (``g·(1 - t²)``).
"""

from __future__ import annotations

import numpy as np

from sgdtrace import dtypes
from sgdtrace.track import Track, _smaller, held

#: N: how far (in ulps) an element-wise function (exp, log, log1p, tanh, sigmoid, log_sigmoid) of
#: either side may be from the correctly rounded result: torch's kernels (``sgdtrace doctor``
#: measures them, vectorised and one element at a time: at most 2 on the machines measured, the
#: float64 sigmoid) and the hand side's (float64 libm calls, at most three roundings after a
#: 1-ulp exp). The judge uses the larger of this and the machine's probe.
FUNCTION_ULPS = 3


def function_ulps(name: str, dtype: str) -> int:
    """The bound N for ``name`` in ``dtype``: :data:`FUNCTION_ULPS`, or the probe's largest measured
    distance (both paths) where it is larger. The probe is read from its cache (measured once)."""
    n = FUNCTION_ULPS
    try:
        from sgdtrace.probe import rules

        entry = rules().get("functions", {}).get(name, {}).get(dtype, {})
        for path in ("one", "vector"):
            got = (entry.get(path) or {}).get("max_ulp")
            if got is not None:
                n = max(n, int(got))
    except Exception:  # pragma: no cover - no torch (the probe needs it): the stated bound
        pass
    return n


# ====================================================================== the hand side


class HandOps:
    """torch's arithmetic by hand, on NumPy arrays of the run's dtype (module docstring)."""

    def __init__(self, dtype: str):
        self.name = dtype
        self.dtype = dtypes.np_dtype(dtype)
        self.reduced = dtype in dtypes.REDUCED
        self.acc = np.dtype(np.float32) if self.reduced else self.dtype

    # ---------------------------------------------------------------- helpers

    def _out(self, v):
        """A result computed wider (float32 for 16 bits, float64 for a function) rounded to the type."""
        v = np.asarray(v)
        if self.reduced and v.dtype == np.float64:
            v = v.astype(np.float32)
        return v.astype(self.dtype)

    def _f(self, fn, a):
        """An element-wise function: in float64, rounded once (16 bits: through float32, as torch's
        float32 result is rounded)."""
        with np.errstate(all="ignore"):
            return self._out(fn(np.asarray(a, dtype=np.float64)).astype(np.float32 if self.reduced else self.dtype))

    def _w(self, a):
        """``a`` as the kernels compute with it: float32 for 16 bits."""
        return np.asarray(a).astype(self.acc) if self.reduced else np.asarray(a)

    def scalar(self, c: float):
        """A Python float as a 16-bit kernel keeps it (float32) or the type rounds it."""
        return np.float32(c) if self.reduced else self.dtype.type(c)

    # ---------------------------------------------------------------- values

    def const(self, value, like=None):
        shape = np.shape(like) if like is not None else np.shape(value)
        return np.broadcast_to(self._out(np.asarray(value, dtype=np.float64)), shape).copy()

    def add(self, a, b):
        return self._out(self._w(a) + self._w(b))

    def sub(self, a, b):
        return self._out(self._w(a) - self._w(b))

    def mul(self, a, b):
        return self._out(self._w(a) * self._w(b))

    def div(self, a, b):
        with np.errstate(all="ignore"):
            return self._out(self._w(a) / self._w(b))

    def neg(self, a):
        return -a

    def scale(self, a, c: float):
        return self._out(self._w(a) * self.scalar(c))

    def div_n(self, a, n: int):
        """torch's ``grad / numel`` (a division by the integer count)."""
        with np.errstate(all="ignore"):
            return self._out(self._w(a) / self.acc.type(n))

    # ---------------------------------------------------------------- reductions

    def sum(self, a, keep: bool = False):
        out = self._out(np.asarray(a).sum(axis=-1, dtype=self.acc))
        return out[..., None] if keep else out

    def mean(self, a):
        k = np.shape(a)[-1]
        return self._out(np.asarray(a).sum(axis=-1, dtype=self.acc) / self.acc.type(k))

    def matvec(self, x, w, b=None):
        out = np.matmul(self._w(x), self._w(w)[..., None])[..., 0]
        if b is not None:
            out = out + self._w(b)
        return self._out(out)

    def vecmat(self, g, x):
        return self._out(np.matmul(self._w(g)[..., None, :], self._w(x))[..., 0, :])

    def linear(self, x, W, b=None):
        out = np.matmul(self._w(x), np.swapaxes(self._w(W), -1, -2))
        if b is not None:
            out = out + self._w(b)[..., None, :]
        return self._out(out)

    def matmul(self, a, b):
        return self._out(np.matmul(self._w(a), self._w(b)))

    def T(self, a):
        return np.swapaxes(a, -1, -2)

    def rows(self, x) -> int:
        """The batch size n of ``x`` (…, n, D)."""
        return int(np.shape(x)[-2])

    def expand(self, a, axis: int):
        """``a`` with a new axis of length 1 at ``axis`` (negative: counted from the end)."""
        return np.expand_dims(a, axis)

    # ---------------------------------------------------------------- functions

    def exp(self, a):
        return self._f(np.exp, a)

    def log(self, a):
        return self._f(np.log, a)

    def log1p(self, a):
        return self._f(np.log1p, a)

    def sigmoid(self, a):
        """σ(a) as torch's kernel forms it, ``1/(1 + e^-a)`` with ``e^-a`` in the type it computes
        in (float32 for 16 bits): where that overflows (a < -88.7 in float32) σ is 0, not the
        subnormal the exact value rounds to; elsewhere within the function bound."""
        acc = np.dtype(np.float32) if self.reduced else self.dtype
        with np.errstate(all="ignore"):
            e = np.exp(-np.asarray(a, dtype=np.float64)).astype(acc)  # e^-a, rounded once to the type
            one = acc.type(1)
            return self._out(one / (one + e))  # then 1 + e and the reciprocal, each rounded, as torch

    def tanh(self, a):
        return self._f(np.tanh, a)

    def log_sigmoid(self, a):
        return self._f(_log_sigmoid, a)

    def relu(self, a):
        return np.maximum(a, self.dtype.type(0))

    def relu_mask(self, z):
        return (np.asarray(z) > 0).astype(self.dtype)

    def clamp_min(self, a, lo: float):
        return np.maximum(a, self.dtype.type(lo))

    def maximum(self, a, b):
        return np.maximum(a, b)

    def sigmoid_backward(self, g, p):
        """torch's ``g * (1 - p) * p`` (SigmoidBackward0), left to right."""
        one = self.scalar(1.0)
        return self._out(self._w(self._out(self._w(g) * self._w(self._out(one - self._w(p))))) * self._w(p))

    def tanh_backward(self, g, t):
        """torch's ``g * (1 - t * t)`` (TanhBackward0)."""
        one = self.scalar(1.0)
        return self.mul(g, self._out(one - self._w(self.mul(t, t))))


def _sigmoid(a):
    """σ(a) in float64 without overflow: ``exp(a - logaddexp(0, a))``."""
    return np.exp(-np.logaddexp(0.0, -a))


def _log_cosh(a):
    """log cosh(a) without overflow: |a| + log1p(e^(-2|a|)) - log 2."""
    m = np.abs(a)
    return m + np.log1p(np.exp(-2.0 * m)) - np.log(2.0)


def _log_sigmoid(a):
    """log σ(a) = -log(1 + e^-a), free of overflow."""
    return -np.logaddexp(0.0, -a)


def _log_sigmoid_rise(hi, lo, d):
    """log σ(hi) - log σ(lo) >= 0 for 0 <= lo <= hi, ``d = hi - lo`` (exact: a carry or a bound):
    ``log1p(r)`` with ``r = e^-lo (1 - e^-d) / (1 + e^-hi)``, ``1 + r = σ(hi)/σ(lo)`` in [1, 2]
    (no cancellation; every exponent <= 0, no overflow)."""
    return np.log1p(np.exp(-lo) * -np.expm1(-d) / (1.0 + np.exp(-hi)))


def _log_sigmoid_diff(a, c):
    """log σ(a) - log σ(a - c), free of cancellation for any carry (docs/tolerance.md): split at 0
    where a and b = a - c lie on both sides of it (both parts have the sign of c: their sum does not
    cancel); on [0, ∞) :func:`_log_sigmoid_rise`; on (-∞, 0] ``log σ(t) = t + log σ(-t)``, so a part
    of width d there is ``d - rise(-lo, -hi)``, at least d/2 (σ(-s) <= 1/2 for s >= 0)."""
    a = np.asarray(a, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    b = a - c
    hi, lo = np.fmax(a, b), np.fmin(a, b)
    d = np.abs(c)
    # every exponent <= 0 and every width >= 0 below: nothing overflows, nothing is invalid
    # the part on [0, ∞): all of it where lo >= 0, [0, hi] where lo < 0 < hi, none where hi <= 0
    # (the width is d itself where the whole lies on one side: b = a - c may round to a)
    p_lo = np.fmax(lo, 0.0)
    p_d = np.where(lo >= 0, d, np.fmax(hi, 0.0))
    pos = np.where(hi > 0, _log_sigmoid_rise(np.fmax(hi, 0.0), p_lo, p_d), 0.0)
    # the part on (-∞, 0]: all of it where hi <= 0, [lo, 0] where lo < 0 < hi, none where lo >= 0
    n_hi = np.fmin(hi, 0.0)
    n_d = np.where(hi <= 0, d, np.fmax(-lo, 0.0))
    neg = np.where(lo < 0, n_d - _log_sigmoid_rise(np.fmax(-lo, 0.0), -n_hi, n_d), 0.0)
    return np.sign(c) * (pos + neg)


def _sigmoid_diff(a, c):
    """σ(a) - σ(a - c) = σ(a)·σ(-(a - c))·(1 - e^-c), taken with the carry's sign outside so that
    the exponential is of a non-positive number (``1 - e^-|c|`` in [0, 1]: no overflow for any c)."""
    a = np.asarray(a, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    b = a - c
    hi, lo = np.where(c >= 0, a, b), np.where(c >= 0, b, a)
    return np.sign(c) * _sigmoid_of_exp(hi) * _sigmoid_of_exp(-lo) * -np.expm1(-np.abs(c))


def _sigmoid_of_exp(x):
    """σ(x) from one exponential of an argument <= 0 (``e^x/(1 + e^x)`` below 0, ``1/(1 + e^-x)``
    above): within 3 u₆₄ relative for any x (``exp(-logaddexp(0, -x))`` errs by |x|·u₆₄ for x < 0,
    the exponent's own rounding)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))  # in [0, 1]: no overflow
    return np.where(x < 0, e, 1.0) / (1.0 + e)


def _log_diff(a, c):
    """log a - log(a - c) for a, a - c > 0: ``-log1p(-c/a)`` where ``|c/a| <= 1/2`` (log1p's argument
    away from -1), else ``log(a/(a - c))`` (a ratio outside [2/3, 2], whose log is at least log 1.5
    in size: the ratio's relative rounding stays relative)."""
    a = np.asarray(a, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        near = np.abs(c) <= 0.5 * np.abs(a)
        return np.where(near, -np.log1p(-c / a), np.log(a / (a - c)))


# ====================================================================== the judge's side


class TrackOps:
    """The judge's interpretation: values and their bounds together (module docstring).

    ``dtype`` is the run's; ``u`` its unit roundoff. :attr:`peak` is, per step (the leading axis),
    the largest magnitude any intermediate reached (the overflow rule); :attr:`ambiguous` counts the
    elements where relu's branch was ambiguous.
    """

    def __init__(self, dtype: str, steps: int):
        self.name = dtype
        self.u = dtypes.unit_roundoff(dtype)
        self.acc = dtypes.accumulation(dtype)
        self.reduced = dtype in dtypes.REDUCED
        # C is computed in float64: its own rounding, in units of the run's u
        self.c64 = dtypes.unit_roundoff("float64") / self.u
        self.peak = np.zeros(steps)
        # a result that rounds into the subnormal range errs by up to half the smallest subnormal
        # (an absolute error, not u|result|): in units of u
        self.eta = _tiniest(dtype) / 2 / self.u
        # e^-z overflows the type the kernel computes in below -log(largest): σ is then 0
        self.exp_limit = float(np.log(float(dtypes.finfo(self.acc).max)))
        self.ambiguous = 0
        self.ambiguous_steps = np.zeros(steps, dtype=np.int64)

    # ---------------------------------------------------------------- bookkeeping

    def _seen(self, t: Track) -> Track:
        m = np.asarray(t.mag, dtype=np.float64)
        if m.ndim >= 1 and m.shape[0] == self.peak.shape[0]:
            with np.errstate(invalid="ignore"):
                self.peak = np.fmax(self.peak, m.reshape(m.shape[0], -1).max(axis=1) if m.ndim > 1 else m)
        return t

    def _c64(self, carry, ops=1.0):
        """The float64 rounding of a carry worked out in ``ops`` operations (a number, or one per
        element), in units of u; none for a carry that is not finite (it is not judged)."""
        with np.errstate(invalid="ignore", over="ignore"):
            return np.where(np.isfinite(carry), ops * self.c64 * np.abs(carry), 0.0)

    def _units(self, name: str) -> float:
        """An element-wise function's rounding of its result, in units of u: within N + 1/2 ulp of
        the exact value (N = :func:`function_ulps`), an ulp at most 2u|result|; 16 bits: the float32
        result's error (in float32's u) and one rounding to the type."""
        n = function_ulps(name, "float32" if self.reduced else self.name)
        if self.reduced:
            return 1.0 + (2 * n + 1) * dtypes.unit_roundoff("float32") / self.u
        return 2.0 * n + 1.0

    def _sum_units(self, k: int) -> float:
        """A sum or dot product of k terms: gamma_k in the type it accumulates in, in units of the
        run's u, and one rounding to the type where that is wider (16 bits on the CPU)."""
        g = dtypes.gamma(max(int(k), 1), self.acc) / self.u
        return g + (1.0 if self.acc != self.name else 0.0)

    # ---------------------------------------------------------------- values

    def input(self, v) -> Track:
        """A value both sides hold alike (the batch's x, y): no difference, no rounding."""
        v = np.asarray(v, dtype=np.float64)
        return Track(v, np.abs(v), np.zeros_like(v), np.zeros_like(v))

    def const(self, value, like=None) -> Track:
        """A Python float both sides round to the run's type alike: its one rounding is counted
        where the type does not hold it (1e-12), none where it does (1, -100)."""
        t = self.input(value) if like is None else Track.const(value, like.v if isinstance(like, Track) else like)
        held = float(dtypes.cast(np.array([float(np.ravel(value)[0])]), self.name).astype(np.float64)[0])
        if held != float(np.ravel(value)[0]):
            t.rnd = t.rnd + np.abs(t.v)
        return t

    def _binary(self, v, carry, rnd) -> Track:
        mag = held(v, carry)
        return self._seen(Track(v, mag, rnd + mag + self._c64(carry), carry))

    def add(self, a: Track, b: Track) -> Track:
        with np.errstate(invalid="ignore", over="ignore"):
            return self._binary(a.v + b.v, a.carry + b.carry, a.rnd + b.rnd)

    def sub(self, a: Track, b: Track) -> Track:
        with np.errstate(invalid="ignore", over="ignore"):
            return self._binary(a.v - b.v, a.carry - b.carry, a.rnd + b.rnd)

    def mul(self, a: Track, b: Track) -> Track:
        with np.errstate(invalid="ignore", over="ignore"):
            v = a.v * b.v
            carry = a.carry * b.v + a.v * b.carry - a.carry * b.carry
            return self._binary(v, carry, a.rnd * b.mag + a.mag * b.rnd + self.eta)

    def div(self, a: Track, b: Track) -> Track:
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            v = a.v / b.v
            carry = (a.carry * b.v - a.v * b.carry) / (b.v * (b.v - b.carry))
            mag = held(v, carry)
            ab = _smaller(b)
            rnd = a.rnd / ab + mag * b.rnd / ab + mag + self.eta + self._c64(carry, 3)
        return self._seen(Track(v, mag, rnd, carry))

    def neg(self, a: Track) -> Track:
        return Track(-a.v, a.mag, a.rnd, -a.carry)

    def scale(self, a: Track, c: float) -> Track:
        with np.errstate(invalid="ignore", over="ignore"):
            out = a.scaled(c)
            out.rnd = out.rnd + self._c64(out.carry)
        return self._seen(out)

    def div_n(self, a: Track, n: int) -> Track:
        """``a / n``: at most two roundings (a reciprocal and a product, or one division)."""
        with np.errstate(invalid="ignore", over="ignore"):
            carry = a.carry / n
            out = Track(a.v / n, a.mag / n, a.rnd / n, carry)
            out.rnd = out.rnd + 2 * out.mag + self._c64(carry)
        return self._seen(out)

    # ---------------------------------------------------------------- reductions

    def sum(self, a: Track, keep: bool = False) -> Track:
        k = a.v.shape[-1]
        with np.errstate(invalid="ignore", over="ignore"):
            terms = a.mag.sum(axis=-1)
            v, carry = a.v.sum(axis=-1), a.carry.sum(axis=-1)
            rnd = a.rnd.sum(axis=-1) + _sum_depth(k, self.name) * terms + self._c64(np.abs(a.carry).sum(axis=-1), k)
            out = Track(v, held(v, carry), rnd, carry)
            self.peak = np.fmax(self.peak, _per_step(terms, self.peak.shape[0]))
        if keep:
            out = Track(*(f[..., None] for f in (out.v, out.mag, out.rnd, out.carry)))
        return self._seen(out)

    def mean(self, a: Track) -> Track:
        return self.div_n(self.sum(a), a.v.shape[-1])

    def _dot(self, av, am, ar, ac, bv, bm, br, bc, k: int, extra: Track | None = None) -> Track:
        """Dot products (``np.matmul`` on the four fields): gamma_k of the terms' magnitudes."""
        with np.errstate(invalid="ignore", over="ignore"):
            v = np.matmul(av, bv)
            carry = np.matmul(ac, bv) + np.matmul(av, bc) - np.matmul(ac, bc)
            terms = np.matmul(am, bm)
            rnd = np.matmul(ar, bm) + np.matmul(am, br)
            ac_abs = np.abs(np.nan_to_num(ac, posinf=0, neginf=0))
            bc_abs = np.abs(np.nan_to_num(bc, posinf=0, neginf=0))
            c_terms = np.matmul(ac_abs, np.abs(bv)) + np.matmul(np.abs(av), bc_abs) + np.matmul(ac_abs, bc_abs)
            if extra is not None:
                v, carry, terms = v + extra.v, carry + extra.carry, terms + extra.mag
                rnd = rnd + extra.rnd
                c_terms = c_terms + np.abs(extra.carry)
                k += 1
            rnd = rnd + self._sum_units(k) * terms + self._c64(c_terms, k + 2)
            out = Track(v, held(v, carry), rnd, carry)
            self.peak = np.fmax(self.peak, _per_step(terms, self.peak.shape[0]))
        return self._seen(out)

    def matvec(self, x: Track, w: Track, b: Track | None = None) -> Track:
        """``X·w (+ b)``: one dot product of D terms per row (D + 1 with the bias, added inside the
        sum as torch's addmm does)."""
        e = lambda f: f[..., None]  # noqa: E731
        extra = None if b is None else Track(*(f[..., None, :] for f in (b.v, b.mag, b.rnd, b.carry)))
        out = self._dot(x.v, x.mag, x.rnd, x.carry, e(w.v), e(w.mag), e(w.rnd), e(w.carry), x.v.shape[-1], extra)
        return Track(*(f[..., 0] for f in (out.v, out.mag, out.rnd, out.carry)))

    def vecmat(self, g: Track, x: Track) -> Track:
        """``Σ_i g_i x_i``: (…, n)·(…, n, D) → (…, D), a dot product of n terms per feature."""
        e = lambda f: f[..., None, :]  # noqa: E731
        out = self._dot(e(g.v), e(g.mag), e(g.rnd), e(g.carry), x.v, x.mag, x.rnd, x.carry, g.v.shape[-1])
        return Track(*(f[..., 0, :] for f in (out.v, out.mag, out.rnd, out.carry)))

    def linear(self, x: Track, W: Track, b: Track | None = None) -> Track:
        """``F.linear(x, W, b)``: (…, n, D) with (…, H, D) and (…, H) → (…, n, H)."""
        Wt = self.T(W)
        extra = None if b is None else Track(*(f[..., None, :] for f in (b.v, b.mag, b.rnd, b.carry)))
        return self._dot(x.v, x.mag, x.rnd, x.carry, Wt.v, Wt.mag, Wt.rnd, Wt.carry, x.v.shape[-1], extra)

    def matmul(self, a: Track, b: Track) -> Track:
        return self._dot(a.v, a.mag, a.rnd, a.carry, b.v, b.mag, b.rnd, b.carry, a.v.shape[-1])

    def T(self, a: Track) -> Track:
        return Track(*(np.swapaxes(f, -1, -2) for f in (a.v, a.mag, a.rnd, a.carry)))

    def rows(self, x: Track) -> int:
        return int(x.v.shape[-2])

    def expand(self, a: Track, axis: int) -> Track:
        return Track(*(np.expand_dims(f, axis) for f in (a.v, a.mag, a.rnd, a.carry)))

    # ---------------------------------------------------------------- functions

    def _function(self, name: str, a: Track, f, slope, diff, c_ops=4.0) -> Track:
        """An element-wise function: its own rounding (``_units`` times |result|), the input's
        rounding times the largest |f'| over the interval both sides' inputs span (widened by that
        rounding), and the carry ``diff(a, c) = f(a) - f(a - c)`` exactly, free of cancellation;
        ``diff``'s own float64 error within ``c_ops`` u64 of |C| (4 unless the caller says more)."""
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            D = self.u * a.rnd
            lo = np.fmin(a.v, a.v - a.carry) - D
            hi = np.fmax(a.v, a.v - a.carry) + D
            v = f(a.v)
            carry = np.where(a.carry == 0, 0.0, diff(a.v, a.carry))
            mag = held(v, carry)
            moved = np.where(a.rnd == 0, 0.0, a.rnd * slope(lo, hi))
            rnd = moved + self._units(name) * mag + self.eta + self._c64(carry, c_ops)
            # an exact input both sides hold alike with an infinite result (log 0): -inf on both
            exact = (a.rnd == 0) & (a.carry == 0) & ~np.isfinite(v)
            out = Track(v, mag, np.where(exact, 0.0, rnd), carry)
            # the largest value either side can hold (f increasing: f at the interval's top), for a
            # clamp that follows (a log whose argument may reach 0 is unbounded below only)
            out.top = f(hi) + self._units(name) * self.u * np.abs(f(hi))
        return self._seen(out)

    def exp(self, a: Track) -> Track:
        return self._function("exp", a, np.exp, lambda lo, hi: np.exp(hi), lambda x, c: -np.exp(x) * np.expm1(-c))

    def log(self, a: Track) -> Track:
        return self._function(
            "log",
            a,
            np.log,
            lambda lo, hi: np.where(lo > 0, 1.0 / lo, np.inf),
            _log_diff,
        )

    def log1p(self, a: Track) -> Track:
        # C = -log1p(t), t = -c/(1 + x) formed in two roundings; log1p amplifies t's relative
        # error by k = |t| / (|1 + t| |log1p t|) (1 at t = 0; large where 1 + t nears 0): C's own
        # float64 error is within (4 + 2k) u64 |C| (docs/tolerance.md, "The judge's own rounding")
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            t = -a.carry / (1.0 + a.v)
            lt = np.log1p(t)
            k = np.where(t == 0, 1.0, np.abs(t) / (np.abs(1.0 + t) * np.abs(np.where(t == 0, 1.0, lt))))
        return self._function(
            "log1p",
            a,
            np.log1p,
            lambda lo, hi: np.where(lo > -1, 1.0 / (1.0 + lo), np.inf),
            lambda x, c: -np.log1p(-c / (1.0 + x)),
            4.0 + 2.0 * k,
        )

    def sigmoid(self, a: Track) -> Track:
        def slope(lo, hi):  # σ' = σ(1 - σ), largest at the smallest |x| of the interval
            m = np.where((lo <= 0) & (hi >= 0), 0.0, np.fmin(np.abs(lo), np.abs(hi)))
            return _sigmoid(m) * _sigmoid(-m)  # σ(1 - σ) without the cancellation of 1 - σ

        out = self._function("sigmoid", a, _sigmoid, slope, _sigmoid_diff)
        # C's own float64 evaluation: within (10 + |b|)·u₆₄·|C| (b = a - c rounded when formed;
        # docs/tolerance.md); _function counted 4 of the 10
        with np.errstate(invalid="ignore", over="ignore"):
            out.rnd = out.rnd + self._c64(out.carry, 6.0 + np.where(a.carry == 0, 0.0, np.abs(a.v - a.carry)))
        # saturation: where e^-z < u/4 for every z either side can hold, 1 + e^-z rounds to 1 and
        # both sides' σ(z) is exactly 1 (torch's kernel is 1/(1 + e^-z); the hand's float64 σ is
        # within u/4 of 1 and rounds to it): what follows is computed from the same 1 on both sides
        # (pinned per machine by tests/test_logistic.py, vectorised and one element at a time)
        # and where e^-z overflows the type the kernel computes in for every z either side can hold,
        # σ is exactly 0 on both sides; where only some of them can, it may be 0 on one side only
        with np.errstate(invalid="ignore", over="ignore"):
            low = np.fmin(a.v, a.v - a.carry) - self.u * a.rnd
            high = np.fmax(a.v, a.v - a.carry) + self.u * a.rnd
            one = np.exp(-low) <= self.u / 4
            zero = high < -self.exp_limit
            band = (low < -self.exp_limit) & ~zero
        if np.any(one | zero | band):
            exact = one | zero
            out = Track(
                np.where(one, 1.0, np.where(zero, 0.0, out.v)),
                np.where(one, 1.0, np.where(zero, 0.0, out.mag)),
                np.where(exact, 0.0, np.where(band, out.rnd + out.mag / self.u, out.rnd)),
                np.where(exact, 0.0, out.carry),
            )
        return out

    def tanh(self, a: Track) -> Track:
        def slope(lo, hi):
            m = np.where((lo <= 0) & (hi >= 0), 0.0, np.fmin(np.abs(lo), np.abs(hi)))
            return np.exp(-2.0 * _log_cosh(m))  # 1 - tanh² = 1/cosh², free of cancellation

        def diff(x, c):  # tanh(x) - tanh(x - c) = sinh(c) / (cosh(x) cosh(x - c)), in logs of cosh
            return np.sinh(c) * np.exp(-(_log_cosh(x) + _log_cosh(x - c)))

        # C's own float64 error: the exponent -(log cosh x + log cosh(x - c)) is formed in five
        # roundings, each within u64 (|x| + |x - c|) (log cosh t <= |t|), which the exponential
        # turns into relative error; sinh, exp and the product three more, and x - c one
        with np.errstate(invalid="ignore", over="ignore"):
            c_ops = 4.0 + 5.0 * (np.abs(a.v) + np.abs(a.v - a.carry))
        return self._function("tanh", a, np.tanh, slope, diff, c_ops)

    def log_sigmoid(self, a: Track) -> Track:
        """log σ(a) (torch's ``min(0, a) - log1p(exp(-|a|))``: three operations, each within the
        function bound; its slope σ(-a) is largest at the smallest a)."""

        out = self._function("sigmoid", a, _log_sigmoid, lambda lo, hi: _sigmoid(-lo), _log_sigmoid_diff)
        out.rnd = out.rnd + self._units("log") * out.mag  # log1p after exp: two functions and a sum
        # C's own float64 evaluation (docs/tolerance.md): within (10 + |b|)·u₆₄·|C| of the exact
        # difference, b = a - c torch's input (rounded when formed; it enters one exponential);
        # _function counted 4 of the 10
        with np.errstate(invalid="ignore", over="ignore"):
            out.rnd = out.rnd + self._c64(out.carry, 6.0 + np.where(a.carry == 0, 0.0, np.abs(a.v - a.carry)))
        return out

    def relu(self, a: Track) -> Track:
        """relu: exact; 1-Lipschitz (the input's rounding passes through)."""
        with np.errstate(invalid="ignore", over="ignore"):
            v = np.maximum(a.v, 0.0)
            carry = v - np.maximum(a.v - a.carry, 0.0)
            return self._seen(Track(v, held(v, carry), a.rnd.copy(), carry))

    def relu_mask(self, z: Track) -> Track:
        """relu's derivative as a 0/1 mask: the hand side's branch ``v``, the carry the difference of
        the two sides' branches in exact arithmetic; where ``|z|`` is within its rounding of 0 (the
        interval both sides span holds 0) the branch is ambiguous: an error of up to 1 (``rnd`` =
        1/u), so a product with the mask bounds the other factor's full magnitude."""
        with np.errstate(invalid="ignore"):
            D = self.u * z.rnd
            lo = np.fmin(z.v, z.v - z.carry) - D
            hi = np.fmax(z.v, z.v - z.carry) + D
            hand = (z.v > 0).astype(np.float64)
            torch = ((z.v - z.carry) > 0).astype(np.float64)
            ambiguous = (lo <= 0) & (hi >= 0) & (D > 0)
            n = ambiguous.reshape(ambiguous.shape[0], -1).sum(axis=1) if ambiguous.ndim > 1 else ambiguous
            self.ambiguous_steps = self.ambiguous_steps + n.astype(np.int64)
            self.ambiguous += int(np.sum(n))
            # the carried branch difference counts only where the branch is not in doubt
            carry = np.where(ambiguous, 0.0, hand - torch)
            return Track(hand, np.ones_like(hand), np.where(ambiguous, 1.0 / self.u, 0.0), carry)

    def clamp_min(self, a: Track, lo: float) -> Track:
        """``max(a, lo)``: no rounding, 1-Lipschitz; where every value either side can hold is at or
        below ``lo`` (a log of 0 included), both sides hold ``lo`` exactly."""
        with np.errstate(invalid="ignore", over="ignore"):
            v = np.maximum(a.v, lo)
            carry = v - np.maximum(a.v - a.carry, lo)
            mag = held(v, carry)
            high = np.fmax(a.v, a.v - a.carry) + np.where(a.rnd == 0, 0.0, self.u * a.rnd)
            below = high <= lo
            rnd = a.rnd
            top = getattr(a, "top", None)
            if top is not None:  # both sides hold values in [lo, max(top, lo)]: no farther apart
                rnd = np.fmin(rnd, (np.fmax(top, lo) - lo) / self.u)
            out = Track(v, mag, np.where(below, 0.0, rnd), np.where(below, 0.0, carry))
        return self._seen(out)

    def maximum(self, a: Track, b: Track) -> Track:
        with np.errstate(invalid="ignore", over="ignore"):
            v = np.maximum(a.v, b.v)
            carry = v - np.maximum(a.v - a.carry, b.v - b.carry)
            return self._seen(Track(v, np.fmax(a.mag, b.mag), np.maximum(a.rnd, b.rnd), carry))

    def sigmoid_backward(self, g: Track, p: Track) -> Track:
        one = self.const(1.0, p)
        return self.mul(self.mul(g, self.sub(one, p)), p)

    def tanh_backward(self, g: Track, t: Track) -> Track:
        one = self.const(1.0, t)
        return self.mul(g, self.sub(one, self.mul(t, t)))


def _tiniest(dtype: str) -> float:
    """The smallest positive (subnormal) number of ``dtype``."""
    return float(dtypes.finfo(dtype).smallest_subnormal)


def _sum_depth(k: int, dtype: str) -> float:
    """The roundings a sum of k terms adds, in units of the run's u, over the sum of the magnitudes
    (:func:`sgdtrace.dtypes.sum_depth`: pairwise depth, float32 for 16 bits and one rounding)."""
    return float(dtypes.sum_depth(np.float64(max(k, 2)), dtype))


def _per_step(m, steps: int):
    m = np.asarray(m, dtype=np.float64)
    if m.ndim == 0:
        return np.full(steps, float(m))
    with np.errstate(invalid="ignore"):
        return m.reshape(m.shape[0], -1).max(axis=1) if m.ndim > 1 else m


# ====================================================================== how the rest of sgdtrace uses a model's ops

#: elements (steps × samples × features) per chunk of steps the judge works at once
CHUNK_ELEMENTS = 1 << 18


def hand_gradients(forward_backward, names: tuple[str, ...], dtype: str):
    """The engine protocol's ``gradients(params, x, y) -> (loss, grads)`` of a model written against
    ops: ``forward_backward`` run with :class:`HandOps` in the run's dtype."""
    ops = HandOps(dtype)

    def gradients(params, x, y):
        out = forward_backward(ops, params, x, y)
        return out["loss"], {p: out["grad_" + p] for p in names}

    return gradients


def step_groups(plan):
    """The steps of ``plan`` by batch size: ``[(n, steps, indices (S, n))]`` (at most two sizes: the
    whole batches and a last partial one)."""
    sizes = plan.step_sizes()
    spe = plan.steps_per_epoch
    out = []
    for n in np.unique(sizes):
        steps = np.flatnonzero(sizes == n)
        idx = np.empty((steps.size, int(n)), dtype=np.int64)
        epoch, order = -1, None  # each epoch's order made once (the steps come epoch by epoch)
        for row, s in enumerate(steps):
            e, j = divmod(int(s), spe)
            if e != epoch:
                epoch, order = e, plan.epoch_order(e)
            start = j * plan.batch_size
            idx[row] = order[start : start + int(n)]
        out.append((int(n), steps, idx))
    return out


def judge_terms(model, forward_backward, starts, bounds, x, y, plan, config) -> dict:
    """The judge's terms of the loss and each gradient (the model module's ``gradient_terms``) for a
    model written against ops: :class:`TrackOps` over every step at once, in chunks of steps of one
    batch size. ``starts``/``bounds`` as :func:`sgdtrace.models.linear.gradient_terms` takes them.

    Returns ``{"E", "C", "peak", "both", "ambiguous"}``: E (units of u), C, the intermediates' bound
    (per step, broadcast over each field's shape), where they can overflow either way (there: the
    bound reaches the type's largest number), and per step the elements whose relu branch was
    ambiguous."""
    steps = plan.n_steps
    fields = ["loss"] + ["grad_" + p for p in model.names]
    shapes = {"loss": ()} | {"grad_" + p.name: p.shape for p in model.params}
    E = {f: np.empty((steps, *shapes[f])) for f in fields}
    C = {f: np.empty((steps, *shapes[f])) for f in fields}
    peak = {f: np.empty((steps, *shapes[f])) for f in fields}
    ambiguous = np.zeros(steps, dtype=np.int64)
    x = x.reshape(x.shape[0], -1)
    for n, group, idx in step_groups(plan):
        per = max(1, CHUNK_ELEMENTS // max(1, n * x.shape[1]))
        for lo in range(0, group.size, per):
            sel = group[lo : lo + per]
            ops = TrackOps(config.dtype, sel.size)
            params = {
                p: Track(
                    starts[p][sel],
                    np.asarray(bounds[p].mag)[sel],
                    np.zeros_like(starts[p][sel]),
                    np.asarray(bounds[p].carry)[sel],
                )
                for p in model.names
            }
            rows = idx[lo : lo + per]
            out = forward_backward(ops, params, ops.input(x[rows]), ops.input(y[rows]))
            for f in fields:
                t = out[f]
                E[f][sel] = t.rnd
                C[f][sel] = t.carry
                peak[f][sel] = ops.peak.reshape((-1,) + (1,) * len(shapes[f]))
            ambiguous[sel] = ops.ambiguous_steps
    big = float(dtypes.finfo(config.dtype).max)
    with np.errstate(invalid="ignore"):
        both = {f: ~(peak[f] < big) for f in fields if f != "loss"}
    return {"E": E, "C": C, "peak": peak, "both": both, "ambiguous": ambiguous}


__all__ = ["HandOps", "TrackOps", "Track", "function_ulps", "hand_gradients", "judge_terms", "step_groups"]
