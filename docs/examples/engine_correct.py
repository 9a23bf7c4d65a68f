"""A correct engine that computes in its own order: float64 sums rounded once, reversed sums, np.mean.

sgdtrace's own engine sums in the run's dtype, left to right in NumPy's pairwise order; this file
sums in float64 and in reverse, so its values differ from sgdtrace's and torch's in the last bits,
and the judge accepts them: each differs from torch by rounding only.

    sgdtrace run --engine docs/examples/engine_correct.py --momentum 0.9
"""

import numpy as np


def gradients(w, b, x, y):
    x64, y64 = x.astype(np.float64)[::-1], y.astype(np.float64)[::-1]
    d = float(w) * x64 + float(b) - y64  # the residuals, in float64
    loss = np.mean(d * d)
    grad_w = 2.0 * np.mean(d * x64)
    grad_b = 2.0 * np.mean(d)
    return loss, grad_w, grad_b  # sgdtrace rounds each once to the run's dtype


def update(param, grad, state, hp):
    g = -grad if hp.maximize else grad
    if hp.weight_decay != 0:
        g = g + hp.weight_decay * param
    if hp.momentum != 0:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = g  # the first step starts the buffer as a copy
        else:
            state["momentum_buffer"] = hp.momentum * state["momentum_buffer"] + (1 - hp.dampening) * g
        buf = state["momentum_buffer"]
        g = g + hp.momentum * buf if hp.nesterov else buf
    return param - hp.lr * g
