"""Logistic regression's torch side, as a learner writes it (:mod:`sgdtrace.models.logistic` is its
hand side): ``nn.Linear(D, 1)`` made in the run's dtype, its weight and bias set to the initial
values under ``torch.no_grad()``, fed ``(n, D)`` inputs and ``(n, 1)`` float labels; the loss
``nn.BCEWithLogitsLoss()`` on the logits (``--loss bce``) or ``nn.BCELoss()`` on
``torch.sigmoid`` of them (``--loss bce-sigmoid``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sgdtrace.models.linear_torch import bindings  # noqa: F401  (w: weight, b: bias, as the linear model's)


def module(model, initial: dict[str, np.ndarray], dtype: torch.dtype, device) -> nn.Module:
    D = model.param("w").shape[0]
    net = nn.Linear(D, 1, dtype=dtype, device=device)
    with torch.no_grad():
        net.weight.copy_(torch.as_tensor(initial["w"].reshape(1, D)))
        net.bias.copy_(torch.as_tensor(initial["b"]))
    return net


class _SigmoidBCE(nn.Module):
    """``nn.BCELoss()(torch.sigmoid(z), y)``: the loss as many learners write it."""

    def __init__(self):
        super().__init__()
        self.bce = nn.BCELoss()

    def forward(self, z, y):
        return self.bce(torch.sigmoid(z), y)


def criterion(loss_form: str = "bce"):
    """``nn.BCEWithLogitsLoss()`` (``bce``), or BCELoss on the sigmoid (``bce-sigmoid``)."""
    if loss_form == "bce-sigmoid":
        return _SigmoidBCE()
    return nn.BCEWithLogitsLoss()


def tensors(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, D)`` inputs and ``(n, 1)`` labels, as ``nn.Linear(D, 1)``'s output is shaped."""
    return x.reshape(x.shape[0], -1), y.reshape(-1, 1)
