"""The judge's running bound (:mod:`sgdtrace.track`), each operation re-derived from its docstring.

Every term a :class:`Track` operation adds is written again here, one element at a time in plain
Python floats (``math``), from the operation's docstring and the module's: the value, the bound
on either engine's magnitude, the rounding in units of u, the carried difference and the bound on
the carry's own float64 error. The inputs range over what the judge meets: carries as large as
the values (runs that have parted), coefficients of +-1 (no product rounding), a divisor that
changes sign between the engines, a root's argument within its rounding of zero, non-finite
carries and bounds. Apart from the formulas, the carries are checked against exact arithmetic
(``fractions``): ``op(hand) - op(torch)`` within the carry's own error bound.

These tests are part of the mutation run (``make mutate``, docs/mutation.md).
"""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pytest

from sgdtrace import track
from sgdtrace.track import SQRT_ULPS, U64, Track

U32 = 2.0**-24
INF = math.inf


# ------------------------------------------------------------------ inputs


def _draw(rng, n, *, positive=False, parted=False):
    """A Track of n elements: hand values ``v``, carries up to 1e-6 of them (or as large as them
    where ``parted``), magnitudes at least either engine's, roundings and carry errors >= 0."""
    scale = 10.0 ** rng.uniform(-3, 3, n)
    v = rng.uniform(0.5, 2.0, n) * scale * (1 if positive else rng.choice([-1.0, 1.0], n))
    rel = rng.uniform(-1.0, 1.0, n) * (rng.choice([1e-6, 0.5], n) if parted else 1e-6)
    carry = v * rel
    mag = np.fmax(np.abs(v), np.abs(v - carry)) * rng.uniform(1.0, 1.5, n)
    rnd = rng.uniform(0.0, 4.0, n) * mag
    cerr = U64 * np.abs(carry) * rng.uniform(0.0, 3.0, n)
    return Track(v, mag, rnd, carry, cerr)


def _elements(t: Track, i: int) -> tuple[float, float, float, float, float]:
    cerr = t.cerr if np.ndim(t.cerr) == 0 else t.cerr[i]
    return float(t.v[i]), float(t.mag[i]), float(t.rnd[i]), float(t.carry[i]), float(cerr)


def _same(got: Track, want: list[tuple[float, float, float, float, float]]):
    """``got`` element by element equal to ``want`` (v, mag, rnd, carry, cerr) to 1e-14 relative."""
    cols = np.array(want, dtype=np.float64).reshape(len(want), 5)
    for j, field in enumerate(("v", "mag", "rnd", "carry", "cerr")):
        value = np.broadcast_to(np.asarray(getattr(got, field), dtype=np.float64), cols[:, j].shape)
        np.testing.assert_allclose(value, cols[:, j], rtol=1e-14, atol=0, equal_nan=True, err_msg=field)


def _mag(v: float, carry: float) -> float:
    """A computed value's magnitude: the larger of the hand engine's |v| and torch's |v - carry|."""
    return max(abs(v), abs(v - carry))


def _coef(c: float, carry: float) -> float:
    """The coefficient as both engines round it: u|c||C| (none for +-1, exact in every type;
    none for a carry that is not finite)."""
    c = abs(c)
    return 0.0 if c == 1 else c * (abs(carry) if math.isfinite(carry) else 0.0)


# ------------------------------------------------------------------ making one


def test_measured_takes_the_difference_and_the_larger_finite_magnitude():
    a = np.array([1.5, -2.0, np.inf, np.nan, 3.0, -np.inf])
    b = np.array([1.25, 4.0, 2.0, -7.0, np.nan, np.inf])
    t = Track.measured(a, b)
    assert t.v.tolist()[:3] == [1.5, -2.0, math.inf] and t.v.dtype == np.float64
    # the magnitude of a finite value on either side; nan where neither is finite
    assert t.mag.tolist()[:5] == [1.5, 4.0, 2.0, 7.0, 3.0] and math.isnan(t.mag[5])
    assert t.rnd.tolist() == [0.0] * 6
    assert t.carry.tolist()[:2] == [0.25, -6.0]
    assert t.cerr.tolist()[:2] == [U64 * 0.25, U64 * 6.0]
    # float32 inputs are taken exactly, in float64
    t32 = Track.measured(np.array([0.1], dtype=np.float32), np.array([0.2], dtype=np.float32))
    assert t32.carry[0] == float(np.float32(0.1)) - float(np.float32(0.2))


def test_const_is_held_alike_by_both_engines():
    t = Track.const(-2.5, np.zeros(3))
    assert t.v.tolist() == [-2.5] * 3 and t.mag.tolist() == [2.5] * 3
    assert t.rnd.tolist() == t.carry.tolist() == [0.0] * 3 and t.cerr == 0.0
    t.v[0] = 1.0  # its own array, not a view of a broadcast
    assert t.v.tolist() == [1.0, -2.5, -2.5]
    per = Track.const(np.array([1.0, -4.0]), np.zeros(2))
    assert per.mag.tolist() == [1.0, 4.0]


def test_fit_takes_the_model_and_the_larger_magnitude():
    rng = np.random.default_rng(1)
    x, m = _draw(rng, 16), _draw(rng, 16)
    out = track.fit(x, m)
    want = []
    for i in range(16):
        v, mag, rnd, carry, cerr = _elements(x, i)
        want.append((v, max(mag, float(m.mag[i])), rnd, carry, cerr))
    _same(out, want)


# ------------------------------------------------------------------ _Bound's operations


@pytest.mark.parametrize("coef", [0.9, -0.1, 1.0, -1.0, 3.0, "per-step"])
@pytest.mark.parametrize("result", [None, "given"])
def test_combine_matches_its_docstring(coef, result):
    """``self + coef * other``: the product rounds unless coef is +-1, then the sum (of ``result``'s
    size where given, else of the magnitude bound); the carry's product and sum round in float64."""
    rng = np.random.default_rng(2)
    n = 40
    s, o = _draw(rng, n, parted=True), _draw(rng, n, parted=True)
    o.carry[0] = np.inf  # a carry that is not finite: no coefficient term from it
    coefs = rng.choice([0.5, 1.0, -1.0, -2.0], n) if coef == "per-step" else np.full(n, coef)
    res = rng.uniform(0.0, 10.0, n) if result else None
    out = s.combine(coefs if coef == "per-step" else coef, o, res)
    want = []
    for i in range(n):
        sv, smag, srnd, sc, se = _elements(s, i)
        ov, omag, ornd, oc, oe = _elements(o, i)
        k = float(coefs[i])
        c = abs(k)
        mag = smag + c * omag
        carry = sc + k * oc
        prod = 0.0 if c == 1 else c * omag
        rnd = srnd + c * ornd + prod + (mag if res is None else float(res[i])) + _coef(k, oc)
        own = (0.0 if c == 1 else c * abs(oc)) + abs(carry)
        want.append((sv + k * ov, mag, rnd, carry, se + c * oe + U64 * own))
    _same(out, want)


@pytest.mark.parametrize("coef", [0.25, -3.0, 1.0, -1.0])
def test_scaled_matches_its_docstring(coef):
    rng = np.random.default_rng(3)
    n = 30
    s = _draw(rng, n, parted=True)
    out = s.scaled(coef)
    c = abs(coef)
    want = []
    for i in range(n):
        v, mag, rnd, carry, cerr = _elements(s, i)
        r = c * rnd + (0.0 if c == 1 else c * mag) + _coef(coef, carry)
        e = c * cerr + (0.0 if c == 1 else U64 * c * abs(carry))
        want.append((coef * v, c * mag, r, coef * carry, e))
    _same(out, want)


def test_where_takes_other_where_the_mask_is_set():
    rng = np.random.default_rng(4)
    s, o = _draw(rng, 12), _draw(rng, 12)
    mask = rng.random(12) < 0.5
    out = s.where(mask, o)
    _same(out, [_elements(o if mask[i] else s, i) for i in range(12)])


