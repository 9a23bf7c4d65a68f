"""torch.optim.RMSprop worked by hand.

PyTorch's documented algorithm (``torch/optim/rmsprop.py``; on the CPU ``_single_tensor_rmsprop``
runs), for one parameter ``p`` with gradient ``g``::

    input: lr, alpha, eps, weight_decay lambda, momentum mu, centered, maximize
    init:  v <- 0 (square_avg), b <- 0 (momentum_buffer), g_avg <- 0 (grad_avg)
    g <- -g                                        if maximize                (maximized)
    g <- g + lambda * p                            if lambda != 0             (decayed)
    v <- alpha * v + (1 - alpha) * g * g           mul_ then addcmul_         (square_average)
    if centered:
        g_avg <- lerp(g_avg, g, 1 - alpha)                                     (grad_average)
        avg <- sqrt(v - g_avg * g_avg)             addcmul(value=-1), sqrt_   (centered_root)
    else:
        avg <- sqrt(v)
    avg <- avg + eps                               (eps OUTSIDE the square root)
    if mu > 0:
        b <- mu * b + g / avg                      mul_ then addcdiv_          (buffered)
        p <- p - lr * b                            add_(b, alpha=-lr)
    else:
        p <- p - lr * g / avg                      addcdiv_                    (stepped)

Unlike SGD's, RMSprop's buffer starts at zero (no copy of the first gradient), and it holds
``g / avg``, not ``g``. The state torch keeps is ``square_avg``, ``momentum_buffer`` (recorded as
``buf_w``/``buf_b``) with momentum, and ``grad_avg`` when centered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgdtrace.engines.optimizers import _kernels as k
from sgdtrace.engines.optimizers._track import Track, div, fit, lerp, mul, neg, sqrt

SQUARE_AVG, MOMENTUM_BUFFER, GRAD_AVG = "square_avg", "momentum_buffer", "grad_avg"


@dataclass(frozen=True)
class Hyper:
    lr: float
    alpha: float
    eps: float
    weight_decay: float
    momentum: float
    centered: bool
    maximize: bool
    scalar: Callable[[float], Any]
    #: the scalar the 16-bit kernels keep in float32 (``mul_``, ``lerp_``, ``addcmul_``,
    #: ``addcdiv_``); ``scalar`` by default (and in float32 and float64 runs)
    kept: Callable[[float], Any] | None = None
    #: torch's foreach step: its ``torch._foreach_mul_`` rounds the scalar to the type
    foreach: bool = False

    @property
    def keep(self) -> Callable[[float], Any]:
        return self.kept or self.scalar

    @property
    def mul(self) -> Callable[[float], Any]:
        """The scalar ``mul_`` takes: kept, or rounded to the type by ``torch._foreach_mul_``."""
        return self.scalar if self.foreach else self.keep


def hyper(
    config, scalar: Callable[[float], Any] = float, group: dict | None = None, kept: Callable | None = None
) -> Hyper:
    group = group or {}
    return Hyper(
        lr=group.get("lr", config.lr),
        alpha=config.alpha,
        eps=config.eps,
        weight_decay=config.weight_decay,
        momentum=group.get("momentum", config.momentum),
        centered=config.centered,
        maximize=config.maximize,
        scalar=scalar,
        kept=kept,
        foreach=bool(getattr(config, "foreach", None)),
    )


def _has_momentum(config) -> bool:
    from sgdtrace.engines.optimizers.schedules import cycles_momentum

    return config.momentum > 0 or cycles_momentum(config)


def state_keys(config) -> tuple[str, ...]:
    """The state torch.optim.RMSprop keeps, in the order it makes them."""
    return (
        (SQUARE_AVG,) + ((MOMENTUM_BUFFER,) if _has_momentum(config) else ()) + ((GRAD_AVG,) if config.centered else ())
    )


def initial_state(config) -> dict[str, float]:
    return {key: 0.0 for key in state_keys(config)}


# ------------------------------------------------------------------ the algorithm, line by line


def maximized(g):
    """g <- -g."""
    return -g


def decayed(g, p, weight_decay):
    """g <- g + lambda * p (``grad.add(param, alpha=weight_decay)``)."""
    return k.add_scaled(g, p, weight_decay)


def square_average(v, g, alpha, one_minus_alpha):
    """v <- alpha * v + (1 - alpha) * g * g (``square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)``:
    in 16 bits each in float32 and rounded once, ``g*g`` included)."""
    return k.addcmul(k.scale(v, alpha), g, g, one_minus_alpha)


def grad_average(g_avg, g, one_minus_alpha):
    """g_avg <- lerp(g_avg, g, 1 - alpha) (centered)."""
    return k.lerp(g_avg, g, one_minus_alpha)


def centered_root(v, g_avg):
    """avg <- sqrt(v - g_avg^2) (``square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()``)."""
    return k.sqrt(k.addcmul(v, g_avg, g_avg, -1))


def root(v):
    """avg <- sqrt(v)."""
    return k.sqrt(v)


def buffered(buf, g, avg, momentum):
    """b <- mu * b + g / avg (``buf.mul_(momentum).addcdiv_(grad, avg)``)."""
    return k.addcdiv(k.scale(buf, momentum), g, avg, 1)


def descend(p, buf, neg_lr):
    """p <- p - lr * b (``param.add_(buf, alpha=-lr)``)."""
    return k.add_scaled(p, buf, neg_lr)


def stepped(p, g, avg, neg_lr):
    """p <- p - lr * g / avg (``param.addcdiv_(grad, avg, value=-lr)``)."""
    return k.addcdiv(p, g, avg, neg_lr)


def update(param, grad, state: dict, hp: Hyper):
    """One parameter's step, as torch.optim.RMSprop takes it (see the module's docstring)."""
    s, kp = hp.scalar, hp.keep  # rounded to the type (add's alpha, add_'s scalar) or kept (see Hyper)
    g = maximized(grad) if hp.maximize else grad
    state["step"] = state.get("step", 0) + 1
    if hp.weight_decay != 0:
        g = decayed(g, param, s(hp.weight_decay))
    zero = k.zeros_like(param)
    v = state[SQUARE_AVG] = square_average(state.get(SQUARE_AVG, zero), g, hp.mul(hp.alpha), kp(1 - hp.alpha))
    if hp.centered:
        g_avg = state[GRAD_AVG] = grad_average(state.get(GRAD_AVG, zero), g, kp(1 - hp.alpha))
        avg = centered_root(v, g_avg)
    else:
        avg = root(v)
    avg = avg + s(hp.eps)
    if hp.momentum > 0:
        buf = state[MOMENTUM_BUFFER] = buffered(state.get(MOMENTUM_BUFFER, zero), g, avg, hp.mul(hp.momentum))
        return descend(param, buf, s(-hp.lr))
    return stepped(param, g, avg, kp(-hp.lr))


# ------------------------------------------------------------------ the tolerance model's terms


def update_bound(p: Track, g: Track, prev: dict, cur: dict, new_mag, first, config, ctx):
    """The update's roundings and carried differences (see adam.update_bound)."""
    alpha = config.alpha
    if config.maximize:
        g = neg(g)
    if config.weight_decay != 0:
        g = g.combine(config.weight_decay, p)
    # the states' own coefficients as the engines hold them (their carried differences can be large)
    states = {
        SQUARE_AVG: prev[SQUARE_AVG].scaled(k.held(alpha, config.dtype)).combine(1.0, mul(g, g).scaled(1 - alpha))
    }
    v = cur[SQUARE_AVG]
    if config.centered:
        states[GRAD_AVG] = lerp(prev[GRAD_AVG], g, k.held(1 - alpha, config.dtype))
        ga = cur[GRAD_AVG]
        v = v.combine(-1.0, mul(ga, ga))
    avg = sqrt(v, ctx.u).combine(1.0, Track.const(config.eps, ctx.t))
    momentum = np.asarray(ctx.group.get("momentum", config.momentum))
    if MOMENTUM_BUFFER in cur:
        states[MOMENTUM_BUFFER] = prev[MOMENTUM_BUFFER].scaled(k.held(momentum, config.dtype)).combine(1.0, div(g, avg))
        new = p.combine(-ctx.lr, cur[MOMENTUM_BUFFER], result=new_mag)
    else:
        new = p.combine(1.0, div(g.scaled(-ctx.lr), avg), result=new_mag)
    return new, {key: fit(b, cur[key]) for key, b in states.items()}
