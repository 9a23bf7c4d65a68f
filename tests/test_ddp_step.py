"""``--judge step`` under ``--world-size N``: each step of the hand side starts, on every rank,
from torch's rank-0 parameters and optimizer state after the previous step; every divergent step
is listed, and a slip at one step leaves the following steps agreeing again.

The torch side is gathered once per session by the DDP test modules (one process group per world
size, :func:`torch_ddp.run_many`) and judged here again under step mode.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_ddp_everything import _group as _everything
from test_ddp_models import _group as _models
from test_ddp_models import _slipping

from sgdtrace.tracing import run_distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: per world size: (module's groups, job) judged honest under step mode
HONEST = {
    2: ((_everything, "sgd float32"), (_everything, "adam bfloat16"), (_models, "logistic bce sgd")),
    3: ((_everything, "sgd float64"), (_everything, "adam bfloat16"), (_models, "mlp tanh sgd bfloat16")),
}


def _step(cfg):
    return cfg.replace(judge="step")


@pytest.mark.parametrize("world", [2, 3])
def test_honest_runs_agree_step_by_step(world):
    """SGD with Nesterov momentum and a schedule, Adam annealed per step in bfloat16, logistic
    regression and the network: every step agrees, nothing carried, no step listed; the hand side's
    steps started from torch's values (its parameters differ from its own carried run's)."""
    for groups, name in HONEST[world]:
        cfg, gathered = groups(world)[name]
        trace = run_distributed(_step(cfg), gathered=gathered)
        assert trace.verdict.ok, (world, name, trace.verdict.first_divergent_step)
        assert trace.verdict.divergent_steps == {"count": 0, "elements": 0, "steps": []}, name
        assert all(not np.any(d.carried) for d in trace.divergence.values()), name
        assert all(not np.any(d.carried) for d in trace.ranks.divergence.values()), name
        carry = run_distributed(cfg, gathered=gathered)
        assert carry.verdict.ok and carry.verdict.divergent_steps is None, name
        # the loss of each step: the same torch columns, worked from torch's start under step mode
        assert np.array_equal(trace.torch["loss"], carry.torch["loss"]), name


@pytest.mark.parametrize(
    "world, name, param",
    [(2, "mlp tanh adam schedule", "w1"), (3, "logistic bce-sigmoid sgd", "b")],
)
def test_a_slip_at_one_step_is_listed_and_the_next_steps_agree(world, name, param):
    """The last rank's gradient of one parameter slips at step 2 only: step mode lists step 2
    alone (the steps after it start from torch's values again and agree), naming the gradient."""
    cfg, gathered = _models(world)[name]
    factor = 1.25 if cfg.dtype == "bfloat16" else 1.01
    trace = run_distributed(_step(cfg), gathered=gathered, engine=_slipping(world, 1, world - 1, param, factor))
    listed = trace.verdict.divergent_steps
    assert [row["step"] for row in listed["steps"]] == [2] and listed["count"] == 1, listed
    row = listed["steps"][0]
    first = trace.verdict.first_divergent_step
    assert (row["step"], row["field"]) == (first["step"], first["field"]) and "grad_" + param in row["field"]
    for f, d in trace.divergence.items():  # every step but the slipped one within its allowance
        assert np.delete(d.ok.reshape(trace.n_steps, -1), 1, axis=0).all(), f


SLIP = """
_calls = [0]
_gradients = gradients


def gradients(w, b, x, y):  # rank 0's gradient of w slips at step 3 only (2 ranks: one call each a step)
    _calls[0] += 1
    loss, grad_w, grad_b = _gradients(w, b, x, y)
    return loss, grad_w * 1.5 if _calls[0] == 5 else grad_w, grad_b
"""


def test_a_users_engine_under_step_mode(tmp_path):
    """--engine FILE.py: its gradients on each rank and its update (SGD's momentum buffer, Nesterov,
    a schedule) start every step from torch's rank-0 parameters and buffer; a correct file agrees at
    every step, a file that slips at step 3 only has step 3 listed alone."""
    cfg, gathered = _everything(2)["sgd float32"]
    with open(os.path.join(ROOT, "docs/examples/engine_correct.py")) as fh:
        correct = fh.read()
    good = run_distributed(
        _step(cfg).replace(engine=os.path.join(ROOT, "docs/examples/engine_correct.py")), gathered=gathered
    )
    assert good.verdict.ok and good.verdict.divergent_steps["count"] == 0, good.verdict.first_divergent_step
    assert good.engine.name == "engine_correct.py" and "buf_w" in good.manual
    slip = tmp_path / "slip.py"
    slip.write_text(correct + SLIP)
    bad = run_distributed(_step(cfg).replace(engine=str(slip)), gathered=gathered)
    listed = bad.verdict.divergent_steps
    assert [row["step"] for row in listed["steps"]] == [3], listed
    assert listed["steps"][0]["field"] in ("rank0.grad_w", "grad_w"), listed