def test_neg_is_exact():
    rng = np.random.default_rng(5)
    s = _draw(rng, 10)
    out = track.neg(s)
    want = []
    for i in range(10):
        v, mag, rnd, carry, cerr = _elements(s, i)
        want.append((-v, mag, rnd, -carry, cerr))
    _same(out, want)


# ------------------------------------------------------------------ torch's kernels


def _mul_by_hand(x, y):
    """``x * y``: one rounding; carried ``cx y + x cy - cx cy``; each input's error scaled by the
    other input as large as either engine has it."""
    (xv, xm, xr, xc, xe), (yv, ym, yr, yc, ye) = x, y
    v = xv * yv
    carry = xc * yv + xv * yc - xc * yc
    p1, p2, p3 = abs(xc * yv), abs(xv * yc), abs(xc * yc)
    cerr = xe * ym + ye * xm + U64 * (3 * (p1 + p2) + 2 * p3)
    mag = _mag(v, carry)
    return v, mag, xr * ym + xm * yr + mag, carry, cerr


def _div_by_hand(x, y):
    """``x / y``: the inputs' relative errors over the smaller divisor of the two engines; the carry
    in a form free of cancellation, ``(cx y - x cy) / (y (y - cy))``."""
    (xv, _xm, xr, xc, xe), (yv, _ym, yr, yc, ye) = x, y
    v = xv / yv
    theirs = yv - yc
    den = yv * theirs
    carry = (xc * yv - xv * yc) / den
    num = abs(xc * yv) + abs(xv * yc)
    cerr = xe / abs(theirs) + ye * abs(xv - xc) / theirs**2 + U64 * (2 * num / abs(den) + 3 * abs(carry))
    mag = _mag(v, carry)
    ay = min(abs(yv), abs(yv - yc))
    return v, mag, xr / ay + mag * yr / ay + mag, carry, cerr


def _maximum_by_hand(x, y):
    """``torch.maximum``: no rounding, 1-Lipschitz in each input."""
    (xv, xm, xr, xc, xe), (yv, ym, yr, yc, ye) = x, y
    v = max(xv, yv)
    carry = v - max(xv - xc, yv - yc)
    return v, max(xm, ym), max(xr, yr), carry, max(xe, ye) + U64 * (max(xm, ym) + abs(carry))


@pytest.mark.parametrize("parted", [False, True])
@pytest.mark.parametrize(
    "op, by_hand", [(track.mul, _mul_by_hand), (track.div, _div_by_hand), (track.maximum, _maximum_by_hand)]
)
def test_binary_kernels_match_their_docstrings(op, by_hand, parted):
    rng = np.random.default_rng(6)
    n = 50
    x, y = _draw(rng, n, parted=parted), _draw(rng, n, parted=parted)
    _same(op(x, y), [by_hand(_elements(x, i), _elements(y, i)) for i in range(n)])


def _over(a: float, b: float) -> float:
    """``a / b`` for a >= 0, infinite where b is 0 (the root's slope at 0)."""
    return a / b if b > 0 else INF


def _sqrt_by_hand(xv, xr, xc, xe, u):
    """``sqrt``'s docstring, one element."""
    xv0 = max(xv, 0.0)
    v = math.sqrt(xv0)
    other = math.sqrt(max(xv0 - xc, 0.0))
    den = v + other
    carry = xc / den if den > 0 else 0.0
    D = u * xr
    low = min(v, other)
    moved = min(_over(D, low + math.sqrt(max(low * low - D, 0.0))), math.sqrt(D)) if D > 0 else 0.0
    delta = xe if math.isfinite(xe) else INF
    if delta > 0:
        shift = min(_over(delta, other + math.sqrt(max(other * other - delta, 0.0))), math.sqrt(delta))
    else:
        shift = 0.0
    cerr = (delta / den if den > 0 else 0.0) + shift + 4 * U64 * abs(carry)
    mag = _mag(v, carry)
    noise = D > 0 and xv - D <= 0
    rnd = INF if noise else moved / u + (2 * SQRT_ULPS + 1) * mag
    return v, mag, rnd, carry, cerr


@pytest.mark.parametrize("u", [U64, U32])
def test_sqrt_matches_its_docstring(u):
    rng = np.random.default_rng(8)
    n = 60
    x = _draw(rng, n, positive=True, parted=True)
    x.rnd[:5] = 0.0  # no rounding in the argument: nothing moves
    x.v[5], x.carry[5], x.rnd[5] = 0.0, 0.0, 0.0  # both engines' argument zero: no carry
    x.v[6], x.rnd[6] = 1e-20, 1.0 / u  # within its rounding of zero: noise
    x.v[7], x.carry[7] = 4.0, 9.0  # torch's argument negative (its root nan): taken at 0
    x.v[8], x.rnd[8] = 1e-12, 0.5e-12 / u  # the argument's error below it: the root moves, not noise
    x.cerr[9] = np.inf  # a carry error that is not finite
    x.cerr[10] = 0.0
    out = track.sqrt(x, u)
    want = [_sqrt_by_hand(*_elements(x, i)[:1], *_elements(x, i)[2:], u) for i in range(n)]
    _same(out, want)
    assert math.isinf(out.rnd[6]) and math.isfinite(out.rnd[8]) and out.rnd[8] > (2 * SQRT_ULPS + 1) * out.mag[8]
    assert out.carry[5] == 0.0 and out.v[7] == 2.0 and out.carry[7] == 9.0 / 2.0  # c / (sqrt(4) + sqrt(0))


@pytest.mark.parametrize("w", [0.1, 0.9, 0.5, 0.999])
def test_lerp_matches_its_docstring(w):
    rng = np.random.default_rng(9)
    n = 40
    x, e = _draw(rng, n, parted=True), _draw(rng, n, parted=True)
    e.carry[0] = np.nan  # a carry that is not finite: no coefficient term from it
    out = track.lerp(x, e, w)
    small = min(w, 1 - w)
    want = []
    for i in range(n):
        xv, xm, xr, xc, xe = _elements(x, i)
        ev, em, er, ec, ee = _elements(e, i)
        v = xv + w * (ev - xv) if w < 0.5 else ev - (ev - xv) * (1 - w)  # torch's two forms
        carry = (1 - w) * xc + w * ec
        own = 3 * abs((1 - w) * xc) + 2 * abs(w * ec)
        cerr = abs(1 - w) * xe + abs(w) * ee + U64 * own
        mag = _mag(v, carry)
        rnd = (1 - w) * xr + w * er + 2 * small * (xm + em) + mag + _coef(w, xc) + _coef(w, ec)
        want.append((v, mag, rnd, carry, cerr))
    _same(out, want)


# ------------------------------------------------------------------ the carries are exact


def _exact(op, *pairs):
    """``op`` at the hand values minus ``op`` at torch's (each a value minus its carry), exactly."""
    hand = op(*(F(v) for v, _ in pairs))
    theirs = op(*(F(v) - F(c) for v, c in pairs))
    return hand - theirs


