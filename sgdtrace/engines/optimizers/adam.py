"""torch.optim.Adam worked by hand.

PyTorch's documented algorithm (``torch/optim/adam.py``, its class docstring), for one parameter
``p`` with gradient ``g`` at step ``t`` (what runs on the CPU is ``_single_tensor_adam``: torch
picks neither foreach nor fused there by default)::

    input: lr, betas (beta1, beta2), eps, weight_decay lambda, amsgrad, maximize
    init:  m_0 <- 0 (exp_avg), v_0 <- 0 (exp_avg_sq), vmax_0 <- 0 (max_exp_avg_sq)
    g <- -g                                        if maximize              (maximized)
    g <- g + lambda * p                            if lambda != 0           (decayed; AdamW: decoupled)
    m <- lerp(m, g, 1 - beta1)                     = beta1*m + (1-beta1)*g   (first_moment)
    v <- beta2 * v + (1 - beta2) * g * g                                    (second_moment)
    bc1 <- 1 - beta1**t;  bc2 <- 1 - beta2**t      Python floats            (bias_correction)
    step_size <- lr / bc1                          Python float
    vmax <- max(vmax, v)                           if amsgrad               (running_max)
    denom <- sqrt(v or vmax) / sqrt(bc2) + eps                               (denominator)
    p <- p - step_size * m / denom                 addcdiv_                  (stepped)

The textbook (Kingma & Ba) writes ``m_hat = m/bc1``, ``v_hat = v/bc2``, ``p <- p - lr*m_hat /
(sqrt(v_hat) + eps)``: the same in exact arithmetic, not in rounding; ``eps`` inside the square
root (``sqrt(v_hat + eps)``) is a different algorithm, caught at the first step. torch updates
``m`` with ``lerp_``, and its CPU kernels round as :mod:`._kernels` says; the update here
rounds the same way. With ``fused=True`` in bfloat16 or float16 torch runs one kernel that
computes the step in float32 (``eps`` too) and rounds only what it stores: :mod:`._fused`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgdtrace.engines.optimizers import _fused
from sgdtrace.engines.optimizers import _kernels as k
from sgdtrace.engines.optimizers._track import Track, div, fit, lerp, maximum, mul, neg, sqrt
from sgdtrace.models.linear import user_side

EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ = "exp_avg", "exp_avg_sq", "max_exp_avg_sq"
#: AdamW's decay is decoupled from the gradient (see adamw.py)
DECOUPLED = False


@dataclass(frozen=True)
class Hyper:
    """torch.optim.Adam's keyword arguments. ``lr``, ``beta1``, ``beta2`` stay Python floats (torch
    computes the bias corrections and the step size with them in double precision); ``scalar``
    rounds a Python float to the engine's array type, as torch's kernels do with a scalar argument;
    ``kept`` makes the scalar the 16-bit kernels keep in float32 (``mul_``, ``lerp_``, ``addcmul_``,
    ``addcdiv_``, ``div``; ``scalar`` by default, and in float32 and float64 runs), except that
    ``foreach``'s ``torch._foreach_mul_`` rounds its scalar to the type. ``fused``: the form of
    torch's fused 16-bit kernel (:func:`._fused.form`), None for the unfused algorithm."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool
    maximize: bool
    decoupled: bool
    scalar: Callable[[float], Any]
    kept: Callable[[float], Any] | None = None
    fused: bool | None = None
    foreach: bool = False

    def __post_init__(self) -> None:
        # the coefficients the kernels take, made once (not every step): rounded to the array type
        # where torch rounds them (add_'s scalar, add's alpha), kept where the kernel keeps them
        s = self.scalar
        kp = self.kept or s
        mul = s if self.foreach else kp  # torch._foreach_mul_ rounds its scalar to the type
        object.__setattr__(self, "keep", kp)
        for name, value, make in (
            ("one_minus_beta1", 1 - self.beta1, kp),
            ("beta2_s", self.beta2, mul),
            ("one_minus_beta2", 1 - self.beta2, kp),
            ("eps_s", self.eps, s),
            ("weight_decay_s", self.weight_decay, s),
            ("decay", 1 - self.lr * self.weight_decay, mul),
        ):
            object.__setattr__(self, name, make(value))


