"""Update rules written the short way, ``rule(p, g, buf, h, first) -> (p, buf)``, behind the
engine protocol's ``update(param, grad, state, hp)``: how the tests swap a wrong rule in."""

from sgdtrace.engines.optimizers import sgd

#: the real rule, kept before any test swaps ``sgd.update`` out
_sgd_update = sgd.update


def sgd_update(p, g, buf, h, first):
    """sgdtrace's own SGD step, called the short way (``first``: the buffer starts here)."""
    state = {} if first or buf is None else {sgd.MOMENTUM_BUFFER: buf}
    return _sgd_update(p, g, state, h), state.get(sgd.MOMENTUM_BUFFER)


def as_update(rule):
    """``rule`` as the protocol's ``update``: the buffer lives in ``state``; the first step is the
    one with no buffer yet."""

    def update(param, grad, state, hp):
        buf = state.get(sgd.MOMENTUM_BUFFER)
        p, buf = rule(param, grad, buf, hp, buf is None)
        if buf is not None:
            state[sgd.MOMENTUM_BUFFER] = buf
        return p

    return update


def swap_update(monkeypatch, rule):
    """Run sgdtrace's hand engine with ``rule`` in place of torch.optim.SGD's algorithm."""
    monkeypatch.setattr(sgd, "update", as_update(rule))
