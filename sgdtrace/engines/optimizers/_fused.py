"""torch's fused CPU optimizer kernels in bfloat16 and float16, worked by hand.

``torch.optim.SGD(fused=True)``, ``Adam``/``AdamW(fused=True)`` and ``Adagrad(fused=True)`` run
one C++ kernel per step (``aten/src/ATen/native/cpu/FusedSGDKernel.cpp``, ``FusedAdamKernel.cpp``,
``FusedAdagradKernel.cpp``: ``sgd_math``, ``adam_math``, ``adagrad_math``). For a 16-bit
parameter each element is loaded into float32 (``opmath_t``), the whole update is computed
there, and only what the kernel stores is rounded to the 16-bit type: each state entry once,
the new parameter once. The step goes on with the float32 values, not the stored ones: Adam's
denominator uses ``exp_avg_sq`` before it is rounded, SGD's parameter update the momentum
buffer before it is rounded. The scalars (lr, momentum, betas, eps, weight decay) are
converted from double to float32, so Adam's ``eps = 1e-8`` stays 1e-8 where float16 (whose
smallest value is 6e-8) would make it 0. The unfused path (``_single_tensor_adam``) does
round each operation to the type, eps included: with a zero gradient its denominator is
``0 + 0`` and its step ``0/0``, nan (as the hand side's, then: both agree).

Which elements: the kernels have a vector loop over whole vectors of the 16-bit type (16 or 32
elements, by the CPU build) and a scalar loop for the rest of each thread's chunk (chunks
start at multiples of 32 elements). A parameter of fewer than 16 elements (the scalar model's
``w`` and ``b``) runs the scalar loop on every CPU (:func:`scalar_loop`); that loop is what this
module reproduces. The vector loop is other code (in torch 2.13 the 16-bit vector loop of
FusedSGDKernel.cpp never stores the parameter): not reproduced.

What the source does not fix is the compiler's part: built with FMA instructions (the AVX2
and AVX-512 kernels), GCC contracts ``x + y*z`` into one fused multiply-add, while the baseline
kernel (``ATEN_CPU_CAPABILITY=default``) rounds the product and the sum apart. Measured on
torch 2.13 (AMD EPYC, AVX-512): the AVX-512 and AVX2 kernels contract, the default one does
not. Both forms are written here (``contracted``); :func:`probe` asks torch which one this
machine runs, on cases built so that the two differ, and the judge holds the hand side to
torch's bits only where the probe found the rule (:func:`rule`).

Every function works on NumPy 16-bit scalars and arrays (element-wise: a parameter with a shape)
and on torch tensors (the CUDA code path): a
float32 fused multiply-add is the float64 product (exact) plus the addend, rounded to float32
(the double rounding differs from one rounding only on exact ties of the float64 sum).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from sgdtrace.engines.optimizers import registry

#: elements in the narrowest vector any CPU build of the kernels uses for a 16-bit type
#: (Vectorized<BFloat16>/<Half>::size(): 16 on the baseline and AVX2 builds, 32 on AVX-512)
NARROWEST_VECTOR = 16


def scalar_loop(numel: int) -> bool:
    """Does every element of a ``numel``-element 16-bit parameter take the kernels' scalar loop,
    on every CPU build? (A chunk with fewer elements than one vector has no vector part.)"""
    return numel < NARROWEST_VECTOR


# ------------------------------------------------------------------ float32 arithmetic on either type


def _is_tensor(v) -> bool:
    return not isinstance(v, (np.generic, np.ndarray, float, int))


def wide(v):
    """A 16-bit value loaded into float32 (exact)."""
    return v.float() if _is_tensor(v) else np.float32(v)


def narrow(v, like):
    """A float32 value stored in ``like``'s 16-bit type: one rounding (a scalar of it, or an array
    of its dtype)."""
    if _is_tensor(like):
        return v.to(like.dtype)
    return np.asarray(v).astype(like.dtype) if isinstance(like, np.ndarray) else type(like)(v)


def c32(s: float) -> float:
    """A double scalar converted to float32 (``opmath_t(s)``), as a Python float."""
    return float(np.float32(s))


def fma(a, b, c):
    """``a*b + c`` rounded once to float32."""
    if any(_is_tensor(v) for v in (a, b, c)):
        d = [v.double() if _is_tensor(v) else float(v) for v in (a, b, c)]
        return (d[0] * d[1] + d[2]).float()
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def add_product(x, y, z, contracted: bool):
    """``x + y*z`` in float32: one fused rounding where the kernel is contracted, else two."""
    return fma(y, z, x) if contracted else x + y * z


def sqrt(x):
    """The float32 square root, correctly rounded (``std::sqrt``)."""
    if _is_tensor(x):
        return x.double().sqrt().float()  # a float64 root rounded to float32 is correctly rounded
    return np.sqrt(x)


def maximum(a, b):
    return a.maximum(b) if _is_tensor(a) else np.maximum(a, b)


# ------------------------------------------------------------------ the kernels' scalar loops


@dataclass(frozen=True)
class SGD:
    """torch.optim.SGD's options as the fused kernel takes them (doubles), and the rule's form."""

    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    maximize: bool
    contracted: bool


def sgd(param, grad, buf, hp: SGD):
    """``sgd_math``'s scalar loop: returns ``(param, momentum_buffer)`` (the buffer None without
    momentum); ``buf`` is None on the first step (``is_first_step``)::

        g = grad;  p = param                          (float32)
        g = -g                                        if maximize
        g = g + p*weight_decay                        if weight_decay != 0
        b = g  (first step),  else b*momentum + g*(1 - dampening)
        store b                                       (rounded)
        g = g + b*momentum (nesterov), else g = b     (b unrounded)
        param = p - g*lr                              (rounded)
    """
    contracted = hp.contracted
    g, p = wide(grad), wide(param)
    if hp.maximize:
        g = -g
    if hp.weight_decay != 0:
        g = add_product(g, p, c32(hp.weight_decay), contracted)
    stored = None
    if hp.momentum != 0:
        mom = c32(hp.momentum)
        if buf is None:
            b = g
        else:
            scaled = g * c32(1 - hp.dampening)
            b = fma(wide(buf), mom, scaled) if contracted else wide(buf) * mom + scaled
        stored = narrow(b, param)
        g = add_product(g, b, mom, contracted) if hp.nesterov else b
    p = fma(-g, c32(hp.lr), p) if contracted else p - g * c32(hp.lr)
    return narrow(p, param), stored


def adam(param, grad, m, v, vmax, hp, t: int, contracted: bool):
    """``adam_math``'s scalar loop (ADAM_MODE ORIGINAL, or ADAMW where ``hp.decoupled``): returns
    ``(param, exp_avg, exp_avg_sq, max_exp_avg_sq)`` (the last None without amsgrad)::

        g = grad;  p = param                          (float32)
        g = -g                                        if maximize
        g = g + p*weight_decay  (Adam)  |  p = p*(1 - lr*weight_decay)  (AdamW)
        m = m + c*(g - m)  if c < 0.5,  else  g - (g - m)*(1 - c)    (c = 1 - beta1: lerp)
        v = v*beta2 + (1 - beta2)*g*g
        store m, v                                    (rounded)
        vmax = max(vmax, v); store vmax               if amsgrad
        denom = sqrt(v or vmax)/sqrt(1 - beta2**t) + eps
        param = p - (lr/(1 - beta1**t))*m/denom       (m, v unrounded; param rounded)
    """
    bc1 = 1 - hp.beta1**t
    bc2_sqrt = math.sqrt(1 - hp.beta2**t)
    step_size = hp.lr / bc1
    g, p = wide(grad), wide(param)
    if hp.maximize:
        g = -g
    if hp.weight_decay != 0:
        if hp.decoupled:
            p = p * c32(1 - hp.lr * hp.weight_decay)
        else:
            g = add_product(g, p, c32(hp.weight_decay), contracted)
    c = np.float32(1 - hp.beta1)
    mw = wide(m)
    if abs(c) < 0.5:
        mw = add_product(mw, float(c), g - mw, contracted)
    else:
        mw = add_product(g, -(g - mw), float(np.float32(1) - c), contracted)
    # v*beta2 + (c2*g)*g: GCC fuses the first product (its statement comes first)
    sq = c32(1 - hp.beta2) * g * g
    vw = fma(wide(v), c32(hp.beta2), sq) if contracted else wide(v) * c32(hp.beta2) + sq
    new_vmax = None
    root = vw
    if hp.amsgrad:
        root = maximum(wide(vmax), vw)
        new_vmax = narrow(root, param)
    denom = sqrt(root) / c32(bc2_sqrt) + c32(hp.eps)
    p = p - c32(step_size) * mw / denom
    return narrow(p, param), narrow(mw, param), narrow(vw, param), new_vmax


def adagrad(param, grad, total, hp, t: int, contracted: bool):
    """``adagrad_math``'s scalar loop: returns ``(param, sum)``::

    g = grad;  p = param                          (float32)
    g = -g                                        if maximize
    g = g + p*weight_decay                        if weight_decay != 0
    s = sum + g*g;  store s                       (rounded)
    param = p - clr*g/(sqrt(s) + eps)             (s unrounded; param rounded)
    clr = lr/(1 + (t - 1)*lr_decay)               (double)
    """
    clr = hp.lr / (1.0 + (t - 1.0) * hp.lr_decay)
    g, p = wide(grad), wide(param)
    if hp.maximize:
        g = -g
    if hp.weight_decay != 0:
        g = add_product(g, p, c32(hp.weight_decay), contracted)
    s = add_product(wide(total), g, g, contracted)
    std = sqrt(s) + c32(hp.eps)
    p = p - c32(clr) * g / std
    return narrow(p, param), narrow(s, param)


# ------------------------------------------------------------------ which form this machine runs

#: the kernels probed, by torch.optim's class name in lower case (AdamW is Adam's kernel in its
#: ADAMW mode: ``torch._fused_adamw_``): those the registry gives a fused kernel
KERNELS = registry.with_capability("fused")

#: cases per probe: random options and values, and as many built to tell the two forms apart
PROBE_CASES = 300


@dataclass(frozen=True)
class Probe:
    """What torch's fused kernel did on this machine, against both forms of the hand rule.

    ``cases``: one-element steps run through torch's kernel; ``telling``: those where the two
    forms give different bits (built so: a product that cancels against the sum it is added
    to); ``contracted``/``plain``: the cases each form reproduced bit for bit (every stored
    value: the parameter and each state entry)."""

    kernel: str
    dtype: str
    cases: int
    telling: int
    contracted: int
    plain: int

    @property
    def form(self) -> bool | None:
        """``True`` (contracted) or ``False`` (plain): the form that reproduced every case,
        the contracted one where both did; None where neither did."""
        if self.contracted == self.cases:
            return True
        if self.plain == self.cases:
            return False
        return None

    @property
    def holds(self) -> bool:
        """Does one form reproduce torch's kernel on every case, and did some case tell the forms apart?"""
        return self.form is not None and self.telling > 0

    def to_json(self) -> dict:
        return {
            "kernel": self.kernel,
            "dtype": self.dtype,
            "cases": self.cases,
            "telling": self.telling,
            "contracted": self.contracted,
            "plain": self.plain,
            "form": {True: "contracted", False: "plain", None: None}[self.form],
            "holds": self.holds,
        }


