"""Honest runs whose residuals round to zero, and sums that overflow both ways: no false alarm.

Near convergence on noise-free data the residual ``d_i = w*x_i + b - y_i`` rounds to exactly 0
in one engine and to one unit in the last place of ``w*x_i + b`` in the other (or to 0 in both,
while the measured parameter differences predict a nonzero loss difference). The allowance
must not depend on which side rounded to zero: see the tolerance model in divergence.py.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgdtrace import divergence as dv
from sgdtrace.config import Config
from sgdtrace.data import Dataset
from sgdtrace.tracing import run_trace


@st.composite
def converging_runs(draw):
    """Noise-free data (so the residuals reach zero), batch size 1 or 2, long enough to converge."""
    n = draw(st.integers(2, 120))
    batch_size = draw(st.sampled_from([1, 2]))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    steps_per_epoch = -(-n // batch_size)
    epochs = draw(st.integers(max(1, 300 // steps_per_epoch), max(2, 2500 // steps_per_epoch)))
    return Config(synthetic=n, batch_size=batch_size, epochs=epochs, dtype=dtype,
                  true_w=draw(st.sampled_from([2.0, -1.5, 0.5, 3.0])),
                  true_b=draw(st.sampled_from([10.0, -4.0, 0.25, 1.0])),
                  lr=draw(st.sampled_from([0.01, 0.02, 0.05])),
                  shuffle=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(converging_runs())
def test_honest_runs_whose_residuals_round_to_zero_pass(cfg):
    t = run_trace(cfg)
    assert t.verdict.diverged_training is None, cfg  # a converging run: only rounding differs
    assert t.verdict.ok, (t.verdict.first_divergent_step, cfg)
    assert t.verdict.max_tol_ratio <= 0.5, cfg


@pytest.mark.parametrize("cfg", [
    Config(synthetic=5000, batch_size=1),
    Config(synthetic=100, batch_size=1, epochs=74, dtype="float64"),
    *(Config(shuffle=True, seed=seed, batch_size=bs, epochs=1000) for seed, bs in ((0, 1), (3, 2), (7, 4))),
])
def test_reported_false_alarms_pass(cfg):
    t = run_trace(cfg)
    assert t.verdict.ok, t.verdict.first_divergent_step
    assert t.verdict.max_tol_ratio <= 0.5


def test_the_residual_does_round_to_zero_on_one_side():
    """The case the model must cover is really there: hand 0, torch nonzero (or the reverse)."""
    t = run_trace(Config(synthetic=5000, batch_size=1))
    lm, lt = t.manual["loss"], t.torch["loss"]
    assert np.any((lm == 0) != (lt == 0))


def test_opposite_infinities_from_a_sum_that_overflows_both_ways():
    """Data near 1e20 with mixed signs: the gradient's terms reach the overflow threshold in both
    directions, so engines adding in different orders can end at +inf and -inf."""
    x = [1.0e20, -1.0e20, 3.0e19, -2.5e19, 1.0e20, -1.0e20]
    y = [1.0e20, 1.0e20, -3.0e20, 2.0e20, -1.0e20, 1.0e20]
    ds = Dataset.from_arrays(x, y)
    cfg = Config(batch_size=6, init_w=1.0e18, init_b=1.0e18)
    plan = __import__("sgdtrace.data", fromlist=["plan"]).plan(len(ds), cfg)
    inf = np.float32(np.inf)
    fields = ("grad_w", "grad_b", "loss", "w", "b")
    a = {f: np.array([inf if f == "grad_w" else np.float32(1)], dtype=np.float32) for f in fields}
    b = {f: v.copy() for f, v in a.items()}
    b["grad_w"][0] = -inf
    div = dv.compare_columns(a, b, ds.x, ds.y, plan, cfg)
    assert div["grad_w"].ok[0]
    # the same opposite infinities where the terms cannot overflow both ways: a real divergence
    small = Dataset.from_arrays([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0] * 6)
    div = dv.compare_columns(a, b, small.x, small.y, plan, cfg.replace(init_w=0.0, init_b=0.0))
    assert not div["grad_w"].ok[0]
    # and a loss (a sum of squares: one sign) never overflows both ways
    a["loss"][0], b["loss"][0] = inf, -inf
    assert not dv.compare_columns(a, b, ds.x, ds.y, plan, cfg)["loss"].ok[0]


def test_opposite_infinities_seen_in_a_run_agree():
    """End to end: grad_w is the sum of terms near +-1e38 that overflow float32 both ways."""
    x = [1.0e20, -1.0e20, 1.0e20, -1.0e20, 2.0e19, -3.0e19]
    y = [2.0e20, 1.5e20, -1.0e20, -2.0e20, 1.0e20, 3.0e20]
    t = run_trace(Config(data=None, batch_size=6, init_w=1.0, init_b=0.0),
                  dataset=Dataset.from_arrays(x, y))
    fd = t.verdict.first_divergent_step
    assert t.verdict.ok, fd
