"""Logistic regression (``--model logistic``): torch's rules by hand, judged by the general rules."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

from sgdtrace import Config, dtypes
from sgdtrace.models import logistic
from sgdtrace.models.ops import HandOps
from sgdtrace.tracing import run_trace

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
BASE = dict(model="logistic", synthetic=48, features=2, true_w=(1.5, -1.0), true_b=-2.0, batch_size=8, epochs=3)


def _learner(cfg, dataset):
    """A learner's own loop: nn.Linear(D, 1), the loss, torch.optim, DataLoader; its values per step."""
    dtype = getattr(torch, cfg.dtype)
    x = torch.as_tensor(dataset.x, dtype=dtype)
    y = torch.as_tensor(dataset.y, dtype=dtype).reshape(-1, 1)
    model = nn.Linear(x.shape[1], 1, dtype=dtype)
    with torch.no_grad():
        model.weight.fill_(float(cfg.init_w))
        model.bias.fill_(float(cfg.init_b))
    criterion = nn.BCEWithLogitsLoss() if cfg.loss == "bce" else nn.BCELoss()
    opt = getattr(
        optim,
        {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad"}[cfg.optimizer],
    )(model.parameters(), lr=cfg.lr)
    ws, gs = [], []
    for _ in range(cfg.epochs):
        for xb, yb in DataLoader(TensorDataset(x, y), batch_size=cfg.batch_size):
            out = model(xb)
            loss = criterion(out if cfg.loss == "bce" else torch.sigmoid(out), yb)
            loss.backward()
            gs.append(model.weight.grad[0].float().numpy().copy())
            opt.step()
            opt.zero_grad()
            ws.append(model.weight[0].detach().float().numpy().copy())
    return np.array(gs), np.array(ws)


@pytest.mark.parametrize("loss", ["bce", "bce-sigmoid"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_agrees_with_a_learners_loop(loss, dtype, optimizer):
    cfg = Config(**BASE, loss=loss, dtype=dtype, optimizer=optimizer, lr=0.05)
    trace = run_trace(cfg)
    assert trace.verdict.ok, trace.verdict.first_divergent_step
    # the torch side is the learner's own loop, bit for bit
    gs, ws = _learner(cfg, trace.dataset)
    assert np.array_equal(gs, trace.torch["grad_w"].astype(np.float32))
    assert np.array_equal(ws, trace.torch["w"].astype(np.float32))
    # and the hand side is close to it, not equal by construction
    assert np.all(np.isfinite(trace.manual["w"].astype(np.float64)))


@pytest.mark.parametrize("judge", ["carry", "step"])
def test_both_judges_agree_on_honest_runs(judge):
    for loss in ("bce", "bce-sigmoid"):
        trace = run_trace(Config(**{**BASE, "epochs": 6}, loss=loss, judge=judge, momentum=0.9, lr=0.2, shuffle=True))
        assert trace.verdict.ok


def test_bce_sigmoid_gradient_vanishes_where_sigma_saturates():
    """torch's BCELoss backward is (p - y)/max((1 - p)p, 1e-12): where p rounds to 1, (1 - p)p = 0 and
    torch's dl/dz is 0, not the textbook p - y; the hand side reproduces it."""
    ops = HandOps("float32")
    z = np.array([30.0, 5.0], dtype=np.float32)
    y = np.array([0.0, 0.0], dtype=np.float32)
    out = logistic.forward_backward(
        ops, {"w": np.ones(1, np.float32), "b": np.zeros(1, np.float32)}, z[:, None], y, "bce-sigmoid"
    )
    zt = torch.tensor(z[:, None], requires_grad=True)
    nn.BCELoss()(torch.sigmoid(zt), torch.tensor(y)[:, None]).backward()
    assert out["dl_dz"][0] == 0 and zt.grad[0, 0].item() == 0  # p = 1: torch's gradient vanishes
    assert np.array_equal(out["dl_dz"], zt.grad[:, 0].numpy())
    # the loss clamps log(1 - p) = log 0 at -100 (forward only)
    loss = nn.BCELoss()(torch.sigmoid(torch.tensor(z[:, None])), torch.tensor(y)[:, None])
    assert float(out["loss"]) == loss.item() and loss.item() > 50


def test_torch_sigmoid_saturates_where_the_judge_says():
    """The judge's saturation rule, probed on this machine: where e^-z < u/4, torch's sigmoid is
    exactly 1; where e^-z overflows the type it computes in, exactly 0 (vectorised and one element)."""
    for name in ("float32", "float64", "bfloat16", "float16"):
        dt = getattr(torch, name)
        u = dtypes.unit_roundoff(name)
        z0 = -math.log(u / 4)
        z = torch.linspace(z0 + 1e-3, z0 + 60, 2048, dtype=torch.float64).to(dt)
        z = z[z.double() >= z0]
        assert bool((torch.sigmoid(z) == 1).all()), name
        assert all(torch.sigmoid(z[i : i + 1]).item() == 1 for i in range(0, z.numel(), 97)), name
        acc = "float32" if name in dtypes.REDUCED else name
        limit = math.log(float(dtypes.finfo(acc).max))
        if limit < float(dtypes.finfo(name).max):
            low = torch.linspace(-limit - 60, -limit - 1e-3, 512, dtype=torch.float64).to(dt)
            low = low[low.double() < -limit]
            assert bool((torch.sigmoid(low) == 0).all()), name


def test_labels_must_be_zero_or_one(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("x,y\n1,0\n2,1\n3,2\n")
    out = subprocess.run(
        [sys.executable, "-m", "sgdtrace", "run", "--model", "logistic", "--data", str(path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "data row 3" in out.stderr and "label y = 2" in out.stderr and "Traceback" not in out.stderr


def test_synthetic_labels_follow_the_seed():
    a = run_trace(Config(**BASE, seed=3)).dataset.y
    b = run_trace(Config(**BASE, seed=3)).dataset.y
    c = run_trace(Config(**BASE, seed=4)).dataset.y
    assert set(np.unique(a)) <= {0.0, 1.0} and np.array_equal(a, b) and not np.array_equal(a, c)


def test_explain_shows_z_p_the_terms_and_dl_dz():
    from click.testing import CliRunner

    from sgdtrace.cli import cli

    args = ["explain", "--model", "logistic", "--loss", "bce-sigmoid", "--synthetic", "8", "--true-w", "1.5"]
    r = CliRunner().invoke(cli, [*args, "--true-b", "-7.5", "--init-w", "4", "--batch-size", "4", "--batch", "2"])
    assert r.exit_code == 0, r.output
    for text in ("p = σ(z)", "dl/dz", "max((1 − p)·p, 1e-12)", "torch: dl/dw", "clamped at −100"):
        assert text in r.output
    assert "bit for bit as in the" in r.output and "Warning" not in r.output


@pytest.mark.parametrize(
    "loss,node", [("bce", "BinaryCrossEntropyWithLogitsBackward0"), ("bce-sigmoid", "SigmoidBackward0")]
)
def test_graph_beside_torchs_grad_fn(loss, node):
    from sgdtrace.teaching.graph import build_graph

    trace = run_trace(Config(**BASE, loss=loss))
    g = build_graph(trace)
    assert g.structure_ok, g.structure_note
    names = [n.name for n in g.nodes]
    assert node in names and "AddmmBackward0" in names
    z = next(i for i, n in enumerate(g.nodes) if n.name == "AddmmBackward0")
    assert g.ulps[z] is not None and g.ulps[z] <= 4  # dl/dz by hand beside torch's


def test_plot_draws_the_decision_boundary_on_two_features(tmp_path):
    pytest.importorskip("matplotlib")
    from sgdtrace.views.plot import plot_figure

    fig = plot_figure(run_trace(Config(**BASE)))
    titles = [ax.get_title() for ax in fig.get_axes()]
    assert "decision boundary p = 1/2" in titles
    assert any("binary cross-entropy" in ax.get_ylabel() for ax in fig.get_axes())
    one = plot_figure(run_trace(Config(**{**BASE, "features": 1, "true_w": 1.5})))
    assert "decision boundary p = 1/2" not in [ax.get_title() for ax in one.get_axes()]


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--format", "html"],
        ["run", "--format", "json"],
        ["run", "--format", "csv"],
        ["explain", "--batch", "2", "--format", "json"],
        ["graph", "--format", "dot"],
        ["graph", "--format", "json"],
    ],
)
def test_every_view_of_a_logistic_run(args, tmp_path):
    from click.testing import CliRunner

    from sgdtrace.cli import cli

    out = tmp_path / "out"
    config = str(Path(__file__).parents[1] / "sgdtrace" / "configs" / "logistic-bce-sigmoid.toml")
    r = CliRunner().invoke(cli, [*args, "--config", config, "--output", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "MseLoss" not in text and "MSELoss" not in text
    if args[0] == "graph" and args[-1] == "json":
        assert '"loss": "bce-sigmoid"' in text and "SigmoidBackward0" in text
    if args[0] == "explain":
        assert '"dl/dz"' in text and '"p"' in text
