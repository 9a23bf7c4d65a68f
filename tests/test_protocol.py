"""The engine protocol: any pair of parts, gradients(w, b, x, y) and update(param, grad, state, hp),
stands where sgdtrace's own engine stands, and the same judge holds it to torch."""

from __future__ import annotations

import numpy as np
import pytest

from sgdtrace import Config
from sgdtrace.engines import manual, protocol
from sgdtrace.engines.optimizers import sgd
from sgdtrace.tracing import run_trace


def float64_gradients(w, b, x, y):
    """A toy engine: the batch worked in float64 with NumPy's sums, each result rounded once."""
    dtype = x.dtype
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    d = float(w) * x64 + float(b) - y64
    n = len(x64)
    return dtype.type(np.mean(d * d)), dtype.type(2 * np.sum(d * x64) / n), dtype.type(2 * np.sum(d) / n)


def toy(gradients, update=None):
    def make(config, backend):
        return protocol.Engine(
            "toy", gradients, update or sgd.update, sgd.hyper(config, backend.scalar), sgd.state_keys(config)
        )

    return make


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"momentum": 0.9},
        {"momentum": 0.5, "nesterov": True, "weight_decay": 0.1},
        {"shuffle": True, "seed": 3, "batch_size": 4},
    ],
)
def test_a_toy_engine_through_the_protocol_agrees_with_torch(dtype, opts):
    cfg = Config(synthetic=40, noise=0.5, epochs=20, lr=0.005, dtype=dtype, **opts)
    t = run_trace(cfg, engine=toy(float64_gradients))
    assert t.verdict.ok, t.verdict.first_divergent_step
    # it is a different engine: its values are not sgdtrace's own bit for bit everywhere
    own = run_trace(cfg)
    assert set(t.manual) == set(own.manual)
    if dtype == "float32":
        assert any(not np.array_equal(t.manual[f], own.manual[f]) for f in ("grad_w", "grad_b", "loss"))


def test_a_toy_engine_with_a_wrong_factor_is_caught_at_step_one():
    def halved(w, b, x, y):
        loss, gw, gb = float64_gradients(w, b, x, y)
        return loss, gw / 2, gb

    t = run_trace(Config(), engine=toy(halved))
    assert not t.verdict.ok
    assert t.verdict.first_divergent_step["step"] == 1
    assert t.verdict.first_divergent_step["field"] == "grad_w"


def test_the_recorded_fields_follow_the_optimizer_state():
    assert protocol.fields_for(sgd.state_keys(Config())) == ("grad_w", "grad_b", "loss", "w", "b")
    assert protocol.fields_for(sgd.state_keys(Config(momentum=0.9)))[-2:] == ("buf_w", "buf_b")
    assert protocol.state_field("exp_avg", "w") == "exp_avg_w"
    # the torch side records what torch.optim keeps, under the same names
    t = run_trace(Config(momentum=0.9))
    assert set(t.torch) == set(t.manual) == {"grad_w", "grad_b", "loss", "w", "b", "buf_w", "buf_b"}


def test_sgdtrace_own_engine_is_the_protocol_with_its_own_parts():
    e = manual.engine(Config(momentum=0.9), manual.ArrayBackend("numpy", "float32"))
    assert e.gradients is manual.gradients and e.update is sgd.update and e.state_keys == ("momentum_buffer",)
    assert type(e.hp.lr) is np.float32
