"""torch's CPU kernels' rounding, reproduced on NumPy scalars where NumPy can (measured on torch 2.13).

For one-element tensors torch's CPU kernels round like this on CPUs with FMA instructions (each
measured on the machine by :mod:`sgdtrace.probe` and asserted by a test over thousands of random
cases, ``tests/test_optimizers.py``; without FMA, ``ATEN_CPU_CAPABILITY=default``, the fused ones
round as the textbook):

* ``a.lerp_(end, w)``:   ``fma(w, end - a, a)`` for ``|w| < 0.5``, else ``fma(-(end - a), 1 - w, end)``
* ``a.addcmul_(t1, t2, value=v)``: ``fma(v*t1, t2, a)``  (``v*t1`` rounded first)
* ``a.addcdiv_(t1, t2, value=v)``: ``a + (v*t1)/t2``     (three roundings: not fused)
* ``a.add(t, alpha=c)``: ``fma(c, t, a)``
* ``a.mul_(s)``, ``a / s``, ``a.add_(s)``: the Python scalar ``s`` is rounded to the dtype first
* ``a.sqrt()``: MKL's vector root on x86, within one ulp of the correctly rounded result: off for
  0.6% (Intel Xeon) to 18% (AMD EPYC) of float32 inputs, the machine's (``sgdtrace doctor``; not
  reproduced: the tolerance model allows it)

In bfloat16 and float16 each of these kernels computes in float32 and rounds once to the type
(measured on one-element tensors: docs/precision.md): ``lerp_``, ``addcmul_`` and ``addcdiv_``
take their scalar in float32 and round only their result, and so do ``mul_``/``div`` by a
Python scalar (:func:`scale`, :func:`divide`); ``add_`` of a Python scalar rounds the scalar to
the type first (the callers pass it so), and ``add(t, alpha=c)`` rounds alpha, the product and
the sum (three roundings, as SGD's step). Here a 16-bit NumPy scalar with a float32 scalar
does the same: the float32 rule above, then one rounding to the type.

A fused multiply-add in float32 is reproduced exactly enough by computing in float64 and rounding
once: the product of two float32 numbers is exact in float64, and the sum's double rounding
differs from a single rounding only in rare ties (never seen in the tests' cases). float64 has no
wider type in NumPy (``math.fma`` is Python 3.13's): there the sum is formed exactly in integer
arithmetic and rounded once, a few microseconds a call. It matters: RMSprop's
centered ``v - g_avg**2`` with alpha 0 is the rounding error of ``g*g``, which one fused rounding
keeps (torch's sqrt of it can be nan) and two roundings make 0. On a torch back end (CUDA), the
tensors' own operations are used.

A parameter with a shape is a NumPy array: every kernel runs element-wise, as torch's
single-tensor kernels do (float64's exact ``fma`` element by element, for small parameters).
"""

from __future__ import annotations

import math

import numpy as np

#: the NumPy values the kernels take: scalars (the article's parameters) and arrays (the others)
_NUMPY = (np.generic, np.ndarray)


def _reduced(v) -> bool:
    """A bfloat16 or float16 NumPy value, scalar or array (the hand side's 16-bit values on the CPU)."""
    return isinstance(v, _NUMPY) and v.dtype.itemsize == 2


def _f32(v):
    """``v`` in float32 (a scalar stays a scalar, an array an array)."""
    return np.float32(v)


def _to(a, v):
    """``v`` rounded to ``a``'s type, once (a scalar of it, or an array of its dtype)."""
    return v.astype(a.dtype) if isinstance(a, np.ndarray) else type(a)(v)


def fma(a, b, c):
    """``a*b + c`` rounded once on NumPy scalars and arrays (see the module docstring); the
    tensors' own arithmetic elsewhere."""
    if isinstance(c, np.float32):
        return np.float32(np.float64(a) * np.float64(b) + np.float64(c))
    if isinstance(c, np.float64):
        a, b, c = float(a), float(b), float(c)
        if math.isfinite(a) and math.isfinite(b) and math.isfinite(c):
            return np.float64(_exact_fma(a, b, c))
        return np.float64(a * b + c)
    if isinstance(c, np.ndarray) and c.dtype == np.float32:
        return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + c.astype(np.float64)).astype(np.float32)
    if isinstance(c, np.ndarray) and c.dtype == np.float64:
        a, b, c = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64), c)
        out = np.empty(c.shape)
        for i, (ai, bi, ci) in enumerate(zip(a.flat, b.flat, c.flat)):
            out.flat[i] = fma(np.float64(ai), np.float64(bi), np.float64(ci))
        return out
    return a * b + c


