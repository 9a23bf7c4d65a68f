"""torch.optim.SGD worked by hand: Equations 4-5 of the article, grown into torch's algorithm.

PyTorch's documented algorithm (``torch/optim/sgd.py``, its class docstring), for one
parameter ``p`` with gradient ``g`` at step ``t``::

    input: lr, momentum mu, dampening tau, weight_decay lambda, nesterov, maximize
    g <- -g                              if maximize                   (maximized)
    g <- g + lambda * p                  if lambda != 0                (decayed)
    if mu != 0:
        buf <- g                         at t = 1 (a copy: no dampening on the first step)
        buf <- mu * buf + (1 - tau) * g  after that                    (buffered)
        g   <- g + mu * buf              if nesterov                   (nesterov_step)
        g   <- buf                       otherwise
    p <- p - lr * g                                                    (descend, Eq. 4-5)

This is not the textbook (Sutskever) form ``v <- mu*v + lr*g; p <- p - v``: PyTorch keeps lr
outside the buffer, so the two differ when lr changes (and in their rounding). The state torch
keeps per parameter is ``momentum_buffer`` (only with momentum), and so does :func:`update`.

In bfloat16 and float16, torch's operations on the one-element parameters round as follows
(measured on torch 2.13's CPU kernels, pinned by tests/test_precision.py; docs/precision.md):
``add``/``add_`` with ``alpha`` rounds alpha to the type, then the product, then the sum (so
the scalars in :class:`Hyper` are of the type), while ``buf.mul_(momentum)`` keeps momentum in
float32 and rounds once (``Hyper.momentum_kept``, then ``Hyper.rounded``; ``foreach=True``'s
``torch._foreach_mul_`` rounds momentum to the type first). With ``fused=True``
torch runs one kernel that computes the whole step in float32 and rounds only what it stores:
:mod:`._fused` (``Hyper.fused``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sgdtrace.engines.optimizers import _fused

#: the state entry momentum keeps, in torch's name
MOMENTUM_BUFFER = "momentum_buffer"


@dataclass(frozen=True)
class Hyper:
    """torch.optim.SGD's keyword arguments, as scalars of the engine's array type.

    ``one_minus_dampening`` is the coefficient torch passes as ``alpha=1 - dampening``: worked out
    in double precision, then rounded once to the run's dtype (worked out in float32 from a
    rounded dampening instead, it is off by up to u*dampening/(1 - dampening) relative: 500 ulp at
    dampening 0.999). ``use_momentum`` and ``use_weight_decay`` are torch's ``!= 0`` tests, made once.
    ``momentum_kept`` is the momentum ``buf.mul_(momentum)`` multiplies by (float32 in a 16-bit
    run, else ``momentum``), ``rounded`` rounds that product to the run's type (else identity).
    ``fused``: where torch runs its fused kernel on a 16-bit parameter, the kernel's options and
    form (:class:`sgdtrace.engines.optimizers._fused.SGD`), else None.
    """

    lr: Any
    momentum: Any = 0.0
    dampening: Any = 0.0
    weight_decay: Any = 0.0
    nesterov: bool = False
    maximize: bool = False
    one_minus_dampening: Any = 1.0
    use_momentum: bool = False
    use_weight_decay: bool = False
    momentum_kept: Any = 0.0
    rounded: Callable[[Any], Any] = lambda v: v
    fused: Any = None  # _fused.SGD: torch's fused kernel in 16 bits, worked in float32


def hyper(
    config,
    scalar: Callable[[float], Any] = float,
    group: dict | None = None,
    kept: Callable[[float], Any] | None = None,
    rounded: Callable[[Any], Any] | None = None,
) -> Hyper:
    """The run's options as the update computes with them (``scalar`` rounds to the array type);
    ``group`` overrides lr and momentum for one step (a schedule; OneCycleLR drives momentum).
    ``kept`` makes the scalar ``mul_`` keeps in float32, ``rounded`` rounds its product back (see
    :class:`Hyper`; both default to the array type's own arithmetic)."""
    group = group or {}
    momentum = group.get("momentum", config.momentum)
    form = _fused.form(config)
    fused = None
    if form is not None:
        fused = _fused.SGD(
            lr=group.get("lr", config.lr),
            momentum=momentum,
            dampening=config.dampening,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
            maximize=config.maximize,
            contracted=form,
        )
    return Hyper(
        lr=scalar(group.get("lr", config.lr)),
        momentum=scalar(momentum),
        dampening=scalar(config.dampening),
        weight_decay=scalar(config.weight_decay),
        nesterov=config.nesterov,
        maximize=config.maximize,
        one_minus_dampening=scalar(1 - config.dampening),
        use_momentum=momentum != 0,
        use_weight_decay=config.weight_decay != 0,
        # torch._foreach_mul_ (the foreach step) rounds its scalar to the type: not kept there
        momentum_kept=(scalar if getattr(config, "foreach", None) else (kept or scalar))(momentum),
        **({"rounded": rounded} if rounded is not None else {}),
        fused=fused,
    )


def state_keys(config) -> tuple[str, ...]:
    """The state torch.optim.SGD keeps per parameter: the momentum buffer, with momentum (or when
    OneCycleLR drives the momentum: from 0 to 0.95 by default)."""
    from sgdtrace.engines.optimizers.schedules import cycles_momentum

    return (MOMENTUM_BUFFER,) if config.momentum != 0 or cycles_momentum(config) else ()


def initial_state(config) -> dict[str, float]:
    return {key: 0.0 for key in state_keys(config)}


# ------------------------------------------------------------------ the algorithm, line by line


def maximized(g):
    """g <- -g: gradient ascent climbs the loss."""
    return -g


def decayed(g, p, weight_decay):
    """g <- g + lambda * p: L2 weight decay, added to the gradient (and so into the buffer)."""
    return g + weight_decay * p


def buffered(buf, g, momentum, one_minus_dampening, rounded=lambda v: v):
    """buf <- mu * buf + (1 - tau) * g; on the very first step, buf <- g (``buf`` is None there).

    torch: ``buf.mul_(momentum).add_(g, alpha=1 - dampening)``; ``rounded`` rounds the ``mul_``'s
    product to the run's type where ``momentum`` is kept wider (16-bit runs, :class:`Hyper`).
    """
    return g if buf is None else rounded(momentum * buf) + one_minus_dampening * g


def nesterov_step(g, buf, momentum):
    """g <- g + mu * buf: Nesterov looks ahead along the buffer."""
    return g + momentum * buf


def descend(p, g, lr):
    """p <- p - lr * g: Equations 4-5."""
    return p - lr * g


def update(param, grad, state: dict, hp: Hyper):
    """One parameter's step, as torch.optim.SGD takes it (see the module's docstring)."""
    if hp.fused is not None:  # torch's fused kernel, 16 bits: the step in float32
        param, buf = _fused.sgd(param, grad, state.get(MOMENTUM_BUFFER), hp.fused)
        if buf is not None:
            state[MOMENTUM_BUFFER] = buf
        return param
    g = maximized(grad) if hp.maximize else grad
    if hp.use_weight_decay:
        g = decayed(g, param, hp.weight_decay)
    if hp.use_momentum:
        buf = state[MOMENTUM_BUFFER] = buffered(
            state.get(MOMENTUM_BUFFER), g, hp.momentum_kept, hp.one_minus_dampening, hp.rounded
        )
        g = nesterov_step(g, buf, hp.momentum) if hp.nesterov else buf
    return descend(param, g, hp.lr)


# ------------------------------------------------------------------ the tolerance model's terms


def update_bound(p, g, prev: dict, cur: dict, new_mag, first, config, ctx=None):
    """The update's rounding and carried difference, operation by operation as torch does it.

    ``p`` and ``g`` are :class:`sgdtrace.divergence._Bound` s of the parameter the step started
    from and of its gradient (both measured); ``prev`` and ``cur`` the state entries (by key)
    before and after the step, as both engines recorded them; ``new_mag`` the measured magnitude
    of the new parameter; ``first`` marks the very first step; ``ctx`` (a
    :class:`sgdtrace.engines.optimizers.StepContext`, optional) the per-step lr and momentum of a
    schedule. Returns the new parameter's bound and each state entry's bound. Each operation adds
    one rounding the size of its own result.
    """
    lr = config.lr if ctx is None else ctx.lr
    momentum = config.momentum if ctx is None else ctx.group.get("momentum", config.momentum)
    if config.maximize:
        g = g.scaled(-1.0)
    if config.weight_decay != 0:
        g = g.combine(config.weight_decay, p)
    states = {}
    if MOMENTUM_BUFFER in cur:
        # buf <- momentum*buf + (1-dampening)*g, except buf <- g (a copy) on the very first step
        buf = (
            prev[MOMENTUM_BUFFER]
            .scaled(momentum)
            .combine(1 - config.dampening, g, result=cur[MOMENTUM_BUFFER].mag)
            .where(first, g)
        )
        states[MOMENTUM_BUFFER] = buf
        # the parameter's update goes on from the buffer as recorded
        g = g.combine(momentum, cur[MOMENTUM_BUFFER]) if config.nesterov else cur[MOMENTUM_BUFFER]
    return p.combine(-lr, g, result=new_mag), states


def direction(p, g, state: dict, config):
    """The direction ``d`` of the step ``p <- p - lr * d``, in float64 from one engine's recorded
    values: the parameter the step started from, its gradient and the state after the step (for
    the stall: the step was lost where ``lr * d != 0`` but ``p`` did not move)."""
    d = -g if config.maximize else g
    if config.weight_decay != 0:
        d = d + config.weight_decay * p
    if config.momentum != 0:
        buf = state[MOMENTUM_BUFFER]
        d = d + config.momentum * buf if config.nesterov else buf
    return d
