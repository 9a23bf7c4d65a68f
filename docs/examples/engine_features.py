"""The gradients of every model's form: params and grads are dicts of NumPy arrays by name.

    sgdtrace run --engine docs/examples/engine_features.py --synthetic 64 --features 3 --batch-size 16

x is (n, D), y (n,); params["w"] is (D,), params["b"] (1,). The loss is the mean squared error.
"""

import numpy as np


def gradients(params, x, y):
    w, b = params["w"], params["b"]
    d = x @ w + b[0] - y  # the residuals
    n = x.shape[0]
    loss = np.mean(d * d)
    return loss, {"w": (2 / n) * (x.T @ d), "b": np.array([(2 / n) * d.sum()], dtype=x.dtype)}
