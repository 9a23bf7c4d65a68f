"""A network's backward pass by hand, the classic exercise: h = relu(x W1ᵀ + b1), ypred = h W2ᵀ + b2,
loss nn.MSELoss's mean of squares.

    sgdtrace run --engine docs/examples/engine_mlp.py --model mlp --epochs 3

params["w1"] is (H, D), params["b1"] (H,), params["w2"] (1, H), params["b2"] (1,); x (n, D), y (n,).
The update is sgdtrace's own (every optimizer); write update(param, grad, state, hp) to judge yours.
"""

import numpy as np

SGDTRACE = {"model": "mlp"}


def gradients(params, x, y):
    w1, b1, w2, b2 = params["w1"], params["b1"], params["w2"], params["b2"]
    n = x.shape[0]
    z1 = x @ w1.T + b1  # (n, H)
    h = np.maximum(z1, 0)  # relu
    ypred = (h @ w2.T + b2)[:, 0]  # (n,)
    d = ypred - y
    loss = np.mean(d * d)
    delta2 = (2 * d / n)[:, None]  # dl/dypred, (n, 1)
    grad_w2 = delta2.T @ h  # (1, H)
    grad_b2 = delta2.sum(axis=0)  # (1,)
    dh = delta2 @ w2  # dl/dh, (n, H)
    delta1 = dh * (z1 > 0)  # relu's derivative: 1 above zero, 0 below
    grad_w1 = delta1.T @ x  # (H, D)
    grad_b1 = delta1.sum(axis=0)  # (H,)
    return loss, {"w1": grad_w1, "b1": grad_b1, "w2": grad_w2, "b2": grad_b2}
