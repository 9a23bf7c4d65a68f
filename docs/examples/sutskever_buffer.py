"""Sutskever's form as an engine's update: lr inside the buffer (v <- mu*v + lr*g; p <- p - v).

For a constant lr it gives the same w and b as torch.optim.SGD, but its buffer is lr times
PyTorch's: `sgdtrace run --engine docs/examples/sutskever_buffer.py --momentum 0.9` catches it at
step 1 (exit code 1).
"""


def update(param, grad, state, hp):
    v = state.get("momentum_buffer")
    v = hp.lr * grad if v is None else hp.momentum * v + hp.lr * grad
    state["momentum_buffer"] = v
    return param - v
