"""torch.optim.AdamW worked by hand: Adam with the weight decay decoupled from the gradient.

PyTorch's documented algorithm (``torch/optim/adamw.py``; in torch 2.13 AdamW is Adam with
``decoupled_weight_decay=True``), for one parameter ``p`` with gradient ``g`` at step ``t``::

    input: lr, betas (beta1, beta2), eps, weight_decay lambda (default 0.01), amsgrad, maximize
    g <- -g                                        if maximize
    p <- p * (1 - lr * lambda)                     the parameter decays, not the gradient (decoupled_decay)
    m, v, vmax, denom: as Adam (see adam.py)
    p <- p - (lr / bc1) * m / denom

"L2 decay in AdamW" (``g <- g + lambda*p``, Adam's rule) is a different algorithm: its first
step's update already differs by ``lr * lambda * p`` scaled through the normalisation, caught at
step 1 unless ``p`` starts at 0 (then at step 2). The functions are Adam's (:mod:`.adam`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sgdtrace.engines.optimizers import adam
from sgdtrace.engines.optimizers.adam import (  # noqa: F401  (the algorithm's lines, as in adam.py)
    Hyper,
    bias_correction,
    decoupled_decay,
    denominator,
    first_moment,
    initial_state,
    maximized,
    running_max,
    second_moment,
    state_keys,
    stepped,
    update,
    update_bound,
)

DECOUPLED = True


def hyper(
    config, scalar: Callable[[float], Any] = float, group: dict | None = None, kept: Callable | None = None
) -> Hyper:
    """Adam's hyper-parameters, with the decay decoupled."""
    return dataclasses.replace(adam.hyper(config, scalar, group, kept), decoupled=True)