def rule(kernel: str, dtype: str) -> Probe:
    """The probe of ``kernel`` in ``dtype`` on this machine (run once per process)."""
    return _probe(kernel, dtype)


@functools.cache
def _probe(kernel: str, dtype: str) -> Probe:
    import torch

    from sgdtrace import dtypes

    np_type = dtypes.np_dtype(dtype).type
    tdtype = getattr(torch, dtype)
    rng = np.random.default_rng(20130)
    counts = {True: 0, False: 0}
    telling = 0
    cases = 0
    for telling_case in (False, True):
        for _ in range(PROBE_CASES):
            case = _CASES[kernel](rng, np_type, telling_case)
            got = _TORCH[kernel](torch, tdtype, case)
            forms = {form: _HAND[kernel](case, form) for form in (True, False)}
            for form, values in forms.items():
                counts[form] += all(_same(h, t) for h, t in zip(values, got))
            telling += any(not _same(a, b) for a, b in zip(forms[True], forms[False]))
            cases += 1
    return Probe(kernel, dtype, cases, telling, counts[True], counts[False])


def _same(hand, torch_value) -> bool:
    """The same 16-bit value (nan alike); None (no such state) matches None."""
    if hand is None or torch_value is None:
        return hand is None and torch_value is None
    a, b = float(hand), float(torch_value)
    return (a == b and math.copysign(1, a) == math.copysign(1, b)) or (math.isnan(a) and math.isnan(b))