def hyper(
    config, scalar: Callable[[float], Any] = float, group: dict | None = None, kept: Callable | None = None
) -> Hyper:
    """The run's options; ``group`` overrides lr and beta1 per step (a schedule); ``kept``: see :class:`Hyper`."""
    group = group or {}
    return Hyper(
        lr=group.get("lr", config.lr),
        beta1=group.get("beta1", config.betas[0]),
        beta2=config.betas[1],
        eps=config.eps,
        weight_decay=config.weight_decay,
        amsgrad=config.amsgrad,
        maximize=config.maximize,
        decoupled=DECOUPLED,
        scalar=scalar,
        kept=kept,
        fused=_fused.form(config),
        foreach=bool(getattr(config, "foreach", None)),
    )


def state_keys(config) -> tuple[str, ...]:
    """The state torch.optim.Adam keeps per parameter (besides its step count)."""
    return (EXP_AVG, EXP_AVG_SQ) + ((MAX_EXP_AVG_SQ,) if config.amsgrad else ())


def initial_state(config) -> dict[str, float]:
    return {key: 0.0 for key in state_keys(config)}


# ------------------------------------------------------------------ the algorithm, line by line


def maximized(g):
    """g <- -g."""
    return -g


def decayed(g, p, weight_decay):
    """g <- g + lambda * p (Adam's L2 decay: ``grad.add(param, alpha=weight_decay)``)."""
    return k.add_scaled(g, p, weight_decay)


def decoupled_decay(p, factor):
    """p <- p * (1 - lr * lambda) (AdamW: ``param.mul_(1 - lr * weight_decay)``)."""
    return k.scale(p, factor)


def first_moment(m, g, one_minus_beta1):
    """m <- lerp(m, g, 1 - beta1)."""
    return k.lerp(m, g, one_minus_beta1)


def second_moment(v, g, beta2, one_minus_beta2):
    """v <- beta2 * v + (1 - beta2) * g * g (``mul_(beta2).addcmul_(g, g, value=1 - beta2)``)."""
    return k.addcmul(k.scale(v, beta2), g, g, one_minus_beta2)


def bias_correction(beta: float, t: int) -> float:
    """1 - beta**t, in Python floats."""
    return 1 - beta**t


def running_max(vmax, v):
    """vmax <- max(vmax, v) (amsgrad)."""
    return k.maximum(vmax, v)


def denominator(v, bc2_sqrt, eps):
    """denom <- sqrt(v) / sqrt(bc2) + eps (``(v.sqrt() / bias_correction2_sqrt).add_(eps)``)."""
    return k.divide(k.sqrt(v), bc2_sqrt) + eps


def stepped(p, m, denom, neg_step_size):
    """p <- p - step_size * m / denom (``addcdiv_(m, denom, value=-step_size)``)."""
    return k.addcdiv(p, m, denom, neg_step_size)


def update(param, grad, state: dict, hp: Hyper):
    """One parameter's step, as torch.optim.Adam takes it (see the module's docstring)."""
    s = hp.keep
    t = state["step"] = state.get("step", 0) + 1
    if hp.fused is not None:  # torch's fused kernel, 16 bits: the step in float32
        zero = k.zeros_like(param)
        m0, v0 = state.get(EXP_AVG, zero), state.get(EXP_AVG_SQ, zero)
        param, state[EXP_AVG], state[EXP_AVG_SQ], vmax = _fused.adam(
            param, grad, m0, v0, state.get(MAX_EXP_AVG_SQ, zero), hp, t, hp.fused
        )
        if hp.amsgrad:
            state[MAX_EXP_AVG_SQ] = vmax
        return param
    g = maximized(grad) if hp.maximize else grad
    if hp.weight_decay != 0:
        if hp.decoupled:
            param = decoupled_decay(param, hp.decay)  # 1 - lr*weight_decay
        else:
            g = decayed(g, param, hp.weight_decay_s)
    if EXP_AVG in state:
        m0, v0 = state[EXP_AVG], state[EXP_AVG_SQ]
    else:
        m0 = v0 = k.zeros_like(param)
    m = state[EXP_AVG] = first_moment(m0, g, hp.one_minus_beta1)
    v = state[EXP_AVG_SQ] = second_moment(v0, g, hp.beta2_s, hp.one_minus_beta2)
    bc1, bc2 = bias_correction(hp.beta1, t), bias_correction(hp.beta2, t)
    step_size = hp.lr / bc1
    if hp.amsgrad:
        v = state[MAX_EXP_AVG_SQ] = running_max(state.get(MAX_EXP_AVG_SQ, k.zeros_like(param)), v)
    denom = denominator(v, s(bc2**0.5), hp.eps_s)
    return stepped(param, m, denom, s(-step_size))


# ------------------------------------------------------------------ the tolerance model's terms


