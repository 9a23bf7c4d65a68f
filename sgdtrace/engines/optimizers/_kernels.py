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

A fused multiply-add in float32 is reproduced exactly enough by computing in float64 and rounding
once: the product of two float32 numbers is exact in float64, and the sum's double rounding
differs from a single rounding only in rare ties (never seen in the tests' cases). float64 has no
wider type in NumPy (``math.fma`` is Python 3.13's): there the sum is formed exactly in integer
arithmetic and rounded once, a few microseconds a call. It matters: RMSprop's
centered ``v - g_avg**2`` with alpha 0 is the rounding error of ``g*g``, which one fused rounding
keeps (torch's sqrt of it can be nan) and two roundings make 0. On a torch back end (CUDA), the
tensors' own operations are used.
"""

from __future__ import annotations

import math

import numpy as np


def fma(a, b, c):
    """``a*b + c`` rounded once on NumPy scalars (see the module docstring); the tensors' own
    arithmetic elsewhere."""
    if isinstance(c, np.float32):
        return np.float32(np.float64(a) * np.float64(b) + np.float64(c))
    if isinstance(c, np.float64):
        a, b, c = float(a), float(b), float(c)
        if math.isfinite(a) and math.isfinite(b) and math.isfinite(c):
            return np.float64(_exact_fma(a, b, c))
        return np.float64(a * b + c)
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


def sqrt(x):
    return np.sqrt(x) if isinstance(x, np.generic) else x.sqrt()


def maximum(a, b):
    return np.maximum(a, b) if isinstance(a, np.generic) else a.maximum(b)


def zeros_like(p):
    """A zero state entry of the parameter's type (torch.zeros_like)."""
    return type(p)(0) if isinstance(p, np.generic) else p.new_zeros(p.shape)


def full_like(p, value):
    """A state entry filled with ``value`` (torch.full_like)."""
    return type(p)(value) if isinstance(p, np.generic) else p.new_full(p.shape, value)


def lerp(a, end, w):
    """``a.lerp_(end, w)`` as torch's CPU kernel rounds it (``w`` a scalar of the dtype)."""
    if not isinstance(a, np.generic):
        return a.lerp(end, float(w))
    if abs(w) < 0.5:
        return fma(w, end - a, a)
    return fma(-(end - a), type(a)(1) - w, end)


def addcmul(a, t1, t2, value):
    """``a.addcmul_(t1, t2, value=value)``: ``fma(value*t1, t2, a)``."""
    return fma(value * t1, t2, a)


def addcdiv(a, t1, t2, value):
    """``a.addcdiv_(t1, t2, value=value)``: ``a + (value*t1)/t2``, each operation rounded."""
    return a + (value * t1) / t2


def add_scaled(a, t, alpha):
    """``a.add(t, alpha=alpha)``: ``fma(alpha, t, a)``."""
    return fma(alpha, t, a)
