"""This machine's kernel rules, measured: the answer to "is it my code or my machine?".

IEEE 754 fixes what ``+``, ``*``, ``/``, a fused multiply-add and a correctly rounded ``sqrt``
return. It does not fix which of them torch's CPU kernels use, nor how closely its math library
approximates a root or an exponential: that depends on the CPU (its vector width, whether it has
FMA instructions), on the torch build (MKL's vector math on x86, SLEEF or the compiler's
``std::`` functions elsewhere) and on the thread count. sgdtrace's bit-for-bit claims rest on such
rules, so they are measured here, each on a stated input distribution, and never assumed:

* ``sqrt``: torch's square root on one-element tensors (how the engines call it) and on one
  vector, per dtype: the share of results that are not the correctly rounded root (computed
  exactly, in integers) and the largest distance from it in ulps;
* ``functions``: ``exp``, ``log``, ``tanh``, ``sigmoid``, one element at a time (the scalar or
  tail path) and as one vector (the vectorised path), against a 40-digit reference rounded once;
* ``cuda``: where torch sees a CUDA device, ``sqrt`` and ``functions`` again with the kernels run
  on it (the device's name beside them); None where there is none;
* ``kernels``: whether ``lerp_``, ``addcmul_``, ``addcdiv_``, ``add(alpha=)`` and ``mul_(scalar)``
  on one-element float32/float64 tensors round once (a fused multiply-add, the rule the hand
  engine reproduces) or as the textbook writes them (a rounding per operation);
* ``add_16bit``: which elements of a 16-bit ``a.add_(b, alpha=c)`` round once (whole vector
  chunks) and which three times (the tail, and every one-element tensor), and the chunk length;
* ``optimizers``: each optimizer's implementations (for-loop, foreach, fused) on one-element
  parameters against sgdtrace's hand ``update``, per dtype, over random cases: the share that
  matches bit for bit; and whether a 64-element parameter is updated at all.

:func:`rules` measures them (about a second) and caches them in a JSON file per machine and
version (:func:`cache_dir`: ``$SGDTRACE_CACHE_DIR``, else ``$XDG_CACHE_HOME/sgdtrace``, else
``~/.cache/sgdtrace``); :func:`environment` adds the versions, the device and threads, CUDA's
settings and which of sgdtrace's claims hold here (:func:`claims`). A cache that cannot be read
or written is measured again, never an error. torch is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

#: bumped whenever what is measured, or how, changes (a cached result of another version is re-measured)
PROBE_VERSION = 2
#: the environment variable naming the cache folder
CACHE_ENV = "SGDTRACE_CACHE_DIR"
#: the dtypes every rule is measured in
DTYPES = ("float32", "float64", "bfloat16", "float16")
#: significand bits (the leading one included) of each dtype
PRECISION = {"float32": 24, "float64": 53, "bfloat16": 8, "float16": 11}
#: how many random inputs each measurement draws
N_SQRT = 1000
N_FUNC = 256
N_KERNEL = 300
N_OPT = 128
#: the input distributions, as stated in the rules (a figure means nothing without its inputs)
SQRT_INPUTS = "x = U(0,1)·exp(U(-20,20)) (float16: exp(U(-9,9))), rounded to the dtype"
FUNC_INPUTS = {
    "exp": "x = U(-10,10)",
    "log": "x = exp(U(-10,10))",
    "tanh": "x = U(-5,5)",
    "sigmoid": "x = U(-10,10)",
}
KERNEL_INPUTS = "a, b, c = N(0,1)·exp(U(-4,4)); w, v scalars in [0,1) and [-1,1)"
OPT_INPUTS = "p, g1, g2 = N(0,1)·exp(U(-2,2)) per one-element parameter, two steps"
#: the sources whose rules the optimizer measurement compares against: a change re-measures
_RULE_SOURCES = ("probe.py", "engines/manual.py", "engines/optimizers", "engines/torch_ref.py")

#: environment variables that choose MKL's code paths (part of the cache key when set)
_KEY_ENV = ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE")

_memo: dict[str, dict[str, Any]] = {}


# ------------------------------------------------------------------ exact references


def correct_sqrt(x: float, p: int) -> float:
    """The square root of ``x`` (a float64 holding a value of the dtype) rounded once to ``p``
    significand bits, to nearest even, computed exactly in integers (the root of a value of any of
    these dtypes is a normal number of it: no subnormal rounding to handle)."""
    if x == 0 or not math.isfinite(x) or x < 0:
        return math.sqrt(x) if x >= 0 or math.isnan(x) else math.nan
    m, e = math.frexp(x)
    mant, exp = int(m * 2**53), e - 53  # x = mant * 2**exp exactly
    if exp % 2:
        mant, exp = mant * 2, exp - 1
    s = 64  # sqrt(mant * 4**s) has at least 26 + 64 bits: far more than p + 2
    n = mant << (2 * s)
    r = math.isqrt(n)
    inexact = r * r != n
    shift = r.bit_length() - p
    q, rem = r >> shift, r & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rem > half or (rem == half and (inexact or q & 1)):
        q += 1
    return math.ldexp(q, exp // 2 - s + shift)


def _reference(name: str, x: float) -> Decimal:
    """``name(x)`` to 40 significant digits (``decimal``: exp and ln are correctly rounded there)."""
    d = Decimal(x)
    if name == "exp":
        return d.exp()
    if name == "log":
        return d.ln()
    if name == "tanh":
        e = (2 * d).exp()
        return (e - 1) / (e + 1)
    return 1 / (1 + (-d).exp())  # sigmoid


# ------------------------------------------------------------------ ulps


def _int_dtype(torch, dtype):
    return {torch.float64: torch.int64, torch.float32: torch.int32}.get(dtype, torch.int16)


def _ordered(torch, t):
    """The dtype's values as integers in the order of the values (0 and -0 alike): adjacent floats
    differ by 1."""
    bits = t.contiguous().view(_int_dtype(torch, t.dtype)).long()
    width = t.element_size() * 8
    magnitude = bits & ((1 << (width - 1)) - 1)
    return torch.where(bits < 0, -magnitude, magnitude)


def _from_ordered(torch, keys, dtype):
    width = torch.empty((), dtype=dtype).element_size() * 8
    bits = torch.where(keys < 0, (-keys) | (1 << (width - 1)), keys)
    if width < 64:  # the sign bit as the narrow integer type's negative numbers
        bits = torch.where(bits >= 1 << (width - 1), bits - (1 << width), bits)
    return bits.to(_int_dtype(torch, dtype)).view(dtype)


def ulp_distance(torch, a, b):
    """Per element: how many values of the dtype lie between ``a`` and ``b`` (0: equal); -1 where
    either is not finite."""
    fin = torch.isfinite(a) & torch.isfinite(b)
    d = (_ordered(torch, a) - _ordered(torch, b)).abs()
    return torch.where(fin, d, torch.full_like(d, -1))


def _summary(torch, got, exact) -> dict[str, Any]:
    d = ulp_distance(torch, got, exact)
    d = d[d >= 0]
    n = int(d.numel())
    return {
        "n": n,
        "off_share": round(float((d > 0).double().mean()), 4) if n else None,
        "max_ulp": int(d.max()) if n else None,
    }


def _round_decimal(torch, refs: list[Decimal], dtype):
    """Each 40-digit reference rounded once to ``dtype``: the nearest of the dtype's values around
    its float64 rounding (the float64 value may be off by one step of the dtype after its own rounding)."""
    first = torch.tensor([float(r) for r in refs], dtype=torch.float64).to(dtype)
    keys = _ordered(torch, first)
    cands = [_from_ordered(torch, keys + k, dtype).double().tolist() for k in (-1, 0, 1)]
    out = []
    for i, r in enumerate(refs):
        best = min(
            (c[i] for c in cands if math.isfinite(c[i])),
            key=lambda v: abs(Decimal(v) - r),
            default=float(r),
        )
        out.append(best)
    return torch.tensor(out, dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------ the measurements


def _rng(seed: int):
    import numpy as np

    return np.random.default_rng(seed)


def measure_sqrt(device: str = "cpu") -> dict[str, Any]:
    """torch's sqrt against the correctly rounded root, per dtype: one-element tensors and one vector.
    The inputs and the exact roots are made on the CPU; the roots are taken on ``device``."""
    import numpy as np
    import torch

    out: dict[str, Any] = {"inputs": SQRT_INPUTS}
    for i, name in enumerate(DTYPES):
        dtype = getattr(torch, name)
        rng = _rng(100 + i)
        spread = 9.0 if name == "float16" else 20.0
        x = torch.tensor(rng.uniform(0, 1, N_SQRT) * np.exp(rng.uniform(-spread, spread, N_SQRT)), dtype=dtype)
        exact = torch.tensor([correct_sqrt(v, PRECISION[name]) for v in x.double().tolist()], dtype=torch.float64)
        exact = exact.to(dtype)
        xd = x.to(device)
        one = torch.cat([xd[j : j + 1].sqrt() for j in range(N_SQRT)]).cpu()
        vec = xd.sqrt().cpu()
        out[name] = {"one": _summary(torch, one, exact), "vector": _summary(torch, vec, exact)}
    return out


def measure_functions(device: str = "cpu") -> dict[str, Any]:
    """exp, log, tanh, sigmoid against a 40-digit reference rounded once, per dtype: one element at
    a time and as one 256-element vector. The inputs and the references are made on the CPU; the
    functions run on ``device``."""
    import numpy as np
    import torch

    out: dict[str, Any] = {}
    for f, fname in enumerate(FUNC_INPUTS):
        fn = getattr(torch, fname)
        entry: dict[str, Any] = {"inputs": FUNC_INPUTS[fname]}
        for i, name in enumerate(DTYPES):
            dtype = getattr(torch, name)
            rng = _rng(200 + 10 * f + i)
            if fname == "log":
                raw = np.exp(rng.uniform(-10, 10, N_FUNC))
            else:
                lim = 5.0 if fname == "tanh" else 10.0
                raw = rng.uniform(-lim, lim, N_FUNC)
            x = torch.tensor(raw, dtype=dtype)
            with localcontext() as ctx:
                ctx.prec = 40
                refs = [_reference(fname, v) for v in x.double().tolist()]
            exact = _round_decimal(torch, refs, dtype)
            xd = x.to(device)
            one = torch.cat([fn(xd[j : j + 1]) for j in range(N_FUNC)]).cpu()
            vec = fn(xd).cpu()
            entry[name] = {"one": _summary(torch, one, exact), "vector": _summary(torch, vec, exact)}
        out[fname] = entry
    return out


def _np_round(values, name: str):
    """float64 values rounded once, to nearest even, to ``name`` (NumPy and ml_dtypes round float64
    directly; torch's conversion to 16 bits goes through float32, a second rounding)."""
    import numpy as np

    from sgdtrace.dtypes import np_dtype

    return np.asarray(values, dtype=np.float64).astype(np_dtype(name)).astype(np.float64)


def exact_fma(x: float, y: float, z: float, name: str) -> float:
    """``x*y + z`` rounded once to float32 or float64, exactly: the sum in integers rounded to
    float64, and where that lands on a float32 midpoint, the exact sum decides."""
    from fractions import Fraction

    import numpy as np

    from sgdtrace.engines.optimizers._kernels import _exact_fma

    s = _exact_fma(float(x), float(y), float(z))
    if name == "float64" or not math.isfinite(s) or s == 0:
        return s
    m, _ = math.frexp(s)
    if int(abs(m) * 2**53) & ((1 << 29) - 1) != 1 << 28:  # not a float32 midpoint: rounds as the exact sum
        return float(np.float32(s))
    exact = Fraction(x) * Fraction(y) + Fraction(z)
    lo = np.float32(s)
    other = np.nextafter(lo, np.float32(math.copysign(math.inf, s - float(lo))))
    return min((float(lo), float(other)), key=lambda c: abs(Fraction(c) - exact))


def measure_kernels() -> dict[str, Any]:
    """Fused or textbook: each operation on one-element float32/float64 tensors, against the rule
    that rounds once (``fma``, what the hand engine reproduces) and the textbook's (a rounding per
    operation). A kernel's ``rule`` is ``fma`` or ``textbook`` where every case matches it, else
    ``mixed``; ``other`` counts cases matching neither (the tolerance model counts the textbook's
    roundings, an upper bound for both)."""
    import numpy as np
    import torch

    out: dict[str, Any] = {"inputs": KERNEL_INPUTS}
    for i, name in enumerate(("float32", "float64")):
        dt = getattr(torch, name)
        npdt = np.dtype(name).type
        rng = _rng(300 + i)
        vals = (rng.standard_normal((N_KERNEL, 3)) * np.exp(rng.uniform(-4, 4, (N_KERNEL, 3)))).astype(npdt)
        ws = rng.uniform(0, 0.5, N_KERNEL).astype(npdt)
        wb = rng.uniform(0.5, 1, N_KERNEL).astype(npdt)
        vs = rng.uniform(-1, 1, N_KERNEL).astype(npdt)
        ss = rng.uniform(0.5, 2.0, N_KERNEL)

        def fma(x, y, z):
            return exact_fma(float(x), float(y), float(z), name)

        def t(v):
            return torch.tensor([v], dtype=dt)

        tally: dict[str, list[int]] = {}

        def check(op, got, fused, textbook):
            row = tally.setdefault(op, [0, 0, 0])
            row[0] += got == fused
            row[1] += got == textbook
            row[2] += got != fused and got != textbook

        for (a, b, c), w0, w1, v, s in zip(vals, ws, wb, vs, ss):
            a, b, c = npdt(a), npdt(b), npdt(c)
            diff = npdt(b - a)
            check(
                "lerp_ (w < 0.5)",
                t(a).lerp_(t(b), float(w0)).item(),
                fma(w0, diff, a),
                float(a + npdt(w0 * diff)),
            )
            check(
                "lerp_ (w >= 0.5)",
                t(a).lerp_(t(b), float(w1)).item(),
                fma(-diff, npdt(1) - w1, b),
                float(b - npdt(diff * (npdt(1) - w1))),
            )
            vb = npdt(v * b)
            check(
                "addcmul_",
                t(a).addcmul_(t(b), t(c), value=float(v)).item(),
                fma(vb, c, a),
                float(a + npdt(vb * c)),
            )
            q = float(a + npdt(vb / abs(c)))
            check("addcdiv_", t(a).addcdiv_(t(b), t(abs(c)), value=float(v)).item(), q, q)
            check(
                "add(alpha=)",
                t(a).add(t(b), alpha=float(v)).item(),
                fma(v, b, a),
                float(a + npdt(v * b)),
            )
            check(
                "mul_(scalar)",
                t(a).mul_(float(s)).item(),
                float(a * npdt(s)),
                float(npdt(float(a) * float(s))),
            )
        rules = {}
        for op, (fused, textbook, other) in tally.items():
            rule = "fma" if fused == N_KERNEL else "textbook" if textbook == N_KERNEL else "mixed"
            if op == "addcdiv_":  # not fused: one rule, a rounding per operation
                rule = "textbook" if textbook == N_KERNEL else "mixed"
            if op == "mul_(scalar)":  # "fma": the scalar rounded to the dtype first; "textbook": in double
                rule = "scalar rounded first" if fused == N_KERNEL else "in double" if textbook == N_KERNEL else "mixed"
            rules[op] = {
                "rule": rule,
                "fma_share": round(fused / N_KERNEL, 4),
                "textbook_share": round(textbook / N_KERNEL, 4),
                "other": other,
            }
        out[name] = rules
    return out


def measure_add_16bit() -> dict[str, Any]:
    """``a.add_(b, alpha=c)`` on 16-bit vectors of many lengths: which elements round once (the
    product-sum computed in float32, rounded to the type: the vectorised loop) and which three
    times (``c``, the product, the sum: the scalar loop, which a one-element tensor takes). The
    chunk is the length the vectorised loop works in: elements ``[0, (L // chunk) * chunk)`` round
    once, the tail three times."""
    import numpy as np
    import torch

    lengths = (1, 5, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 96, 127, 128, 129, 200)
    candidates = (1, 2, 4, 8, 16, 32, 64, 128)
    out: dict[str, Any] = {"inputs": "a, b = ±2^U(-2,2), c = -2^U(-6,-1); lengths " + ", ".join(map(str, lengths))}
    for i, name in enumerate(("bfloat16", "float16")):
        dt = getattr(torch, name)
        rng = _rng(400 + i)
        once_ok: dict[int, np.ndarray] = {}
        three_ok: dict[int, np.ndarray] = {}
        for L in lengths:
            a = _np_round(rng.choice([-1, 1], L) * 2.0 ** rng.uniform(-2, 2, L), name)
            b = _np_round(rng.choice([-1, 1], L) * 2.0 ** rng.uniform(-2, 2, L), name)
            c = -(2.0 ** rng.uniform(-6, -1))
            got = torch.tensor(a, dtype=dt).add_(torch.tensor(b, dtype=dt), alpha=c).double().numpy()
            c16 = float(_np_round([c], name)[0])
            c32 = float(np.float32(c))
            once = [
                _np_round(a + c16 * b, name),  # exact in float64 for these ranges, rounded once
                _np_round(a + c32 * b, name),
                _np_round(np.float32(a + c16 * b), name),  # rounded to float32 first, then the type
                _np_round(np.float32(a + c32 * b), name),
            ]
            three = _np_round(a + _np_round(c16 * b, name), name)
            once_ok[L] = np.any([got == r for r in once], axis=0)
            three_ok[L] = got == three
        consistent = [
            chunk
            for chunk in candidates
            if chunk <= max(lengths)  # a longer chunk would leave every length a tail: no evidence
            and all(once_ok[n][: n // chunk * chunk].all() and three_ok[n][n // chunk * chunk :].all() for n in lengths)
        ]
        one_element = bool(three_ok[1].all())
        if all(three_ok[n].all() for n in lengths):
            chunk, rule = None, "three times everywhere (no vectorised loop)"
        elif len(consistent) == 1:
            chunk = consistent[0]
            rule = f"once in whole chunks of {chunk}, three times in the tail"
        else:
            chunk, rule = None, "mixed"
        out[name] = {"chunk": chunk, "rule": rule, "one_element_three_roundings": one_element}
    return out


#: each optimizer's options in the measurement (torch's keyword names), and its implementations on the CPU
OPTIMIZER_CASES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "sgd": ({"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}, ("for-loop", "foreach", "fused")),
    "adam": ({"lr": 0.05, "weight_decay": 0.01}, ("for-loop", "foreach", "fused")),
    "adamw": ({"lr": 0.05}, ("for-loop", "foreach", "fused")),
    "adagrad": (
        {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.01, "initial_accumulator_value": 0.1},
        ("for-loop", "foreach", "fused"),
    ),
    "rmsprop": (
        {"lr": 0.01, "alpha": 0.9, "momentum": 0.5, "centered": True, "weight_decay": 0.01},
        ("for-loop", "foreach"),
    ),
}
VECTOR_LENGTH = 64


def _impl_flags(impl: str) -> dict[str, bool]:
    """torch.optim's keyword choosing the implementation (the for-loop one named, not left to torch)."""
    return {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]


def _same(a, b) -> bool:
    return a == b or (a != a and b != b)  # nan matches nan


def measure_optimizer(name: str, impl: str, dtype: str, n: int = N_OPT) -> dict[str, Any]:
    """Two steps of torch.optim's ``impl`` on ``n`` one-element parameters against the hand update:
    the share whose parameter (after each step) and state (after the second) are bit for bit the
    hand side's; then one step on a 64-element parameter: the share of the elements the hand rule
    moves that torch moves too (0 where the kernel never stores the parameter)."""
    import numpy as np
    import torch

    from sgdtrace.config import Config
    from sgdtrace.engines import manual
    from sgdtrace.engines.torch_ref import make_optimizer
    from sgdtrace.errors import SgdtraceError

    opts, _ = OPTIMIZER_CASES[name]
    try:
        cfg = Config(optimizer=name, dtype=dtype, **opts, **_impl_flags(impl))
    except SgdtraceError as exc:  # a combination sgdtrace itself refuses
        return {"available": False, "why": str(exc)}
    dt = getattr(torch, dtype)
    rng = _rng(500 + 7 * list(OPTIMIZER_CASES).index(name) + DTYPES.index(dtype))
    raw = rng.standard_normal((3, n + VECTOR_LENGTH)) * np.exp(rng.uniform(-2, 2, (3, n + VECTOR_LENGTH)))
    vals = _np_round(raw.astype(np.float32) if dtype in ("bfloat16", "float16") else raw, dtype)
    vals = torch.tensor(vals).to(dt).double().numpy()  # the dtype's values, held in float64
    p0, g1, g2 = vals[:, :n]
    params = [torch.nn.Parameter(t) for t in torch.tensor(p0, dtype=dt).split(1)]
    try:
        opt = make_optimizer(params, cfg)
        after = []
        for g in (g1, g2):
            for p, grad in zip(params, torch.tensor(g, dtype=dt).split(1)):
                p.grad = grad
            opt.step()
            after.append(torch.cat([p.detach() for p in params]).double().tolist())
    except (RuntimeError, ValueError, TypeError) as exc:  # not implemented for this dtype or device
        return {"available": False, "why": str(exc).splitlines()[0][:200]}
    backend = manual.ArrayBackend("numpy", dtype)
    eng = manual.engine(cfg, backend)
    keys = eng.state_keys
    match = 0
    hand2 = []
    with np.errstate(all="ignore"):
        for i in range(n):
            state: dict[str, Any] = {}
            h1 = eng.update(backend.param(p0[i]), backend.param(g1[i]), state, eng.hp)
            h2 = eng.update(h1, backend.param(g2[i]), state, eng.hp)
            hand2.append(float(h2))
            tstate = opt.state[params[i]]
            ok = _same(float(h1), after[0][i]) and _same(float(h2), after[1][i])
            match += ok and all(_same(float(state[k]), tstate[k].item()) for k in keys)
    wide = torch.float64
    dist = ulp_distance(torch, torch.tensor(hand2, dtype=wide).to(dt), torch.tensor(after[1], dtype=wide).to(dt))
    # one vector parameter: does the kernel store it?
    pv, gv = vals[0, n:], vals[1, n:]
    vec = torch.nn.Parameter(torch.tensor(pv, dtype=dt))
    vopt = make_optimizer([vec], cfg)
    vec.grad = torch.tensor(gv, dtype=dt)
    vopt.step()
    moved_torch = vec.detach().double().numpy() != pv
    moved_hand = np.array(
        [float(eng.update(backend.param(a), backend.param(b), {}, eng.hp)) != a for a, b in zip(pv, gv)]
    )
    moving = int(moved_hand.sum())
    return {
        "available": True,
        "n": n,
        "match_share": round(match / n, 4),
        "max_ulp": int(dist.max()),
        "vector_updated_share": round(float((moved_torch & moved_hand).sum() / moving), 4) if moving else None,
    }


def measure_optimizers() -> dict[str, Any]:
    """:func:`measure_optimizer` for every optimizer, implementation and dtype."""
    rows = []
    for name, (_, impls) in OPTIMIZER_CASES.items():
        for impl in impls:
            for dtype in DTYPES:
                rows.append({"optimizer": name, "impl": impl, "dtype": dtype, **measure_optimizer(name, impl, dtype)})
    options = {name: opts for name, (opts, _) in OPTIMIZER_CASES.items()}
    return {"inputs": OPT_INPUTS, "cases": N_OPT, "options": options, "results": rows}


# ------------------------------------------------------------------ the cache


def cache_dir() -> Path:
    """Where the measured rules are kept: ``$SGDTRACE_CACHE_DIR``, else ``$XDG_CACHE_HOME/sgdtrace``,
    else ``~/.cache/sgdtrace`` (``%LOCALAPPDATA%\\sgdtrace`` on Windows)."""
    named = os.environ.get(CACHE_ENV)
    if named:
        return Path(named).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "sgdtrace"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "sgdtrace"
    return Path.home() / ".cache" / "sgdtrace"


@functools.cache
def cpu_model() -> str:
    """The CPU's name as the system reports it (Linux: /proc/cpuinfo's ``model name``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def _rules_digest() -> str:
    """A digest of the sources the rules are measured against (the hand side's update among
    them): a changed rule is measured again."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in _RULE_SOURCES:
        path = root / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            try:
                h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
            except OSError:
                h.update(f.name.encode())
    return h.hexdigest()[:16]


def cuda_device() -> str | None:
    """The name of the CUDA device the probe measures (device 0), or None where torch sees none."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def cache_key() -> dict[str, Any]:
    """What the measured rules depend on: torch's version, the CPU capability torch dispatches to,
    the CPU model, the thread count, the MKL settings that choose its code paths, the CUDA device
    and the CUDA version torch was built with, and sgdtrace's own version and rules."""
    import numpy
    import torch

    from sgdtrace._version import __version__

    return {
        "probe": PROBE_VERSION,
        "sgdtrace": __version__,
        "rules": _rules_digest(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "env": {k: os.environ[k] for k in _KEY_ENV if k in os.environ},
        "cuda": torch.version.cuda,
        "cuda_device": cuda_device(),
    }


def cache_path(key: dict[str, Any] | None = None) -> Path:
    key = key if key is not None else cache_key()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"rules-{digest}.json"


def _read_cache(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != key or not isinstance(doc.get("rules"), dict):
        return None
    return doc["rules"]


def _write_cache(path: Path, key: dict[str, Any], rules: dict[str, Any]) -> str | None:
    """Write the rules (whole or not at all); the reason it could not, or None."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".rules-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"key": key, "rules": rules}, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def measure() -> dict[str, Any]:
    """Every rule, measured now on the CPU (about a second; see the module docstring), and sqrt and
    the functions on the CUDA device where torch sees one (``"cuda"``: None where it sees none)."""
    import torch

    with torch.no_grad():
        rules: dict[str, Any] = {
            "sqrt": measure_sqrt(),
            "functions": measure_functions(),
            "kernels": measure_kernels(),
            "add_16bit": measure_add_16bit(),
        }
    rules["optimizers"] = measure_optimizers()
    rules["cuda"] = None
    if torch.cuda.is_available():
        with torch.no_grad():
            rules["cuda"] = {
                "device": torch.cuda.get_device_name(0),
                "sqrt": measure_sqrt("cuda"),
                "functions": measure_functions("cuda"),
            }
    return rules


def rules(refresh: bool = False) -> dict[str, Any]:
    """This machine's rules: from the cache when it holds them for this machine and version, else
    measured (and cached). ``refresh``: measure again whatever the cache holds."""
    return _probe(refresh)["rules"]


def _probe(refresh: bool = False) -> dict[str, Any]:
    key = cache_key()
    path = cache_path(key)
    memo_key = str(path)
    if not refresh and memo_key in _memo:
        return _memo[memo_key]
    t0 = time.perf_counter()
    found = None if refresh else _read_cache(path, key)
    if found is not None:
        result = {"rules": found, "key": key, "path": path, "from_cache": True, "written": None}
    else:
        measured = measure()
        written = _write_cache(path, key, measured)
        # the rules as JSON would give them back (tuples as lists): the same whether measured or read
        measured = json.loads(json.dumps(measured))
        result = {"rules": measured, "key": key, "path": path, "from_cache": False, "written": written}
    result["claims"] = claims(result["rules"])
    result["seconds"] = time.perf_counter() - t0
    _memo[memo_key] = result
    return result


# ------------------------------------------------------------------ what holds here


#: the kernels whose torch CPU implementation can round once (a fused multiply-add), as the hand
#: engine computes them
FUSED_KERNELS = ("lerp_ (w < 0.5)", "lerp_ (w >= 0.5)", "addcmul_", "add(alpha=)")


def fused(rules: dict[str, Any], dtype: str = "float32") -> bool:
    """Whether every kernel of :data:`FUSED_KERNELS` rounds once in ``dtype`` here (the rule the
    hand engine reproduces), as measured."""
    return all(rules["kernels"][dtype][op]["rule"] == "fma" for op in FUSED_KERNELS)


def _pct(share: float | None) -> str:
    if share is None:
        return "n/a"
    return f"{100 * share:.1f}%".replace(".0%", "%")


def _claim(claim: str, holds: bool, why: str) -> dict[str, Any]:
    return {"claim": claim, "holds": bool(holds), "why": why}


def claims(rules: dict[str, Any]) -> list[dict[str, Any]]:
    """Which of sgdtrace's bit-for-bit claims hold with these rules, each with the measured reason."""
    from sgdtrace.engines.optimizers._track import SQRT_ULPS

    out = []
    sq = rules["sqrt"]
    off = {d: sq[d]["one"]["off_share"] for d in ("float32", "float64")}
    rounded = all(v == 0 for v in off.values())
    out.append(
        _claim(
            "torch's float32/float64 sqrt is correctly rounded: hand Adam, AdamW, RMSprop and Adagrad "
            "updates can be bit-identical to torch's",
            rounded,
            "every root measured is the correctly rounded one"
            if rounded
            else ", ".join(f"{d} {_pct(v)}" for d, v in off.items())
            + " of one-element roots are not: a value after a sqrt can differ in its last bit "
            "(within the tolerance model's sqrt term)",
        )
    )
    worst = max((sq[d][path]["max_ulp"] or 0, d, path) for d in DTYPES for path in ("one", "vector"))
    out.append(
        _claim(
            f"torch's sqrt is within {SQRT_ULPS} ulp of the correctly rounded root, as the tolerance model's "
            f"sqrt term ({2 * SQRT_ULPS + 1}u|root|) assumes",
            worst[0] <= SQRT_ULPS,
            f"at most {worst[0]} ulp measured",
        )
    )
    kern = rules["kernels"]
    unfused = [
        f"{op} {d}: {kern[d][op]['rule']}"
        for d in ("float32", "float64")
        for op in FUSED_KERNELS
        if kern[d][op]["rule"] != "fma"
    ]
    out.append(
        _claim(
            "lerp_, addcmul_ and add(alpha=) round once (fused), as the hand engine computes them",
            not unfused,
            "every case measured rounds once"
            if not unfused
            else "; ".join(unfused) + ": the hand side can differ from torch in the last bit, within the "
            "tolerance model (it counts the textbook's roundings)",
        )
    )
    other = sum(r["other"] for d in ("float32", "float64") for r in kern[d].values())
    out.append(
        _claim(
            "every kernel rounds by the fused or the textbook rule (the tolerance model covers both)",
            other == 0,
            "no case rounds otherwise" if other == 0 else f"{other} cases round by neither rule",
        )
    )
    add16 = rules["add_16bit"]
    out.append(
        _claim(
            "16-bit add_(alpha=) on one-element tensors rounds alpha, the product and the sum (the hand side's rule)",
            all(add16[d]["one_element_three_roundings"] for d in ("bfloat16", "float16")),
            "bfloat16 and float16, every case measured"
            if all(add16[d]["one_element_three_roundings"] for d in ("bfloat16", "float16"))
            else "; ".join(f"{d}: {add16[d]['rule']}" for d in ("bfloat16", "float16")),
        )
    )
    opt = rules["optimizers"]
    rows = [r for r in opt["results"] if r.get("available")]
    for impl in ("for-loop", "foreach", "fused"):
        sgd16 = [
            r for r in rows if r["optimizer"] == "sgd" and r["impl"] == impl and r["dtype"] in ("bfloat16", "float16")
        ]
        if sgd16:
            label = "torch's default (for-loop)" if impl == "for-loop" else impl
            out.append(
                _claim(
                    f"16-bit SGD, {label}: exact to replay (allowance 0), bit-identical to the hand side",
                    all(r["match_share"] == 1.0 for r in sgd16),
                    ", ".join(f"{r['dtype']} {_pct(r['match_share'])}" for r in sgd16)
                    + f" of {opt['cases']} random cases bit-identical",
                )
            )
    stuck = [r for r in rows if r["vector_updated_share"] is not None and r["vector_updated_share"] < 0.5]
    out.append(
        _claim(
            f"every optimizer implementation updates a {VECTOR_LENGTH}-element parameter",
            not stuck,
            "each moved the elements the hand rule moves"
            if not stuck
            else "; ".join(
                f"{r['impl']} {r['optimizer']} {r['dtype']}: {_pct(r['vector_updated_share'])} moved" for r in stuck
            )
            + ": the kernel does not store the parameter (torch's, not yours)",
        )
    )
    return out


def environment(refresh: bool = False, timing: bool = False) -> dict[str, Any]:
    """This machine, as every JSON output carries it: versions, the CPU and torch's view of it,
    CUDA's settings where there is a GPU, the measured rules, the claims that hold, the cache.
    ``timing`` adds whether the rules came from the cache and how long that took."""
    import numpy
    import torch

    from sgdtrace._version import __version__

    probe = _probe(refresh)
    cuda = None
    if torch.cuda.is_available():
        cuda = {
            "version": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        }
    env: dict[str, Any] = {
        "sgdtrace": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": {
            "model": probe["key"]["cpu_model"],
            "machine": platform.machine(),
            "capability": probe["key"]["cpu_capability"],
            "threads": probe["key"]["threads"],
            "mkl": bool(torch.backends.mkl.is_available()),
        },
        "cuda": cuda,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "rules": probe["rules"],
        "claims": probe["claims"],
        "cache": {"path": str(probe["path"]), "written": probe["written"] is None, "error": probe["written"]},
    }
    if timing:
        env["probe"] = {"from_cache": probe["from_cache"], "seconds": round(probe["seconds"], 3)}
    return env
