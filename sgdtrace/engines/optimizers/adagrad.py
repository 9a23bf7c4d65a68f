"""torch.optim.Adagrad worked by hand.

PyTorch's documented algorithm (``torch/optim/adagrad.py``; on the CPU ``_single_tensor_adagrad``
runs), for one parameter ``p`` with gradient ``g`` at step ``t``::

    input: lr, lr_decay, weight_decay lambda, initial_accumulator_value s0, eps, maximize
    init:  sum <- s0
    g <- -g                                        if maximize                (maximized)
    g <- g + lambda * p                            if lambda != 0             (decayed)
    clr <- lr / (1 + (t - 1) * lr_decay)           Python float               (decayed_rate)
    sum <- sum + g * g                             addcmul_(g, g, value=1)    (accumulated)
    std <- sqrt(sum) + eps                                                    (deviation)
    p <- p - clr * g / std                         addcdiv_                   (stepped)

torch's foreach implementation (``foreach=True``) forms the numerator ``g * -clr`` first and then
``p + numerator / std`` (:func:`stepped_foreach`): the same roundings in float32 and float64, one
more in 16 bits.

The state torch keeps is ``sum`` (recorded as ``sum_w``/``sum_b``). Adagrad has no momentum or
beta1: OneCycleLR needs ``cycle_momentum = false`` with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sgdtrace.engines.optimizers import _fused
from sgdtrace.engines.optimizers import _kernels as k
from sgdtrace.engines.optimizers._track import Track, div, fit, mul, neg, sqrt

SUM = "sum"


@dataclass(frozen=True)
class Hyper:
    lr: float
    lr_decay: float
    weight_decay: float
    initial_accumulator_value: float
    eps: float
    maximize: bool
    scalar: Callable[[float], Any]
    #: the scalar the 16-bit kernels keep in float32 (``addcdiv_``'s value); ``scalar`` by default
    kept: Callable[[float], Any] | None = None
    #: the form of torch's fused 16-bit kernel (:func:`._fused.form`), None for the unfused algorithm
    fused: bool | None = None
    #: torch's foreach step, which forms the numerator ``g * -clr`` first (:func:`stepped_foreach`)
    foreach: bool = False


def hyper(
    config, scalar: Callable[[float], Any] = float, group: dict | None = None, kept: Callable | None = None
) -> Hyper:
    group = group or {}
    return Hyper(
        lr=group.get("lr", config.lr),
        lr_decay=config.lr_decay,
        weight_decay=config.weight_decay,
        initial_accumulator_value=config.initial_accumulator_value,
        eps=config.eps,
        maximize=config.maximize,
        scalar=scalar,
        kept=kept,
        fused=_fused.form(config),
        foreach=bool(getattr(config, "foreach", None)),
    )


def state_keys(config) -> tuple[str, ...]:
    return (SUM,)


def initial_state(config) -> dict[str, float]:
    return {SUM: config.initial_accumulator_value}


# ------------------------------------------------------------------ the algorithm, line by line


def maximized(g):
    """g <- -g."""
    return -g


def decayed(g, p, weight_decay):
    """g <- g + lambda * p."""
    return k.add_scaled(g, p, weight_decay)


def decayed_rate(lr: float, lr_decay: float, t: int) -> float:
    """clr <- lr / (1 + (t - 1) * lr_decay), in Python floats."""
    return lr / (1 + (t - 1) * lr_decay)


def accumulated(total, g):
    """sum <- sum + g * g (``addcmul_(g, g, value=1)``: one fused rounding)."""
    return k.addcmul(total, g, g, 1)


def deviation(total, eps):
    """std <- sqrt(sum) + eps."""
    return k.sqrt(total) + eps


def stepped(p, g, std, neg_clr):
    """p <- p - clr * g / std (``addcdiv_(g, std, value=-clr)``)."""
    return k.addcdiv(p, g, std, neg_clr)


def stepped_foreach(p, g, std, neg_clr):
    """p <- p + (g * -clr) / std: torch's foreach step (``_foreach_mul`` of the gradients by -clr,
    rounded, then ``_foreach_addcdiv_(params, numerator, std)``)."""
    return k.addcdiv(p, k.scale(g, neg_clr), std, 1)


def update(param, grad, state: dict, hp: Hyper):
    """One parameter's step, as torch.optim.Adagrad takes it (see the module's docstring)."""
    s = hp.scalar
    t = state["step"] = state.get("step", 0) + 1
    if SUM not in state:
        state[SUM] = k.full_like(param, s(hp.initial_accumulator_value))
    if hp.fused is not None:  # torch's fused kernel, 16 bits: the step in float32
        param, state[SUM] = _fused.adagrad(param, grad, state[SUM], hp, t, hp.fused)
        return param
    g = maximized(grad) if hp.maximize else grad
    if hp.weight_decay != 0:
        g = decayed(g, param, s(hp.weight_decay))
    clr = decayed_rate(hp.lr, hp.lr_decay, t)
    total = state[SUM] = accumulated(state[SUM], g)
    std = deviation(total, s(hp.eps))
    if hp.foreach:  # in place (after weight decay or maximize) torch._foreach_mul_ rounds -clr to the type
        return stepped_foreach(param, g, std, (s if hp.weight_decay != 0 or hp.maximize else hp.kept or s)(-clr))
    return stepped(param, g, std, (hp.kept or s)(-clr))


# ------------------------------------------------------------------ the tolerance model's terms


def update_bound(p: Track, g: Track, prev: dict, cur: dict, new_mag, first, config, ctx):
    """The update's roundings and carried differences (see adam.update_bound)."""
    if config.maximize:
        g = neg(g)
    if config.weight_decay != 0:
        g = g.combine(config.weight_decay, p)
    states = {SUM: prev[SUM].combine(1.0, mul(g, g))}
    clr = ctx.lr / (1 + (ctx.t - 1) * config.lr_decay)
    std = sqrt(cur[SUM], ctx.u).combine(1.0, Track.const(config.eps, ctx.t))
    new = p.combine(1.0, div(g.scaled(-clr), std), result=new_mag)
    return new, {key: fit(b, cur[key]) for key, b in states.items()}
