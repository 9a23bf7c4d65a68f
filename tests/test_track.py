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
from types import SimpleNamespace

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as tnf

from sgdtrace import dtypes, probe, track
from sgdtrace.models import ops as mops
from sgdtrace.models.ops import HandOps, TrackOps
from sgdtrace.track import U64, Track

# NumPy warnings fail a test: the judge silences every overflow it expects (np.errstate), and
# a warning reaching a user's terminal is a fault
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

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
    rnd = INF if noise else moved / u + (2 * track.SQRT_ULPS + 1) * mag
    return v, mag, rnd, carry, cerr


@pytest.mark.parametrize("n_ulps", [1, 3])  # torch's root within N ulp: the rule holds for any N stated
@pytest.mark.parametrize("u", [U64, U32])
def test_sqrt_matches_its_docstring(u, n_ulps, monkeypatch):
    monkeypatch.setattr(track, "SQRT_ULPS", n_ulps)
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
    assert math.isinf(out.rnd[6]) and math.isfinite(out.rnd[8]) and out.rnd[8] > (2 * n_ulps + 1) * out.mag[8]
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


#: each type's unit roundoff and smallest subnormal (IEEE 754; bfloat16: 8 significand bits)
UNIT = {"float64": 2.0**-53, "float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}
TINY = {"float64": 2.0**-1074, "float32": 2.0**-149, "bfloat16": 2.0**-133, "float16": 2.0**-24}


def _consts(dtype):
    """u, c64 = u64/u (C's float64 rounding in units of u), eta = the subnormal floor in units of u."""
    u = UNIT[dtype]
    return u, U64 / u, TINY[dtype] / 2 / u


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


def _at(t, idx):
    """One element's (v, mag, rnd, carry)."""
    return tuple(float(np.asarray(getattr(t, f))[idx]) for f in ("v", "mag", "rnd", "carry"))


def _rows(t, idx):
    return [_at(t, i) for i in idx]


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


def test_track_products_quotients_and_roots_overflow_to_inf_silently():
    """track.mul and div past the largest float give inf, and a root's carried error over a tiny
    root's sum (C's own error 1e300 over 2e-150) gives an infinite bound: no warning with NumPy set
    to raise, each operation silences its own overflow."""
    big = Track.measured(np.array([1e300, 2.0]), np.array([1e300, 2.0]))
    tiny = Track.measured(np.array([1e-300, 2.0]), np.array([1e-300, 2.0]))
    x = Track(np.array([1e-300]), np.array([1e-300]), np.array([0.0]), np.array([0.0]), np.array([1e300]))
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        assert track.mul(big, big).v.tolist() == [np.inf, 4.0]
        assert track.div(big, tiny).v.tolist() == [np.inf, 1.0]
        root = track.sqrt(x, U32)
    assert root.v[0] == 1e-150 and root.cerr[0] == np.inf


# ----------------------------------------------------------------
# TrackOps at its edges: saturation, branches at 0, 3-D reductions, non-finite carries, N per function, silent
# overflow

# log of float32's largest number: where e^-z overflows the type a 16-bit or float32 kernel computes in
LIMIT32 = math.log(float(np.finfo(np.float32).max))


def _t(v, rnd=0.0, carry=0.0, mag=None):
    """A Track of the shape of ``v``: magnitude the larger side's unless given."""
    v = np.asarray(v, dtype=np.float64)
    rnd = np.broadcast_to(np.asarray(rnd, dtype=np.float64), v.shape).copy()
    carry = np.broadcast_to(np.asarray(carry, dtype=np.float64), v.shape).copy()
    if mag is None:
        with np.errstate(invalid="ignore", over="ignore"):
            mag = np.fmax(np.abs(v), np.abs(v - carry))
    mag = np.broadcast_to(np.asarray(mag, dtype=np.float64), v.shape).copy()
    return Track(v, mag, rnd, carry)


def _gamma(k, u):
    return k * u / (1 - k * u)


def _depth(k):
    """float32's sum of k terms: min(k - 1, ceil(log2 k) + 16) roundings (k >= 2)."""
    k = max(k, 2)
    return min(k - 1, math.ceil(math.log2(k)) + 16)


# ------------------------------------------------------------------ bookkeeping


def test_ambiguous_counts_are_integer_counts_per_step():
    """relu's ambiguous branches are counted per step as integers (2-D values and one per step)."""
    ops = TrackOps("float32", 2)
    z = _t([[1e-9, 2.0, -1e-9], [5.0, 6.0, 7.0]], rnd=1.0)  # within u of 0: ambiguous
    ops.relu_mask(z)
    ops.relu_mask(_t([0.0, 3.0], rnd=1.0))  # one value per step (the steps axis only)
    assert np.issubdtype(ops.ambiguous_steps.dtype, np.integer)
    assert ops.ambiguous_steps.tolist() == [3, 0] and ops.ambiguous == 3


def test_values_without_a_steps_axis_are_every_steps():
    """A value with no leading axis of steps (a constant, a plain vector) takes no step's peak
    itself; a reduction of one to a scalar counts its terms' magnitude for every step."""
    ops = TrackOps("float32", 3)
    assert float(ops.add(ops.const(2.0), ops.const(3.0)).v) == 5.0
    assert ops.peak.tolist() == [0.0, 0.0, 0.0]
    s = ops.sum(ops.input(np.array([1.0, -2.0, 4.0])))
    assert float(s.v) == 3.0 and ops.peak.tolist() == [7.0, 7.0, 7.0]
    ops = TrackOps("float32", 2)
    d = ops.matmul(ops.input(np.array([1.0, -2.0])), ops.input(np.array([3.0, 5.0])))
    assert float(d.v) == -7.0 and ops.peak.tolist() == [13.0, 13.0]


def test_inputs_are_held_in_float64():
    """The batch's x and y (float16 in a float16 run) are held as float64: a product of two is exact."""
    ops = TrackOps("float16", 1)
    x = np.array([[1.1, 3.3, -0.7]], dtype=np.float16)
    a = ops.input(x)
    assert a.v.dtype == np.float64
    want = x.astype(np.float64) * x.astype(np.float64)
    assert np.array_equal(ops.mul(a, a).v, want)
    assert not np.array_equal(want, (x * x).astype(np.float64))  # float16 would round it


def test_const_of_an_array_without_like_keeps_its_shape():
    ops = TrackOps("float32", 2)
    c = ops.const(np.array([0.5, 3.0]))
    assert c.v.tolist() == [0.5, 3.0] and c.rnd.tolist() == [0.0, 0.0]


def test_products_and_quotients_count_the_subnormal_floor():
    """mul and div add eta = tiny/2/u (a result that rounds into the subnormal range): 0·1 and 0/1,
    exact inputs, have exactly that bound."""
    ops = TrackOps("float32", 1)
    eta = _consts("float32")[2]
    zero, one = _t([[0.0]]), _t([[1.0]])
    assert ops.mul(zero, one).rnd.tolist() == [[eta]]
    assert ops.div(zero, one).rnd.tolist() == [[eta]]


# ------------------------------------------------------------------ reductions on (steps, batch, k)


def _near_one(rng, shape):
    v = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    carry = v * rng.uniform(-1e-3, 1e-3, shape)
    return _t(v, rnd=rng.uniform(0.0, 3.0, shape), carry=carry)


def test_sum_and_mean_reduce_the_last_axis_of_a_3d_value():
    """A (steps, batch, k) value: the sum and mean run over the last axis (k terms), not the batch."""
    rng = np.random.default_rng(1)
    S, B, k = 2, 3, 5
    u, c64, _ = _consts("float32")
    a = _near_one(rng, (S, B, k))
    ops = TrackOps("float32", S)
    out = ops.sum(a)
    assert out.v.shape == (S, B)
    peak = np.zeros(S)
    for s in range(S):
        for b in range(B):
            v, mag, carry = math.fsum(a.v[s, b]), math.fsum(a.mag[s, b]), math.fsum(a.carry[s, b])
            rnd = math.fsum(a.rnd[s, b]) + _depth(k) * mag + k * c64 * math.fsum(np.abs(a.carry[s, b]))
            got = _at(out, (s, b))
            np.testing.assert_allclose(got, (v, max(abs(v), abs(v - carry)), rnd, carry), rtol=1e-13)
            peak[s] = max(peak[s], mag)
            m = ops.mean(a)
            mean = (v / k, got[1] / k, rnd / k + 2 * got[1] / k + c64 * abs(carry / k), carry / k)
            np.testing.assert_allclose(_at(m, (s, b)), mean, rtol=1e-13)
    np.testing.assert_allclose(ops.peak, peak, rtol=1e-13)


def test_vecmat_of_3d_values_sums_over_the_rows():
    """vecmat (…, n)·(…, n, D) with a leading batch axis as well: a dot product of n terms."""
    rng = np.random.default_rng(2)
    S, B, n, D = 2, 3, 4, 2
    g, x = _near_one(rng, (S, B, n)), _near_one(rng, (S, B, n, D))
    ops = TrackOps("float32", S)
    out = ops.vecmat(g, x)
    assert out.v.shape == (S, B, D)
    for s, b, d in np.ndindex(S, B, D):
        rows = [_at(g, (s, b, i)) for i in range(n)]
        cols = [_at(x, (s, b, i, d)) for i in range(n)]
        (v, _, rnd, carry), _ = _dot_by_hand(rows, cols, None, n, "float32")
        np.testing.assert_allclose(_at(out, (s, b, d)), (v, max(abs(v), abs(v - carry)), rnd, carry), rtol=1e-13)


def test_mean_of_an_empty_axis_is_nan_silently():
    """torch's mean of no elements is nan; the judge's is too, without a floating-point warning."""
    ops = TrackOps("float32", 2)
    m = ops.mean(_t(np.zeros((2, 0))))
    assert m.v.shape == (2,) and np.all(np.isnan(m.v)) and np.all(np.isnan(m.carry))


def test_a_dot_product_of_one_term_counts_gamma_1():
    ops = TrackOps("float32", 1)
    u = _consts("float32")[0]
    out = ops.matvec(_t([[[3.0], [-0.5]]]), _t([[2.0]]))
    assert out.v.tolist() == [[6.0, -1.0]]
    np.testing.assert_allclose(out.rnd, [[_gamma(1, u) / u * 6.0, _gamma(1, u) / u * 1.0]], rtol=1e-15)


def test_dot_products_leave_infinite_carries_out_of_cs_rounding():
    """A carry of +inf or -inf (a run whose other side overflowed) is not judged: it adds nothing
    to the bound of C's float64 rounding, on either factor."""
    u, c64, _ = _consts("float32")
    inf = math.inf
    xv = np.array([[[0.5, 0.25], [0.5, 0.25]]] * 2)
    xc = np.array([[[inf, 1e-3], [-inf, 1e-3]]] * 2)
    x = _t(xv, rnd=np.full(xv.shape, 2.0), carry=xc, mag=np.abs(xv))
    wv = np.array([[0.25, 0.5], [0.25, 0.5]])
    wc = np.array([[1e-3, inf], [1e-3, -inf]])
    w = _t(wv, rnd=np.full(wv.shape, 1.0), carry=wc, mag=np.abs(wv))
    ops = TrackOps("float32", 2)
    out = ops.matvec(x, w)
    for s, i in np.ndindex(2, 2):
        rows = [_at(x, (s, i, d)) for d in range(2)]
        cols = [_at(w, (s, d)) for d in range(2)]
        (v, _, rnd, _), _ = _dot_by_hand(rows, cols, None, 2, "float32")
        assert float(out.v[s, i]) == v
        np.testing.assert_allclose(float(out.rnd[s, i]), rnd, rtol=1e-14)
    assert not np.any(np.isfinite(out.carry))


# ------------------------------------------------------------------ the functions


def _ulps_table(monkeypatch):
    """A probe that measured more than N = 3 for every function (a different N for each) in float32,
    and for exp in float64 too."""
    table = {
        "functions": {
            "exp": {"float32": {"one": {"max_ulp": 5}}, "float64": {"vector": {"max_ulp": 4}}},
            "log": {"float32": {"vector": {"max_ulp": 6}}},
            "log1p": {"float32": {"one": {"max_ulp": 7}}},
            "sigmoid": {"float32": {"vector": {"max_ulp": 8}}},
            "tanh": {"float32": {"one": {"max_ulp": 9}}},
        }
    }
    monkeypatch.setattr(probe, "rules", lambda refresh=False: table)


def test_each_function_takes_its_own_measured_ulps(monkeypatch):
    """An exact input: the bound is the function's own rounding, (2N + 1)|result| with N the probe's
    measure for that function (log σ: σ's and log's), plus the subnormal floor."""
    _ulps_table(monkeypatch)
    eta = _consts("float32")[2]
    ops = TrackOps("float32", 1)
    x = 0.5
    sig = 1.0 / (1.0 + math.exp(-x))
    cases = {
        "exp": (2.0, math.exp(2.0), 11),
        "log": (2.0, math.log(2.0), 13),
        "log1p": (x, math.log1p(x), 15),
        "sigmoid": (x, sig, 17),
        "tanh": (x, math.tanh(x), 19),
        "log_sigmoid": (x, math.log(sig), 17 + 13),
    }
    for name, (arg, value, units) in cases.items():
        out = getattr(ops, name)(_t([[arg]]))
        np.testing.assert_allclose(float(out.v[0, 0]), value, rtol=1e-15, err_msg=name)
        np.testing.assert_allclose(float(out.rnd[0, 0]), units * abs(value) + eta, rtol=1e-14, err_msg=name)


def test_a_float64_run_takes_the_float64_measure(monkeypatch):
    _ulps_table(monkeypatch)
    eta = _consts("float64")[2]
    out = TrackOps("float64", 1).exp(_t([[1.0]]))
    np.testing.assert_allclose(float(out.rnd[0, 0]), 9 * math.e + eta, rtol=1e-15)


def test_a_functions_top_is_its_value_at_the_interval_top_plus_its_rounding(monkeypatch):
    """``top``: the largest value either side can hold, f(hi)·(1 + units·u), hi = a + u·rnd."""
    _ulps_table(monkeypatch)
    u = _consts("float32")[0]
    ops = TrackOps("float32", 1)
    out = ops.exp(_t([[1.0]], rnd=2.0))
    np.testing.assert_allclose(float(out.top[0, 0]), math.exp(1.0 + 2 * u) * (1 + 11 * u), rtol=1e-15)
    out = ops.log(_t([[2.0]], rnd=4.0))
    np.testing.assert_allclose(float(out.top[0, 0]), math.log(2.0 + 4 * u) * (1 + 13 * u), rtol=1e-15)


def test_exact_inputs_carry_nothing_even_where_the_function_is_infinite():
    """No carry in, no carry out: log 0 is -inf on both sides, e^800 overflows on both sides."""
    ops = TrackOps("float32", 1)
    out = ops.log(_t([[0.0, 2.0]]))
    assert out.carry.tolist() == [[0.0, 0.0]]
    out = ops.exp(_t([[800.0, 1.0]]))
    assert out.v[0, 0] == math.inf and out.carry.tolist() == [[0.0, 0.0]] and out.rnd[0, 0] == 0.0


def test_an_exp_that_overflows_on_one_side_has_an_infinite_bound():
    """e^1000 (hand) against e^999 (torch), both inputs exact: the bound is +inf (not nan), so the
    overflow rule sees it."""
    out = TrackOps("float32", 1).exp(_t([[1000.0]], carry=1.0))
    assert out.v[0, 0] == math.inf and out.rnd[0, 0] == math.inf


def test_exp_with_a_carry_and_a_rounding_of_exactly_one():
    """exp at a = 0.5 with carry 1 (torch at -0.5) and rnd 1: C = e^a - e^(a - 1), the input's
    rounding moved by the slope at the interval's top, e^(a + u)."""
    u, c64, eta = _consts("float32")
    out = TrackOps("float32", 1).exp(_t([[0.5]], rnd=1.0, carry=1.0))
    C = math.exp(0.5) - math.exp(-0.5)
    np.testing.assert_allclose(float(out.carry[0, 0]), C, rtol=1e-15)
    want = math.exp(0.5 + u) + 7 * math.exp(0.5) + eta + 4 * c64 * C
    np.testing.assert_allclose(float(out.rnd[0, 0]), want, rtol=1e-14)


def test_log1p_counts_its_condition_number_at_t_equal_one():
    """log1p at a = 0 with torch at 1 (carry -1): t = -c/(1 + a) = 1, k = |t|/(|1 + t||log1p t|) =
    1/(2 log 2), C's own error (4 + 2k)u64|C| (float64: u64/u = 1)."""
    eta = _consts("float64")[2]
    out = TrackOps("float64", 1).log1p(_t([[0.0]], carry=-1.0))
    C = -math.log(2.0)
    np.testing.assert_allclose(float(out.carry[0, 0]), C, rtol=1e-15)
    k = 1.0 / (2.0 * math.log(2.0))
    want = 7 * math.log(2.0) + eta + (4 + 2 * k) * math.log(2.0)
    np.testing.assert_allclose(float(out.rnd[0, 0]), want, rtol=1e-14)


def test_log1p_whose_interval_reaches_below_minus_one_is_unbounded():
    """bfloat16: a = -0.5 within 0.75 of its rounding: the interval reaches -1.25, log1p's slope is
    unbounded there."""
    u = _consts("bfloat16")[0]
    out = TrackOps("bfloat16", 1).log1p(_t([[-0.5]], rnd=0.75 / u))
    assert out.rnd[0, 0] == math.inf


def test_slopes_over_an_interval_holding_zero_are_taken_at_zero():
    """σ and tanh on an interval [-0.1, 0.7] (a = 0.3, rounding 0.4): the largest slope is at 0,
    1/4 for σ and 1 for tanh."""
    u, _, eta = _consts("float32")
    rnd = 0.4 / u
    ops = TrackOps("float32", 1)
    sig = 1.0 / (1.0 + math.exp(-0.3))
    out = ops.sigmoid(_t([[0.3]], rnd=rnd))
    np.testing.assert_allclose(float(out.rnd[0, 0]), rnd / 4 + 7 * sig + eta, rtol=1e-14)
    out = ops.tanh(_t([[0.3]], rnd=rnd))
    np.testing.assert_allclose(float(out.rnd[0, 0]), rnd + 7 * math.tanh(0.3) + eta, rtol=1e-14)


def _mp_sig(t):
    return 1 / (1 + mpmath.exp(-t))


def test_sigmoid_and_log_sigmoid_with_a_carry_of_exactly_one():
    """float64, a = 3, torch's input b = 2 (carry 1): C's own error counts (10 + |b|) u64 |C|
    (docs/tolerance.md, "b's own rounding"); log σ adds log's rounding of its result."""
    _, _, eta = _consts("float64")
    ops = TrackOps("float64", 1)
    with mpmath.workdps(50):
        s3, s2 = _mp_sig(mpmath.mpf(3)), _mp_sig(mpmath.mpf(2))
        C, v = float(s3 - s2), float(s3)
        lC, lv, l2 = float(mpmath.log(s3) - mpmath.log(s2)), float(mpmath.log(s3)), float(mpmath.log(s2))
    out = ops.sigmoid(_t([[3.0]], carry=1.0))
    np.testing.assert_allclose(float(out.carry[0, 0]), C, rtol=1e-14)
    np.testing.assert_allclose(float(out.rnd[0, 0]), 7 * v + eta + (10 + 2) * abs(C), rtol=1e-14)
    out = ops.log_sigmoid(_t([[3.0]], carry=1.0))
    np.testing.assert_allclose(float(out.carry[0, 0]), lC, rtol=1e-14)
    mag = max(abs(lv), abs(l2))
    np.testing.assert_allclose(float(out.rnd[0, 0]), 14 * mag + eta + (10 + 2) * abs(lC), rtol=1e-14)


def test_log_sigmoid_of_plus_infinity_is_exactly_zero():
    """log σ(+inf) = 0 on both sides (an exact input): the bound is the subnormal floor, not nan."""
    eta = _consts("float32")[2]
    out = TrackOps("float32", 1).log_sigmoid(_t([[math.inf]]))
    assert out.v.tolist() == [[0.0]] and out.rnd.tolist() == [[eta]]


# ------------------------------------------------------------------ σ's saturation


def test_sigmoid_saturates_to_one_where_e_to_minus_z_is_at_most_u_over_4():
    """Both sides' σ is exactly 1 where e^-z <= u/4 for every z either side can hold: at equality
    (bfloat16, z = 10 log 2: e^-z = 2^-10 = u/4) and just inside (float32, z = 18.1)."""
    z = 10 * math.log(2.0)
    assert np.exp(-z) == 2.0**-10
    for dtype, arg in (("bfloat16", z), ("float32", 18.1)):
        out = TrackOps(dtype, 1).sigmoid(_t([[arg]]))
        assert (out.v[0, 0], out.mag[0, 0], out.rnd[0, 0], out.carry[0, 0]) == (1.0, 1.0, 0.0, 0.0), dtype


def test_sigmoid_is_not_saturated_where_torchs_input_is_not():
    """Hand at 40 (saturated), torch at 2 (not): the carry σ(40) - σ(2) and a bound remain."""
    out = TrackOps("float32", 1).sigmoid(_t([[40.0]], carry=38.0))
    with mpmath.workdps(50):
        C = float(_mp_sig(mpmath.mpf(40)) - _mp_sig(mpmath.mpf(2)))
    np.testing.assert_allclose(float(out.carry[0, 0]), C, rtol=1e-14)
    assert out.rnd[0, 0] > 0


def test_sigmoid_zero_below_minus_the_exp_limit_only():
    """σ is 0 on both sides where every input either side can hold lies strictly below
    -log(largest float32); at it, or where the rounding reaches above it, it is not."""
    u, c64, eta = _consts("float32")
    ops = TrackOps("float32", 1)
    out = ops.sigmoid(_t([[-200.0, -300.0]]))  # saturated at 0 only: both 0 exactly
    assert out.v.tolist() == [[0.0, 0.0]] and out.rnd.tolist() == [[0.0, 0.0]]
    at = ops.sigmoid(_t([[-LIMIT32]]))  # at the limit: not below it
    assert at.v[0, 0] > 0 and at.rnd[0, 0] > 0
    # -88.9 whose rounding spans [-89.2, -88.6]: 0 on one side possibly (the band): + mag/u
    band = ops.sigmoid(_t([[-88.9]], rnd=0.3 / u))
    assert band.v[0, 0] > 0 and band.rnd[0, 0] >= band.mag[0, 0] / u
    # the lower input exactly at the limit, the upper above it: no band
    out = ops.sigmoid(_t([[-LIMIT32]], carry=-1.0))
    with mpmath.workdps(50):
        a, b = mpmath.mpf(-LIMIT32), mpmath.mpf(-LIMIT32) + 1
        C, mag = float(_mp_sig(a) - _mp_sig(b)), float(_mp_sig(b))
    want = 7 * mag + eta + c64 * (10 + abs(-LIMIT32 + 1)) * abs(C)
    np.testing.assert_allclose(float(out.rnd[0, 0]), want, rtol=1e-13)


# ------------------------------------------------------------------ branches at 0


def test_relu_mask_interval_touching_zero_is_ambiguous():
    """float32, rounding 1 (u): z = u (interval [0, 2u]) and z = -u ([-2u, 0]) touch 0: ambiguous;
    hand at -1 with torch at +1 spans 0: ambiguous; an exact 2 is not."""
    u = _consts("float32")[0]
    ops = TrackOps("float32", 1)
    m = ops.relu_mask(_t([[u, -u, -1.0, 2.0]], rnd=[[1.0, 1.0, 1.0, 0.0]], carry=[[0.0, 0.0, -2.0, 0.0]]))
    assert m.rnd.tolist() == [[1 / u, 1 / u, 1 / u, 0.0]]
    assert m.carry.tolist() == [[0.0, 0.0, 0.0, 0.0]] and ops.ambiguous == 3


def test_clamp_min_keeps_the_rounding_where_it_can_reach_above_the_floor():
    """max(a, 0) at a = -u/2 with a rounding of 1 (u): a value up to u/2 can be held, so the
    rounding stays."""
    u = _consts("float32")[0]
    out = TrackOps("float32", 1).clamp_min(_t([[-u / 2]], rnd=1.0), 0.0)
    assert out.v.tolist() == [[0.0]] and out.rnd.tolist() == [[1.0]]


# ------------------------------------------------------------------ overflow and non-finite, silently


def test_c64_of_a_huge_or_non_finite_carry_is_silent():
    """C's float64 rounding: ops·(u64/u)·|C|, inf where that overflows, none for a carry that is not
    finite; an infinite count per element raises no warning either."""
    ops = TrackOps("float64", 1)
    got = ops._c64(np.array([1e308, np.inf, np.nan, 2.0]), 4.0)
    assert got.tolist() == [math.inf, 0.0, 0.0, 8.0]
    got = ops._c64(np.array([0.0, 2.0]), np.array([np.inf, 3.0]))
    assert got[1] == 6.0


def test_overflow_and_infinite_values_raise_no_warning():
    """Every operation silences NumPy's overflow and invalid operations itself: a value that
    overflows is +inf (and sets its step's peak: the overflow rule), hand values of inf with
    infinite carries, torch's inputs beyond the largest float."""
    big, inf = 1e308, math.inf
    for dtype in ("float64", "float32"):
        ops = TrackOps(dtype, 2)
        a = _t([[big, 1.0], [inf, 1.0]], carry=[[-big, 0.0], [inf, 0.0]], mag=[[big, 1.0], [inf, 1.0]])
        b = _t([[big, 1.0], [-inf, 1.0]], carry=[[big, 0.0], [-inf, 0.0]], mag=[[big, 1.0], [inf, 1.0]])
        s = ops.add(a, b)
        assert s.v[0, 0] == inf and ops.peak[0] == inf
        ops.sub(a, b)
        p = ops.mul(_t([[1e200]]), _t([[1e200]]))
        assert p.v[0, 0] == inf
        assert ops.div(_t([[big]]), _t([[0.5]])).v[0, 0] == inf
        scaled = ops.scale(_t([[big]], rnd=big, carry=big), 1.0)
        assert scaled.rnd[0, 0] == big + _consts(dtype)[1] * big  # float64: inf
        assert ops.div_n(_t([[big]]), 1).rnd[0, 0] == inf
        assert ops.sum(a).mag[0] == inf
        ops.sum(b)
        d = ops.matvec(_t([[[1e200, 1.0]]]), _t([[1e200, 1.0]]))
        assert d.v[0, 0] == inf
        for name in ("relu", "tanh", "sigmoid", "log_sigmoid", "exp"):
            getattr(ops, name)(a)
        # relu's branch of a hand value of inf with an infinite carry (torch's input nan): not ambiguous
        assert ops.relu_mask(_t([[inf, 1.0]], rnd=1.0, carry=[[inf, 0.0]])).rnd.tolist() == [[0.0, 0.0]]
        ops.clamp_min(a, 0.0)
        ops.maximum(a, b)
        # log1p at a = -1 with torch elsewhere (t = -c/0), and t beyond the largest float
        ops.log1p(_t([[-1.0, -1.0 + 1e-10]], carry=[[0.5, 1e300]]))


# ----------------------------------------------------------------
# HandOps against torch's CPU kernels where its reduced-precision branches decide, and the float64 carry forms
# at their boundaries

REDUCED = ("float16", "bfloat16")


def _same_ops(mine, theirs, what):
    """Bit for bit (compared as float64, nan in the same places)."""
    np.testing.assert_array_equal(np.asarray(mine).astype(np.float64), _as64(theirs), err_msg=what)


# ------------------------------------------------------------------ HandOps


@pytest.mark.parametrize("dtype", ["float32", "float64", *REDUCED])
def test_handops_names_its_type(dtype):
    ops = HandOps(dtype)
    assert ops.name == dtype and ops.dtype == dtypes.np_dtype(dtype)


@pytest.mark.parametrize(
    "dtype, row",
    [
        # float32 adds 8192 + 4 exactly, then loses each 2^-11 (a tie to even): 8196, a float16 tie that
        # rounds down to 8192; summed exactly (8196 + 2^-10) the row rounds up to 8200
        ("float16", [8192.0, 4.0, 2.0**-11, 2.0**-11]),
        # the same in bfloat16: 260 + 1 exactly, the two 2^-16 lost (ties): 261, rounds to 260 (not 262)
        ("bfloat16", [260.0, 1.0, 2.0**-16, 2.0**-16]),
    ],
)
def test_handops_16_bit_sums_accumulate_in_float32_as_torch(dtype, row):
    """A 16-bit sum or mean accumulates in float32 left to right and rounds once (not in float64, not
    in the type), where an exact sum would round the other way. torch's sum is the same bit for bit
    where its kernel adds this row left to right (probed: the order is the CPU build's, and a
    kernel that adds pairwise gives the exact sum's rounding; the judge bounds either)."""
    ops = HandOps(dtype)
    x = dtypes.cast(np.array([row]), dtype)
    acc = np.float32(0.0)
    for v in x[0].astype(np.float32):
        acc = np.float32(acc + v)
    want_sum = dtypes.cast(np.array([float(acc)]), dtype)
    want_mean = dtypes.cast(np.array([float(np.float32(acc / np.float32(len(row))))]), dtype)
    exact = math.fsum(row)
    assert float(dtypes.cast(np.array([exact]), dtype)[0]) != float(want_sum[0])  # the case decides
    assert ops.sum(x).astype(np.float64).tolist() == want_sum.astype(np.float64).tolist()
    assert ops.sum(x, keep=True).shape == (1, 1) and ops.sum(x, keep=True)[0, 0] == ops.sum(x)[0]
    assert ops.mean(x).astype(np.float64).tolist() == want_mean.astype(np.float64).tolist()
    assert ops.sum(x).dtype == dtypes.np_dtype(dtype)
    tx = _torch_of(x.astype(np.float64), dtype)
    if float(tx.sum()) == float(want_sum[0]):  # this machine's kernel adds the row left to right
        _same_ops(ops.sum(x), tx.sum(-1), "sum")
        _same_ops(ops.mean(x), tx.mean(-1), "mean")


@pytest.mark.parametrize(
    "dtype, x0, w0, small",
    [
        # 683·12 = 8196 (a float16 tie) exact in float32; + 2^-11 and the bias 2^-11: two ties to even in
        # float32, still 8196, which rounds down to 8192; exactly 8196 + 2^-10 rounds up to 8200
        ("float16", 683.0, 12.0, 2.0**-11),
        # 29·9 = 261 (a bfloat16 tie) in float32, + 2^-16 twice (ties): 261, rounds to 260; exactly 262
        ("bfloat16", 29.0, 9.0, 2.0**-16),
    ],
)
def test_handops_16_bit_dot_products_accumulate_in_float32_as_torch(dtype, x0, w0, small):
    """``X·w + b`` and ``tnf.linear`` in 16 bits: the products and the bias summed in float32, rounded
    once to the type, as torch's addmv/linear (a 2-term dot product: no order to choose)."""
    ops = HandOps(dtype)
    x = dtypes.cast(np.array([[x0, small]]), dtype)
    w = dtypes.cast(np.array([w0, 1.0]), dtype)
    b = dtypes.cast(np.array([small]), dtype)
    tx, tw, tb = (_torch_of(a.astype(np.float64), dtype) for a in (x, w, b))
    exact = x0 * w0 + 2 * small
    assert float(dtypes.cast(np.array([exact]), dtype)[0]) != float(torch.addmv(tb, tx, tw)[0])
    _same_ops(ops.matvec(x, w, b), torch.addmv(tb, tx, tw), "matvec")
    _same_ops(ops.linear(x, w[None], b), tnf.linear(tx, tw[None], tb), "linear")
    assert ops.matvec(x, w, b).dtype == dtypes.np_dtype(dtype)


def test_handops_16_bit_bias_joins_the_float32_dot_product():
    """683·12 = 8196 is a float16 tie: torch adds the bias 2 to it in float32 (8198, rounds to 8200),
    not to the dot product rounded to float16 first (8192 + 2 rounds to 8192)."""
    ops = HandOps("float16")
    x = np.array([[683.0, 0.0]], dtype=np.float16)
    w, b = np.array([12.0, 1.0], dtype=np.float16), np.array([2.0], dtype=np.float16)
    tx, tw, tb = (_torch_of(a, "float16") for a in (x, w, b))
    _same_ops(ops.matvec(x, w, b), torch.addmv(tb, tx, tw), "matvec")
    _same_ops(ops.linear(x, w[None], b), tnf.linear(tx, tw[None], tb), "linear")
    assert float(ops.matvec(x, w, b)[0]) == 8200.0


@pytest.mark.parametrize(
    "dtype, value", [("float16", 1.0 + 2.0**-11 + 2.0**-40), ("bfloat16", 1.0 + 2.0**-8 + 2.0**-40)]
)
def test_handops_const_rounds_a_float_through_float32_as_torch(dtype, value):
    """A Python float just above a 16-bit tie: torch keeps it in float32 first (the tie), then rounds
    to even (1.0); rounded once it would go up. ``const`` holds torch's value."""
    ops = HandOps(dtype)
    like = dtypes.cast(np.zeros((2, 3)), dtype)
    got = ops.const(value, like)
    assert got.shape == (2, 3) and got.dtype == dtypes.np_dtype(dtype)
    _same_ops(got, torch.full_like(_torch_of(like, dtype), value), "const")
    assert np.all(got.astype(np.float64) == 1.0)


def test_handops_const_takes_its_shape_from_like_or_from_the_value():
    ops = HandOps("float32")
    assert ops.const(2.0, np.zeros((2, 3), dtype=np.float32)).shape == (2, 3)
    assert ops.const(2.0, np.zeros((2, 3), dtype=np.float32)).tolist() == [[2.0] * 3] * 2
    v = ops.const(np.array([0.5, -1.5]))
    assert v.shape == (2,) and v.tolist() == [0.5, -1.5] and v.dtype == np.float32
    assert ops.const(0.25).shape == () and float(ops.const(0.25)) == 0.25


def test_handops_16_bit_functions_round_through_float32_as_torch():
    """exp in float16 where e^x lies within half a float32 ulp of a float16 tie: torch's float32
    result is that tie, rounded to even; rounding the float64 value once would go the other way."""
    ops = HandOps("float16")
    x = np.array([0.00729752, 0.02268982]).astype(np.float16)
    want = torch.exp(_torch_of(x, "float16"))
    with mpmath.workdps(50):
        exact = [mpmath.exp(mpmath.mpf(float(t))) for t in x]
    # the premise: rounded once from (near) the exact value, float16 differs from torch's result
    once = np.array([float(e) for e in exact]).astype(np.float16).astype(np.float64)
    assert not np.any(once == want.to(torch.float64).numpy())
    _same_ops(ops.exp(x), want, "exp")


def test_handops_silence_the_overflows_and_divisions_torch_gives_results_for():
    """log 0, e^100 in float32, a division by 0 (and 0/0), grad/0, σ(-1000) in float64 (e^1000
    overflows): torch's inf, nan and 0, with no NumPy warning."""
    f32 = HandOps("float32")
    a = np.array([1.0, 0.0, -2.0], dtype=np.float32)
    z = np.zeros(3, dtype=np.float32)
    _same_ops(f32.log(np.array([0.0], dtype=np.float32)), torch.log(_torch_of([0.0], "float32")), "log 0")
    _same_ops(f32.exp(np.array([100.0], dtype=np.float32)), torch.exp(_torch_of([100.0], "float32")), "exp 100")
    _same_ops(f32.div(a, z), _torch_of(a, "float32") / _torch_of(z, "float32"), "div by 0")
    _same_ops(f32.div_n(a, 0), _torch_of(a, "float32") / 0, "div_n by 0")
    f64 = HandOps("float64")
    _same_ops(f64.sigmoid(np.array([-1000.0, 0.0])), torch.sigmoid(_torch_of([-1000.0, 0.0], "float64")), "sigmoid")
    _same_ops(
        f32.sigmoid(np.array([-100.0], dtype=np.float32)), torch.sigmoid(_torch_of([-100.0], "float32")), "sigmoid32"
    )


def test_handops_16_bit_sigmoid_forms_e_to_the_minus_a_in_float32():
    """σ(-12) in float16: e^12 overflows float16 but not float32 (torch's kernel computes in float32):
    a small nonzero σ, torch's, not the 0 a float16 exponential would give."""
    ops = HandOps("float16")
    a = np.array([-12.0, -10.0, 3.0], dtype=np.float16)
    got = ops.sigmoid(a)
    _same_ops(got, torch.sigmoid(_torch_of(a, "float16")), "sigmoid")
    assert float(got[0]) > 0.0


def test_handops_relu_mask_at_zero_is_torchs_derivative():
    """relu's derivative at 0 (and -0) is 0 in torch (threshold_backward: input > 0)."""
    ops = HandOps("float32")
    z = np.array([-1.0, 0.0, -0.0, 2.0], dtype=np.float32)
    tz = _torch_of(z, "float32").requires_grad_(True)
    torch.relu(tz).sum().backward()
    _same_ops(ops.relu_mask(z), tz.grad, "relu_mask")


def test_handops_linear_and_transpose_broadcast_over_leading_axes():
    """``linear``/``T`` on a stack of steps (…, H, D) with H != D: each step's own tnf.linear."""
    rng = np.random.default_rng(5)
    ops = HandOps("float64")
    x, W, b = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5))
    assert ops.T(W).shape == (2, 3, 5)
    np.testing.assert_array_equal(ops.T(W)[1], W[1].T)
    got = ops.linear(x, W, b)
    assert got.shape == (2, 4, 5)
    for s in range(2):
        np.testing.assert_allclose(
            got[s], tnf.linear(torch.tensor(x[s]), torch.tensor(W[s]), torch.tensor(b[s])).numpy()
        )