@pytest.mark.parametrize(
    "name, op, exact",
    [
        ("mul", track.mul, lambda a, b: a * b),
        ("div", track.div, lambda a, b: a / b),
        ("maximum", track.maximum, max),
        ("lerp", lambda a, b: track.lerp(a, b, 0.3), lambda a, b: a + F(0.3) * (b - a)),
    ],
)
def test_each_carry_is_the_exact_difference_within_its_own_error(name, op, exact):
    """From measured inputs (hand a, torch b), the carry is the exact difference of the operation
    at both engines' inputs, to within ``cerr``; and ``cerr`` is small: under 16 u64 of the carry
    and the inputs' carries scaled."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        a = rng.uniform(0.5, 2.0, 2) * 10.0 ** rng.uniform(-3, 3, 2) * rng.choice([-1.0, 1.0], 2)
        b = a * (1 + rng.uniform(-0.5, 0.5, 2))
        tx, ty = Track.measured(a[:1], b[:1]), Track.measured(a[1:], b[1:])
        out = op(tx, ty)
        want = _exact(exact, (a[0], float(tx.carry[0])), (a[1], float(ty.carry[0])))
        # the measured carries are themselves exact here (a - b for a, b within a factor of 2)
        assert F(float(tx.carry[0])) == F(a[0]) - F(b[0])
        err = abs(F(float(out.carry[0])) - want)
        assert err <= F(float(out.cerr[0])), (name, a, b)


def test_the_sqrt_carry_is_the_exact_difference_within_its_own_error():
    rng = np.random.default_rng(12)
    for _ in range(200):
        a = float(rng.uniform(0.5, 2.0) * 10.0 ** rng.uniform(-6, 6))
        b = a * float(1 + rng.uniform(-0.9, 0.9))
        out = track.sqrt(Track.measured(np.array([a]), np.array([b])), U32)
        # sqrt(a) - sqrt(b) = (a - b) / (sqrt(a) + sqrt(b)): exact to well under 1 u64 at 60 digits
        import mpmath

        with mpmath.workdps(60):
            want = mpmath.sqrt(mpmath.mpf(a)) - mpmath.sqrt(mpmath.mpf(b))
            err = abs(mpmath.mpf(float(out.carry[0])) - want)
            assert err <= mpmath.mpf(float(out.cerr[0])), (a, b)


# ------------------------------------------------------------------ a model's ops under the judge (models/ops.py)

# TrackOps is Track's algebra for any model's forward and backward pass (docs/tolerance.md, "E as
# a running bound"): each operation's terms are written again here from ops.py's docstrings, one
# element at a time. Values carry a leading axis of steps (S); ``u`` is the run's unit roundoff,
# ``c64 = u64/u`` the float64 carry's rounding in units of it, ``eta = tiny/2/u`` the error of a
# result that rounds into the subnormal range.

S = 3


def _ops(dtype="float32"):
    from sgdtrace.models import ops as mops

    return mops.TrackOps(dtype, S)


def _consts(dtype):
    from sgdtrace import dtypes

    u = dtypes.unit_roundoff(dtype)
    return u, U64 / u, float(dtypes.finfo(dtype).smallest_subnormal) / 2 / u


def _grid(rng, shape, *, positive=False, parted=True):
    """A Track of ``shape``: values over six decades, carries up to half of them, magnitudes at
    least either side's, roundings up to 4 (in units of u) of the magnitude."""
    n = int(np.prod(shape))
    t = _draw(rng, n, positive=positive, parted=parted)
    return Track(*(np.asarray(f).reshape(shape) for f in (t.v, t.mag, t.rnd, t.carry)))


def _each(*tracks):
    """Per element (C order), the fields (v, mag, rnd, carry) of each track."""
    cols = [
        [np.ravel(np.asarray(getattr(t, f), dtype=np.float64)) for f in ("v", "mag", "rnd", "carry")] for t in tracks
    ]
    for i in range(cols[0][0].size):
        yield [tuple(float(c[i]) for c in fields) for fields in cols]


def _fields(got, want):
    """``got``'s v, mag, rnd and carry equal to ``want`` (one (v, mag, rnd, carry) per element)."""
    for j, field in enumerate(("v", "mag", "rnd", "carry")):
        value = np.asarray(getattr(got, field), dtype=np.float64)
        ref = np.array([w[j] for w in want], dtype=np.float64).reshape(value.shape)
        np.testing.assert_allclose(value, ref, rtol=1e-13, atol=0, equal_nan=True, err_msg=field)


def _fin(c):
    return abs(c) if math.isfinite(c) else 0.0


def _binary_by_hand(name, a, b, dtype):
    """add, sub, mul, div: one rounding of the result (u|result|, the larger side's), the inputs'
    roundings carried (a product's scaled by the other factor as large as either side has it; a
    quotient's over the smaller divisor of the two sides), the subnormal floor for a product or
    quotient, and C's float64 rounding (three roundings for a quotient's carry, one otherwise)."""
    u, c64, eta = _consts(dtype)
    out = []
    for (av, am, ar, ac), (bv, bm, br, bc) in _each(a, b):
        if name == "add":
            v, carry = av + bv, ac + bc
            mag = _mag(v, carry)
            rnd = ar + br + mag + c64 * _fin(carry)
        elif name == "sub":
            v, carry = av - bv, ac - bc
            mag = _mag(v, carry)
            rnd = ar + br + mag + c64 * _fin(carry)
        elif name == "mul":
            v, carry = av * bv, ac * bv + av * bc - ac * bc
            mag = _mag(v, carry)
            rnd = ar * bm + am * br + eta + mag + c64 * _fin(carry)
        else:
            v, carry = av / bv, (ac * bv - av * bc) / (bv * (bv - bc))
            mag = _mag(v, carry)
            ab = min(abs(bv), abs(bv - bc))
            rnd = ar / ab + mag * br / ab + mag + eta + 3 * c64 * _fin(carry)
        out.append((v, mag, rnd, carry))
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("name", ["add", "sub", "mul", "div"])
def test_trackops_binary_operations_match_their_docstrings(dtype, name):
    rng = np.random.default_rng(20)
    ops = _ops(dtype)
    a, b = _grid(rng, (S, 8)), _grid(rng, (S, 8))
    out = getattr(ops, name)(a, b)
    _fields(out, _binary_by_hand(name, a, b, dtype))
    # the overflow rule's peak: per step, the largest magnitude of any result
    np.testing.assert_array_equal(ops.peak, np.asarray(out.mag).max(axis=1))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_trackops_neg_scale_and_div_n_match_their_docstrings(dtype):
    """neg is exact; scale is Track.scaled (the coefficient as both sides round it) and C's
    rounding; div_n (torch's ``grad / numel``) at most two roundings: a reciprocal and a product."""
    rng = np.random.default_rng(21)
    ops = _ops(dtype)
    u, c64, eta = _consts(dtype)
    a = _grid(rng, (S, 6))
    _fields(ops.neg(a), [(-av, am, ar, -ac) for ((av, am, ar, ac),) in _each(a)])
    for c in (0.3, -2.0, 1.0):
        want = []
        for ((av, am, ar, ac),) in _each(a):
            k = abs(c)
            rnd = k * ar + (0.0 if k == 1 else k * am) + _coef(c, ac) + c64 * _fin(c * ac)
            want.append((c * av, k * am, rnd, c * ac))
        _fields(ops.scale(a, c), want)
    for n in (1, 5):
        want = [(av / n, am / n, ar / n + 2 * am / n + c64 * _fin(ac / n), ac / n) for ((av, am, ar, ac),) in _each(a)]
        _fields(ops.div_n(a, n), want)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("k", [1, 7, 300])
def test_trackops_sum_and_mean_match_their_docstrings(dtype, k):
    """A sum of k terms: the terms' roundings, the sum's own (``sum_depth`` of at least 2 terms
    times the sum of the magnitudes), C's float64 rounding in k operations over the finite
    carries (none where one is not finite: the sum's carry is then not finite, and not judged); the
    peak is the sum of the magnitudes. The mean is that sum's div_n by k."""
    from sgdtrace import dtypes

    rng = np.random.default_rng(22)
    u, c64, eta = _consts(dtype)
    a = _grid(rng, (S, k))
    a.carry[1, 0] = np.inf  # a carry that is not finite
    depth = float(dtypes.sum_depth(np.float64(max(k, 2)), dtype))
    want = []
    for s in range(S):
        v, mag, carry = math.fsum(a.v[s]), math.fsum(a.mag[s]), math.fsum(a.carry[s])
        cabs = math.fsum(np.abs(a.carry[s])) if np.all(np.isfinite(a.carry[s])) else 0.0
        rnd = math.fsum(a.rnd[s]) + depth * mag + k * c64 * cabs
        want.append((v, _mag(v, carry), rnd, carry))
    for keep in (False, True):
        ops = _ops(dtype)
        out = ops.sum(a, keep=keep)
        assert np.shape(out.v) == ((S, 1) if keep else (S,))
        _fields(out, want)
        # the peak: the sum of the magnitudes, or the result's own where larger (a carry not finite)
        np.testing.assert_allclose(ops.peak, np.fmax(a.mag.sum(axis=1), [w[1] for w in want]), rtol=1e-13)
    mean = _ops(dtype).mean(a)
    want_mean = [(v / k, m / k, r / k + 2 * m / k + c64 * _fin(c / k), c / k) for v, m, r, c in want]
    _fields(mean, want_mean)


