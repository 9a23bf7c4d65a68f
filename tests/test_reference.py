"""The exact witness and the finite-difference gradient check."""

from __future__ import annotations

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
    from sgdtrace.models import linear as manual  # the article's equations are the linear model's

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
