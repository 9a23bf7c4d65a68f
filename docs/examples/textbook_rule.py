"""The textbook heavy ball as an engine's update: a zero buffer, dampened from the first step.

Run it under the judge with `sgdtrace run --engine docs/examples/textbook_rule.py --momentum 0.9
--dampening 0.5`: sgdtrace names the step where it parts from torch.optim.SGD (exit code 1).
"""


def update(param, grad, state, hp):
    """Heavy ball from a zero buffer: buf <- momentum*buf + (1 - dampening)*g on every step."""
    buf = state.get("momentum_buffer", 0.0)
    buf = hp.momentum * buf + (1 - hp.dampening) * grad
    state["momentum_buffer"] = buf
    return param - hp.lr * buf