def _dot_by_hand(a_rows, b_cols, extra, k, dtype):
    """One dot product of k terms (+ a bias added inside the sum): the terms' roundings, gamma_k
    of the terms' magnitudes in the type it accumulates in (float32 for 16 bits, then one rounding
    to the type), C's float64 rounding in k + 2 operations over the carries' three products."""
    from sgdtrace import dtypes

    u, c64, eta = _consts(dtype)
    v = carry = terms = rnd = cterms = 0.0
    for (av, am, ar, ac), (bv, bm, br, bc) in zip(a_rows, b_cols):
        v += av * bv
        carry += ac * bv + av * bc - ac * bc
        terms += am * bm
        rnd += ar * bm + am * br
        cterms += _fin(ac) * abs(bv) + abs(av) * _fin(bc) + _fin(ac) * _fin(bc)
    if extra is not None:
        ev, em, er, ec = extra
        v, carry, terms, rnd, cterms, k = v + ev, carry + ec, terms + em, rnd + er, cterms + abs(ec), k + 1
    acc = dtypes.accumulation(dtype)
    units = dtypes.gamma(k, acc) / u + (1.0 if acc != dtype else 0.0)
    return (v, _mag(v, carry), rnd + units * terms + (k + 2) * c64 * cterms, carry), terms


def _rows(t, idx):
    return [tuple(float(np.asarray(getattr(t, f))[i]) for f in ("v", "mag", "rnd", "carry")) for i in idx]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_trackops_dot_products_match_their_docstrings(dtype):
    """matvec (X·w + b, the bias inside addmm's sum), vecmat (Σ_i g_i x_i), linear (F.linear) and
    matmul, each a dot product per output element; the peak is the largest sum of the terms'
    magnitudes in each step."""
    rng = np.random.default_rng(23)
    n, D, H = 4, 3, 2
    x, w, b = _grid(rng, (S, n, D)), _grid(rng, (S, D)), _grid(rng, (S, 1))
    x.carry[0, 0, 0] = np.nan  # a carry that is not finite: left out of C's rounding
    g, W, bb = _grid(rng, (S, n)), _grid(rng, (S, H, D)), _grid(rng, (S, H))
    cases = {
        "matvec": (lambda ops: ops.matvec(x, w), (S, n)),
        "matvec+b": (lambda ops: ops.matvec(x, w, b), (S, n)),
        "vecmat": (lambda ops: ops.vecmat(g, x), (S, D)),
        "linear": (lambda ops: ops.linear(x, W, bb), (S, n, H)),
        "linear-nobias": (lambda ops: ops.linear(x, W), (S, n, H)),
        "matmul": (lambda ops: ops.matmul(x, ops.T(W)), (S, n, H)),
    }
    for name, (run, shape) in cases.items():
        ops = _ops(dtype)
        out = run(ops)
        assert np.shape(out.v) == shape, name
        want, peak = [], np.zeros(S)
        for idx in np.ndindex(*shape):
            s = idx[0]
            if name.startswith("matvec"):
                a_rows = _rows(x, [(s, idx[1], d) for d in range(D)])
                b_cols = _rows(w, [(s, d) for d in range(D)])
                extra = _rows(b, [(s, 0)])[0] if name == "matvec+b" else None
                k = D
            elif name == "vecmat":
                a_rows, b_cols, extra, k = (
                    _rows(g, [(s, i) for i in range(n)]),
                    _rows(x, [(s, i, idx[1]) for i in range(n)]),
                    None,
                    n,
                )
            else:
                a_rows = _rows(x, [(s, idx[1], d) for d in range(D)])
                b_cols = _rows(W, [(s, idx[2], d) for d in range(D)])
                extra = _rows(bb, [(s, idx[2])])[0] if name == "linear" else None
                k = D
            row, terms = _dot_by_hand(a_rows, b_cols, extra, k, dtype)
            want.append(row)
            peak[s] = max(peak[s], terms)
        _fields(out, want)
        np.testing.assert_allclose(ops.peak, peak, rtol=1e-13, err_msg=name)


def test_trackops_shapes_rows_and_inputs():
    rng = np.random.default_rng(24)
    ops = _ops()
    x = _grid(rng, (S, 4, 2))
    assert ops.rows(x) == 4
    t = ops.T(x)
    assert t.v.shape == (S, 2, 4) and np.array_equal(t.carry[1], x.carry[1].T) and np.array_equal(t.rnd[2], x.rnd[2].T)
    e = ops.expand(x, -2)
    assert e.v.shape == (S, 4, 1, 2) and np.array_equal(e.mag[..., 0, :], x.mag)
    i = ops.input(np.array([[1.5, -2.0]]))
    assert i.v.tolist() == [[1.5, -2.0]] and i.mag.tolist() == [[1.5, 2.0]]
    assert i.rnd.tolist() == i.carry.tolist() == [[0.0, 0.0]]
    # a constant the type holds (1, -100) is exact; one it does not (0.1, 1e-12) rounds once
    like = np.zeros((S, 2))
    assert ops.const(1.0, like).rnd.tolist() == [[0.0, 0.0]] * S
    assert _ops("bfloat16").const(-100.0, like).rnd.tolist() == [[0.0, 0.0]] * S
    assert ops.const(0.1, like).rnd.tolist() == [[0.1, 0.1]] * S
    assert _ops("bfloat16").const(1.0 + 2.0**-10, like).rnd.tolist() == [[1.0 + 2.0**-10] * 2] * S
    assert ops.const(0.25).v.tolist() == 0.25 and ops.const(1e-12).rnd.tolist() == 1e-12
    assert ops.const(-3.0, x).v.shape == x.v.shape


def _mp(name):
    import mpmath

    return {
        "exp": mpmath.exp,
        "log": mpmath.log,
        "log1p": mpmath.log1p,
        "sigmoid": lambda t: 1 / (1 + mpmath.exp(-t)),
        "tanh": mpmath.tanh,
        "log_sigmoid": lambda t: -mpmath.log1p(mpmath.exp(-t)),
    }[name]


def _slope(name, lo, hi):
    """The largest |f'| over [lo, hi] (ops.py's docstrings)."""
    m = 0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))
    if name == "exp":
        return math.exp(hi) if hi < 709 else INF
    if name == "log":
        return 1.0 / lo if lo > 0 else INF
    if name == "log1p":
        return 1.0 / (1.0 + lo) if lo > -1 else INF
    if name == "sigmoid":  # σ(m)σ(-m)
        return 1.0 / ((1.0 + math.exp(-m)) * (1.0 + math.exp(m))) if m < 700 else 0.0
    if name == "tanh":  # 1/cosh²(m)
        return 1.0 / math.cosh(m) ** 2 if m < 350 else 0.0
    return 1.0 / (1.0 + math.exp(lo)) if lo < 700 else 0.0  # log σ: slope σ(-lo)


