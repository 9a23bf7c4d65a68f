"""Models, one module each, as the optimizers are: what a model declares, the rest of sgdtrace reads.

A model module (:mod:`.linear` today) owns:

* its parameters: ``params(config, features) -> tuple[Param, ...]`` (names, shapes, the torch
  Parameter each one is, labels) and ``initial(config, params) -> {name: float64 array}``;
* its hand forward and backward, one small function per node and chain-rule factor, and
  ``gradients`` (the engine protocol's first part, :mod:`sgdtrace.engines.protocol`);
* its torch side as a learner writes it (``torch_side``: the module, the loss, which torch
  Parameter each param is, how a batch is fed), in a module of its own (``<model>_torch.py``)
  so that the hand side and the views import no torch;
* what the judge needs of it: the rounding scale E and the carried difference C of the loss and
  the gradients (``gradient_terms``; :mod:`sgdtrace.divergence` does the rest);
* what the blow-up analysis needs (the batch Hessians, where the loss is quadratic) and what the
  views need (labels, the equations ``explain`` shows, the ``graph``'s nodes, the whole-data loss).

The judge, the records and the views loop over the parameters a model declares and never name
them. Adding a model is adding a module (and its torch side, tests, a config and a docs page).

This module imports no NumPy (``--help`` lists :data:`NAMES` without it); :func:`get` imports
the model's module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

#: the models sgdtrace runs (``--model``), each a module of this package
NAMES = ("linear", "logistic")
#: the losses each model takes (``--loss``), its default first
LOSSES = {"linear": ("mse",), "logistic": ("bce", "bce-sigmoid")}


@dataclass(frozen=True)
class Param:
    """One parameter of a model.

    ``name``: the fields' name (``w``: the columns ``w``, ``grad_w``, ``buf_w``, ...); ``shape``:
    its shape, ``()`` for a scalar (the article's w and b); ``torch_name``: the torch Parameter it
    is (``weight``, ``bias``; ``0.weight`` in an ``nn.Sequential``); ``label``: how tables name it.
    """

    name: str
    shape: tuple[int, ...]
    torch_name: str
    label: str

    @property
    def size(self) -> int:
        """How many elements it has (1 for a scalar)."""
        out = 1
        for n in self.shape:
            out *= n
        return out

    @property
    def scalar(self) -> bool:
        return self.shape == ()


def torch_side(model: Model) -> ModuleType:
    """The model's torch side (``<model>_torch.py``: the module, the loss, the feeding)."""
    return importlib.import_module(model.module.TORCH_SIDE)


def get(name: str) -> ModuleType:
    """The model module called ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise KeyError(name)
    return importlib.import_module(f"sgdtrace.models.{name}")


@dataclass(frozen=True)
class Model:
    """A model as one run uses it: its module and its parameters (the shapes the data gave them).

    Everything else is the module's, called with the model: ``model.module.gradient_terms(model,
    ...)`` and so on. ``features``
    is the number of input columns D, or None for the article's form (one ``x`` column and no
    ``--features``: scalar parameters).
    """

    name: str
    module: ModuleType
    params: tuple[Param, ...]
    features: int | None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {p.name: p.shape for p in self.params}

    @property
    def scalar(self) -> bool:
        """Every parameter a scalar: the article's form (the engine protocol's four-argument
        ``gradients(w, b, x, y)``, JSON numbers)."""
        return all(p.scalar for p in self.params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


def build(config, features: int | None) -> Model:
    """The model ``config.model`` with the parameters ``features`` input columns give it."""
    module = get(getattr(config, "model", "linear"))
    return Model(module.NAME, module, module.params(config, features), features)
