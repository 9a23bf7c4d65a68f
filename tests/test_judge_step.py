"""``--judge step``: each step of the hand side starts from torch's values; every slipped step listed."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from sgdtrace import Config
from sgdtrace.engines import manual
from sgdtrace.tracing import run_trace

SLIPS = (3, 7, 8, 15)  # 1-based steps where the planted engine's gradient is of the wrong sign


def _slipping(config, backend):
    """sgdtrace's own engine with a gradient of the wrong sign at the steps in SLIPS."""
    from sgdtrace import models

    base = manual.engine(config, backend, None, models.build(config, config.features))
    calls = {"k": 0}
    article = base.article_form

    def gradients(*args):
        out = base.gradients(*args)
        calls["k"] += 1
        if calls["k"] not in SLIPS:
            return out
        if article:
            loss, gw, gb = out
            return loss, gw * backend.scalar(-1.0), gb
        loss, grads = out
        return loss, {**grads, "w": grads["w"] * backend.scalar(-1.0)}

    return dataclasses.replace(base, gradients=gradients)


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"momentum": 0.9},
        {"optimizer": "adam", "lr": 0.05},
        {"features": 3, "synthetic": 40, "batch_size": 8},
        {"dtype": "bfloat16"},
    ],
)
def test_step_lists_exactly_the_slipped_steps(opts):
    cfg = Config(epochs=8, **opts, judge="step")
    trace = run_trace(cfg, engine=_slipping)
    listed = trace.verdict.divergent_steps
    steps = [row["step"] for row in listed["steps"]]
    assert steps == list(SLIPS)
    assert listed["count"] == len(SLIPS)
    assert trace.verdict.first_divergent_step.step == SLIPS[0]
    assert all(row["field"].startswith("grad_w") for row in listed["steps"])
    # under carry the same engine's first slip is found, and the verdict lists no steps
    carry = run_trace(cfg.replace(judge="carry"), engine=_slipping)
    assert carry.verdict.first_divergent_step.step == SLIPS[0]
    assert carry.verdict.divergent_steps is None


def test_honest_step_mode_agrees_and_starts_from_torch():
    cfg = Config(epochs=30, momentum=0.9, judge="step")
    trace = run_trace(cfg)
    assert trace.verdict.ok and trace.verdict.divergent_steps == {"count": 0, "elements": 0, "steps": []}
    # step 2 started from torch's w after step 1: the hand side's gradient is torch's bit for bit here
    assert np.array_equal(trace.manual["grad_w"], trace.torch["grad_w"])


def test_step_mode_diagnoses_each_listed_step():
    cfg = Config(epochs=8, judge="step")
    trace = run_trace(cfg, engine=_slipping)
    kinds = [row["diagnosis"] and row["diagnosis"]["kind"] for row in trace.verdict.divergent_steps["steps"]]
    assert kinds == ["sign"] * len(SLIPS)


def test_step_mode_costs_at_most_half_again_carry():
    cfg = Config(synthetic=2000, batch_size=4, epochs=3, momentum=0.9, shuffle=True)
    best = {}
    for mode in ("carry", "step", "carry", "step"):
        t0 = time.perf_counter()
        run_trace(cfg.replace(judge=mode))
        dt = time.perf_counter() - t0
        best[mode] = min(best.get(mode, dt), dt)
    assert best["step"] <= 1.5 * best["carry"], best
