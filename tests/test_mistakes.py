"""The diagnosis for every optimizer: each planted mistake (tests/planted.py) is caught at the first
step where its effect exceeds the allowance and named by its kind; a mistake outside the catalogue
is caught and named by none (a wrong name is a defect); an honest engine is named nothing."""

from __future__ import annotations

import math

import pytest

from sgdtrace import mistakes
from tests.planted import PLANTED
from tools.mistake_study import study, totals


@pytest.mark.parametrize("row", PLANTED, ids=[f"{m}-{o.get('optimizer', 'sgd')}" for m, _, o in PLANTED])
def test_each_planted_mistake_is_caught_where_it_shows_and_named_rightly(row):
    (r,) = study([row])
    assert r["honest_ok"], r  # the same engine without the mistake agrees
    assert r["effect_step"] is not None and r["caught_step"] == r["effect_step"], r
    assert r["named"] == r["expected"], r  # the planted kind, or none outside the catalogue


def test_the_published_figures():
    """docs/own-engine.md's figures: every planted mistake caught at its first step, every one of
    the catalogue named, none named wrongly."""
    t = totals(study())
    assert t == {
        "planted": len(PLANTED),
        "caught_at_first_step": len(PLANTED),
        "named": t["nameable"],
        "nameable": sum(k is not None for _, k, _ in PLANTED),
        "named_wrongly": 0,
    }


def test_the_reference_steps_are_torchs_rules():
    """The float64 steps the hypotheses are built on, with no mistake, are torch's algorithms."""
    hp = {"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
    hp.update(maximize=False, decoupled_weight_decay=False)
    p, st = mistakes.step("adam", 1.0, 0.5, {}, hp, 1, None)
    assert p == pytest.approx(1.0 - 0.1 * 0.5 / (0.5 + 1e-8), rel=1e-15)
    assert st["exp_avg"] == pytest.approx(0.05) and st["exp_avg_sq"] == pytest.approx(0.00025)
    p, _ = mistakes.step("adam", 1.0, 0.5, {}, hp, 1, "bias_correction_behind")
    assert math.isnan(p)  # 1 - beta^0 = 0
    rms = {"lr": 0.1, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False}
    p, st = mistakes.step("rmsprop", 1.0, 2.0, {}, {**rms, "maximize": False}, 1, None)
    assert p == pytest.approx(1.0 - 0.1 * 2.0 / (math.sqrt(0.01 * 4.0) + 1e-8))
    ada = {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.0, "initial_accumulator_value": 0.0, "eps": 1e-10}
    p, _ = mistakes.step("adagrad", 1.0, 2.0, {"sum": 4.0}, {**ada, "maximize": False}, 3, None)
    assert p == pytest.approx(1.0 - 0.1 / 2.0 * 2.0 / (math.sqrt(8.0) + 1e-10))