def _function_by_hand(name, a, dtype):
    """An element-wise function: the input's rounding times the largest slope over the interval
    both sides' inputs span (widened by that rounding), the function's own rounding (N + 1/2 ulp
    of the result, an ulp at most 2u|result|; 16 bits: float32's result rounded once more), the
    subnormal floor, and C's own float64 rounding (4 roundings; sigmoid and log σ 10 + |b|, b the
    torch side's input; tanh 4 + 5(|a| + |b|); log1p 4 + 2k, k log1p's condition number at its
    argument). C is the exact difference, here at 250 digits (a saturated tanh's difference needs
    more than 60)."""
    import mpmath

    from sgdtrace import dtypes
    from sgdtrace.models.ops import function_ulps

    u, c64, eta = _consts(dtype)
    reduced = dtype in ("bfloat16", "float16")

    def units(fn):
        n = function_ulps(fn, "float32" if reduced else dtype)
        return 1.0 + (2 * n + 1) * U32 / u if reduced else 2.0 * n + 1.0

    fname = {"log_sigmoid": "sigmoid"}.get(name, name)
    f = _mp(name)
    limit = math.log(float(dtypes.finfo("float32" if reduced else dtype).max))
    out = []
    for ((av, _am, ar, ac),) in _each(a):
        D = u * ar
        lo, hi = min(av, av - ac) - D, max(av, av - ac) + D
        with mpmath.workdps(250):
            v = float(f(mpmath.mpf(av)))
            carry = 0.0 if ac == 0 else float(f(mpmath.mpf(av)) - f(mpmath.mpf(av) - mpmath.mpf(ac)))
        mag = _mag(v, carry)
        moved = 0.0 if ar == 0 else ar * _slope(name, lo, hi)
        c_ops = 4.0  # C's own float64 roundings; more where the form amplifies them:
        if name == "tanh":  # the exponent's five roundings, each within u64(|a| + |b|)
            c_ops += 5.0 * (abs(av) + abs(av - ac))
        if name == "log1p":  # log1p(t), t = -c/(1 + a), amplifies t's two roundings by k
            t = -ac / (1.0 + av)
            c_ops += 2.0 * (1.0 if t == 0 else abs(t) / (abs(1.0 + t) * abs(math.log1p(t))))
        rnd = moved + units(fname) * mag + eta + c_ops * c64 * abs(carry)
        if name in ("sigmoid", "log_sigmoid"):
            rnd += c64 * (6.0 + (abs(av - ac) if ac != 0 else 0.0)) * abs(carry)
        if name == "log_sigmoid":
            rnd += units("log") * mag
        if name == "sigmoid":
            low, high = min(av, av - ac) - u * ar, max(av, av - ac) + u * ar
            if low > 0 and math.exp(-low) <= u / 4:  # 1 + e^-z rounds to 1 on both sides
                v, mag, rnd, carry = 1.0, 1.0, 0.0, 0.0
            elif high < -limit:  # e^-z overflows on both sides: σ is 0
                v, mag, rnd, carry = 0.0, 0.0, 0.0, 0.0
            elif low < -limit:  # on one side only
                rnd += mag / u
        out.append((v, mag, rnd, carry))
    return out


def _inputs(rng, name, shape):
    t = _grid(rng, shape, positive=name in ("log", "log1p"))
    if name in ("exp", "sigmoid", "tanh", "log_sigmoid"):  # arguments of a few units
        scale = np.abs(t.v) / rng.uniform(0.05, 8.0, shape)
        t = Track(t.v / scale, t.mag / scale, t.rnd, t.carry / scale)
    t.rnd.flat[0] = 0.0  # an input both sides hold exactly: nothing moves
    t.carry.flat[1] = 0.0  # no carry
    return t


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("name", ["exp", "log", "log1p", "sigmoid", "tanh", "log_sigmoid"])
def test_trackops_functions_match_their_docstrings(dtype, name):
    rng = np.random.default_rng(25)
    ops = _ops(dtype)
    a = _inputs(rng, name, (S, 10))
    if name == "sigmoid":  # saturated: 1 on both sides, 0 on both sides, 0 on one side only
        limit = math.log(float(np.finfo(np.float64 if dtype == "float64" else np.float32).max))
        a.v[0, 2], a.carry[0, 2], a.rnd[0, 2] = 60.0 if dtype != "float64" else 80.0, 1.0, 1.0
        a.v[0, 3], a.carry[0, 3], a.rnd[0, 3] = -limit - 5.0, 1.0, 0.0
        a.v[0, 4], a.carry[0, 4], a.rnd[0, 4] = -limit - 0.5, -1.0, 0.0
        a.mag[0, 2:5] = np.abs(a.v[0, 2:5]) + 1.0
    out = getattr(ops, name)(a)
    want = _function_by_hand(name, a, dtype)
    for j, field in enumerate(("v", "mag", "rnd", "carry")):
        value = np.asarray(getattr(out, field), dtype=np.float64)
        ref = np.array([w[j] for w in want]).reshape(value.shape)
        # v and C against 60-digit values: the code's forms are free of cancellation (carry within
        # 16 u64 of exact); mag and rnd follow them
        np.testing.assert_allclose(value, ref, rtol=2e-14, atol=0, equal_nan=True, err_msg=field)
    if name != "sigmoid":  # (σ's peak is taken before saturation sets a value to 1 or 0)
        np.testing.assert_array_equal(ops.peak, np.asarray(out.mag).max(axis=1))


def test_trackops_an_exact_input_with_an_infinite_result_is_exact():
    """log 0 of an input both sides hold alike: -inf on both, no rounding; a clamp that follows
    (BCELoss's at -100) holds -100 exactly on both sides."""
    ops = _ops("float32")
    a = Track(np.array([[0.0, 1.0]] * S), np.array([[0.0, 1.0]] * S), np.zeros((S, 2)), np.zeros((S, 2)))
    out = ops.log(a)
    eta = _consts("float32")[2]
    assert out.v[0].tolist() == [-math.inf, 0.0] and out.rnd[0].tolist() == [0.0, eta]  # log 1 = 0: the floor
    assert out.top[0][1] == 0.0  # log 1 (at log 0, -inf plus its rounding: nan, which fmax passes over)
    clamped = ops.clamp_min(out, -100.0)
    assert clamped.v[0].tolist() == [-100.0, 0.0] and clamped.rnd[0].tolist() == [0.0, eta]


