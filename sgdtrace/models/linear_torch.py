"""The linear model's torch side, as a learner writes it (:mod:`sgdtrace.models.linear` is its hand side).

* The article's form: the article's own module, two one-element Parameters and
  ``x * weight + bias`` on 1-D x, fed ``(n,)`` inputs and ``(n,)`` targets.
* D features: ``nn.Linear(D, 1)`` made in the run's dtype, its weight and bias set to the
  initial values under ``torch.no_grad()``, fed ``(n, D)`` inputs and ``(n, 1)`` targets.

The loss is ``nn.MSELoss()`` (or, for ``graph --loss explicit``, ``((output - target) ** 2).mean()``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class LinearModel(nn.Module):
    """The article's model: ypred = x * weight + bias."""

    def __init__(self, init_w: float = 0.0, init_b: float = 0.0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1,), init_w, dtype=dtype))
        self.bias = nn.Parameter(torch.full((1,), init_b, dtype=dtype))

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        return xb * self.weight + self.bias


def criterion(loss_form: str = "mse"):
    """The loss a learner writes: ``nn.MSELoss()``, or (``"explicit"``) ``((output - target) ** 2).mean()``,
    whose autograd graph (SubBackward0, PowBackward0, MeanBackward0) follows the article's nodes."""
    if loss_form == "mse":
        return nn.MSELoss()

    def explicit(output, target):
        return ((output - target) ** 2).mean()

    return explicit


def module(model, initial: dict[str, np.ndarray], dtype: torch.dtype, device) -> nn.Module:
    """The model's module with its initial values, on ``device`` in ``dtype``."""
    if model.scalar:
        return LinearModel(float(initial["w"]), float(initial["b"]), dtype).to(device)
    D = model.param("w").shape[0]
    net = nn.Linear(D, 1, dtype=dtype, device=device)
    with torch.no_grad():
        net.weight.copy_(torch.as_tensor(initial["w"].reshape(1, D)))
        net.bias.copy_(torch.as_tensor(initial["b"]))
    return net


def bindings(model, net: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Which torch Parameter each of the model's parameters is (``w``: ``weight``, ``b``: ``bias``);
    the recorder reads it in the parameter's shape (``weight[0]`` for D features)."""
    named = dict(net.named_parameters())
    return [(p.name, named[p.torch_name]) for p in model.params]


def tensors(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The data set's tensors as the learner feeds them: ``(n,)`` and ``(n,)`` in the article's
    form, ``(n, D)`` inputs and ``(n, 1)`` targets for ``nn.Linear(D, 1)``."""
    if model.scalar:
        return x.reshape(x.shape[0]), y
    return x.reshape(x.shape[0], -1), y.reshape(-1, 1)