def _value(rng, np_type, scale: float = 2.0):
    """A random 16-bit value of either sign, between 0.05 and ``scale`` in magnitude."""
    return np_type(np.float32(rng.choice([-1.0, 1.0]) * rng.uniform(0.05, scale)))


def _near(rng, target: float) -> float:
    """A scalar (a double) within 2^-13 of ``target``, relatively: the sum it makes cancels to
    about that, so one float32 rounding more or less in it shows in the 16-bit result."""
    return target * (1 + rng.uniform(-(2.0**-13), 2.0**-13))


def _sgd_case(rng, t, telling: bool) -> dict:
    first = bool(rng.random() < 0.25)
    c = dict(
        lr=float(rng.uniform(1e-3, 0.5)),
        momentum=float(rng.choice([0.0, rng.uniform(0.3, 0.99)])),
        dampening=float(rng.choice([0.0, rng.uniform(0, 0.5)])),
        weight_decay=float(rng.choice([0.0, rng.uniform(0.001, 0.5)])),
        nesterov=False,
        maximize=bool(rng.random() < 0.2),
        p=_value(rng, t),
        g=_value(rng, t),
        buf=_value(rng, t),
        first=first,
    )
    c["nesterov"] = bool(c["momentum"] != 0 and c["dampening"] == 0 and rng.random() < 0.5)
    if telling:  # one product cancels against what it is added to (the scalar chosen so)
        c.update(maximize=False, nesterov=False)
        p, g, buf = float(c["p"]), float(c["g"]), float(c["buf"])
        which = rng.integers(3)
        if which == 0:  # p - g*lr
            c.update(momentum=0.0, weight_decay=0.0, lr=_near(rng, p / g) if p * g > 0 else c["lr"])
            if p * g < 0:
                c["g"] = t(-c["g"])
                c["lr"] = _near(rng, -p / g)
        elif which == 1:  # g + p*weight_decay, stored as the first step's buffer
            if p * g > 0:
                c["g"] = t(-c["g"])
            c.update(momentum=0.5, first=True, weight_decay=_near(rng, abs(g / p)))
        else:  # buf*momentum + g*(1 - dampening), momentum in (0, 1)
            if g * buf > 0:
                c["g"] = t(-c["g"])
            c["dampening"] = 0.0
            if abs(g) >= abs(buf):
                c["g"], c["buf"] = c["buf"], c["g"]
                c["g"] = t(-c["g"]) if float(c["g"]) * float(c["buf"]) > 0 else c["g"]
            c.update(weight_decay=0.0, first=False, momentum=_near(rng, abs(float(c["g"]) / float(c["buf"]))))
    return c


