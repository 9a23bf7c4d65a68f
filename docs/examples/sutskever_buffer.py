"""Sutskever's form keeps lr inside the buffer (v <- mu*v + lr*g; p <- p - v): same w and b for a
constant lr, but a buffer lr times PyTorch's, caught at step 1."""

import sgdtrace.engines.manual as manual
from sgdtrace.cli import main


def sutskever(p, g, buf, h, first):
    if h.use_momentum:
        buf = h.lr * g if first else h.momentum * buf + h.lr * g
        return p - buf, buf
    return p - h.lr * g, buf


manual.sgd_update = sutskever
main(["run", "--momentum", "0.9", "--rows", "2"])
