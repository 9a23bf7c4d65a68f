"""Logistic regression's gradients, as nn.BCEWithLogitsLoss computes the loss on z = x·w + b.

    sgdtrace run --engine docs/examples/engine_logistic.py --model logistic --synthetic 64 --features 2

params["w"] is (D,), params["b"] (1,); x (n, D), y (n,) of 0/1 labels. The update is sgdtrace's own.
"""

import numpy as np

SGDTRACE = {"model": "logistic"}


def gradients(params, x, y):
    w, b = params["w"], params["b"]
    n = x.shape[0]
    z = x @ w + b[0]
    # the loss of each sample, written to stay finite for large |z|: max(z, 0) - z*y + log(1 + e^-|z|)
    loss = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    p = 1 / (1 + np.exp(-z))  # sigmoid(z)
    r = (p - y) / n  # dloss/dz per sample
    return loss, {"w": x.T @ r, "b": np.array([r.sum()], dtype=x.dtype)}
