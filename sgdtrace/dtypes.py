"""The floating-point types a run computes in: their NumPy dtypes, unit roundoff and range.

float32 and float64 are NumPy's own. bfloat16 comes from the ``ml_dtypes`` package (NumPy has
none); float16 is NumPy's. The two 16-bit types are *reduced precision*: torch computes each
operation on them in float32 and rounds the result to 16 bits (docs/precision.md lists the rules,
each pinned by a test), and accumulates its reductions in float32.
"""

from __future__ import annotations

import numpy as np

#: the 16-bit types, whose arithmetic torch does in float32 and rounds per operation
REDUCED = ("bfloat16", "float16")

_UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}


def np_dtype(name: str) -> np.dtype:
    """The NumPy dtype of ``name`` (bfloat16: ``ml_dtypes.bfloat16``)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def unit_roundoff(name: str) -> float:
    """u = 2^-p for p significand bits: 2^-8 for bfloat16, 2^-11 for float16, 2^-24, 2^-53."""
    return _UNIT_ROUNDOFF[name]


def accumulation(name: str) -> str:
    """The type torch sums a reduction in: float32 for the 16-bit types, the type itself otherwise."""
    return "float32" if name in REDUCED else name


def finfo(name: str):
    """``numpy.finfo`` for every type (``ml_dtypes.finfo`` knows bfloat16)."""
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.finfo(np_dtype(name))
    return np.finfo(np.dtype(name))


def cast(values: np.ndarray, name: str) -> np.ndarray:
    """float64 values rounded to the type as torch rounds them (to 16 bits through float32)."""
    if name in REDUCED:
        values = values.astype(np.float32)
    return values.astype(np_dtype(name), copy=False)


def is_reduced(dtype) -> bool:
    """A 16-bit type (by name or NumPy dtype)."""
    return (dtype if isinstance(dtype, str) else np.dtype(dtype).name) in REDUCED


def gamma(k: int, name: str) -> float:
    """gamma_k = k u / (1 - k u): the relative error bound of a sum (or dot product) of k terms
    added in ``name``, in any order (Higham, *Accuracy and Stability*, lemma 3.1)."""
    u = unit_roundoff(name)
    return k * u / (1 - k * u)


def sum_depth(n, name: str, any_order: bool = False):
    """The roundings a sum of ``n`` terms adds to the sum of their magnitudes, in units of the
    run's u: ``min(n - 1, ceil(log2 n) + 16)`` (NumPy's pairwise sum adds 8-way blocks of up to
    128 numbers and halves above that, depth at most ``log2 n + 12``; torch's reductions are
    blocked and vectorised likewise); a 16-bit run sums in float32 and rounds once:
    ``1 + depth * u32 / u``. ``n`` may be an array (one batch size per step).

    ``any_order``: a user's engine, which may add the terms one by one in a loop, in the run's own
    type (``np.sum`` on an ``ml_dtypes`` bfloat16 array accumulates in bfloat16, one term after
    the other): ``n - 1`` roundings of the run's u, the bound of a sum in any order."""
    if any_order:
        return np.maximum(n - 1, 0) * 1.0
    depth = np.minimum(n - 1, np.ceil(np.log2(n)) + 16)
    if accumulation(name) != name:
        depth = 1 + depth * (unit_roundoff(accumulation(name)) / unit_roundoff(name))
    return depth
