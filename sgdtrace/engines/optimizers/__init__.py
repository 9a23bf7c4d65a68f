"""Optimizers worked by hand, one module each, behind the engine protocol's ``update`` part.

Each module has:

* its algorithm as torch documents it, in the module's docstring, and one small function per
  line of it;
* ``Hyper`` (the hyper-parameters by torch's keyword names) and ``hyper(config, scalar, group)``,
  which builds them (``scalar`` rounds to the engine's array type; ``group`` holds the values a
  schedule sets for one step: ``lr``, and ``momentum`` or ``beta1``);
* ``state_keys(config)``: the state entries the update keeps, in torch's names, and
  ``initial_state(config)``: their values before the first step;
* ``update(param, grad, state, hp)``: one parameter's step;
* ``update_bound(p, g, prev, cur, new_mag, first, config, ctx)``: the tolerance model's terms for
  its own operations (see :mod:`sgdtrace.divergence` and :mod:`._track`); ``ctx`` is a
  :class:`StepContext`.

Each is declared in :mod:`.registry` (name, torch's class, options with defaults and ranges, state,
capabilities), which everything that lists optimizers reads. The learning-rate schedules are in
:mod:`.schedules`. Importing this package loads no optimizer module (and no NumPy): :func:`get` does.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from sgdtrace.engines.optimizers import registry


class _Modules(dict):
    """Name -> the optimizer's module, imported the first time it is asked for (the registry's names)."""

    def __missing__(self, name: str) -> ModuleType:
        module = importlib.import_module(registry.spec(name).module)
        self[name] = module
        return module


OPTIMIZERS: dict[str, ModuleType] = _Modules()


def get(name: str) -> ModuleType:
    """The hand-worked optimizer called ``name`` (torch's class name, lower case)."""
    return OPTIMIZERS[name]


@dataclass
class StepContext:
    """Per step (NumPy arrays over the run's steps): what an ``update_bound`` needs beyond the config.

    ``lr``: the rate each step used; ``group``: other values a schedule drives (``momentum`` or
    ``beta1``), absent when constant; ``t``: the optimizer's step count (1, 2, ...); ``u``: the
    run's unit roundoff.
    """

    lr: Any
    t: Any
    u: float
    group: dict[str, Any] = field(default_factory=dict)


def step_hypers(config, scalar, plan, schedule=None, **extra):
    """The hand engine's per-step hyper-parameters under a schedule: functions ``k -> hp`` and
    ``k -> lr`` (one ``Hyper`` per schedule position), or ``(None, None)`` without a schedule.
    ``schedule``: the run's :class:`schedules.Table` (worked out here when not given).
    ``extra``: the keyword arguments of the optimizer's ``hyper`` beyond the group (``kept``)."""
    if config.scheduler is None:
        return None, None
    if schedule is None:
        from sgdtrace.engines.optimizers import schedules

        schedule = schedules.table(config, plan)
    opt = get(config.optimizer)
    rows = schedule.rows
    hps = [opt.hyper(config, scalar, row, **extra) for row in rows]
    lrs = [row["lr"] for row in rows]
    if config.scheduler.interval == "step":
        return hps.__getitem__, lrs.__getitem__
    spe = max(1, plan.steps_per_epoch)
    return (lambda k: hps[k // spe]), (lambda k: lrs[k // spe])
