"""The exact witness and the finite-difference gradient check."""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pytest

from sgdtrace import Config
from sgdtrace import reference as refmod
from sgdtrace.tracing import run_trace
from sgdtrace.views.export import trace_to_json


def _article(**kw):
    return run_trace(Config(**kw))


# The article's three batches by hand (w = b = 0, lr = 1/100, n = 3, x = 0..8, y = 2x + 10).
# Batch 1: x = 0,1,2, y = 10,12,14, d = -10,-12,-14
#   dl/dw = (2/3)(-10*0 - 12*1 - 14*2) = (2/3)(-40) = -80/3;  dl/db = (2/3)(-36) = -24
#   loss = (100 + 144 + 196)/3 = 440/3;  w1 = 0 + (1/100)(80/3) = 4/15;  b1 = 24/100 = 6/25
# Batch 2: x = 3,4,5, y = 16,18,20 at w1 = 4/15, b1 = 6/25
#   d = 4/5 + 6/25 - 16 = -374/25,  16/15 + 6/25 - 18 = -1252/75,  4/3 + 6/25 - 20 = -1382/75
#   dl/dw = (2/3)(3(-374/25) + 4(-1252/75) + 5(-1382/75)) = (2/3)(-15284/75) = -30568/225
#   dl/db = (2/3)(-1122/75 - 1252/75 - 1382/75) = (2/3)(-3756/75) = -7512/225
#   loss = (1/3)(374^2*9 + 1252^2 + 1382^2)/5625 = 4736312/16875
#   w2 = 4/15 + 30568/22500 = 36568/22500 = 9142/5625;  b2 = 6/25 + 7512/22500 = 12912/22500 = 1076/1875
HAND = [
    {"grad_w": F(-80, 3), "grad_b": F(-24), "loss": F(440, 3), "w": F(4, 15), "b": F(6, 25)},
    {
        "grad_w": F(-30568, 225),
        "grad_b": F(-7512, 225),
        "loss": F(4736312, 16875),
        "w": F(9142, 5625),
        "b": F(1076, 1875),
    },
]


def test_exact_reference_equals_hand_rationals():
    ref = refmod.exact_reference(_article())
    assert ref.exact_steps == 3 and ref.switch_digits is None
    for k, hand in enumerate(HAND):
        for f, v in hand.items():
            assert ref.values[f][k] == v, (k, f)
    # batch 3 against the article's printed (rounded) values
    third = {f: float(ref.values[f][2]) for f in ("grad_w", "grad_b", "loss", "w", "b")}
    assert round(third["grad_w"], 2) == -169.19 and round(third["grad_b"], 2) == -24.10
    assert round(third["loss"], 2) == 145.28 and round(third["w"], 2) == 3.32 and round(third["b"], 2) == 0.81


def test_inputs_taken_at_their_decimal_value():
    assert refmod.exact(0.01) == F(1, 100)
    assert refmod.exact(0.1) == F(1, 10)


def test_float32_error_is_float32_rounding_float64_is_float64s():
    t32 = _article()
    ref = refmod.exact_reference(t32)
    worst32 = max(float(ref.errors(t32.torch)[f][1].max()) for f in t32.fields)
    # a few float32 roundings (u = 6e-8): of the order of 1e-7, not zero, not float64-small
    assert 1e-9 < worst32 < 1e-6
    t64 = _article(dtype="float64")
    ref64 = refmod.exact_reference(t64)
    worst64 = max(float(ref64.errors(t64.torch)[f][1].max()) for f in t64.fields)
    assert 0 < worst64 < 1e-14
    man64 = max(float(ref64.errors(t64.manual)[f][1].max()) for f in t64.fields)
    assert man64 < 1e-14


@pytest.mark.parametrize(
    "kw",
    [
        dict(momentum=0.9, epochs=4),
        dict(momentum=0.9, shuffle=True, seed=3, batch_size=2),
        dict(momentum=0.5, dampening=0.25, weight_decay=0.1, epochs=3),
        dict(momentum=0.9, nesterov=True, batch_size=4, epochs=3),
        dict(maximize=True, weight_decay=0.05, lr=0.001, epochs=2),
    ],
)
def test_exact_replay_follows_every_option(kw):
    """float64 torch (optim.SGD itself) within float64 rounding of the exact replay: same algorithm."""
    t = _article(dtype="float64", **kw)
    ref = refmod.exact_reference(t)
    assert set(ref.fields) == set(t.fields)
    for f in t.fields:
        ab, rel = ref.errors(t.torch)[f]
        scale = np.maximum(np.abs(ref.floats[f]), 1.0)
        assert np.all(ab / scale < 1e-11), f


