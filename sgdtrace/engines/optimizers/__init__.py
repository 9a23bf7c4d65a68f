"""Optimizers worked by hand, one module each, behind the engine protocol's ``update`` part.

Each module has:

* its algorithm as torch documents it, in the module's docstring, and one small function per
  line of it;
* ``Hyper`` (the hyper-parameters by torch's keyword names) and ``hyper(config, scalar)``, which
  builds them as scalars of the engine's array type;
* ``state_keys(config)``: the state entries the update keeps, in torch's names;
* ``update(param, grad, state, hp)``: one parameter's step;
* ``update_bound(...)``: the tolerance model's terms for its own operations (see
  :mod:`sgdtrace.divergence`).
"""

from __future__ import annotations

from types import ModuleType

from sgdtrace.engines.optimizers import sgd

OPTIMIZERS: dict[str, ModuleType] = {"sgd": sgd}


def get(name: str) -> ModuleType:
    """The hand-worked optimizer called ``name`` (torch's class name, lower case)."""
    return OPTIMIZERS[name]
