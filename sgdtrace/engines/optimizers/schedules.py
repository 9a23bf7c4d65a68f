"""Learning-rate schedules worked by hand, as torch.optim.lr_scheduler computes them.

torch's schedulers are *chainable*: each ``scheduler.step()`` computes the new rate from the
optimizer's current one (``get_lr``), not from a closed form of the step number; the two are
equal in exact arithmetic and differ in the last bits of a double (CosineAnnealingLR's recursion
``lr_t = (1 + cos(pi t/T)) / (1 + cos(pi (t-1)/T)) * (lr_{t-1} - eta_min) + eta_min`` drifts
from ``eta_min + (base - eta_min)(1 + cos(pi t/T))/2``). The functions below follow ``get_lr``
line by line, in Python floats like torch, so the hand side's rate is torch's bit for bit.

The scheduler is stepped where a learner steps it: after ``optimizer.step()``, once per batch
(``interval = "step"``) or once per epoch (``"epoch"``). Constructing it steps it once
(``last_epoch`` 0): the rate of the first step is that one. OneCycleLR also sets the rate itself
(``max_lr / div_factor`` to start) and cycles SGD's and RMSprop's ``momentum`` or Adam's beta1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sgdtrace.engines.optimizers import registry
from sgdtrace.errors import ConfigError

#: optimizers whose OneCycleLR cycling drives ``betas[0]`` (the rest: ``momentum``): the registry's
USE_BETA1 = tuple(name for name, spec in registry.SPECS.items() if spec.cycles == "beta1")


def cycles_momentum(config) -> bool:
    """Does the schedule drive the optimizer's momentum (or beta1)?"""
    s = config.scheduler
    return s is not None and s.name == "OneCycleLR" and bool(s.get("cycle_momentum", True))


def momentum_key(config) -> str:
    return "beta1" if config.optimizer in USE_BETA1 else "momentum"


def calls(config, plan) -> int:
    """How many times the learner's loop calls ``scheduler.step()``: once per step or per epoch."""
    return plan.n_steps if config.scheduler.interval == "step" else plan.epochs


def index_of_step(config, plan):
    """The schedule position (``last_epoch``) each training step runs at (a NumPy array)."""
    import numpy as np

    k = np.arange(plan.n_steps)
    if config.scheduler.interval == "step":
        return k
    return k // max(1, plan.steps_per_epoch)


# ------------------------------------------------------------------ get_lr, class by class


def _step_lr(group, last_epoch, initial, a, base):
    """StepLR: lr * gamma at every step_size-th epoch."""
    if last_epoch == 0 or last_epoch % a["step_size"] != 0:
        return group["lr"]
    return group["lr"] * a["gamma"]


def _multi_step_lr(group, last_epoch, initial, a, base):
    """MultiStepLR: lr * gamma ** (how often last_epoch is a milestone)."""
    count = list(a["milestones"]).count(last_epoch)
    if count == 0:
        return group["lr"]
    return group["lr"] * a["gamma"] ** count


def _exponential_lr(group, last_epoch, initial, a, base):
    """ExponentialLR: lr * gamma after the first."""
    if initial:
        return group["lr"]
    return group["lr"] * a["gamma"]


def _cosine_annealing_lr(group, last_epoch, initial, a, base):
    """CosineAnnealingLR's recursion (not its closed form)."""
    T, eta_min = a["T_max"], a["eta_min"]
    if initial:
        return group["lr"]
    if (last_epoch - 1 - T) % (2 * T) == 0:
        return group["lr"] + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
    return (1 + math.cos(math.pi * last_epoch / T)) / (1 + math.cos(math.pi * (last_epoch - 1) / T)) * (
        group["lr"] - eta_min
    ) + eta_min


def cosine_closed_form(base: float, t: int, T: int, eta_min: float) -> float:
    """CosineAnnealingLR's closed form (``_get_closed_form_lr``), for comparison only."""
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / T)) / 2


def _linear_lr(group, last_epoch, initial, a, base):
    """LinearLR: from start_factor * lr to end_factor * lr over total_iters steps, by ratios."""
    sf, ef, n = a["start_factor"], a["end_factor"], a["total_iters"]
    if last_epoch == 0:
        return group["lr"] * sf
    if initial or last_epoch > n:
        return group["lr"]
    return group["lr"] * (1.0 + (ef - sf) / (n * sf + (last_epoch - 1) * (ef - sf)))


def _one_cycle_total(a) -> int:
    return a["total_steps"] if a.get("total_steps") is not None else a["epochs"] * a["steps_per_epoch"]


def _one_cycle_phases(a) -> list[dict[str, Any]]:
    total, pct = _one_cycle_total(a), a["pct_start"]
    if a["three_phase"]:
        return [
            {
                "end_step": float(pct * total) - 1,
                "lr": ("initial_lr", "max_lr"),
                "m": ("max_momentum", "base_momentum"),
            },
            {
                "end_step": float(2 * pct * total) - 2,
                "lr": ("max_lr", "initial_lr"),
                "m": ("base_momentum", "max_momentum"),
            },
            {"end_step": total - 1, "lr": ("initial_lr", "min_lr"), "m": ("max_momentum", "max_momentum")},
        ]
    return [
        {"end_step": float(pct * total) - 1, "lr": ("initial_lr", "max_lr"), "m": ("max_momentum", "base_momentum")},
        {"end_step": total - 1, "lr": ("max_lr", "min_lr"), "m": ("base_momentum", "max_momentum")},
    ]


