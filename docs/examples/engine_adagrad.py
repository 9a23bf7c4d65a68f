"""Adagrad as torch.optim.Adagrad documents it, judged against torch.

sgdtrace run --engine docs/examples/engine_adagrad.py --optimizer adagrad --lr-decay 0.01
"""

import numpy as np

SGDTRACE = {"optimizer": "adagrad"}


def update(param, grad, state, hp):
    g = -grad if hp.maximize else grad
    t = state["step"] = state.get("step", 0) + 1
    if hp.weight_decay != 0:
        g = g + hp.weight_decay * param
    clr = hp.lr / (1 + (t - 1) * hp.lr_decay)
    s = state["sum"] = state.get("sum", 0 * g + hp.initial_accumulator_value) + g * g
    return param - clr * g / (np.sqrt(s) + hp.eps)