def _sgd_torch(torch, tdtype, c):
    p, g, buf = (torch.tensor([float(c[k])], dtype=tdtype) for k in ("p", "g", "buf"))
    torch._fused_sgd_(
        [p],
        [g],
        [buf] if c["momentum"] != 0 else [],
        weight_decay=c["weight_decay"],
        momentum=c["momentum"],
        lr=c["lr"],
        dampening=c["dampening"],
        nesterov=c["nesterov"],
        maximize=c["maximize"],
        is_first_step=c["first"],
    )
    return p.item(), (buf.item() if c["momentum"] != 0 else None)


def _sgd_hand(c, form: bool):
    hp = SGD(c["lr"], c["momentum"], c["dampening"], c["weight_decay"], c["nesterov"], c["maximize"], form)
    return sgd(c["p"], c["g"], None if c["first"] else c["buf"], hp)


@dataclass(frozen=True)
class _AdamOptions:
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool
    maximize: bool
    decoupled: bool


def _adam_case(rng, t, telling: bool, decoupled: bool = False) -> dict:
    c = dict(
        opts=_AdamOptions(
            lr=float(rng.uniform(1e-3, 0.5)),
            beta1=float(rng.choice([rng.uniform(0.5, 0.99), rng.uniform(0, 0.5)])),
            beta2=float(rng.uniform(0.9, 0.9999)),
            eps=float(rng.choice([1e-8, 1e-3])),
            weight_decay=float(rng.choice([0.0, rng.uniform(0.001, 0.5)])),
            amsgrad=bool(rng.random() < 0.3),
            maximize=bool(rng.random() < 0.2),
            decoupled=decoupled,
        ),
        t=int(rng.integers(1, 20)),
        p=_value(rng, t),
        g=_value(rng, t),
        m=_value(rng, t),
        v=t(np.float32(rng.uniform(0, 4))),
    )
    c["vmax"] = t(np.float32(float(c["v"]) * rng.uniform(0.5, 1.5)))
    if telling:  # the lerp's product cancels against its base: m + w*(g - m), or g - (g - m)*(1 - w)
        import dataclasses

        m, g = float(c["m"]), float(c["g"])
        if m * g > 0:
            c["g"], g = t(-c["g"]), -g
        if abs(m) == abs(g):
            c["g"], g = t(2 * g), 2 * g
        # w = m/(m - g) is in (0, 1): under 0.5 where |m| < |g| (the first form), else the second
        w = _near(rng, m / (m - g)) if abs(m) < abs(g) else 1 - _near(rng, g / (g - m))
        c["opts"] = dataclasses.replace(c["opts"], beta1=1 - w, weight_decay=0.0, maximize=False)
    return c


