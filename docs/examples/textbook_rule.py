"""The textbook heavy ball (a zero buffer, dampened from the first step) swapped into the manual
engine: sgdtrace names the step where it parts from torch.optim.SGD (exit code 1)."""

import sgdtrace.engines.manual as manual
from sgdtrace.cli import main


def textbook(p, g, buf, h, first):
    """Heavy ball from a zero buffer: buf <- momentum*buf + (1 - dampening)*g on every step."""
    if h.use_momentum:
        buf = h.one_minus_dampening * g if first else h.momentum * buf + h.one_minus_dampening * g
        g = buf
    return p - h.lr * g, buf


manual.sgd_update = textbook
main(["run", "--momentum", "0.9", "--dampening", "0.5"])