def _exact_fma(a: float, b: float, c: float) -> float:
    """``a*b + c`` rounded once: each float is an integer over a power of two, so the sum is an
    integer over a power of two, and Python's int / int is correctly rounded."""
    na, da = a.as_integer_ratio()
    nb, db = b.as_integer_ratio()
    nc, dc = c.as_integer_ratio()
    dp = da * db
    if dp >= dc:
        num, den = na * nb + nc * (dp // dc), dp
    else:
        num, den = na * nb * (dc // dp) + nc, dc
    try:
        return num / den
    except OverflowError:
        return math.copysign(math.inf, num)


def held(value, dtype: str):
    """A scalar coefficient as the kernels hold it: float32 in float32 and 16-bit runs (a float32
    kernel rounds it to its type; the 16-bit ``lerp_``, ``mul_``, ``addcmul_``, ``addcdiv_`` keep it
    in float32), the double itself in float64 runs. The tolerance model carries the measured
    differences through the coefficient the engines use: with the exact one, a large carried
    difference would leave ``u·|coefficient|·|difference|`` unexplained."""
    if dtype == "float64":
        return value
    return np.asarray(value, dtype=np.float32).astype(np.float64)


def sqrt(x):
    return np.sqrt(x) if isinstance(x, _NUMPY) else x.sqrt()


def maximum(a, b):
    return np.maximum(a, b) if isinstance(a, _NUMPY) else a.maximum(b)


def zeros_like(p):
    """A zero state entry of the parameter's type and shape (torch.zeros_like)."""
    if isinstance(p, np.ndarray):
        return np.zeros_like(p)
    return type(p)(0) if isinstance(p, np.generic) else p.new_zeros(p.shape)


def full_like(p, value):
    """A state entry filled with ``value`` (torch.full_like)."""
    if isinstance(p, np.ndarray):
        return np.full(p.shape, p.dtype.type(value), dtype=p.dtype)
    return type(p)(value) if isinstance(p, np.generic) else p.new_full(p.shape, value)


def lerp(a, end, w):
    """``a.lerp_(end, w)`` as torch's CPU kernel rounds it (``w`` a scalar of the dtype; float32
    for a 16-bit ``a``: computed in float32, rounded once)."""
    if not isinstance(a, _NUMPY):
        return a.lerp(end, float(w))
    if _reduced(a):
        return _to(a, lerp(_f32(a), _f32(end), _f32(w)))
    if abs(w) < 0.5:
        return fma(w, end - a, a)
    return fma(-(end - a), a.dtype.type(1) - w, end)


def addcmul(a, t1, t2, value):
    """``a.addcmul_(t1, t2, value=value)``: ``fma(value*t1, t2, a)`` (16 bits: that in float32, rounded once)."""
    if not isinstance(a, _NUMPY):
        return a.addcmul(t1, t2, value=float(value))
    if _reduced(a):
        return _to(a, fma(_f32(value) * _f32(t1), _f32(t2), _f32(a)))
    return fma(value * t1, t2, a)


def addcdiv(a, t1, t2, value):
    """``a.addcdiv_(t1, t2, value=value)``: ``a + (value*t1)/t2``, each operation rounded (16 bits:
    each in float32, and the result once more to the type)."""
    if not isinstance(a, _NUMPY):
        return a.addcdiv(t1, t2, value=float(value))
    if _reduced(a):
        return _to(a, _f32(a) + (_f32(value) * _f32(t1)) / _f32(t2))
    return a + (value * t1) / t2


def scale(a, s):
    """``a.mul_(s)`` by a Python scalar ``s`` (of the dtype; float32 for a 16-bit ``a``: one rounding)."""
    if _reduced(a):
        return _to(a, _f32(a) * _f32(s))
    return a * s


def divide(a, s):
    """``a / s`` by a Python scalar ``s`` (of the dtype; float32 for a 16-bit ``a``: one rounding)."""
    if _reduced(a):
        return _to(a, _f32(a) / _f32(s))
    return a / s


def add_scaled(a, t, alpha):
    """``a.add(t, alpha=alpha)``: ``fma(alpha, t, a)``."""
    return fma(alpha, t, a)
