"""The usual mistakes in an optimizer's update, for every optimizer: each turned into the value it
would have produced, tested against the hand side's value (see :mod:`sgdtrace.diagnosis`).

Each optimizer is worked here once more, in float64 on one element, with a switch for each
mistake (:func:`step`). A hypothesis replays the optimizer with the mistake over the hand side's
OWN inputs: its parameter at each step's start and its gradients (so a wrong gradient does not
blur a wrong update), from the initial state. Where the hand side records a state entry under
torch's name, the entry it recorded when the step started is used instead of the replay (the
state it really had); where it keeps the state under names of its own, the replay stands in.

A hypothesis names the mistake only when the hand side's value lies within the step's allowance
of the hypothesis's value, that value is clearly away from the right one (more than twice the
allowance), and no other hypothesis of the catalogue explains the value as well: two mistakes
the numbers cannot tell apart name neither (``None``: no guess). Some mistakes leave no trace at
some steps (the docs' table says where each one shows); they are named where they show.

The catalogue (``kind``: what it names)::

    every optimizer   stale_gradient (the previous step's gradient), other_gradient (w's gradient
                      applied to b, or b's to w), schedule_early (every rate one step early: the
                      schedule stepped before the optimizer), step_factor, step_sign
    sgd               nesterov_missing, nesterov_unasked
    adam, adamw       no_bias_correction, no_bias_correction1, no_bias_correction2,
                      bias_correction_ahead (t + 1), bias_correction_behind (t - 1), eps_inside_sqrt,
                      l2_in_adamw, decoupled_in_adam, decay_after_update, amsgrad_corrected_max
    rmsprop           centered_no_square, momentum_on_gradient, eps_inside_sqrt
    adagrad           lr_decay_ahead (t in place of t - 1), eps_inside_sqrt
"""

from __future__ import annotations

import math
from typing import Any

#: what each mistake is, in a learner's words (the diagnosis's text after the field's label)
TEXT = {
    "stale_gradient": "the update used the previous step's gradient, not this step's (a stale gradient)",
    "other_gradient": "the update used the other parameter's gradient ({other}'s gradient applied to {param})",
    "schedule_early": "every rate is one step early: the schedule was stepped before the optimizer's step "
    "(scheduler.step() belongs after optimizer.step())",
    "nesterov_missing": "Nesterov momentum left out: the step was the buffer, not g + momentum * buf",
    "nesterov_unasked": "Nesterov's step (g + momentum * buf) where plain momentum (the buffer) was asked for",
    "no_bias_correction": "Adam's bias corrections left out: m / (sqrt(v) + eps) without 1 - beta1^t and 1 - beta2^t",
    "no_bias_correction1": "the first moment's bias correction left out (m not divided by 1 - beta1^t)",
    "no_bias_correction2": "the second moment's bias correction left out (v not divided by 1 - beta2^t)",
    "bias_correction_ahead": "the bias corrections one step ahead: 1 - beta^(t+1) (the step count "
    "incremented after its use, or counted from 1 before the first step)",
    "bias_correction_behind": "the bias corrections one step behind: 1 - beta^(t-1) (the step count "
    "used before it is incremented; 0 at the first step)",
    "eps_inside_sqrt": "eps inside the square root: sqrt(v + eps) where torch adds eps after it, sqrt(v) + eps",
    "l2_in_adamw": "AdamW's decay written as an L2 term of the gradient (g + weight_decay * p, Adam's rule); "
    "AdamW decays the parameter itself: p * (1 - lr * weight_decay)",
    "decoupled_in_adam": "Adam's weight decay decoupled as AdamW's (p * (1 - lr * weight_decay)); Adam adds "
    "weight_decay * p to the gradient",
    "decay_after_update": "the decoupled decay applied after the update; torch decays p before it",
    "amsgrad_corrected_max": "amsgrad's running max taken over the bias-corrected v; torch takes it over v "
    "and divides by sqrt(1 - beta2^t) after",
    "centered_no_square": "RMSprop's centered term without its square: sqrt(v - g_avg) where torch has "
    "sqrt(v - g_avg^2)",
    "momentum_on_gradient": "RMSprop's momentum applied to the gradient (buf = momentum * buf + g, then g's "
    "scale); torch's buffer holds the scaled step: buf = momentum * buf + g / avg",
    "lr_decay_ahead": "Adagrad's lr_decay one step off: lr / (1 + t * lr_decay) where torch has "
    "lr / (1 + (t - 1) * lr_decay)",
}

