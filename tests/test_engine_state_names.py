"""Honest updates that keep their state under names of their own (``m``, ``v``, ``vmax``, ``sq``,
``avg``, ``buf``, ``G``, ``velocity``) or form Adam's ``1 - beta`` and bias corrections in the
run's type: judged as agreeing in every dtype the type can hold them in (docs/own-engine.md)."""

from __future__ import annotations

import textwrap

import pytest

from sgdtrace import Config
from sgdtrace.config import make_schedule
from sgdtrace.tracing import run_trace
from tests.test_engine_user import InProcess

ADAM_MV = """
import numpy as np
def update(param, grad, state, hp):
    b1, b2 = hp.betas
    g = -grad if hp.maximize else grad
    if hp.weight_decay != 0:
        if hp.decoupled_weight_decay:
            param = param * (1 - hp.lr * hp.weight_decay)
        else:
            g = g + hp.weight_decay * param
    t = state["t"] = state.get("t", 0) + 1
    m = state["m"] = b1 * state.get("m", 0 * g) + (1 - b1) * g
    v = state["v"] = b2 * state.get("v", 0 * g) + (1 - b2) * g * g
    if hp.amsgrad:
        v = state["vmax"] = np.maximum(state.get("vmax", v), v)
    return param - hp.lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + hp.eps)
"""

# the bias corrections in the run's type, torch's state names
ADAM_BC_TYPED = """
import numpy as np
def update(param, grad, state, hp):
    dt = np.asarray(param).dtype.type
    b1, b2 = hp.betas
    g = grad
    if hp.weight_decay != 0:
        if hp.decoupled_weight_decay:
            param = param * (1 - hp.lr * hp.weight_decay)
        else:
            g = g + hp.weight_decay * param
    t = state["step"] = state.get("step", 0) + 1
    m = state["exp_avg"] = b1 * state.get("exp_avg", 0 * g) + (1 - b1) * g
    v = state["exp_avg_sq"] = b2 * state.get("exp_avg_sq", 0 * g) + (1 - b2) * g * g
    bc1, bc2 = dt(1) - dt(b1) ** t, dt(1) - dt(b2) ** t
    return param - hp.lr * (m / bc1) / (np.sqrt(v / bc2) + hp.eps)
"""

# every constant in the run's type (1 - beta too), a state of its own
ADAM_ALL_TYPED = """
import numpy as np
def update(param, grad, state, hp):
    dt = np.asarray(param).dtype.type
    b1, b2 = dt(hp.betas[0]), dt(hp.betas[1])
    t = state["t"] = state.get("t", 0) + 1
    m = state["m"] = b1 * state.get("m", 0 * grad) + (1 - b1) * grad
    v = state["v"] = b2 * state.get("v", 0 * grad) + (1 - b2) * grad * grad
    return param - hp.lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + hp.eps)
"""

RMSPROP_OWN = """
import numpy as np
def update(param, grad, state, hp):
    sq = state["sq"] = hp.alpha * state.get("sq", 0 * grad) + (1 - hp.alpha) * grad * grad
    if hp.centered:
        avg = state["avg"] = hp.alpha * state.get("avg", 0 * grad) + (1 - hp.alpha) * grad
        den = np.sqrt(sq - avg * avg) + hp.eps
    else:
        den = np.sqrt(sq) + hp.eps
    if hp.momentum > 0:
        buf = state["buf"] = hp.momentum * state.get("buf", 0 * grad) + grad / den
        return param - hp.lr * buf
    return param - hp.lr * grad / den
"""

ADAGRAD_G = """
import numpy as np
def update(param, grad, state, hp):
    t = state["t"] = state.get("t", 0) + 1
    G = state["G"] = state.get("G", 0 * grad + hp.initial_accumulator_value) + grad * grad
    return param - hp.lr / (1 + (t - 1) * hp.lr_decay) * grad / (np.sqrt(G) + hp.eps)
"""

