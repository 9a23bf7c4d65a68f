"""One engine for every optimizer and every model: gradients(params, x, y) and an update that reads
which optimizer it is from the hyper-parameters torch's names give it.

    sgdtrace run --engine docs/examples/engine_any.py --optimizer rmsprop --dtype bfloat16
    sgdtrace grade docs/examples/engine_any.py        # one update for every part of the sample

hp has torch's keyword names for the run's optimizer: betas (Adam, AdamW), alpha (RMSprop),
lr_decay (Adagrad), dampening (SGD); hp.lr is the step's scheduled rate.
"""

import numpy as np


def gradients(params, x, y):
    """The mean squared error of x·w + b; x (n, D), w (D,) or a scalar, b (1,) or a scalar."""
    w, b = params["w"], params["b"]
    n = x.shape[0]
    d = (x @ w if np.ndim(w) else x[:, 0] * w) + (b[0] if np.ndim(b) else b) - y
    gw = (2 / n) * (x.T @ d) if np.ndim(w) else (2 / n) * (x[:, 0] * d).sum()
    gb = (2 / n) * d.sum()
    return (d * d).sum() / n, {"w": gw, "b": np.reshape(gb, np.shape(b)).astype(x.dtype)}


def update(param, grad, state, hp):
    g = -grad if hp.maximize else grad
    if hasattr(hp, "betas"):
        return _adam(param, g, state, hp)
    if hasattr(hp, "alpha"):
        return _rmsprop(param, g, state, hp)
    if hasattr(hp, "lr_decay"):
        return _adagrad(param, g, state, hp)
    return _sgd(param, g, state, hp)


def _sgd(p, g, state, hp):
    if hp.weight_decay:
        g = g + hp.weight_decay * p
    if hp.momentum:
        if "momentum_buffer" in state:
            state["momentum_buffer"] = hp.momentum * state["momentum_buffer"] + (1 - hp.dampening) * g
        else:
            state["momentum_buffer"] = g
        buf = state["momentum_buffer"]
        g = g + hp.momentum * buf if hp.nesterov else buf
    return p - hp.lr * g


def _adam(p, g, state, hp):
    b1, b2 = hp.betas
    if hp.weight_decay:
        if hp.decoupled_weight_decay:
            p = p * (1 - hp.lr * hp.weight_decay)
        else:
            g = g + hp.weight_decay * p
    t = state["step"] = state.get("step", 0) + 1
    m = state["exp_avg"] = b1 * state.get("exp_avg", 0 * g) + (1 - b1) * g
    v = state["exp_avg_sq"] = b2 * state.get("exp_avg_sq", 0 * g) + (1 - b2) * g * g
    if hp.amsgrad:
        v = state["max_exp_avg_sq"] = np.maximum(state.get("max_exp_avg_sq", v), v)
    return p - hp.lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + hp.eps)


def _rmsprop(p, g, state, hp):
    if hp.weight_decay:
        g = g + hp.weight_decay * p
    v = state["square_avg"] = hp.alpha * state.get("square_avg", 0 * g) + (1 - hp.alpha) * g * g
    if hp.centered:
        ga = state["grad_avg"] = hp.alpha * state.get("grad_avg", 0 * g) + (1 - hp.alpha) * g
        avg = np.sqrt(v - ga * ga) + hp.eps
    else:
        avg = np.sqrt(v) + hp.eps
    if hp.momentum > 0:
        buf = state["momentum_buffer"] = hp.momentum * state.get("momentum_buffer", 0 * g) + g / avg
        return p - hp.lr * buf
    return p - hp.lr * g / avg


def _adagrad(p, g, state, hp):
    t = state["step"] = state.get("step", 0) + 1
    if hp.weight_decay:
        g = g + hp.weight_decay * p
    clr = hp.lr / (1 + (t - 1) * hp.lr_decay)
    s = state["sum"] = state.get("sum", 0 * g + hp.initial_accumulator_value) + g * g
    return p - clr * g / (np.sqrt(s) + hp.eps)