# ------------------------------------------------------------------ the judge's float64 carry forms


def _rel(got, exact):
    """|got - exact| / |exact|, in units of u64 (exact an mpmath number)."""
    return float(abs(mpmath.mpf(float(got)) - exact) / abs(exact)) / U64


def _sigma(t):
    return 1 / (1 + mpmath.exp(-t))


def test_sigmoid_diff_works_a_float32_carry_in_float64():
    """σ(a) - σ(a - c) for a float32 carry (held exactly in float64): within the roundings the judge
    counts for it (10 + |b| u64, tests/test_track.py), not float32's 2^-24."""
    a = np.array([0.3, -2.0, 5.0, 0.0])
    c = np.array([0.1, -0.7, 2.5, 1e-3], dtype=np.float32)
    for got_all in (mops._sigmoid_diff(a, c), [mops._sigmoid_diff(ai, ci) for ai, ci in zip(a, c)]):
        for ai, ci, got in zip(a, c, got_all):
            with mpmath.workdps(60):
                A, C = mpmath.mpf(float(ai)), mpmath.mpf(float(ci))
                exact = _sigma(A) - _sigma(A - C)
                assert _rel(got, exact) <= 10 + abs(float(ai) - float(ci)), (ai, ci)


def test_sigmoid_of_exp_is_float64_accurate_for_float32_input():
    """σ(x) within 3 u64 relative (its docstring) for float32 x, held exactly."""
    x = np.array([-30.0, -3.7, -0.3, 0.0, 0.3, 1.1, 7.5], dtype=np.float32)
    got = mops._sigmoid_of_exp(x)
    for t, g in zip(x, got):
        with mpmath.workdps(60):
            assert _rel(g, _sigma(mpmath.mpf(float(t)))) <= 3, t


