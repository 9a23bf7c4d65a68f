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
    assert d["stable_lr"] == pytest.approx(min(hessian_limit(article().x[i : i + 3]) for i in (0, 3, 6)), rel=1e-6)
    # lr 1 is far above the cycle's limit; batch 3 alone is unstable above 0.0197, yet the cycle of
    # the three batches is stable up to 0.0401 (checked against float64 runs in
    # test_epoch_limit_is_where_the_engines_turn), so the hint is 0.03, not 0.01
    assert "lr 1 is above the largest stable rate over one epoch's sequence of batches, 0.04012" in d["hint"]
    assert "try --lr 0.03" in d["hint"] and d["lr_hint"] == 0.03
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
    result = CliRunner().invoke(cli, ["run", "--lr", "1", "--epochs", "30", "--format", "json", "--output", str(out)])
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
    from sgdtrace.models import linear as manual  # the article's equations are the linear model's

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
    assert (d["epoch"], d["batch"]) == (1, 2)  # the data loss is lowest after batch 1, then rises
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


@pytest.mark.parametrize(
    "opts",
    [
        dict(momentum=0.9, lr=0.5, epochs=20),
        dict(momentum=0.9, nesterov=True, lr=0.5, epochs=20),
        dict(weight_decay=0.5, lr=0.8, epochs=20),
        dict(maximize=True, lr=0.5, epochs=20),
        dict(synthetic=50, noise=3.0, seed=1, batch_size=7, lr=0.5, epochs=10, shuffle=True),
    ],
)
def test_blowups_with_options_agree(opts):
    t = run_trace(Config(**opts))
    assert t.verdict.diverged_training is not None
    assert t.verdict.ok, t.verdict.first_divergent_step


def test_maximize_hint():
    t = run_trace(Config(maximize=True, lr=0.5, epochs=20))
    d = t.verdict.diverged_training
    assert "--maximize climbs the loss" in d["hint"] and d["stable_lr"] is None


# ------------------------------------------------------------------ stability limits, derived and checked


def iterate_scalar(lam: float, lr: float, mu: float, tau: float, nesterov: bool, steps: int = 20_000) -> float:
    """torch.optim.SGD's update, written out, on f(p) = lam/2 p^2 from p = 1: |p| at the end (float64)."""
    p, buf = 1.0, None
    for _ in range(steps):
        g = lam * p
        if mu:
            buf = g if buf is None else mu * buf + (1 - tau) * g
            g = g + mu * buf if nesterov else buf
        p -= lr * g
        if abs(p) > 1e12:
            break
    return abs(p)


@pytest.mark.parametrize(
    "mu,tau,nesterov",
    [
        (0.0, 0.0, False),
        (0.5, 0.0, False),
        (0.9, 0.0, False),
        (0.9, 0.5, False),
        (0.99, 0.2, False),
        (0.5, 0.0, True),
        (0.9, 0.0, True),
        (0.99, 0.0, True),
    ],
)
def test_single_batch_limit_is_where_the_recurrence_turns(mu, tau, nesterov):
    """heavy ball 2(1+mu)/((1-tau) lam); Nesterov 2(1+mu)/((1+2mu) lam): the iterated update decays
    just below and grows just above."""
    from sgdtrace.blowup import batch_limit

    lam = 3.7
    cfg = Config(momentum=mu, dampening=tau, nesterov=nesterov)
    limit = batch_limit(lam, cfg)
    expect = 2 * (1 + mu) / (lam * ((1 + 2 * mu) if nesterov else (1 - tau)))
    assert limit == pytest.approx(expect, rel=1e-15)
    assert iterate_scalar(lam, 0.99 * limit, mu, tau, nesterov) < 1e-3
    assert iterate_scalar(lam, 1.01 * limit, mu, tau, nesterov) > 1e6


def epoch_limit(cfg: Config) -> float:
    from sgdtrace.blowup import batch_sums, largest_stable_lr

    ds = article()
    from sgdtrace.data import plan

    return largest_stable_lr(batch_sums(ds.x, plan(len(ds), cfg), cfg), cfg, 0.01)


@pytest.mark.parametrize(
    "opts",
    [
        dict(),
        dict(momentum=0.9),
        dict(momentum=0.9, nesterov=True),
        dict(momentum=0.5, dampening=0.5),
        dict(weight_decay=0.3),
    ],
)
@pytest.mark.parametrize("factor,blows", [(0.97, False), (1.03, True)])
def test_epoch_limit_is_where_the_engines_turn(opts, factor, blows):
    """The spectral radius of one epoch's update product against what the engines do, in float64,
    over 150 epochs of the article's three batches: below the limit the loss falls, above it grows."""
    limit = epoch_limit(Config(**opts))
    t = run_trace(Config(lr=limit * factor, epochs=150, dtype="float64", **opts))
    start, end = t.manual["loss"][0], t.manual["loss"][-1]
    assert (not end < start) == blows, (start, end)
    assert (t.verdict.diverged_training is not None) == blows


