"""The starter file ``sgdtrace template`` writes: the engine protocol's parts, the equations to
implement in their docstrings, and no solution (each body raises NotImplementedError)."""

TEMPLATE = '''"""My own SGD engine for y = w*x + b, judged against PyTorch by sgdtrace.

Run it with:   sgdtrace run --engine THIS_FILE.py
Delete a function to let sgdtrace's own engine do that part (say, write only gradients).
Values you return may be NumPy scalars or Python floats; sgdtrace rounds each once to the
run's dtype. Return plain numbers, not lists, arrays or torch tensors.
"""

import numpy as np


def gradients(w, b, x, y):
    """One batch's loss and gradients at the parameters (w, b) the batch starts from.

    w, b: NumPy scalars of the run's dtype (float32 by default).
    x, y: the batch's samples, 1-D NumPy arrays of that dtype (n = len(x) samples).

    The forward pass (the article's Equations 1-3), per sample i:
        ypred_i = w * x_i + b
        d_i     = ypred_i - y_i
        loss    = (1/n) * sum_i d_i**2                 (the mean squared error)

    The backward pass (Equations 6-11), by the chain rule:
        dloss/dw = (2/n) * sum_i d_i * x_i
        dloss/db = (2/n) * sum_i d_i

    Returns (loss, grad_w, grad_b).
    """
    raise NotImplementedError("write gradients: the loss, dloss/dw and dloss/db of one batch")


def update(param, grad, state, hp):
    """One parameter's optimizer step, as torch.optim.SGD takes it; returns the new parameter.

    param, grad: NumPy scalars of the run's dtype (called once for w, once for b).
    state: a dict kept for this parameter across steps (empty before the first step);
        keep momentum's buffer under torch's name, state["momentum_buffer"], and sgdtrace
        judges it too.
    hp: the hyper-parameters by torch's names: hp.lr, hp.momentum, hp.dampening,
        hp.weight_decay, hp.nesterov, hp.maximize.

    Plain SGD (the article's Equations 4-5):
        new param = param - lr * grad
    torch.optim.SGD's full algorithm, in this order:
        g = -grad if maximize else grad
        g = g + weight_decay * param                      (when weight_decay != 0)
        when momentum != 0:
            buf = g                                       on the first step (a copy)
            buf = momentum * buf + (1 - dampening) * g    on every later step
            g = g + momentum * buf if nesterov else buf
        new param = param - lr * g
    """
    raise NotImplementedError("write update: one parameter's step, new param = param - lr * grad")


def forward(w, b, x, y):
    """Optional, for `sgdtrace explain --engine THIS_FILE.py --batch K`: the nodes per sample.

    Returns a dict of 1-D arrays, one value per sample:
        "a": w * x,  "c": a + b,  "d": c - y,  "e": d**2,  "dl_dd": (2/n) * d
    Delete this function if you do not want your nodes checked.
    """
    raise NotImplementedError("write forward (optional): the nodes a, c, d, e, dl_dd per sample")
'''