#: the mistakes tried per optimizer (beyond the ones every optimizer gets)
OWN = {
    "sgd": ("nesterov_missing", "nesterov_unasked"),
    "adam": (
        "no_bias_correction",
        "no_bias_correction1",
        "no_bias_correction2",
        "bias_correction_ahead",
        "bias_correction_behind",
        "eps_inside_sqrt",
        "decoupled_in_adam",
        "amsgrad_corrected_max",
    ),
    "rmsprop": ("centered_no_square", "momentum_on_gradient", "eps_inside_sqrt"),
    "adagrad": ("lr_decay_ahead", "eps_inside_sqrt"),
}
OWN["adamw"] = tuple(m for m in OWN["adam"] if m != "decoupled_in_adam") + ("l2_in_adamw", "decay_after_update")
#: the mistakes of the inputs of the update, tried for every optimizer
INPUTS = ("stale_gradient", "other_gradient", "schedule_early")


def _sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0 else math.nan


def _div(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def step(opt: str, p: float, g: float, st: dict[str, float], hp: dict[str, Any], t: int, m: str | None):
    """One element's step of optimizer ``opt`` in float64, with mistake ``m`` (None: torch's rule).
    Returns the new parameter and the new state (torch's names)."""
    if hp["maximize"]:
        g = -g
    if opt == "sgd":
        return _sgd(p, g, st, hp, m)
    if opt in ("adam", "adamw"):
        return _adam(p, g, st, hp, t, m)
    if opt == "rmsprop":
        return _rmsprop(p, g, st, hp, m)
    return _adagrad(p, g, st, hp, t, m)


def _sgd(p, g, st, hp, m):
    if hp["weight_decay"]:
        g = g + hp["weight_decay"] * p
    new = {}
    mu = hp["momentum"]
    if mu:
        buf = g if "momentum_buffer" not in st else mu * st["momentum_buffer"] + (1 - hp["dampening"]) * g
        new["momentum_buffer"] = buf
        nesterov = hp["nesterov"]
        if m == "nesterov_missing":
            nesterov = False
        elif m == "nesterov_unasked":
            nesterov = True
        g = g + mu * buf if nesterov else buf
    return p - hp["lr"] * g, new


def _adam(p, g, st, hp, t, m):
    b1, b2 = hp["betas"]
    lr, wd, eps = hp["lr"], hp["weight_decay"], hp["eps"]
    decoupled = hp["decoupled_weight_decay"]
    if m == "l2_in_adamw":
        decoupled = False
    elif m == "decoupled_in_adam":
        decoupled = True
    if wd and not (decoupled and m == "decay_after_update"):
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
    mo = b1 * st.get("exp_avg", 0.0) + (1 - b1) * g
    v = b2 * st.get("exp_avg_sq", 0.0) + (1 - b2) * g * g
    new = {"exp_avg": mo, "exp_avg_sq": v}
    tt = t + 1 if m == "bias_correction_ahead" else t - 1 if m == "bias_correction_behind" else t
    bc1 = 1.0 if m in ("no_bias_correction", "no_bias_correction1") else 1 - b1**tt
    bc2 = 1.0 if m in ("no_bias_correction", "no_bias_correction2") else 1 - b2**tt
    if hp["amsgrad"]:
        if m == "amsgrad_corrected_max":
            vmax = max(st.get("max_exp_avg_sq", 0.0), _div(v, bc2))
            new["max_exp_avg_sq"] = vmax
            denom_v, bc2 = vmax, 1.0
        else:
            vmax = max(st.get("max_exp_avg_sq", 0.0), v)
            new["max_exp_avg_sq"] = denom_v = vmax
    else:
        denom_v = v
    inside = m == "eps_inside_sqrt"
    denom = _sqrt(_div(denom_v, bc2) + eps) if inside else _div(_sqrt(denom_v), _sqrt(bc2)) + eps
    out = p - _div(lr, bc1) * _div(mo, denom) if bc1 else math.nan
    if wd and decoupled and m == "decay_after_update":
        out = out * (1 - lr * wd)
    return out, new


def _rmsprop(p, g, st, hp, m):
    alpha, eps, mu, lr = hp["alpha"], hp["eps"], hp["momentum"], hp["lr"]
    if hp["weight_decay"]:
        g = g + hp["weight_decay"] * p
    v = alpha * st.get("square_avg", 0.0) + (1 - alpha) * g * g
    new = {"square_avg": v}
    if hp["centered"]:
        ga = alpha * st.get("grad_avg", 0.0) + (1 - alpha) * g
        new["grad_avg"] = ga
        inner = v - ga if m == "centered_no_square" else v - ga * ga
    else:
        inner = v
    avg = _sqrt(inner + eps) if m == "eps_inside_sqrt" else _sqrt(inner) + eps
    if mu > 0:
        if m == "momentum_on_gradient":
            buf = mu * st.get("momentum_buffer", 0.0) + g
            new["momentum_buffer"] = buf
            return p - lr * _div(buf, avg), new
        buf = mu * st.get("momentum_buffer", 0.0) + _div(g, avg)
        new["momentum_buffer"] = buf
        return p - lr * buf, new
    return p - lr * _div(g, avg), new


def _adagrad(p, g, st, hp, t, m):
    if hp["weight_decay"]:
        g = g + hp["weight_decay"] * p
    clr = hp["lr"] / (1 + (t if m == "lr_decay_ahead" else t - 1) * hp["lr_decay"])
    s = st.get("sum", hp["initial_accumulator_value"]) + g * g
    std = _sqrt(s + hp["eps"]) if m == "eps_inside_sqrt" else _sqrt(s) + hp["eps"]
    return p - clr * _div(g, std), {"sum": s}


# ------------------------------------------------------------------ replaying a hypothesis


class Replay:
    """The hand side's own inputs for one element of one parameter, and the hyper-parameters per step.

    ``p_start[j]``, ``grad[j]``: the parameter when step j started and its gradient (the hand
    side's); ``other_grad[j]``: the other parameter's gradient (the article's scalar model), or
    None; ``hps[j]``: step j's hyper-parameters (torch's names); ``recorded[key][j]``: a state
    entry the hand side recorded after step j (absent: kept under its own names, replayed)."""

    def __init__(self, opt, p_start, grad, other_grad, hps, recorded, initial_state):
        self.opt, self.p_start, self.grad, self.other_grad = opt, p_start, grad, other_grad
        self.hps, self.recorded, self.initial_state = hps, recorded, initial_state

    def state_before(self, k: int, m: str | None) -> dict[str, float]:
        """The state step k started from: recorded where the hand side keeps it under torch's names,
        replayed with mistake ``m`` from the initial state otherwise."""
        st = dict(self.initial_state)
        replay = [key for key in self._keys() if key not in self.recorded]
        if replay and k > 0:
            s = dict(self.initial_state)
            for j in range(k):
                _, s = self._one(j, s, m)
            st.update({key: s[key] for key in replay if key in s})
        if k > 0:
            st.update({key: float(col[k - 1]) for key, col in self.recorded.items()})
        return st

    def _keys(self) -> tuple[str, ...]:
        from sgdtrace.engines import optimizers

        return tuple(optimizers.get(self.opt).state_keys(_Cfg(self.opt, self.hps[0])))

    def _one(self, j: int, st: dict, m: str | None):
        g = self.grad[j]
        hp = self.hps[j]
        if m == "stale_gradient":
            g = self.grad[j - 1] if j > 0 else 0.0
        elif m == "other_gradient":
            g = self.other_grad[j]
        elif m == "schedule_early":
            hp = self.hps[min(j + 1, len(self.hps) - 1)]
        own = m if m not in INPUTS else None
        return step(self.opt, self.p_start[j], g, st, hp, j + 1, own)

    def at(self, k: int, m: str | None) -> tuple[float, dict[str, float]]:
        """The new parameter and state of step k under mistake ``m`` (None: the right ones)."""
        try:
            return self._one(k, self.state_before(k, m), m)
        except (OverflowError, ZeroDivisionError, ValueError):
            return math.nan, {}


class _Cfg:
    """The options an optimizer's ``state_keys`` reads, from its hyper-parameters."""

    def __init__(self, opt: str, hp: dict[str, Any]):
        self.optimizer = opt
        self.momentum = hp.get("momentum", 0.0)
        self.amsgrad = hp.get("amsgrad", False)
        self.centered = hp.get("centered", False)
        self.scheduler = None


def candidates(replay: Replay, k: int, field_key: str | None, has_schedule: bool, has_other: bool):
    """Each mistake's value of the field (``field_key``: a state entry, None for the parameter) at
    step k: ``[(kind, value)]``, and the right value."""
    right_p, right_st = replay.at(k, None)
    right = right_p if field_key is None else right_st.get(field_key, math.nan)
    out = []
    kinds = list(OWN.get(replay.opt, ())) + ["stale_gradient"]
    if has_other:
        kinds.append("other_gradient")
    if has_schedule:
        kinds.append("schedule_early")
    for kind in kinds:
        new_p, new_st = replay.at(k, kind)
        value = new_p if field_key is None else new_st.get(field_key, math.nan)
        out.append((kind, value))
    return right, out