def test_a_cycle_of_stable_batches_can_blow_up():
    """Momentum 0.9 at lr 0.03: every batch alone is stable (up to 0.0375), the cycle is not."""
    cfg = Config(momentum=0.9, lr=0.03, epochs=30)
    t = run_trace(cfg)
    assert (t.stable_lr > 0.03).all()
    d = t.verdict.diverged_training
    assert d is not None and t.verdict.ok
    # the scan resolves a hundredth of a decade into 32 x 32 steps: 10**0.01 - 1 = 0.023, / 1024 = 2.3e-5,
    # and both scans (from different reference rates) are within that of the boundary
    assert d["stable_lr_epoch"] == pytest.approx(epoch_limit(cfg), rel=4.6e-5) and d["stable_lr_epoch"] < 0.03
    assert "the cycle of batches is not" in d["hint"]
    assert "check the data's scale" not in d["hint"]


# ------------------------------------------------------------------ every blow-up reported, every hint followable

BLOWUPS = [dict(momentum=0.9, lr=lr, epochs=30) for lr in (0.02, 0.03, 0.1)]
BLOWUPS += [dict(momentum=0.9, nesterov=True, lr=lr, epochs=30) for lr in (0.01, 0.05)]
BLOWUPS += [dict(lr=lr, epochs=30) for lr in (0.05, 0.1, 1.0)]
BLOWUPS += [
    dict(momentum=0.5, dampening=0.5, lr=0.2, epochs=30),
    dict(weight_decay=0.5, lr=0.8, epochs=20),
    dict(lr=1.0, epochs=60, dtype="float64"),
    dict(momentum=0.9, lr=0.05, epochs=100, dtype="float64"),
    dict(synthetic=50, noise=3.0, seed=1, batch_size=7, lr=0.5, epochs=10, shuffle=True),
    dict(synthetic=40, noise=1.0, seed=3, batch_size=4, momentum=0.9, lr=0.05, epochs=20, shuffle=True),
]
RATE = re.compile(r"try --lr (\S+)$")


@pytest.mark.parametrize("opts", BLOWUPS, ids=lambda o: " ".join(f"{k}={v}" for k, v in o.items()))
def test_blowup_is_reported_and_its_hint_works(opts):
    cfg = Config(**opts)
    t = run_trace(cfg)
    d = t.verdict.diverged_training
    assert d is not None, "blow-up not reported"
    assert t.verdict.ok, t.verdict.first_divergent_step  # a blow-up is a result: the engines still agree
    assert "check the data's scale" not in d["hint"]
    m = RATE.search(d["hint"])
    assert m, d["hint"]
    shown = m.group(1)
    # one significant digit, %g style: never "0." and never a row of zeros
    assert re.fullmatch(r"[1-9](e[+-]\d\d)?|0\.0{0,3}[1-9]", shown), shown
    assert float(shown) == d["lr_hint"] < cfg.lr
    followed = run_trace(cfg.replace(lr=float(shown)))
    assert followed.verdict.diverged_training is None, followed.verdict.diverged_training
    assert followed.verdict.ok
    w, b = followed.manual["w"], followed.manual["b"]
    assert np.isfinite(w).all() and np.isfinite(b).all()


