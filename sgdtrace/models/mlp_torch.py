"""The network's torch side, as a learner writes it (:mod:`sgdtrace.models.mlp` is its hand side)::

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, 1)).to(dtype=dtype, device=device)
    criterion = nn.MSELoss()            # or nn.BCEWithLogitsLoss()

built in float32 on the CPU under the seed (torch's default initialisation, what the learner
gets), then moved to the run's dtype and device; fed ``(n, D)`` inputs and ``(n, 1)`` targets.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def sequential(D: int, H: int, activation: str, seed: int) -> nn.Sequential:
    """``torch.manual_seed(seed)``, then ``nn.Sequential(nn.Linear(D, H), act, nn.Linear(H, 1))``
    in float32 on the CPU: torch's own default initialisation."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, H), ACTIVATIONS[activation](), nn.Linear(H, 1))


def criterion(loss_form: str = "mse"):
    """``nn.MSELoss()`` or ``nn.BCEWithLogitsLoss()`` (the model's ``--loss``)."""
    return nn.BCEWithLogitsLoss() if loss_form == "bce" else nn.MSELoss()


def module(model, initial: dict[str, np.ndarray], dtype: torch.dtype, device) -> nn.Module:
    """The learner's network, drawn under the seed and moved to ``dtype`` and ``device``; it holds
    ``initial`` (the values :func:`sgdtrace.models.mlp.initial` recorded from the same draw)."""
    H, D = model.param("w1").shape
    net = sequential(D, H, model.activation, model.seed).to(dtype=dtype, device=device)
    drawn = {p.name: t for p, t in zip(model.params, net.parameters())}
    if any(not np.array_equal(t.detach().double().cpu().numpy(), initial[n]) for n, t in drawn.items()):
        # values from later in a run (the graph of step k): set them, as a learner loads a checkpoint
        with torch.no_grad():
            for name, t in drawn.items():
                t.copy_(torch.as_tensor(np.asarray(initial[name], dtype=np.float64)).reshape(t.shape))
    return net


def bindings(model, net: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Which torch Parameter each of the model's parameters is (``w1``: ``0.weight``, ...)."""
    named = dict(net.named_parameters())
    return [(p.name, named[p.torch_name]) for p in model.params]


def tensors(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, D)`` inputs and ``(n, 1)`` targets, as ``nn.Linear`` and the loss take them."""
    return x.reshape(x.shape[0], -1), y.reshape(-1, 1)