def update_bound(p: Track, g: Track, prev: dict, cur: dict, new_mag, first, config, ctx):
    """The update's roundings and carried differences (see :mod:`._track` and docs/optimizers.md).

    ``prev``/``cur``: the state entries before and after the step as both engines recorded them
    (``prev`` holds the initial state at the first step); the update goes on from the recorded
    ``cur``. ``ctx`` (:class:`sgdtrace.engines.optimizers.StepContext`) has the per-step lr, beta1
    and step count.
    """
    beta1 = ctx.group.get("beta1", config.betas[0])
    beta2 = config.betas[1]
    if config.maximize:
        g = neg(g)
    if config.weight_decay != 0:
        if DECOUPLED_FOR.get(config.optimizer, False):
            p = p.scaled(1 - ctx.lr * config.weight_decay)
        else:
            g = g.combine(config.weight_decay, p)
    states = {EXP_AVG: lerp(prev[EXP_AVG], g, k.held(1 - np.asarray(beta1), config.dtype))}
    sq = prev[EXP_AVG_SQ].scaled(k.held(beta2, config.dtype))
    gg = mul(g, g).scaled(1 - beta2)
    states[EXP_AVG_SQ] = sq.combine(1.0, gg)
    user = user_side(config)
    if user:  # 1 - beta formed from beta rounded to the run's type: exact, off from 1 - beta by u*beta
        states[EXP_AVG].rnd = states[EXP_AVG].rnd + user_one_minus(beta1, ctx.u) * g.mag
        states[EXP_AVG_SQ].rnd = states[EXP_AVG_SQ].rnd + user_one_minus(beta2, ctx.u) * g.mag * g.mag
    v = cur[EXP_AVG_SQ]
    if config.amsgrad:
        states[MAX_EXP_AVG_SQ] = maximum(prev[MAX_EXP_AVG_SQ], v)
        v = cur[MAX_EXP_AVG_SQ]
    t = ctx.t
    bc1 = 1 - np.asarray(beta1) ** t
    bc2_sqrt = (1 - beta2**t) ** 0.5
    denom = sqrt(v, ctx.u).scaled(1 / bc2_sqrt)
    denom = denom.combine(1.0, Track.const(config.eps, t))
    step = div(cur[EXP_AVG].scaled(-ctx.lr / bc1), denom)
    if user:  # the bias corrections, formed in the run's type: relative errors rho1, rho2 of 1 - beta**t
        rho1, rho2 = user_bias_correction(beta1, t, ctx.u), user_bias_correction(beta2, t, ctx.u)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = (1 + rho1 / (1 - rho1)) / np.sqrt(1 - rho2) - 1  # of m/bc1 over sqrt(v/bc2)
            step.rnd = step.rnd + np.where((rel > 0) & (rel < np.inf), rel / ctx.u * step.mag, 0.0)
    new = p.combine(1.0, step, result=new_mag)
    states = {key: fit(b, cur[key]) for key, b in states.items()}
    return new, states


def user_one_minus(beta, u):
    """A user's ``1 - beta`` formed in the run's type (u) is ``1 - fl(beta)``, exact (Sterbenz) and off
    from ``1 - beta`` by ``|beta - fl(beta)| <= u*beta``: the term ``(1 - beta) x`` it multiplies is off
    by up to ``u*beta*|x|``, returned as ``beta`` (units of u, times ``|x|``). Where ``u*beta`` reaches
    ``1 - beta`` the type cannot hold beta's distance from 1 (bfloat16's fl(0.999) is 1, ``1 - beta2``
    0): no allowance, the term is lost and caught."""
    beta = np.abs(np.asarray(beta, dtype=np.float64))
    return np.where(u * beta < 1 - beta, beta, 0.0)


def user_bias_correction(beta, t, u):
    """The relative error of a user's ``1 - beta**t`` formed in the run's type (u), against the
    exact one (docs/own-engine.md): ``fl(beta)**t`` is ``beta**t`` within ``gamma_2t`` (t roundings
    of beta's own, at most t of the power), ``1 - x`` rounds once: ``rho = gamma_2t beta**t / (1 -
    beta**t) + u``. Where rho reaches 1 the type cannot hold beta's distance from 1 (bfloat16's
    fl(0.999) is 1, and ``1 - beta2**t`` 0): no allowance (inf, left out), such a correction is caught."""
    bt = np.asarray(beta, dtype=np.float64) ** t
    gamma = 2 * t * u / (1 - 2 * t * u)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(gamma > 0, gamma * bt / (1 - bt) + u, 0.0)
    return np.where((rho < 1) & (gamma < 1), rho, np.inf)


#: which optimizer names decay the parameter directly (AdamW)
DECOUPLED_FOR = {"adam": False, "adamw": True}