def test_nesterov_config_blows_up_and_check_says_so():
    """sgdtrace/configs/nesterov.toml (lr 0.01) grows the data loss from 350.7 to 9750 in 30 epochs."""
    result = CliRunner().invoke(cli, ["check", "sgdtrace/configs/nesterov.toml", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "ok (blew up)" in result.output
    result = CliRunner().invoke(cli, ["run", "--config", "sgdtrace/configs/nesterov.toml", "--format", "json"])
    assert result.exit_code == 0
    d = json.loads(result.stdout)["verdict"]["diverged_training"]
    assert d["loss_start"] == pytest.approx(350.6667, rel=1e-6) and d["loss_end"] > 9000
    assert "with Nesterov momentum 0.9" in d["hint"] and "try --lr 0.008" in d["hint"]


def test_momentum_blowup_exit_code_and_mark():
    result = CliRunner().invoke(cli, ["run", "--momentum", "0.9", "--lr", "0.03", "--epochs", "30", "--rows", "4"])
    assert result.exit_code == 0, result.output
    assert "⚠ training blew up at epoch" in result.stdout
    assert sum(1 for ln in result.stdout.splitlines() if "⚠" in ln and " hand " in ln) == 1


def test_momentum_of_one_or_more_says_so():
    t = run_trace(Config(momentum=1.2, lr=0.001, epochs=30))
    d = t.verdict.diverged_training
    assert d is not None and "momentum below 1" in d["hint"] and "--lr" not in d["hint"]


def test_data_scale_hint_only_when_the_rate_is_stable():
    t = run_trace(Config(init_w=1e30))
    d = t.verdict.diverged_training
    assert d is not None and d["step"] == 1
    assert "check the data's scale and the initial w, b" in d["hint"] and "--lr" not in d["hint"]


# ------------------------------------------------------------------ converging runs are never called blow-ups


@pytest.mark.parametrize("seed", range(4))
def test_slow_noisy_convergence_is_not_a_blowup(seed):
    t = run_trace(Config(synthetic=200, noise=4.0, seed=seed, batch_size=4, shuffle=True, lr=0.001, epochs=5))
    assert t.verdict.diverged_training is None


@pytest.mark.parametrize("seed", range(4))
def test_noise_floor_from_the_optimum_is_not_a_blowup(seed):
    """Started at the true line, shuffled SGD rises to its noise floor: the loss grows, boundedly."""
    t = run_trace(
        Config(
            synthetic=100,
            noise=2.0,
            seed=seed,
            batch_size=1,
            shuffle=True,
            lr=0.01,
            epochs=5,
            init_w=2.0,
            init_b=1.0,
            true_w=2.0,
            true_b=1.0,
        )
    )
    assert t.verdict.diverged_training is None


def test_nesterov_overshoot_that_recovers_is_not_a_blowup():
    """Nesterov 0.9 at lr 0.02 (a stable island above the unstable 0.01): the data loss climbs to
    12.9 times its start at step 4, then falls by seven orders of magnitude."""
    from sgdtrace.blowup import loss_path

    cfg = Config(momentum=0.9, nesterov=True, lr=0.02, epochs=60, init_w=1.9, init_b=10.5)
    t = run_trace(cfg)
    path = loss_path(t.dataset, np.r_[1.9, t.manual["w"]], np.r_[10.5, t.manual["b"]])
    assert path.max() > 10 * path[0] and path[-1] < 1e-5 * path[0]
    assert t.verdict.diverged_training is None


@pytest.mark.parametrize(
    "opts",
    [
        dict(),
        dict(momentum=0.9),
        dict(momentum=0.9, nesterov=True, lr=0.005),
        dict(momentum=0.5, dampening=0.5),
        dict(lr=0.039),
        dict(lr=0.03, epochs=300),
    ],
)
def test_stable_article_runs_are_not_blowups(opts):
    t = run_trace(Config(**{"epochs": 100, **opts}))
    assert t.verdict.diverged_training is None


def test_overflow_at_the_first_step_blames_the_scale_and_a_large_rate_too():
    d = run_trace(Config(init_w=1e30, lr=1.0)).verdict.diverged_training
    assert d["step"] == 1 and "check the data's scale and the initial w, b" in d["hint"]
    assert d["hint"].endswith("try --lr 0.03") and d["lr_hint"] == 0.03


def test_dampening_1_has_no_finite_limit_and_no_crash():
    """dampening 1: the buffer keeps the first gradient only, so no rate amplifies (single-batch limit inf)."""
    d = run_trace(Config(init_w=1e30, momentum=0.9, dampening=1.0)).verdict.diverged_training
    assert d is not None and d["stable_lr_epoch"] is None and "--lr" not in d["hint"]


from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    noise=st.sampled_from([0.0, 0.5, 3.0]),
    batch_size=st.sampled_from([1, 2, 3, 5]),
    opt=st.sampled_from(
        [
            dict(),
            dict(momentum=0.5),
            dict(momentum=0.9),
            dict(momentum=0.9, nesterov=True),
            dict(momentum=0.9, dampening=0.3),
            dict(weight_decay=0.2),
        ]
    ),
    share=st.floats(0.02, 0.9),
    shuffle=st.booleans(),
)
def test_any_rate_below_the_limit_is_never_a_blowup(seed, noise, batch_size, opt, share, shuffle):
    """Below the scanned limit, where every epoch's product is stable, the run converges: no mark,
    whatever the data, noise, batch size, optimizer options or order."""
    from sgdtrace.blowup import batch_sums, epoch_log_radius, largest_stable_lr, stable_lr
    from sgdtrace.data import plan, synthetic

    cfg = Config(synthetic=12, noise=noise, seed=seed, batch_size=batch_size, epochs=12, shuffle=shuffle, **opt)
    ds = synthetic(12, cfg.true_w, cfg.true_b, noise, seed)
    p = plan(len(ds), cfg)
    sums = batch_sums(ds.x, p, cfg)
    limit = min(
        largest_stable_lr((sums[0], sums[1][e : e + 1], sums[2][e : e + 1]), cfg, float(stable_lr(ds.x, p, cfg).min()))
        for e in range(sums[1].shape[0])
    )
    lr = share * limit
    # with momentum, instability can come in bands narrower than the scan's 2.3% steps (seed 2214,
    # batch size 5, momentum 0.9: unstable at 0.0623-0.0676 and 0.0706-0.0777, stable 0.0778-0.0972);
    # what is promised is the behaviour where every epoch's product is stable
    assume((epoch_log_radius(sums, np.array([lr]), cfg) < 0).all())
    t = run_trace(cfg.replace(lr=lr))
    assert t.verdict.diverged_training is None
