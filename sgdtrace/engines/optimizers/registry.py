"""The optimizers sgdtrace works by hand, declared: one :class:`Spec` each.

Each optimizer is a module of this package (``sgd.py``, ``adam.py``, ...: its hyper-parameters, its
update worked by hand, its tolerance terms) and a :class:`Spec` here: its name, torch's class, the
options it takes with their defaults and ranges, the state torch keeps for it, what it can do
(``foreach``, ``fused``, ``maximize``, ...) and what OneCycleLR cycles in it. Everything that lists
optimizers reads this registry: the configuration's validation and defaults (``sgdtrace.config``),
the command line's choices, torch's side (``torch_ref.make_optimizer``), the schedules, the views.

This module imports nothing (no NumPy, no torch): ``sgdtrace --help`` lists the optimizers from it,
and importing it does not load the optimizers' modules (:func:`sgdtrace.engines.optimizers.get` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One of torch's optimizer keywords beyond those every optimizer takes (``lr``, ``weight_decay``,
    ``maximize``, ``foreach``): its default when the optimizer takes it, the values accepted, and an
    example value on the command line (for docs/options.md's table of combinations)."""

    default: Any
    range: str  # ">= 0", "[0, 1]", "each in [0, 1)", "true or false", "true, false or unset"
    example: tuple[str, ...] = ()


#: every optimizer option, by torch's keyword name, in the configuration's order
OPTIONS: dict[str, Option] = {
    "momentum": Option(0.0, ">= 0", ("0.9",)),
    "dampening": Option(0.0, "[0, 1]", ("0.5",)),
    "nesterov": Option(False, "true or false"),
    "betas": Option((0.9, 0.999), "each in [0, 1)", ("0.8,0.9",)),
    "eps": Option(None, ">= 0", ("1e-6",)),  # None: the optimizer's own default (Spec.defaults)
    "amsgrad": Option(False, "true or false"),
    "alpha": Option(0.99, ">= 0", ("0.9",)),
    "centered": Option(False, "true or false"),
    "lr_decay": Option(0.0, ">= 0", ("0.1",)),
    "initial_accumulator_value": Option(0.0, ">= 0", ("0.1",)),
    "fused": Option(None, "true, false or unset"),
}

#: what every optimizer torch has here can do (torch's keywords every class takes)
COMMON = frozenset({"foreach", "maximize", "weight_decay"})


@dataclass(frozen=True)
class Spec:
    """One optimizer, as torch.optim declares it and sgdtrace works it by hand."""

    name: str  # sgdtrace's name: torch's class, lower case
    torch_class: str  # torch.optim's class
    options: tuple[str, ...]  # the keywords of OPTIONS it takes (in the order the table names them)
    defaults: dict[str, Any]  # the defaults that differ by optimizer (torch's own): eps, weight_decay
    state: tuple[str, ...]  # the state torch keeps per parameter (besides "step"), in the order it makes them
    capabilities: frozenset[str]  # COMMON, and "fused" where torch has a fused kernel for it
    cycles: str | None  # the group value OneCycleLR cycles ("momentum" or "beta1"); None: it has none
    sqrt_of: str | None = None  # the state entry whose square root divides the step (None: no root)

    @property
    def module(self) -> str:
        """The module that works it by hand."""
        return f"sgdtrace.engines.optimizers.{self.name}"


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec(
            "sgd",
            "SGD",
            ("momentum", "dampening", "nesterov", "fused"),
            {"eps": None, "weight_decay": 0.0},
            ("momentum_buffer",),
            COMMON | {"fused"},
            "momentum",
        ),
        Spec(
            "adam",
            "Adam",
            ("betas", "eps", "amsgrad", "fused"),
            {"eps": 1e-8, "weight_decay": 0.0},
            ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
            COMMON | {"fused"},
            "beta1",
            "exp_avg_sq",
        ),
        Spec(
            "adamw",
            "AdamW",
            ("betas", "eps", "amsgrad", "fused"),
            {"eps": 1e-8, "weight_decay": 1e-2},
            ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
            COMMON | {"fused"},
            "beta1",
            "exp_avg_sq",
        ),
        Spec(
            "rmsprop",
            "RMSprop",
            ("alpha", "eps", "centered", "momentum"),
            {"eps": 1e-8, "weight_decay": 0.0},
            ("square_avg", "momentum_buffer", "grad_avg"),
            COMMON,
            "momentum",
            "square_avg",
        ),
        Spec(
            "adagrad",
            "Adagrad",
            ("lr_decay", "initial_accumulator_value", "eps", "fused"),
            {"eps": 1e-10, "weight_decay": 0.0},
            ("sum",),
            COMMON | {"fused"},
            None,
            "sum",
        ),
    )
}

#: the optimizers' names, in the order the help and the docs list them
NAMES: tuple[str, ...] = tuple(SPECS)


def spec(name: str) -> Spec:
    """The optimizer called ``name`` (KeyError for one sgdtrace does not have)."""
    return SPECS[name]


def with_capability(capability: str) -> tuple[str, ...]:
    """The optimizers that can do ``capability`` ("fused", ...), in :data:`NAMES`' order."""
    return tuple(n for n, s in SPECS.items() if capability in s.capabilities)


__all__ = ["COMMON", "NAMES", "OPTIONS", "SPECS", "Option", "Spec", "spec", "with_capability"]