def _adam_torch(torch, tdtype, c):
    o = c["opts"]
    p, g, m, v, vmax = (torch.tensor([float(c[k])], dtype=tdtype) for k in ("p", "g", "m", "v", "vmax"))
    fn = torch._fused_adamw_ if o.decoupled else torch._fused_adam_
    fn(
        [p],
        [g],
        [m],
        [v],
        [vmax] if o.amsgrad else [],
        [torch.tensor(float(c["t"]))],
        lr=o.lr,
        beta1=o.beta1,
        beta2=o.beta2,
        weight_decay=o.weight_decay,
        eps=o.eps,
        amsgrad=o.amsgrad,
        maximize=o.maximize,
    )
    return p.item(), m.item(), v.item(), (vmax.item() if o.amsgrad else None)


def _adam_hand(c, form: bool):
    return adam(c["p"], c["g"], c["m"], c["v"], c["vmax"], c["opts"], c["t"], form)


@dataclass(frozen=True)
class _AdagradOptions:
    lr: float
    lr_decay: float
    weight_decay: float
    eps: float
    maximize: bool


def _adagrad_case(rng, t, telling: bool) -> dict:
    c = dict(
        opts=_AdagradOptions(
            lr=float(rng.uniform(1e-3, 0.5)),
            lr_decay=float(rng.choice([0.0, rng.uniform(0, 0.1)])),
            weight_decay=float(rng.choice([0.0, rng.uniform(0.001, 0.5)])),
            eps=float(rng.choice([1e-10, 1e-3])),
            maximize=bool(rng.random() < 0.2),
        ),
        t=int(rng.integers(1, 20)),
        p=_value(rng, t),
        g=_value(rng, t),
        total=t(np.float32(rng.uniform(0.5, 4))),
    )
    if telling:  # g + p*weight_decay rounds apart or not, and the step cancels the parameter
        o = c["opts"]
        wd = float(rng.uniform(0.05, 0.5))
        if float(c["g"]) * float(c["p"]) < 0:
            c["g"] = t(-c["g"])
        g32 = float(c["g"]) + float(c["p"]) * wd
        std = math.sqrt(float(c["total"]) + g32 * g32)
        c["opts"] = _AdagradOptions(
            lr=_near(rng, float(c["p"]) * std / g32), lr_decay=0.0, weight_decay=wd, eps=o.eps, maximize=False
        )
        c["t"] = 1
    return c


def _adagrad_torch(torch, tdtype, c):
    o = c["opts"]
    p, g, total = (torch.tensor([float(c[k])], dtype=tdtype) for k in ("p", "g", "total"))
    torch._fused_adagrad_(
        [p],
        [g],
        [total],
        [torch.tensor(float(c["t"]))],
        lr=o.lr,
        lr_decay=o.lr_decay,
        weight_decay=o.weight_decay,
        eps=o.eps,
        maximize=o.maximize,
    )
    return p.item(), total.item()


def _adagrad_hand(c, form: bool):
    return adagrad(c["p"], c["g"], c["total"], c["opts"], c["t"], form)


_CASES = {
    "sgd": _sgd_case,
    "adam": _adam_case,
    "adamw": functools.partial(_adam_case, decoupled=True),
    "adagrad": _adagrad_case,
}
_TORCH = {"sgd": _sgd_torch, "adam": _adam_torch, "adamw": _adam_torch, "adagrad": _adagrad_torch}
_HAND = {"sgd": _sgd_hand, "adam": _adam_hand, "adamw": _adam_hand, "adagrad": _adagrad_hand}


def form(config) -> bool | None:
    """The form of the fused kernel the hand side computes with: True (contracted) or False
    (plain), as probed on this machine (contracted where no form held); None for the unfused
    algorithm: no ``--fused``, or not a 16-bit run (a float32 or float64 fused kernel computes
    in the type itself, and is judged by the general allowance)."""
    from sgdtrace import dtypes

    if not getattr(config, "fused", None) or getattr(config, "dtype", None) not in dtypes.REDUCED:
        return None
    if getattr(config, "device", "cpu") != "cpu":  # CUDA's fused kernels are other code
        return True
    found = rule(config.optimizer, config.dtype).form
    return True if found is None else found


def exact(config, numel: int = 1) -> bool:
    """Does the hand side reproduce torch's fused kernel bit for bit on this machine, for a
    parameter of ``numel`` elements? On the CPU, for parameters that take the scalar loop (fewer
    elements than the narrowest vector: the scalar model's one each, a few features' ``w``),
    where the probe found the form."""
    return config.device == "cpu" and scalar_loop(numel) and rule(config.optimizer, config.dtype).holds