@pytest.mark.parametrize("a", [1.0, 3.0, 0.75, 1e-300, 1e300])
def test_log_diff_at_the_boundary_of_its_branches_is_log1p_of_an_exact_half(a):
    """|c| = |a|/2 is log1p's branch (its docstring: ``|c/a| <= 1/2``), where -c/a = ∓1/2 is exact:
    log a - log(a - c) = log 2 or -log(3/2), correctly rounded; the ratio a/(a - c) = 2/3 would be
    rounded before its log (an ulp off at -log(3/2))."""
    for c, exact in ((0.5 * a, mpmath.log(2)), (-0.5 * a, -mpmath.log(mpmath.mpf(3) / 2))):
        with mpmath.workdps(60):
            assert float(mops._log_diff(a, c)) == float(exact), (a, c)


def test_log_diff_at_the_edges_of_its_domain_is_silent():
    """log a - log(a - c) where torch's a - c is 0 (inf), where a overflowed (inf - inf inside the
    ratio: log1p's branch gives 0), and where c/a overflows (the ratio's branch): no NumPy warning."""
    assert float(mops._log_diff(1.0, 1.0)) == math.inf
    assert float(mops._log_diff(math.inf, 1.0)) == 0.0
    a, c = 0.5, -1e308
    with mpmath.workdps(60):
        exact = mpmath.log(a) - mpmath.log(mpmath.mpf(a) - mpmath.mpf(c))
    assert _rel(mops._log_diff(a, c), exact) <= 4