def test_switch_to_decimals_is_reported_and_accurate(monkeypatch):
    t = _article(epochs=40, dtype="float64")
    full = refmod.exact_reference(t)
    assert full.exact_steps == t.n_steps
    monkeypatch.setattr(refmod, "MAX_DIGITS", 40)
    mixed = refmod.exact_reference(t)
    assert 0 < mixed.exact_steps < t.n_steps
    assert mixed.switch_digits > 40
    assert "50-digit decimals" in mixed.describe() and f"step {mixed.exact_steps}" in mixed.describe()
    assert mixed.to_json()["arithmetic"] == "decimal"
    for f in t.fields:
        for a, b in zip(full.values[f], mixed.values[f]):
            assert abs(F(a) - F(b)) <= F(1, 10**40) * max(1, abs(F(a)))


def test_json_reference_fields_added_contract_kept():
    t = _article()
    t.reference = refmod.exact_reference(t)
    doc = trace_to_json(t)
    assert doc["reference"]["kind"] == "exact"
    s = doc["steps"][0]
    assert {"epoch", "batch", "n", "indices", "manual", "torch", "divergence"} <= set(s)
    assert s["reference"]["w"] == pytest.approx(4 / 15, rel=1e-15)
    assert set(s["reference_error"]) == {"manual", "torch"}
    assert s["reference_error"]["torch"]["grad_b"] == {"abs": 0.0, "rel": 0.0}  # -24 is exact in float32


def test_gradcheck_passes_on_the_article_and_catches_a_wrong_formula(monkeypatch):
    t = _article(epochs=5)
    gc = refmod.gradcheck(t)
    assert gc.all_ok and gc.ok.all()
    assert gc.numeric["grad_w"][0] == pytest.approx(-80 / 3, rel=1e-8)
    from sgdtrace.engines import manual

    real = manual.grad_w
    monkeypatch.setattr(manual, "grad_w", lambda up, x: real(up, x) * 1.01)
    bad = refmod.gradcheck(t)
    assert not bad.all_ok
    assert not bad.ok[0]


def test_gradcheck_skips_non_finite_steps():
    t = _article(lr=0.5, epochs=60)
    gc = refmod.gradcheck(t)
    assert (~gc.finite).any()
    assert "not checked" in gc.summary()


# ------------------------------------------------------------------ every optimizer and schedule


def _sched(name, *args):
    from sgdtrace.config import parse_scheduler_flags

    return parse_scheduler_flags(name, args)


GROUND_TRUTH_CASES = [
    (dict(optimizer="adam", epochs=3), "decimal"),
    (dict(optimizer="adamw", amsgrad=True, epochs=3, weight_decay=0.1, maximize=True), "decimal"),
    (dict(optimizer="rmsprop", centered=True, momentum=0.9, epochs=3, weight_decay=0.01), "decimal"),
    (dict(optimizer="rmsprop", alpha=0.9, epochs=3), "decimal"),
    (dict(optimizer="adagrad", lr_decay=0.01, initial_accumulator_value=0.1, epochs=3), "decimal"),
    (dict(scheduler=_sched("StepLR", "step_size=1", "gamma=0.5"), epochs=3, momentum=0.9), "fraction"),
    (dict(scheduler=_sched("MultiStepLR", "milestones=0,1,1", "interval=step"), epochs=2), "fraction"),
    (dict(scheduler=_sched("ExponentialLR", "gamma=0.9"), epochs=4, optimizer="adagrad"), "decimal"),
    (dict(scheduler=_sched("LinearLR", "total_iters=2"), epochs=4, nesterov=True, momentum=0.5), "fraction"),
    (dict(scheduler=_sched("CosineAnnealingLR", "T_max=2", "interval=step"), epochs=3), "decimal"),
    (dict(scheduler=_sched("OneCycleLR", "max_lr=0.02", "total_steps=20"), epochs=3, optimizer="adam"), "decimal"),
    (dict(scheduler=_sched("OneCycleLR", "max_lr=0.02", "total_steps=20"), epochs=3, optimizer="rmsprop"), "decimal"),
    (
        dict(
            scheduler=_sched(
                "OneCycleLR", "max_lr=0.02", "total_steps=20", "anneal_strategy=linear", "three_phase=true"
            ),
            epochs=3,
        ),
        "fraction",
    ),
]