def _anneal(kind: str, start: float, end: float, pct: float) -> float:
    if kind == "cos":
        cos_out = math.cos(math.pi * pct) + 1
        return end + (start - end) / 2.0 * cos_out
    return (end - start) * pct + start


def _one_cycle_lr(group, last_epoch, initial, a, base):
    """OneCycleLR: anneal lr (and momentum) phase by phase; raises past total_steps, as torch does."""
    total = _one_cycle_total(a)
    if last_epoch > total:
        raise ConfigError(f"Tried to step {last_epoch} times. The specified number of total steps is {total}")
    start_step = 0.0
    phases = _one_cycle_phases(a)
    for i, phase in enumerate(phases):
        end_step = phase["end_step"]
        if last_epoch <= end_step or i == len(phases) - 1:
            pct = (last_epoch - start_step) / (end_step - start_step)
            lr = _anneal(a["anneal_strategy"], group[phase["lr"][0]], group[phase["lr"][1]], pct)
            if a["cycle_momentum"]:
                group["_momentum"] = _anneal(a["anneal_strategy"], group[phase["m"][0]], group[phase["m"][1]], pct)
            return lr
        start_step = phase["end_step"]
    raise AssertionError("unreachable")  # pragma: no cover


GET_LR = {
    "StepLR": _step_lr,
    "MultiStepLR": _multi_step_lr,
    "ExponentialLR": _exponential_lr,
    "CosineAnnealingLR": _cosine_annealing_lr,
    "LinearLR": _linear_lr,
    "OneCycleLR": _one_cycle_lr,
}


def values(config, count: int) -> list[dict[str, float]]:
    """The optimizer's group values at schedule positions 0..count (``last_epoch``): ``lr``, and
    ``momentum`` or ``beta1`` when OneCycleLR cycles them. Position ``count`` is the rate the
    loop's last ``scheduler.step()`` computes (unused, but torch computes it: and raises there
    when OneCycleLR is stepped past ``total_steps``)."""
    sched = config.scheduler
    a = dict(sched.args)
    group: dict[str, Any] = {"lr": config.lr}
    cycling = cycles_momentum(config)
    if sched.name == "OneCycleLR":
        group["initial_lr"] = a["max_lr"] / a["div_factor"]
        group["max_lr"] = a["max_lr"]
        group["min_lr"] = group["initial_lr"] / a["final_div_factor"]
        if cycling:
            group["_momentum"] = a["max_momentum"]
            group["max_momentum"] = a["max_momentum"]
            group["base_momentum"] = a["base_momentum"]
    base = group.setdefault("initial_lr", group["lr"])
    get_lr = GET_LR[sched.name]
    key = momentum_key(config)
    out = []
    for last_epoch in range(count + 1):
        try:
            group["lr"] = get_lr(group, last_epoch, last_epoch == 0, a, base)
        except ZeroDivisionError:
            raise ConfigError(
                f"--scheduler {sched.name}: its arguments divide by zero at step {last_epoch} "
                f"({', '.join(f'{k}={v}' for k, v in sched.kwargs.items())}); torch raises there too"
            ) from None
        row = {"lr": group["lr"]}
        if cycling:
            row[key] = group["_momentum"]
        out.append(row)
    return out


@dataclass(frozen=True)
class Table:
    """A run's schedule, worked out once (:func:`table`) and passed to whoever needs it (the hand
    engine's per-step hyper-parameters, the judge's per-step rate, explain): ``rows``, the group
    values at each schedule position (:func:`values`); ``at``, each step's position
    (:func:`index_of_step`)."""

    rows: list[dict[str, float]]
    at: Any  # NumPy array, one position per step

    def per_step(self, key: str):
        """The value ``key`` (``lr``, ``momentum``, ``beta1``) each step ran with (a NumPy array)."""
        import numpy as np

        return np.array([r[key] for r in self.rows])[self.at]


def table(config, plan) -> Table | None:
    """The run's schedule table (None without a schedule). Raises :class:`ConfigError` before
    training where torch would raise in the loop: OneCycleLR stepped past ``total_steps``
    (:func:`check`), arguments that divide by zero (:func:`values`)."""
    if config.scheduler is None:
        return None
    check(config, plan)
    return Table(values(config, calls(config, plan)), index_of_step(config, plan))


def check(config, plan) -> None:
    """Before training: OneCycleLR must not be stepped past total_steps (exit 2 with the count needed)."""
    sched = config.scheduler
    if sched is None or sched.name != "OneCycleLR":
        return
    total = _one_cycle_total(dict(sched.args))
    n = calls(config, plan)
    if n > total:
        per = "once per step" if sched.interval == "step" else "once per epoch"
        given = "total_steps" if sched.get("total_steps") is not None else "epochs * steps_per_epoch"
        raise ConfigError(
            f"--scheduler OneCycleLR: {given} = {total}, but this run calls scheduler.step() "
            f"{n} times ({per}) and torch raises past total_steps; set total_steps >= {n}"
        )
