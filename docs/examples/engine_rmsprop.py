"""RMSprop as torch.optim.RMSprop documents it, judged against torch.

sgdtrace run --engine docs/examples/engine_rmsprop.py --optimizer rmsprop --momentum 0.9 --centered
"""

import numpy as np

SGDTRACE = {"optimizer": "rmsprop"}


def update(param, grad, state, hp):
    g = -grad if hp.maximize else grad
    if hp.weight_decay != 0:
        g = g + hp.weight_decay * param
    v = state["square_avg"] = hp.alpha * state.get("square_avg", 0 * g) + (1 - hp.alpha) * g * g
    if hp.centered:
        gm = state["grad_avg"] = hp.alpha * state.get("grad_avg", 0 * g) + (1 - hp.alpha) * g
        avg = np.sqrt(v - gm * gm) + hp.eps
    else:
        avg = np.sqrt(v) + hp.eps
    if hp.momentum > 0:
        buf = state["momentum_buffer"] = hp.momentum * state.get("momentum_buffer", 0 * g) + g / avg
        return param - hp.lr * buf
    return param - hp.lr * g / avg