def test_per_step_maximum_of_each_steps_values():
    """The largest value per step (the leading axis): a scalar is every step's, a vector is one per
    step, higher ranks reduce all but the leading axis."""
    assert mops._per_step(2.5, 3).tolist() == [2.5, 2.5, 2.5]
    assert mops._per_step(np.array([1.0, 4.0]), 2).tolist() == [1.0, 4.0]
    assert mops._per_step(np.array([[1.0, 7.0, 2.0], [3.0, 0.5, -1.0]]), 2).tolist() == [7.0, 3.0]
    assert mops._per_step(np.arange(12.0).reshape(2, 3, 2), 2).tolist() == [5.0, 11.0]


# ------------------------------------------------------------------ judge_terms: the overflow rule


def test_judge_terms_counts_a_bound_at_exactly_the_types_largest_number_as_overflow():
    """``both`` (the intermediates can overflow either way) where the bound reaches the run's largest
    number: a float32 run whose z = x·w is exactly float32's largest (the step's peak) at step 1, and
    ordinary values at step 2."""
    from sgdtrace import models
    from sgdtrace.config import Config
    from sgdtrace.data import plan
    from sgdtrace.models import logistic

    big = float(np.finfo(np.float32).max)
    cfg = Config(model="logistic", features=2, synthetic=2, batch_size=1, epochs=1, shuffle=False, seed=1)
    p_ = plan(2, cfg)
    model = models.build(cfg, 2)
    x = np.array([[big, 0.0], [1.0, 2.0]])
    y = np.array([0.0, 1.0])
    starts = {"w": np.array([[1.0, 0.0], [0.5, -0.25]]), "b": np.zeros((2, 1))}
    bounds = {p: SimpleNamespace(mag=np.abs(v), carry=np.zeros_like(v)) for p, v in starts.items()}
    run_cfg = SimpleNamespace(dtype="float32", loss="bce")

    def fb(o, prm, xb, yb):
        return logistic.forward_backward(o, prm, xb, yb, "bce")

    got = mops.judge_terms(model, fb, starts, bounds, x, y, p_, run_cfg)
    assert float(got["peak"]["grad_w"][0, 0]) == big  # the bound reaches it exactly
    assert got["both"]["grad_w"].tolist() == [[True, True], [False, False]]
    assert got["both"]["grad_b"].tolist() == [[True], [False]]