def _box(rng, shape, lo=-1, hi=1):
    """(S, *shape) Tracks for the piecewise operations: values near 0 on both sides of it."""
    t = _grid(rng, (S, *shape))
    scale = 10.0 ** rng.uniform(lo, hi, (S, *shape)) / np.abs(t.v)
    return Track(t.v * scale, t.mag * scale, t.rnd, t.carry * scale)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_trackops_relu_maximum_and_clamp_match_their_docstrings(dtype):
    """relu and maximum are exact and 1-Lipschitz (the inputs' roundings pass through, the larger
    for maximum); C is the difference of the two sides' results. clamp_min: where every value
    either side can hold is at or below ``lo`` both hold ``lo`` exactly; else the input's rounding,
    no more than the distance from ``lo`` to the input's ``top`` where one is known."""
    rng = np.random.default_rng(26)
    u, c64, eta = _consts(dtype)
    a, b = _box(rng, (12,)), _box(rng, (12,))
    ops = _ops(dtype)
    want = []
    for ((av, _am, ar, ac),) in _each(a):
        v = max(av, 0.0)
        carry = v - max(av - ac, 0.0)
        want.append((v, _mag(v, carry), ar, carry))
    _fields(ops.relu(a), want)
    want = []
    for (av, am, ar, ac), (bv, bm, br, bc) in _each(a, b):
        v = max(av, bv)
        want.append((v, max(am, bm), max(ar, br), v - max(av - ac, bv - bc)))
    _fields(ops.maximum(a, b), want)
    for lo in (-0.5, 0.0, 0.3):
        for top in (None, 0.2):
            if top is not None:
                a.top = np.full(a.v.shape, top)
            elif hasattr(a, "top"):
                del a.top
            want = []
            for ((av, _am, ar, ac),) in _each(a):
                v = max(av, lo)
                carry = v - max(av - ac, lo)
                high = max(av, av - ac) + (0.0 if ar == 0 else u * ar)
                rnd = ar if top is None else min(ar, (max(top, lo) - lo) / u)
                if high <= lo:
                    rnd, carry = 0.0, 0.0
                want.append((v, _mag(v, v - max(av - ac, lo)), rnd, carry))
            _fields(ops.clamp_min(a, lo), want)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_trackops_relu_mask_marks_the_ambiguous_branches(dtype):
    """relu's derivative: the hand side's branch, C the difference of the two sides' branches;
    where the interval both sides span (widened by the rounding) holds 0 the branch is ambiguous:
    an error of up to 1 (rnd = 1/u), no carry, and counted per step."""
    rng = np.random.default_rng(27)
    u, c64, eta = _consts(dtype)
    z = _box(rng, (10,), lo=-3, hi=0)
    z.rnd[0, :3] = 0.0  # exact: never ambiguous, whatever the carry
    z.v[1, :3], z.carry[1, :3], z.rnd[1, :3] = 1e-9, 0.0, 1.0  # within its rounding of 0
    ops = _ops(dtype)
    out = ops.relu_mask(z)
    want, per_step = [], np.zeros(S, dtype=np.int64)
    for i, ((zv, _zm, zr, zc),) in enumerate(_each(z)):
        D = u * zr
        lo, hi = min(zv, zv - zc) - D, max(zv, zv - zc) + D
        hand, theirs = float(zv > 0), float(zv - zc > 0)
        ambiguous = lo <= 0 <= hi and D > 0
        per_step[i // 10] += ambiguous
        want.append((hand, 1.0, 1.0 / u if ambiguous else 0.0, 0.0 if ambiguous else hand - theirs))
    _fields(out, want)
    assert ops.ambiguous_steps.tolist() == per_step.tolist() and ops.ambiguous == int(per_step.sum())
    assert 0 < ops.ambiguous < 30  # the draw has both kinds
    ops.relu_mask(z)  # counted again on a second call
    assert ops.ambiguous == 2 * int(per_step.sum())


def test_trackops_backward_rules_are_torchs_products():
    """sigmoid_backward is ``g·(1 - p)·p`` and tanh_backward ``g·(1 - t²)``, left to right, each
    product and difference an operation of its own (the constant 1 held exactly)."""
    rng = np.random.default_rng(28)
    g, p = _grid(rng, (S, 5)), _box(rng, (5,))
    ops = _ops()

    def track_of(rows):
        return Track(*(np.array([w[j] for w in rows]).reshape(S, 5) for j in range(4)))

    one = Track(np.ones((S, 5)), np.ones((S, 5)), np.zeros((S, 5)), np.zeros((S, 5)))
    g_one_minus_p = track_of(_binary_by_hand("mul", g, track_of(_binary_by_hand("sub", one, p, "float32")), "float32"))
    _fields(ops.sigmoid_backward(g, p), _binary_by_hand("mul", g_one_minus_p, p, "float32"))
    one_minus_t2 = track_of(_binary_by_hand("sub", one, track_of(_binary_by_hand("mul", p, p, "float32")), "float32"))
    _fields(ops.tanh_backward(g, p), _binary_by_hand("mul", g, one_minus_t2, "float32"))


def test_function_ulps_takes_the_probes_larger_measure(monkeypatch):
    """N for a function: 3 (FUNCTION_ULPS), or the machine's probe where it measured more, on
    either path (one element at a time or vectorised)."""
    from sgdtrace import probe
    from sgdtrace.models import ops as mops

    table = {
        "functions": {
            "exp": {
                "float32": {"one": {"max_ulp": 5}, "vector": {"max_ulp": 1}},
                "float64": {"vector": {"max_ulp": 4}},
            },
            "tanh": {"float32": {"one": None, "vector": {"max_ulp": 2}}},
        }
    }
    monkeypatch.setattr(probe, "rules", lambda refresh=False: table)
    assert mops.FUNCTION_ULPS == 3
    assert mops.function_ulps("exp", "float32") == 5
    assert mops.function_ulps("exp", "float64") == 4
    assert mops.function_ulps("tanh", "float32") == 3
    assert mops.function_ulps("log", "float32") == 3
    assert _ops("float32")._units("exp") == 11.0 and _ops("float64")._units("tanh") == 7.0
    # 16 bits: float32's result (its u) within N + 1/2 ulp, rounded once more to the type
    assert _ops("bfloat16")._units("exp") == 1.0 + 11 * 2.0**-24 / 2.0**-8


# ------------------------------------------------------------------ the hand side's ops against torch


def _torch_of(a, dtype):
    import torch

    return torch.tensor(np.asarray(a, dtype=np.float64)).to(getattr(torch, dtype))


def _as64(t):
    import torch

    return t.to(torch.float64).numpy()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
def test_handops_arithmetic_is_torchs_bit_for_bit(dtype):
    """Element-wise arithmetic in the run's type as torch's CPU kernels do it (IEEE 754 fixes each
    result; a 16-bit kernel computes in float32 with the scalar kept there and rounds once)."""
    import torch

    from sgdtrace import dtypes
    from sgdtrace.models.ops import HandOps

    rng = np.random.default_rng(29)
    ops = HandOps(dtype)
    a64, b64 = rng.normal(0, 3, (4, 33)), rng.normal(0, 3, (4, 33))
    a, b = dtypes.cast(a64, dtype), dtypes.cast(b64, dtype)
    ta, tb = _torch_of(a.astype(np.float64), dtype), _torch_of(b.astype(np.float64), dtype)
    cases = {
        "add": (ops.add(a, b), ta + tb),
        "sub": (ops.sub(a, b), ta - tb),
        "mul": (ops.mul(a, b), ta * tb),
        "div": (ops.div(a, b), ta / tb),
        "neg": (ops.neg(a), -ta),
        "scale": (ops.scale(a, 0.1), ta * 0.1),
        "div_n": (ops.div_n(a, 3), ta / 3),
        "relu": (ops.relu(a), torch.relu(ta)),
        "relu_mask": (ops.relu_mask(a), (ta > 0).to(ta.dtype)),
        "clamp_min": (ops.clamp_min(a, -0.7), torch.clamp_min(ta, -0.7)),
        "maximum": (ops.maximum(a, b), torch.maximum(ta, tb)),
        "const": (ops.const(0.1, a), torch.full_like(ta, 0.1)),
    }
    for name, (mine, theirs) in cases.items():
        assert np.asarray(mine).dtype == dtypes.np_dtype(dtype), name
        np.testing.assert_array_equal(np.asarray(mine).astype(np.float64), _as64(theirs), err_msg=name)
    assert ops.rows(a) == 4 and ops.T(a).shape == (33, 4) and ops.expand(a, -1).shape == (4, 33, 1)
    assert ops.scalar(0.1) == (
        np.float32(0.1) if dtype in ("bfloat16", "float16") else dtypes.np_dtype(dtype).type(0.1)
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_handops_reductions_and_products_are_within_one_rounding_of_exact(dtype):
    """Sums, means and dot products: accumulated in the type (float32 for 16 bits) and rounded
    once; within gamma_k of the exact value in the accumulating type, plus that one rounding."""
    from sgdtrace import dtypes
    from sgdtrace.models.ops import HandOps

    rng = np.random.default_rng(30)
    ops = HandOps(dtype)
    x = dtypes.cast(rng.normal(0, 2, (5, 4)), dtype)
    w = dtypes.cast(rng.normal(0, 2, 4), dtype)
    W = dtypes.cast(rng.normal(0, 2, (3, 4)), dtype)
    b, bb, g = (
        dtypes.cast(rng.normal(0, 2, 1), dtype),
        dtypes.cast(rng.normal(0, 2, 3), dtype),
        dtypes.cast(rng.normal(0, 2, 5), dtype),
    )
    X, Wf, gf = (np.asarray(t, dtype=np.float64) for t in (x, W, g))
    wf, bf, bbf = (np.asarray(t, dtype=np.float64) for t in (w, b, bb))
    exact = {
        "sum": ([math.fsum(r) for r in X], np.abs(X).sum(axis=1), ops.sum(x)),
        "sum-keep": ([[math.fsum(r)] for r in X], np.abs(X).sum(axis=1, keepdims=True), ops.sum(x, keep=True)),
        "mean": ([math.fsum(r) / 4 for r in X], np.abs(X).sum(axis=1) / 4, ops.mean(x)),
        "matvec": (
            [math.fsum(list(r * wf) + [bf[0]]) for r in X],
            np.abs(X) @ np.abs(wf) + abs(bf[0]),
            ops.matvec(x, w, b),
        ),
        "vecmat": ([math.fsum(gf * X[:, d]) for d in range(4)], np.abs(gf) @ np.abs(X), ops.vecmat(g, x)),
        "linear": (
            [[math.fsum(list(X[i] * Wf[h]) + [bbf[h]]) for h in range(3)] for i in range(5)],
            np.abs(X) @ np.abs(Wf).T + np.abs(bbf),
            ops.linear(x, W, bb),
        ),
        "matmul": (
            [[math.fsum(X[i] * Wf[h]) for h in range(3)] for i in range(5)],
            np.abs(X) @ np.abs(Wf).T,
            ops.matmul(x, ops.T(W)),
        ),
    }
    acc = dtypes.accumulation(dtype)
    u, ua = dtypes.unit_roundoff(dtype), dtypes.unit_roundoff(acc)
    for name, (want, mags, got) in exact.items():
        got = np.asarray(got)
        assert got.dtype == dtypes.np_dtype(dtype), name
        want = np.asarray(want, dtype=np.float64)
        assert got.shape == want.shape, name
        bound = dtypes.gamma(6, acc) * mags + (u * np.abs(want) * 1.01 if acc != dtype else 0) + ua * np.abs(want)
        assert np.all(np.abs(got.astype(np.float64) - want) <= bound), name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("name", ["exp", "log", "log1p", "tanh", "sigmoid", "log_sigmoid"])
def test_handops_functions_are_correctly_rounded_but_for_a_tie(dtype, name):
    """An element-wise function in float64, rounded once (16 bits through float32): within one ulp
    of the correctly rounded value (60 digits). sigmoid is torch's ``1/(1 + e^-a)`` in the type, 0
    where e^-a overflows it."""
    import mpmath

    from sgdtrace import dtypes
    from sgdtrace.models.ops import HandOps

    rng = np.random.default_rng(31)
    ops = HandOps(dtype)
    a = dtypes.cast(rng.uniform(0.01, 6, 40) if name in ("log", "log1p") else rng.uniform(-12, 12, 40), dtype)
    got = np.asarray(getattr(ops, name)(a))
    assert got.dtype == dtypes.np_dtype(dtype)
    f = _mp(name)
    spacing = lambda v: float(np.abs(np.spacing(dtypes.np_dtype(dtype).type(v)).astype(np.float64)))  # noqa: E731
    for t, r in zip(np.asarray(a, dtype=np.float64), got.astype(np.float64)):
        with mpmath.workdps(60):
            exact = float(f(mpmath.mpf(float(t))))
        slack = (4 if name == "sigmoid" else 1) * spacing(exact)  # sigmoid: three roundings in the type
        assert abs(r - exact) <= slack, (name, t, r, exact)
    if name == "sigmoid":
        limit = math.log(float(dtypes.finfo(dtypes.accumulation(dtype)).max))
        assert float(ops.sigmoid(np.array([-limit - 2.0]))[0]) == 0.0  # e^-a overflows: 0, not a subnormal


@pytest.mark.parametrize("name", ["exp", "log", "log1p", "tanh", "sigmoid", "log_sigmoid"])
def test_trackops_carry_forms_err_within_their_counted_roundings(name):
    """Each function's carry C = f(a) - f(a - c), as TrackOps works it out in float64, is within the
    roundings it counts for C (u64 |C| each: 4; tanh 4 + 5(|a| + |b|); log1p 4 + 2k; sigmoid and
    log σ 10 + |b|) of the exact difference, b = a - c exactly: inputs over the scales a run meets
    (saturated tanh and σ, log1p's argument near -1, carries as large as the values)."""
    import mpmath

    rng = np.random.default_rng(32)
    ops = _ops("float64")
    f = _mp(name)
    worst = 0.0
    for _ in range(300):
        if name == "log":
            a = 10 ** rng.uniform(-3, 3)
            b = a * 10 ** rng.uniform(-3, 3)
        elif name == "log1p":
            a = max(10 ** rng.uniform(-16, 3) * rng.choice([1, -1]), -1 + 1e-12)
            b = (a + 1) * 10 ** rng.uniform(-3, 3) - 1
        elif name == "exp":
            a = rng.uniform(-30, 30)
            b = a + rng.choice([1e-6, 1, 20]) * rng.uniform(-1, 1)
        else:
            a = rng.uniform(-60, 60) * rng.choice([1, 0.01, 1e-4])
            b = a + rng.choice([1e-9, 1e-3, 1, 30, 100]) * rng.uniform(-1, 1)
        c = a - b
        if c == 0:
            continue
        t = Track(np.array([[a]]), np.array([[abs(a)]]), np.zeros((1, 1)), np.array([[c]]))
        got = float(getattr(ops, name)(t).carry[0, 0])
        if name == "sigmoid" and got == 0.0:  # saturated on both sides: exactly 1 (or 0) on both
            continue
        count = 4.0
        if name == "tanh":
            count += 5 * (abs(a) + abs(a - c))
        elif name == "log1p":
            tt = -c / (1.0 + a)
            count += 2 * abs(tt) / (abs(1.0 + tt) * abs(math.log1p(tt)))
        elif name in ("sigmoid", "log_sigmoid"):
            count = 10.0 + abs(a - c)
        with mpmath.workdps(250):
            exact = f(mpmath.mpf(a)) - f(mpmath.mpf(a) - mpmath.mpf(c))
            share = float(abs(mpmath.mpf(got) - exact) / (count * U64 * abs(exact)))
        worst = max(worst, share)
    assert worst <= 1.0, worst


# ------------------------------------------------------------------ every step at once (ops.judge_terms)


@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("loss", ["bce", "bce-sigmoid"])
def test_judge_terms_are_each_steps_own(chunk, loss, monkeypatch):
    """judge_terms works every step of one batch size at once, in chunks of steps; each step's E,
    C and peak are those of that step's batch alone (TrackOps over one step, the batch taken from
    the plan's order by hand), and the peak is the step's, broadcast over each field's shape."""
    from types import SimpleNamespace

    from sgdtrace import models
    from sgdtrace.config import Config
    from sgdtrace.data import plan
    from sgdtrace.models import logistic
    from sgdtrace.models import ops as mops

    if chunk is not None:
        monkeypatch.setattr(mops, "CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(33)
    cfg = Config(model="logistic", loss=loss, features=2, synthetic=11, batch_size=4, epochs=2, shuffle=True, seed=3)
    p_ = plan(11, cfg)  # batches of 4, 4 and 3: two batch sizes
    model = models.build(cfg, 2)
    x, y = rng.normal(0, 2, (11, 2)), (rng.random(11) < 0.5).astype(np.float64)
    K = p_.n_steps
    starts = {"w": rng.normal(0, 1, (K, 2)), "b": rng.normal(0, 1, (K, 1))}
    bounds = {
        p: SimpleNamespace(mag=np.abs(v) * 1.01, carry=v * rng.uniform(-1e-4, 1e-4, v.shape)) for p, v in starts.items()
    }
    run_cfg = SimpleNamespace(dtype="float32", loss=loss)

    def fb(o, prm, xb, yb):
        return logistic.forward_backward(o, prm, xb, yb, loss)

    got = mops.judge_terms(model, fb, starts, bounds, x, y, p_, run_cfg)
    sizes = p_.batch_sizes().tolist()
    k = 0
    for e in range(p_.epochs):
        order = p_.epoch_order(e).tolist()
        start = 0
        for n in sizes:
            idx = order[start : start + n]
            start += n
            ops = mops.TrackOps("float32", 1)
            prm = {
                p: Track(
                    starts[p][k : k + 1],
                    bounds[p].mag[k : k + 1],
                    np.zeros((1, *starts[p].shape[1:])),
                    bounds[p].carry[k : k + 1],
                )
                for p in ("w", "b")
            }
            out = fb(ops, prm, ops.input(x[idx][None]), ops.input(y[idx][None]))
            for f in ("loss", "grad_w", "grad_b"):
                np.testing.assert_allclose(got["E"][f][k], out[f].rnd[0], rtol=1e-13, err_msg=f"E {f} step {k + 1}")
                np.testing.assert_allclose(got["C"][f][k], out[f].carry[0], rtol=1e-13, atol=1e-300, err_msg=f"C {f}")
                assert np.all(got["peak"][f][k] == ops.peak[0]), (f, k)
            assert got["ambiguous"][k] == 0
            k += 1
    assert k == K
    assert set(got["both"]) == {"grad_w", "grad_b"} and not any(np.any(v) for v in got["both"].values())


def test_step_groups_index_every_steps_batch():
    """The steps by batch size, each with its samples' indices in the plan's order."""
    from sgdtrace.config import Config
    from sgdtrace.data import plan
    from sgdtrace.models.ops import step_groups

    p_ = plan(10, Config(batch_size=4, epochs=3, shuffle=True, seed=8))
    groups = step_groups(p_)
    assert [(n, steps.tolist()) for n, steps, _ in groups] == [(2, [2, 5, 8]), (4, [0, 1, 3, 4, 6, 7])]
    for n, steps, idx in groups:
        assert idx.shape == (len(steps), n)
        for row, s in zip(idx, steps.tolist()):
            e, j = divmod(s, 3)
            assert row.tolist() == p_.epoch_order(e)[j * 4 : j * 4 + n].tolist()


def test_hand_gradients_are_the_models_forward_backward_in_the_runs_type():
    from sgdtrace.models import logistic
    from sgdtrace.models.ops import HandOps, hand_gradients

    rng = np.random.default_rng(34)
    x = rng.normal(0, 1, (5, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1], dtype=np.float32)
    prm = {"w": np.array([0.5, -1.0, 0.25], dtype=np.float32), "b": np.array([0.1], dtype=np.float32)}
    loss, grads = hand_gradients(lambda o, p, xb, yb: logistic.forward_backward(o, p, xb, yb), ("w", "b"), "float32")(
        prm, x, y
    )
    out = logistic.forward_backward(HandOps("float32"), prm, x, y)
    assert set(grads) == {"w", "b"} and loss == out["loss"]
    assert np.array_equal(grads["w"], out["grad_w"]) and np.array_equal(grads["b"], out["grad_b"])
    assert grads["w"].dtype == np.float32


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
def test_handops_backward_rules_round_each_step_in_the_type(dtype):
    """sigmoid_backward is ``g·(1 - p)·p`` and tanh_backward ``g·(1 - t·t)``, left to right, each
    difference and product rounded to the type (a 16-bit kernel computes each in float32)."""
    from sgdtrace import dtypes
    from sgdtrace.models.ops import HandOps

    rng = np.random.default_rng(35)
    t = dtypes.np_dtype(dtype)
    wide = np.float32 if dtype in ("bfloat16", "float16") else t.type

    def rnd(v):  # one operation's result in the type
        return np.asarray(v, dtype=wide).astype(t)

    def w(v):
        return np.asarray(v).astype(wide)

    g = dtypes.cast(rng.normal(0, 3, 64), dtype)
    p = dtypes.cast(rng.uniform(0, 1, 64), dtype)
    ops = HandOps(dtype)
    one = wide(1.0)
    want_s = rnd(w(rnd(w(g) * w(rnd(one - w(p))))) * w(p))
    want_t = rnd(w(g) * w(rnd(one - w(rnd(w(p) * w(p))))))
    got_s, got_t = ops.sigmoid_backward(g, p), ops.tanh_backward(g, p)
    assert got_s.dtype == t and got_t.dtype == t
    np.testing.assert_array_equal(got_s.astype(np.float64), want_s.astype(np.float64))
    np.testing.assert_array_equal(got_t.astype(np.float64), want_t.astype(np.float64))
    # not the same as the products taken at once in float64 and rounded once (16 bits: differs)
    if dtype in ("bfloat16", "float16"):
        once = dtypes.cast(g.astype(np.float64) * (1 - p.astype(np.float64)) * p.astype(np.float64), dtype)
        assert not np.array_equal(once.astype(np.float64), want_s.astype(np.float64))


def test_trackops_boundaries_of_the_branches():
    """relu's branch where the two sides lie on both sides of 0 (ambiguous, whatever the rounding)
    or exactly at it, and where no rounding widens the interval; the clamp where the highest value
    either side can hold is exactly the floor, and where an input is exact (rnd 0) or not (rnd 1)."""
    u = _consts("float32")[0]
    ops = _ops("float32")
    z = Track(
        np.array([[1e-3, 0.0, 2.0, 0.0, -1e-3]] * S),
        np.ones((S, 5)),
        np.array([[1e-9, 0.0, 1.0, 1.0, 0.0]] * S),
        np.array([[2e-3, 0.0, 0.0, 0.0, -2e-3]] * S),
    )
    # 1e-3 hand, -1e-3 torch: ambiguous; 0 exact: branch 0 on both; 2 (1 u): not; 0 with rounding:
    # ambiguous; -1e-3 hand, 1e-3 torch, exact: the branches differ by 1, not in doubt
    m = ops.relu_mask(z)
    assert m.v[0].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert m.rnd[0].tolist() == [1 / u, 0.0, 0.0, 1 / u, 0.0]
    assert m.carry[0].tolist() == [0.0, 0.0, 0.0, 0.0, -1.0]
    assert ops.ambiguous_steps.tolist() == [2] * S and ops.ambiguous == 2 * S
    lo = -100.0
    a = Track(
        np.array([[-100.0, -101.0, -100.0 - 2.0**-17, -50.0]] * S),
        np.full((S, 4), 101.0),
        np.array([[0.0, 1.0, 2.0**-17 / u, 0.0]] * S),
        np.zeros((S, 4)),
    )
    c = ops.clamp_min(a, lo)
    # at the floor exactly (exact): held at it on both sides; -101 + u: below; rounding that reaches
    # the floor exactly: below (held); above it: the input's rounding
    assert c.v[0].tolist() == [-100.0, -100.0, -100.0, -50.0]
    assert c.rnd[0].tolist() == [0.0, 0.0, 0.0, 0.0]
    b = Track(a.v + 60.0, a.mag, np.array([[1.0, 1.0, 0.0, 1.0]] * S), a.carry)
    assert ops.clamp_min(b, lo).rnd[0].tolist() == [1.0, 1.0, 0.0, 1.0]


def test_trackops_raise_no_floating_point_error():
    """Every operation silences NumPy's warnings itself: infinite and nan carries, zero divisors,
    arguments whose function overflows, run with NumPy set to raise on overflow, invalid operations
    and division by zero (an underflow to 0 is a result, not an error)."""
    rng = np.random.default_rng(36)
    a, b = _grid(rng, (S, 6)), _grid(rng, (S, 6))
    for t in (a, b):
        t.carry[0, 0], t.carry[1, 1], t.v[2, 2] = np.inf, np.nan, 0.0
        t.rnd[2, 3] = np.inf
    a.v[0, 3], a.v[1, 4] = 800.0, -800.0
    x = _grid(rng, (S, 4, 6))
    x.carry[0, 0, 0] = np.inf

    def cols(t, k):
        return Track(*(np.asarray(f)[:, :k] for f in (t.v, t.mag, t.rnd, t.carry)))

    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        for dtype in ("float32", "bfloat16"):
            ops = _ops(dtype)
            for name in ("add", "sub", "mul", "div", "maximum", "sigmoid_backward", "tanh_backward"):
                getattr(ops, name)(a, b)
            for name in (
                "neg",
                "exp",
                "log",
                "log1p",
                "sigmoid",
                "tanh",
                "log_sigmoid",
                "relu",
                "relu_mask",
                "sum",
                "mean",
            ):
                getattr(ops, name)(a)
            ops.scale(a, 0.3)
            ops.div_n(a, 3)
            ops.clamp_min(ops.log(a), -100.0)
            ops.matvec(x, a, cols(b, 1))
            ops.vecmat(cols(a, 4), x)
            ops.const(0.1, a)
        for name in ("mul", "div", "maximum"):
            getattr(track, name)(a, b)
        track.lerp(a, b, 0.7)
        track.sqrt(a, U32)
        a.combine(0.5, b)
        a.scaled(0.5)
