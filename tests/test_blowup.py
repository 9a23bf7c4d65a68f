"""Blow-ups are results, not errors: diagnosed, marked in the table, and judged fairly.

References used here are independent of the code under test: torch's own training loop (where
it first goes non-finite), numpy.linalg.eigvalsh of the batch Hessian built by hand (the
stability limit), and what full-batch gradient descent does just below and above 2/lambda_max.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sgdtrace.cli import cli
from sgdtrace.config import Config
from sgdtrace.data import article
from sgdtrace.engines import torch_ref
from sgdtrace.tracing import run_trace

FIELDS = ("grad_w", "grad_b", "loss", "w", "b")
BLOWUP = Config(lr=1.0, epochs=30)  # the article's data, lr 1: overflows float32 within ten epochs


def first_nonfinite_in_torch(cfg: Config) -> int:
    """0-based step where the learner's own loop (DataLoader, MSELoss, optim.SGD) first shows inf or nan."""
    ds = article()
    steps = cfg.epochs * -(-len(ds) // cfg.batch_size)
    cols = torch_ref.run(ds.x, ds.y, cfg, torch.device("cpu"), steps)
    bad = np.zeros(steps, dtype=bool)
    for f in FIELDS:
        bad |= ~np.isfinite(cols[f])
    return int(np.flatnonzero(bad)[0])


def hessian_limit(xs) -> float:
    """2 / lambda_max of the batch MSE's Hessian in (w, b): H = (2/n) [[sum x^2, sum x], [sum x, n]]."""
    xs = np.asarray(xs, dtype=np.float64)
    n = len(xs)
    h = 2.0 / n * np.array([[np.sum(xs * xs), np.sum(xs)], [np.sum(xs), n]])
    return 2.0 / np.linalg.eigvalsh(h).max()


def test_blowup_is_diagnosed_at_the_first_nonfinite_step():
    k = first_nonfinite_in_torch(BLOWUP)
    t = run_trace(BLOWUP)
    d = t.verdict.diverged_training
    assert d is not None
    assert d["step"] == k + 1
    assert (d["epoch"], d["batch"]) == (k // 3 + 1, k % 3 + 1)
    assert "loss = inf by hand" in d["reason"] and "loss = inf in torch" in d["reason"]
    # the hint names this batch's limit: batch 3 is x = 6, 7, 8
    assert d["stable_lr_batch"] == pytest.approx(hessian_limit([6, 7, 8]), rel=1e-6)
    assert d["stable_lr"] == pytest.approx(min(hessian_limit(article().x[i:i + 3]) for i in (0, 3, 6)), rel=1e-6)
    assert "lr 1 is too large" in d["hint"] and f"{d['stable_lr_batch']:.4g}" in d["hint"]
    assert "try --lr 0.01" in d["hint"]
    # both engines agree on every finite value, and on the blow-up
    assert t.verdict.ok, t.verdict.first_divergent_step
    assert t.verdict.max_ulp == 0


def test_both_engines_blow_up_the_same_way():
    t = run_trace(BLOWUP)
    for f in FIELDS:
        man, ref = np.isfinite(t.manual[f]), np.isfinite(t.torch[f])
        differ = np.flatnonzero(man != ref)
        # the only differences: the two steps where an intermediate larger than the result
        # (2*d_i by hand, (2/n)*d_i in torch) overflowed in one order and not the other
        assert set(differ.tolist()) <= {28, 29}, (f, differ)
        assert not (man & ~ref).any() or f in ("b", "w"), f  # torch never overflows later than by hand in grads
    # dl/db at step 29: -inf by hand, finite in torch, within the reach of overflow
    assert np.isneginf(t.manual["grad_b"][28]) and np.isfinite(t.torch["grad_b"][28])
    assert abs(float(t.torch["grad_b"][28])) * 3 / 2 * 2 > float(np.finfo(np.float32).max)  # 2 * sum|d_i| overflows
    # from then on everything is nan on both sides, and that counts as agreement
    for f in FIELDS:
        assert np.isnan(t.manual[f][33:]).all() and np.isnan(t.torch[f][33:]).all()
        assert t.divergence[f].ok.all()


def test_blowup_exit_code_says_the_engines_agree(tmp_path):
    out = tmp_path / "blow.json"
    result = CliRunner().invoke(cli, ["run", "--lr", "1", "--epochs", "30", "--format", "json",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # no NumPy overflow warnings: the blow-up is reported, not warned about
    doc = json.loads(out.read_text())
    assert doc["verdict"]["ok"] is True
    assert doc["verdict"]["diverged_training"]["step"] == 15
    assert doc["steps"][14]["manual"]["loss"] == "inf" and doc["steps"][14]["torch"]["loss"] == "inf"
    assert doc["steps"][-1]["manual"]["w"] == "nan"


def test_table_marks_the_blowup_row_even_when_rows_are_cut():
    result = CliRunner().invoke(cli, ["run", "--lr", "1", "--epochs", "30", "--rows", "6"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    marked = [ln for ln in lines if "⚠" in ln and " hand " in ln]
    assert len(marked) == 1 and marked[0].lstrip().startswith("5:3")
    assert "⚠ training blew up at epoch 5 batch 3 (step 15, the row marked ⚠)" in result.stdout
    gaps = [ln for ln in lines if re.search(r"⋮.*\+\d+\s*$", ln)]
    assert gaps  # rows were cut, yet the row of step 15 is shown
    shown = sum(1 for ln in lines if re.match(r"^\s*\d+:\d+\s+3\s+hand\s", ln))
    assert shown == 7  # 3 first + the blow-up + 3 last


def test_blowup_with_disagreeing_engines_still_exits_1(monkeypatch):
    """A wrong formula during a blow-up is still caught on the finite steps (exit 1)."""
    from sgdtrace.engines import manual

    real = manual.grad_b
    monkeypatch.setattr(manual, "grad_b", lambda up: real(up) * 1.001)
    result = CliRunner().invoke(cli, ["run", "--lr", "1", "--epochs", "30", "--format", "json"])
    assert result.exit_code == 1
    v = json.loads(result.stdout)["verdict"]
    assert v["first_divergent_step"]["step"] == 1 and v["first_divergent_step"]["field"] == "grad_b"
    assert v["diverged_training"]["step"] == 15


def test_the_articles_lr_01_blows_up_finitely():
    # the prose's lr = 0.1: w = -29.16 after batch 3; the loss over the data grows
    t = run_trace(Config(lr=0.1))
    assert t.manual["w"][2] == pytest.approx(-29.16, abs=0.01)
    d = t.verdict.diverged_training
    assert t.verdict.ok and d is not None
    # batch 1 (x = 0, 1, 2) is stable at 0.1; batch 2 (x = 3, 4, 5) is the first that is not
    assert hessian_limit([0, 1, 2]) > 0.1 > hessian_limit([3, 4, 5])
    assert (d["epoch"], d["batch"]) == (1, 2)
    assert d["stable_lr_batch"] == pytest.approx(hessian_limit([3, 4, 5]), rel=1e-9)
    assert "loss over the whole data set grew" in d["reason"]


@pytest.mark.parametrize("factor,blows", [(0.97, False), (1.03, True)])
def test_stability_limit_is_where_full_batch_descent_turns(factor, blows):
    limit = hessian_limit(article().x)
    t = run_trace(Config(lr=limit * factor, batch_size=9, epochs=400, dtype="float64"))
    assert t.verdict.ok
    assert t.stable_lr[0] == pytest.approx(limit, rel=1e-12)
    start, end = t.manual["loss"][0], t.manual["loss"][-1]
    assert (end > start) == blows
    assert (t.verdict.diverged_training is not None) == blows


def test_float64_blowup():
    t = run_trace(Config(lr=1.0, epochs=120, dtype="float64"))
    d = t.verdict.diverged_training
    assert d is not None and "inf" in d["reason"]
    assert t.verdict.ok, t.verdict.first_divergent_step


@pytest.mark.parametrize("opts", [
    dict(momentum=0.9, lr=0.5, epochs=20),
    dict(momentum=0.9, nesterov=True, lr=0.5, epochs=20),
    dict(weight_decay=0.5, lr=0.8, epochs=20),
    dict(maximize=True, lr=0.5, epochs=20),
    dict(synthetic=50, noise=3.0, seed=1, batch_size=7, lr=0.5, epochs=10, shuffle=True),
])
def test_blowups_with_options_agree(opts):
    t = run_trace(Config(**opts))
    assert t.verdict.diverged_training is not None
    assert t.verdict.ok, t.verdict.first_divergent_step


def test_maximize_hint():
    t = run_trace(Config(maximize=True, lr=0.5, epochs=20))
    d = t.verdict.diverged_training
    assert "--maximize climbs the loss" in d["hint"] and d["stable_lr"] is None