@pytest.mark.parametrize("kw, arithmetic", GROUND_TRUTH_CASES, ids=[str(i) for i in range(len(GROUND_TRUTH_CASES))])
def test_every_optimizer_and_schedule_has_a_ground_truth(kw, arithmetic):
    """float64 torch (torch.optim and lr_scheduler themselves) lies within float64 rounding of the
    replay, field by field (the lr and every optimizer state included): the same algorithms."""
    t = _article(dtype="float64", **kw)
    ref = refmod.exact_reference(t)
    assert ref.to_json()["arithmetic"] == arithmetic
    assert set(ref.fields) == set(t.fields)
    if "scheduler" in kw:
        assert "lr" in ref.fields
    for f in t.fields:
        ab, _ = ref.errors(t.torch)[f]
        scale = np.maximum(np.abs(ref.floats[f]), 1.0)
        assert np.all(ab / scale < 1e-12), (f, float(np.max(ab / scale)))
    if arithmetic == "decimal":
        assert "50-digit decimals" in ref.describe()
        assert ("square roots" in ref.describe()) == (kw.get("optimizer", "sgd") != "sgd")


def test_a_float32_adam_run_is_off_by_float32_rounding_only():
    t = _article(optimizer="adam", epochs=4)
    ref = refmod.exact_reference(t)
    worst = max(float(np.max(ref.errors(t.torch)[f][1])) for f in ("w", "b", "exp_avg_w", "exp_avg_sq_b"))
    assert 1e-9 < worst < 1e-5


def test_the_decimal_replay_holds_its_stated_digits(monkeypatch):
    """50 digits against 70: the replay's own error is far below float64's (1e-40 relative)."""
    t = _article(optimizer="adam", epochs=3, dtype="float64")
    ref50 = refmod.exact_reference(t)
    monkeypatch.setattr(refmod, "DECIMAL_DIGITS", 70)
    ref70 = refmod.exact_reference(t)
    for f in t.fields:
        for a, b in zip(ref50.values[f], ref70.values[f]):
            assert abs(F(a) - F(b)) <= F(1, 10**40) * max(1, abs(F(b))), f


def test_cos_pi_to_fifty_digits():
    from decimal import Decimal, localcontext

    # cos(pi/6) = sqrt(3)/2, cos(pi/4) = sqrt(2)/2, to 50 digits
    with localcontext(refmod.decimal_context(60)):
        for r, exact_value in ((F(1, 6), Decimal(3).sqrt() / 2), (F(1, 4), Decimal(2).sqrt() / 2)):
            assert abs(refmod.cos_pi(r) - exact_value) < Decimal(10) ** -49
            assert abs(refmod.cos_pi(r + 2) - exact_value) < Decimal(10) ** -49  # 2-periodic
            assert abs(refmod.cos_pi(-r) - exact_value) < Decimal(10) ** -49  # even
            assert abs(refmod.cos_pi(1 - r) + exact_value) < Decimal(10) ** -49  # cos(pi - x) = -cos(x)
    assert refmod.cos_pi(F(0)) == 1 and refmod.cos_pi(F(1)) == -1 and refmod.cos_pi(F(7, 2)) == 0
    assert refmod.cos_pi(F(1, 3)) == Decimal("0.5") and refmod.cos_pi(F(5, 3)) == Decimal("0.5")
    rng = np.random.default_rng(5)
    for _ in range(200):
        r = F(int(rng.integers(-1000, 1000)), int(rng.integers(1, 97)))
        assert abs(float(refmod.cos_pi(r)) - math.cos(math.pi * float(r))) < 1e-12