def test_judge_terms_works_each_step_once_in_chunks_within_the_element_budget(monkeypatch):
    """CHUNK_ELEMENTS (steps × samples × features per chunk): a group's steps are judged in chunks of
    as many steps as fit (at least one), each step once. 9 samples in batches of 4, 5 epochs, one
    feature, a budget of 7: batches of 4 one step per chunk (4 > 7 // 2); the 5 last batches of 1
    together (5 <= 7)."""
    from sgdtrace import models
    from sgdtrace.config import Config
    from sgdtrace.data import plan
    from sgdtrace.models import logistic

    chunks = []

    class Counted(mops.TrackOps):
        def __init__(self, dtype, steps):
            chunks.append(steps)
            super().__init__(dtype, steps)

    monkeypatch.setattr(mops, "CHUNK_ELEMENTS", 7)
    monkeypatch.setattr(mops, "TrackOps", Counted)
    cfg = Config(model="logistic", features=1, synthetic=9, batch_size=4, epochs=5, shuffle=False, seed=1)
    p_ = plan(9, cfg)
    K = p_.n_steps
    rng = np.random.default_rng(7)
    x, y = rng.normal(0, 1, (9, 1)), (rng.random(9) < 0.5).astype(np.float64)
    starts = {"w": rng.normal(0, 1, (K, 1)), "b": rng.normal(0, 1, (K, 1))}
    bounds = {p: SimpleNamespace(mag=np.abs(v), carry=np.zeros_like(v)) for p, v in starts.items()}
    got = mops.judge_terms(
        models.build(cfg, 1),
        lambda o, prm, xb, yb: logistic.forward_backward(o, prm, xb, yb, "bce"),
        starts,
        bounds,
        x,
        y,
        p_,
        SimpleNamespace(dtype="float32", loss="bce"),
    )
    assert sorted(chunks) == sorted([5] + [1] * 10) and sum(chunks) == K
    # per step, how many elements were ambiguous: a count
    assert got["ambiguous"].shape == (K,) and got["ambiguous"].dtype.kind == "i"
    assert got["ambiguous"].tolist() == [0] * K
