"""A learner's engine with a classic mistake (see docs/own-engine.md for the diagnosis and the fix)."""

import numpy as np


def forward(w, b, x, y):
    a = w * x
    c = a + b
    d = c - y
    e = d * d
    return {"a": a, "c": c, "d": d, "e": e, "dl_dd": d / len(x)}


def gradients(w, b, x, y):
    nodes = forward(w, b, x, y)
    loss = np.mean(nodes["e"])
    grad_w = np.sum(nodes["dl_dd"] * x)
    grad_b = np.sum(nodes["dl_dd"])
    return loss, grad_w, grad_b