@pytest.mark.parametrize(
    "args",
    [
        ("StepLR", "step_size=2", "gamma=0.7"),
        ("MultiStepLR", "milestones=1,4,4", "gamma=0.5"),
        ("ExponentialLR", "gamma=0.95"),
        ("CosineAnnealingLR", "T_max=3", "eta_min=0.001"),
        ("LinearLR", "start_factor=0.25", "total_iters=4"),
        ("OneCycleLR", "max_lr=0.1", "total_steps=40"),
        ("OneCycleLR", "max_lr=0.1", "total_steps=40", "three_phase=true", "anneal_strategy=linear"),
    ],
)
def test_schedules_closed_forms_are_torchs_recursion_without_its_rounding(args):
    """The closed form, exactly, against the hand side's recursion (torch's, bit for bit): they
    part only by the recursion's float rounding."""
    from sgdtrace.engines.optimizers import schedules

    cfg = Config(scheduler=_sched(*args), optimizer="adam" if args[0] == "OneCycleLR" else "sgd", lr=0.05)
    rows = schedules.values(cfg, 30)
    num = refmod.Numbers(decimal=True)
    from decimal import localcontext

    with localcontext(refmod.decimal_context()):
        for pos, row in enumerate(rows):
            truth = refmod.schedule_values(cfg, pos, num)
            for key, value in row.items():
                assert float(truth[key]) == pytest.approx(value, rel=1e-13, abs=1e-18), (pos, key)


# ------------------------------------------------------------------ who is right


def test_closer_names_torch_when_the_hand_rule_is_wrong(monkeypatch):
    from update_rules import sgd_update, swap_update

    def wrong(p, g, buf, h, first):  # the step taken 1% long
        return sgd_update(p, g * np.float32(1.01), buf, h, first)

    swap_update(monkeypatch, wrong)
    t = _article(epochs=2)
    f = t.verdict.first_divergent_step
    assert f.field in ("w", "b") and f.step == 1
    assert f.closer == "torch"
    assert f.exact_error["hand"] > 100 * f.exact_error["torch"]
    doc = trace_to_json(t)
    assert doc["verdict"]["first_divergent_step"]["closer"] == "torch"
    assert set(doc["verdict"]["first_divergent_step"]["exact_error"]) == {"hand", "torch"}
    from sgdtrace.views.verdict import plain

    assert "Ground truth: torch is nearer the exact step" in plain(t)


def _torch_off(monkeypatch, field, step, factor, **kw):
    """Run with torch's recorded ``field`` at ``step`` (0-based) moved by ``factor``: torch is off."""
    from sgdtrace.engines import torch_ref

    real = torch_ref.run

    def moved(*args, **kwargs):
        cols = real(*args, **kwargs)
        cols[field] = cols[field].copy()
        cols[field][step] = cols[field][step] * cols[field].dtype.type(factor)
        return cols

    monkeypatch.setattr(torch_ref, "run", moved)
    return _article(**kw)


@pytest.mark.parametrize(
    "kw, field, factor",
    [
        (dict(epochs=2), "w", 1.01),
        (dict(epochs=2, momentum=0.9), "buf_b", 1.01),
        (dict(epochs=2, optimizer="adam"), "exp_avg_sq_w", 1.01),
        (dict(epochs=2, optimizer="rmsprop", centered=True), "b", 1.01),
        (dict(epochs=2, optimizer="adagrad", dtype="float64"), "sum_b", 1.01),
        (dict(epochs=2, scheduler=_sched("CosineAnnealingLR", "T_max=2", "interval=step")), "lr", 1.01),
        (dict(epochs=2, dtype="bfloat16", momentum=0.5), "loss", 1.25),
    ],
)
def test_closer_names_the_hand_side_where_torch_is_off(monkeypatch, kw, field, factor):
    t = _torch_off(monkeypatch, field, 1, factor, **kw)
    f = t.verdict.first_divergent_step
    assert (f.step, f.field) == (2, field)
    assert f.closer == "hand"
    assert f.exact_error["torch"] > f.exact_error["hand"]
    from sgdtrace.views.verdict import plain

    assert "torch's own value is off here, not the hand side's" in plain(t)