SGD_VELOCITY = """
def update(param, grad, state, hp):
    g = grad + hp.weight_decay * param if hp.weight_decay else grad
    if hp.momentum:
        state["velocity"] = hp.momentum * state["velocity"] + (1 - hp.dampening) * g if "velocity" in state else g
        g = g + hp.momentum * state["velocity"] if hp.nesterov else state["velocity"]
    return param - hp.lr * g
"""

SCHEDULE = {"name": "StepLR", "interval": "step", "step_size": 2}

CASES = {
    "adam-m-v": (ADAM_MV, {"optimizer": "adam"}, ("exp_avg_w", "exp_avg_sq_w")),
    "adamw-m-v": (ADAM_MV, {"optimizer": "adamw", "weight_decay": 0.01}, ("exp_avg_w", "exp_avg_sq_w")),
    "adam-amsgrad-vmax": (ADAM_MV, {"optimizer": "adam", "amsgrad": True}, ("max_exp_avg_sq_w",)),
    "adam-bias-corrections-typed": (ADAM_BC_TYPED, {"optimizer": "adam"}, ()),
    "adamw-bias-corrections-typed": (ADAM_BC_TYPED, {"optimizer": "adamw"}, ()),
    "adam-all-typed": (ADAM_ALL_TYPED, {"optimizer": "adam"}, ("exp_avg_w", "exp_avg_sq_w")),
    "rmsprop-centered-momentum": (
        RMSPROP_OWN,
        {"optimizer": "rmsprop", "centered": True, "momentum": 0.9},
        ("square_avg_w", "grad_avg_w", "buf_w"),
    ),
    "adagrad-G": (ADAGRAD_G, {"optimizer": "adagrad"}, ("sum_w",)),
    "sgd-velocity": (SGD_VELOCITY, {"optimizer": "sgd", "momentum": 0.9}, ("buf_w",)),
}

#: what bfloat16 cannot hold: fl(0.999) is 1 there, so 1 - beta2 and 1 - beta2**t formed in it are 0
NOT_IN_BFLOAT16 = {"adam-bias-corrections-typed", "adamw-bias-corrections-typed", "adam-all-typed"}


def _engine(tmp_path, source):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent(source))
    return InProcess(str(path))


def _variants():
    for case in CASES:
        for dtype in ("float32", "float64", "bfloat16"):
            if dtype == "bfloat16" and case in NOT_IN_BFLOAT16:
                continue
            yield pytest.param(case, dtype, id=f"{case}-{dtype}")


@pytest.mark.parametrize(("case", "dtype"), list(_variants()))
def test_an_honest_update_under_its_own_names_agrees(tmp_path, case, dtype):
    source, opts, not_kept = CASES[case]
    engine = _engine(tmp_path, source)
    for judge, extra in (("carry", {}), ("step", {"synthetic": 64, "features": 3})):
        cfg = Config(dtype=dtype, epochs=5, judge=judge, scheduler=make_schedule(SCHEDULE, "test"), **opts, **extra)
        t = run_trace(cfg, engine=engine)
        assert t.verdict.ok, (case, dtype, judge, t.verdict.first_divergent_step)
        assert set(not_kept) <= set(t.engine.not_kept)


@pytest.mark.parametrize("case", sorted(NOT_IN_BFLOAT16))
def test_bias_corrections_formed_in_bfloat16_are_caught_not_a_crash(tmp_path, case):
    """bfloat16 holds 0.999 as 1: the correction is 0 and the step nan or none; caught at step 1."""
    source, opts, _ = CASES[case]
    t = run_trace(Config(dtype="bfloat16", epochs=2, **opts), engine=_engine(tmp_path, source))
    assert not t.verdict.ok
    assert t.verdict.first_divergent_step.step == 1


def test_a_wrong_bias_correction_is_still_caught_in_float32(tmp_path):
    """The allowance for a typed correction is u-sized: one step behind is far outside it."""
    wrong = ADAM_BC_TYPED.replace("dt(b1) ** t", "dt(b1) ** (t + 1)")
    t = run_trace(Config(optimizer="adam", dtype="float32", epochs=2), engine=_engine(tmp_path, wrong))
    assert not t.verdict.ok