def test_closer_is_null_at_a_tie_and_without_a_divergence():
    import dataclasses

    from sgdtrace.verdict import FirstDivergence

    t = _article(epochs=2)
    assert t.verdict.first_divergent_step is None and refmod.closer(t) == refmod.Closer(None, None)
    # both sides recorded the same wrong w at step 2: equally far from its exact step
    for cols in (t.manual, t.torch):
        cols["w"] = cols["w"].copy()
        cols["w"][1] = np.float32(2.0)
    t.verdict.ok, t.verdict.first_divergent_step = False, FirstDivergence(1, 2, 2, "w", 2.0, 2.0, 0.0, 0.0, 0.0)
    found = refmod.closer(t)
    assert found.side is None and found.errors["hand"] == found.errors["torch"] > 0
    t.verdict.first_divergent_step = dataclasses.replace(
        t.verdict.first_divergent_step, closer=found.side, exact_error=found.errors
    )
    from sgdtrace.views.verdict import plain

    assert "neither side is nearer the exact step" in plain(t)


def test_closer_is_null_where_a_side_started_from_a_non_finite_value(monkeypatch):
    t = _torch_off(monkeypatch, "w", 0, math.inf, epochs=2)
    f = t.verdict.first_divergent_step
    assert f.step == 1  # torch's w is inf at step 1: the hand side is nearer
    assert f.closer == "hand" and f.exact_error["torch"] == math.inf
    # at step 2, torch's step started from inf: no exact step to measure it by
    import dataclasses

    t.verdict.first_divergent_step = dataclasses.replace(f, step=2, field="b")
    assert refmod.closer(t) == refmod.Closer(None, None)


def test_closer_costs_one_step_not_the_run(monkeypatch):
    """A long run's first divergence at its last step is judged as fast as at its first."""
    import time

    t = _torch_off(monkeypatch, "w", 29_999, 1.01, epochs=10_000)
    start = time.perf_counter()
    found = refmod.closer(t)
    assert time.perf_counter() - start < 0.5
    assert found.side == "hand" and t.verdict.first_divergent_step.step == 30_000


def test_closer_on_a_data_parallel_run():
    """--world-size 2: the step's averaged gradient and each rank's own, worked from each side's start."""
    from test_ddp import _trace

    from sgdtrace.verdict import FirstDivergence

    t = _trace(2, "float32 {}")
    assert t.verdict.ok and t.ranks is not None
    for name, side in (("rank1.grad_w", "torch"), ("grad_b", "torch"), ("w", "manual")):
        u = _trace(2, "float32 {}")
        if name.startswith("rank"):
            cols = u.ranks.torch
            cols["grad_w"] = cols["grad_w"].copy()
            cols["grad_w"][2, 1] *= np.float32(1.001)
            value = float(cols["grad_w"][2, 1])
        else:
            cols = getattr(u, side)
            cols[name] = cols[name].copy()
            cols[name][2] *= np.float32(1.001)
            value = float(cols[name][2])
        u.verdict.first_divergent_step = FirstDivergence(1, 3, 3, name, value, value, 0.0, 0.0, 0.0)
        found = refmod.closer(u)
        assert found.side == ("hand" if side == "torch" else "torch"), name
        assert found.errors["hand" if side == "manual" else "torch"] > 0


def test_exact_moments_are_the_sums_sample_by_sample():
    """The batch's loss and gradients from its exact moments equal Equations 3, 8, 11 summed sample
    by sample, exactly (Fractions), on values written with any number of digits and exponents."""
    rng = np.random.default_rng(11)
    for _ in range(50):
        n = int(rng.integers(1, 9))
        x = rng.normal(size=n) * 10.0 ** rng.integers(-8, 8, size=n)
        y = rng.normal(size=n) * 10.0 ** rng.integers(-8, 8, size=n)
        w, b = F(float(rng.normal())), F(float(np.float32(rng.normal() * 100)))
        samples = [(refmod.written_ints(a), refmod.written_ints(c)) for a, c in zip(x, y)]
        for (m, e), v in zip((s[0] for s in samples), x):
            assert F(m) * F(10) ** e == refmod.exact(v)
        got = refmod._batch_exact(w, b, n, refmod.moments(samples))
        want = refmod._batch(w, b, [refmod.exact(v) for v in x], [refmod.exact(v) for v in y])
        assert got == want
