"""Your own engine under the judge (--engine FILE.py): an honest file passes, each classic mistake is
caught at its first step and named, and a failing file is exit 2 with its own traceback lines only.

Most runs here use :class:`InProcess`, which serves the request with the child's own code
(:func:`sgdtrace.engines.user.serve`) without starting a process (a child costs ~0.5 s, mostly
NumPy's import); the tests of the process itself (time-out, isolation, the CLI) start real ones.
"""

from __future__ import annotations

import importlib.util
import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgdtrace import Config
from sgdtrace.check import unserved
from sgdtrace.cli import cli
from sgdtrace.config import build_config, load_toml
from sgdtrace.engines import user
from sgdtrace.engines.user import EngineError, UserEngine
from sgdtrace.testing import assert_matches_torch
from sgdtrace.tracing import run_trace

ROOT = Path(__file__).resolve().parents[1]
CORRECT = ROOT / "docs" / "examples" / "engine_correct.py"
MISTAKE = ROOT / "docs" / "examples" / "engine_mistake.py"


class InProcess(UserEngine):
    """The child's work done in this process (same code path, no process start)."""

    def call(self, request):
        try:
            return user._decode(user._encode(user.serve(request)))
        except user._Failure as exc:
            raise EngineError(str(exc)) from None


def write(tmp_path: Path, source: str, name: str = "mine.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def traced(path, **opts):
    return run_trace(Config(**opts), engine=InProcess(str(path)))


# ------------------------------------------------------------------ an honest engine passes


def test_the_correct_example_agrees_and_is_labelled(tmp_path):
    t = traced(CORRECT, momentum=0.9, epochs=3)
    assert t.verdict.ok, t.verdict.first_divergent_step
    assert t.hand == "engine_correct.py"
    assert t.engine.parts == ("gradients", "update")
    assert t.engine.not_kept == ()
    assert set(t.manual) == {"grad_w", "grad_b", "loss", "w", "b", "buf_w", "buf_b"}
    own = run_trace(Config(momentum=0.9, epochs=3))
    # a different engine: not sgdtrace's values bit for bit
    assert any(not np.array_equal(t.manual[f], own.manual[f]) for f in t.manual)


configs = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["float32", "float64"]),
        "lr": st.sampled_from([0.001, 0.005, 0.01]),
        "batch_size": st.integers(1, 9),
        "epochs": st.integers(1, 6),
        "synthetic": st.sampled_from([None, 7, 30]),
        "noise": st.sampled_from([0.0, 0.5]),
        "momentum": st.sampled_from([0.0, 0.5, 0.9]),
        "dampening": st.sampled_from([0.0, 0.3]),
        "weight_decay": st.sampled_from([0.0, 0.01]),
        "maximize": st.booleans(),
        "shuffle": st.booleans(),
        "drop_last": st.booleans(),
        "seed": st.integers(0, 50),
        "init_w": st.sampled_from([0.0, 1.5, -2.0]),
    }
)


#: an honest engine in the run's dtype: reversed samples, np.mean's pairwise sums, 2 applied last
REVERSED_IN_DTYPE = ROOT / "tests" / "engines" / "reversed_in_dtype.py"


@pytest.mark.parametrize("engine", [CORRECT, REVERSED_IN_DTYPE], ids=["float64", "in-dtype"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(opts=configs)
def test_an_honest_engine_never_fails_where_sgdtraces_own_passes(engine, opts):
    """float64 sums rounded once, or sums in the run's dtype in reverse with np.mean: over random
    configs in float32 and float64."""
    if opts["synthetic"] is None:
        opts["noise"] = 0.0
    if opts["drop_last"] and opts["batch_size"] > (opts["synthetic"] or 9):
        opts["drop_last"] = False
    if opts["momentum"] and not opts["dampening"] and opts["seed"] % 2:
        opts["nesterov"] = True
    cfg = Config(**opts)
    own = run_trace(cfg)
    mine = run_trace(cfg, engine=InProcess(str(engine)))
    if own.verdict.ok:
        assert mine.verdict.ok, mine.verdict.first_divergent_step
    assert mine.verdict.max_tol_ratio < 1 or not own.verdict.ok


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"momentum": 0.9, "nesterov": True, "dtype": "float64", "epochs": 4},
        {
            "synthetic": 50,
            "noise": 1.0,
            "batch_size": 7,
            "shuffle": True,
            "weight_decay": 0.1,
            "momentum": 0.5,
            "dampening": 0.2,
            "epochs": 3,
        },
    ],
)
def test_the_correct_example_agrees_in_a_real_child_process(opts):
    t = run_trace(Config(engine=str(CORRECT), **opts))
    assert t.verdict.ok, t.verdict.first_divergent_step
    assert t.engine.name == "engine_correct.py"


def test_only_gradients_or_only_update_the_rest_is_sgdtraces_own(tmp_path):
    grads = write(
        tmp_path,
        """
        import numpy as np
        def gradients(w, b, x, y):
            d = w * x + b - y
            return np.mean(d * d), np.mean(2 * d * x), np.mean(2 * d)
    """,
        "grads.py",
    )
    upd = write(
        tmp_path,
        """
        def update(param, grad, state, hp):
            return param - hp.lr * grad
    """,
        "upd.py",
    )
    for path, parts in ((grads, ("gradients",)), (upd, ("update",))):
        t = traced(path, epochs=2)
        assert t.verdict.ok and t.engine.parts == parts


def test_state_under_another_name_is_reported_not_kept_and_the_update_still_judged(tmp_path):
    path = write(
        tmp_path,
        """
        def update(param, grad, state, hp):
            state["v"] = grad if "v" not in state else hp.momentum * state["v"] + grad
            return param - hp.lr * state["v"]
    """,
    )
    t = traced(path, momentum=0.9, epochs=2)
    assert t.verdict.ok
    assert t.engine.not_kept == ("buf_w", "buf_b")
    assert "buf_w" not in t.divergence and "buf_w" in t.torch
    from sgdtrace.views.table import verdict_text

    assert "not kept by mine.py: buf_w, buf_b" in verdict_text(t).plain
    # the same file with a wrong step is still caught, through the w column
    bad = write(
        tmp_path,
        """
        def update(param, grad, state, hp):
            state["v"] = grad if "v" not in state else hp.momentum * state["v"] + grad
            return param - 2 * hp.lr * state["v"]
    """,
        "bad.py",
    )
    t = traced(bad, momentum=0.9)
    assert t.verdict.first_divergent_step["field"] == "w"


#: SGD written correctly, its momentum buffer kept under a key of its own (not torch's name)
OWN_KEY = """
def update(param, grad, state, hp):
    g = -grad if hp.maximize else grad
    if hp.weight_decay != 0:
        g = g + hp.weight_decay * param
    if hp.momentum != 0:
        buf = state.get("buf")
        buf = g if buf is None else hp.momentum * buf + (1 - hp.dampening) * g
        state["buf"] = buf
        g = g + hp.momentum * buf if hp.nesterov else buf
    return param - hp.lr * g
"""


@pytest.mark.parametrize(
    "opts",
    [
        dict(epochs=10, momentum=0.9, dampening=0.1, weight_decay=0.01),  # exit 1 at step 26 before
        dict(epochs=40, momentum=0.95, dampening=0.5, weight_decay=0.1, shuffle=True, seed=3),
        dict(epochs=30, momentum=0.9, nesterov=True, maximize=True, lr=0.003),
        dict(epochs=20, momentum=0.9, synthetic=40, noise=1.0, batch_size=1, lr=0.002),
    ],
)
def test_a_buffer_kept_under_its_own_key_is_carried_and_an_honest_engine_passes(tmp_path, opts):
    """The judge cannot see the engine's buffer: its difference from torch's is carried from the
    measured differences of what feeds it, and its rounding accumulated (docs/tolerance.md)."""
    t = traced(write(tmp_path, OWN_KEY, "good_update.py"), **opts)
    assert t.engine.not_kept == ("buf_w", "buf_b")
    assert t.verdict.ok, t.verdict.first_divergent_step
    assert t.verdict.max_ulp > 0  # it does round otherwise than torch (float64 Python floats, then one rounding)


@pytest.mark.parametrize(
    "wrong, field",
    [
        ("buf = g if buf is None else hp.momentum * buf + g", "w"),  # dampening left out
        ("buf = hp.lr * g if buf is None else hp.momentum * buf + hp.lr * g", "w"),  # lr inside the buffer
        ("buf = g if buf is None else hp.momentum * buf + (1 - hp.dampening) * g * 1.0001", "w"),
    ],
)
def test_a_wrong_buffer_under_its_own_key_is_still_caught(tmp_path, wrong, field):
    source = OWN_KEY.replace("buf = g if buf is None else hp.momentum * buf + (1 - hp.dampening) * g", wrong)
    assert source != OWN_KEY
    t = traced(write(tmp_path, source, "bad_update.py"), epochs=10, momentum=0.9, dampening=0.1, weight_decay=0.01)
    assert not t.verdict.ok and t.verdict.first_divergent_step["field"] == field
    assert t.verdict.first_divergent_step["step"] <= 3


# ------------------------------------------------------------------ each mistake caught and named

GRAD = """
import numpy as np

def parts(w, b, x, y):
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    d = float(w) * x64 + float(b) - y64
    return x64, d, len(x)
"""

UPDATE = """
def update(param, grad, state, hp):
    g = grad + hp.weight_decay * param
    if hp.momentum:
        {buffer}
        g = state["momentum_buffer"]
    return param - {step}
"""
TORCH_BUFFER = (
    'state["momentum_buffer"] = g if "momentum_buffer" not in state else '
    'hp.momentum * state["momentum_buffer"] + (1 - hp.dampening) * g'
)

MISTAKES = {
    # name: (source, config, first step, field, diagnosis kind, factor)
    "factor 2": (
        GRAD
        + """
def gradients(w, b, x, y):
    x, d, n = parts(w, b, x, y)
    return np.mean(d * d), 4 * np.mean(d * x), 2 * np.mean(d)
""",
        {},
        1,
        "grad_w",
        "factor",
        2.0,
    ),
    "factor 1/2": (
        GRAD
        + """
def gradients(w, b, x, y):
    x, d, n = parts(w, b, x, y)
    return np.mean(d * d), np.mean(d * x), 2 * np.mean(d)
""",
        {},
        1,
        "grad_w",
        "factor",
        0.5,
    ),
    "factor n (a sum)": (
        GRAD
        + """
def gradients(w, b, x, y):
    x, d, n = parts(w, b, x, y)
    return np.mean(d * d), 2 * np.mean(d * x), 2 * np.sum(d)
""",
        {},
        1,
        "grad_b",
        "factor",
        3.0,
    ),
    "factor 1/n": (
        GRAD
        + """
def gradients(w, b, x, y):
    x, d, n = parts(w, b, x, y)
    return np.mean(d * d) / n, 2 * np.mean(d * x), 2 * np.mean(d)
""",
        {},
        1,
        "loss",
        "factor",
        1 / 3,
    ),
    "factor n/(n-1)": (
        GRAD
        + """
def gradients(w, b, x, y):
    x, d, n = parts(w, b, x, y)
    return np.mean(d * d), 2 * np.sum(d * x) / (n - 1), 2 * np.mean(d)
""",
        {"batch_size": 4},
        1,
        "grad_w",
        "factor",
        4 / 3,
    ),
    "flipped sign": (
        GRAD
        + """
def gradients(w, b, x, y):
    x, d, n = parts(w, b, x, y)
    return np.mean(d * d), 2 * np.mean(-d * x), 2 * np.mean(d)
""",
        {},
        1,
        "grad_w",
        "sign",
        -1.0,
    ),
    "the previous step's gradient": (
        GRAD
        + """
cache = []
def gradients(w, b, x, y):
    x, d, n = parts(w, b, x, y)
    cache.append((np.mean(d * d), 2 * np.mean(d * x), 2 * np.mean(d)))
    return cache[-1][0], cache[-2][1] if len(cache) > 1 else cache[-1][1], cache[-1][2]
""",
        {},
        2,
        "grad_w",
        "previous_gradient",
        None,
    ),
    "the loss after the update": (
        GRAD
        + """
def gradients(w, b, x, y):
    x, d, n = parts(w, b, x, y)
    gw, gb = 2 * np.mean(d * x), 2 * np.mean(d)
    w1, b1 = float(w) - 0.01 * gw, float(b) - 0.01 * gb  # the loss printed after the step (lr 0.01)
    d1 = w1 * x + b1 - y.astype(np.float64)
    return np.mean(d1 * d1), gw, gb
""",
        {},
        1,
        "loss",
        "after_update",
        None,
    ),
    "a sample left out": (
        GRAD
        + """
def gradients(w, b, x, y):
    x, d, n = parts(w, b, x, y)
    total = 0.0
    for i in range(n - 1):
        total += 2 * d[i]
    return np.mean(d * d), 2 * np.mean(d * x), total / n
""",
        {},
        1,
        "grad_b",
        "sample_left_out",
        None,
    ),
    "a sample counted twice": (
        GRAD
        + """
def gradients(w, b, x, y):
    x, d, n = parts(w, b, x, y)
    return np.mean(d * d), 2 * (np.sum(d * x) + d[-1] * x[-1]) / n, 2 * np.mean(d)
""",
        {"batch_size": 4},
        1,
        "grad_w",
        "sample_twice",
        None,
    ),
    "the step twice as large": (UPDATE.format(buffer="pass", step="2 * hp.lr * g"), {}, 1, "w", "factor", 2.0),
    "an ascent step": (UPDATE.format(buffer="pass", step="-hp.lr * g"), {}, 1, "w", "sign", -1.0),
    "the update's previous gradient": (
        """
def update(param, grad, state, hp):
    prev = state.get("prev", 0.0)
    state["prev"] = grad
    return param - hp.lr * prev
""",
        {},
        1,
        "w",
        "previous_gradient",
        None,
    ),
    "the buffer damped on its first step": (
        UPDATE.format(
            buffer='state["momentum_buffer"] = hp.momentum * state.get("momentum_buffer", 0.0)'
            " + (1 - hp.dampening) * g",
            step="hp.lr * g",
        ),
        {"momentum": 0.9, "dampening": 0.5},
        1,
        "buf_w",
        "dampening_first_step",
        0.5,
    ),
    "the buffer never damped": (
        UPDATE.format(
            buffer='state["momentum_buffer"] = g if "momentum_buffer" not in state else '
            'hp.momentum * state["momentum_buffer"] + g',
            step="hp.lr * g",
        ),
        {"momentum": 0.9, "dampening": 0.5},
        2,
        "buf_w",
        "no_dampening",
        None,
    ),
    "weight decay after momentum": (
        """
def update(param, grad, state, hp):
    state["momentum_buffer"] = grad if "momentum_buffer" not in state else hp.momentum * state["momentum_buffer"] + grad
    return param - hp.lr * (state["momentum_buffer"] + hp.weight_decay * param)
""",
        {"momentum": 0.9, "weight_decay": 0.1, "init_w": 1.0, "init_b": 1.0},
        1,
        "buf_w",
        "weight_decay_after_momentum",
        None,
    ),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_classic_mistake_is_caught_at_its_first_step_and_named(tmp_path, name):
    source, opts, step, field, kind, factor = MISTAKES[name]
    t = traced(write(tmp_path, source), **opts)
    first = t.verdict.first_divergent_step
    assert not t.verdict.ok
    assert (first["step"], first["field"]) == (step, field)
    diagnosis = first["diagnosis"]
    assert diagnosis is not None and diagnosis["kind"] == kind, diagnosis
    if factor is not None:
        assert diagnosis["factor"] == pytest.approx(factor)
    assert diagnosis["text"]


def test_the_correct_update_with_the_mistakes_template_agrees(tmp_path):
    """The update template of the mistakes above, written correctly, agrees (the mistakes are the mistakes)."""
    t = traced(
        write(tmp_path, UPDATE.format(buffer=TORCH_BUFFER, step="hp.lr * g")),
        momentum=0.9,
        dampening=0.5,
        weight_decay=0.1,
        init_w=1.0,
        epochs=2,
    )
    assert t.verdict.ok, t.verdict.first_divergent_step


def test_no_guess_where_the_numbers_support_none(tmp_path):
    path = write(
        tmp_path,
        GRAD
        + """
def gradients(w, b, x, y):
    x, d, n = parts(w, b, x, y)
    return np.mean(d * d), 2 * np.mean(d * x) + 1.2345, 2 * np.mean(d)
""",
    )
    t = traced(path)
    assert not t.verdict.ok
    assert t.verdict.first_divergent_step["diagnosis"] is None


def test_sgdtraces_own_engine_needs_no_diagnosis():
    assert run_trace(Config(momentum=0.9)).verdict.first_divergent_step is None


# ------------------------------------------------------------------ failing safely (exit 2, the user's frames only)


def cli_run(*args):
    return CliRunner().invoke(cli, list(args))


FAILURES = {
    # name: (source, the first line's expected text)
    "an exception": (
        """
def helper(d):
    return d / 0.0 + {}[1]

def gradients(w, b, x, y):
    return helper(w * x + b - y)
""",
        "gradients raised KeyError at step 1 (epoch 1, batch 1): 1",
    ),
    "a misspelled function": (
        """
def gradient(w, b, x, y):
    return 0.0, 0.0, 0.0
""",
        "defines 'gradient', which is not a part sgdtrace calls: did you mean 'gradients'?",
    ),
    "no function at all": (
        """
def helper():
    pass
""",
        "defines neither gradients nor update",
    ),
    "a list": (
        """
def gradients(w, b, x, y):
    return [0.0, 0.0, 0.0]
""",
        "gradients returned a list of 3 values at step 1 (epoch 1, batch 1): expected a tuple (loss, grad_w, grad_b)",
    ),
    "a tuple of 2": (
        """
def gradients(w, b, x, y):
    return 0.0, 0.0
""",
        "gradients returned a tuple of 2 values at step 1",
    ),
    "an array of length n": (
        """
def gradients(w, b, x, y):
    d = w * x + b - y
    return (d * d).mean(), 2 * d * x, (2 * d).mean()
""",
        "gradients returned a NumPy array of shape (3,) for grad_w at step 1 (epoch 1, batch 1): "
        "expected a real scalar",
    ),
    "None": (
        """
def update(param, grad, state, hp):
    param = param - hp.lr * grad
""",
        "update returned None for the new parameter at step 1",
    ),
    "a tensor": (
        """
class Tensor:  # stands for torch.Tensor (importing torch in the child would take seconds)
    pass
Tensor.__module__ = "torch"

def update(param, grad, state, hp):
    return Tensor()
""",
        "update returned a torch Tensor (return a NumPy scalar or a Python float: tensor.item())",
    ),
    "a syntax error": (
        """
def gradients(w, b, x, y):
    return (w, b
""",
        "mine.py: syntax error at line 3",
    ),
    "the template as is": (None, "gradients is not written yet (it raises NotImplementedError): write gradients first"),
}


@pytest.mark.parametrize("name", list(FAILURES))
def test_a_failing_file_is_exit_2_with_one_line_then_its_own_frames(tmp_path, name):
    source, expected = FAILURES[name]
    if source is None:
        from sgdtrace.engines.template import TEMPLATE

        source = TEMPLATE
    path = write(tmp_path, source)
    result = cli_run("run", "--engine", str(path))
    assert result.exit_code == 2, result.output
    lines = result.stderr.rstrip("\n").split("\n")
    assert lines[0].startswith("sgdtrace: error: ") and expected in lines[0], lines[0]
    # then only the traceback's lines inside the user's file (no sgdtrace frame)
    frames = [line for line in lines[1:] if line.lstrip().startswith("File ")]
    assert all("mine.py" in line for line in frames), lines
    assert "sgdtrace/" not in result.stderr and "Traceback" not in result.stderr
    if name == "an exception":
        assert [line.split(", in ")[1] for line in frames] == ["gradients", "helper"]


def test_an_endless_loop_is_stopped_by_the_timeout(tmp_path):
    import time

    path = write(
        tmp_path,
        """
def gradients(w, b, x, y):
    while True:
        pass
""",
    )
    start = time.perf_counter()
    result = cli_run("run", "--engine", str(path), "--engine-timeout", "1.5")
    assert result.exit_code == 2
    assert "still running after 1.5 s: stopped" in result.stderr
    assert time.perf_counter() - start < 10


def test_the_child_runs_without_torch_and_prints_cannot_corrupt_the_reply(tmp_path):
    path = write(
        tmp_path,
        """
import sys
def gradients(w, b, x, y):
    assert "torch" not in sys.modules, "the child imported torch"
    print("debugging output", w, b)
    d = w * x + b - y
    return (d * d).mean(), (2 * d * x).mean(), (2 * d).mean()
""",
    )
    result = cli_run("run", "--engine", str(path), "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["config"]["engine"] == {"name": "mine.py", "path": str(path), "parts": ["gradients"]}
    assert doc["verdict"]["ok"]


def test_bad_engine_options_are_refused_before_running():
    result = cli_run("run", "--engine", "no-such-file.py")
    assert result.exit_code == 2 and "--engine 'no-such-file.py': no such file" in result.stderr
    result = cli_run("run", "--engine", str(CORRECT), "--engine-timeout", "0")
    assert result.exit_code == 2 and "--engine-timeout 0.0: must be a number of seconds > 0" in result.stderr
    result = cli_run("run", "--engine", str(ROOT / "docs" / "examples" / "engine_adam.py"), "--optimizer", "rmsprop")
    assert result.exit_code == 2 and "declares SGDTRACE optimizer adam, adamw, not --optimizer rmsprop" in result.stderr
    result = cli_run("graph", "--engine", str(CORRECT))
    assert result.exit_code == 2 and "explain --engine" in result.stderr


def test_without_engine_the_json_says_null():
    doc = json.loads(cli_run("run", "--format", "json").stdout)
    assert doc["config"]["engine"] is None


# ------------------------------------------------------------------ explain, check, junit, template, pytest


def test_explain_shows_the_users_values_and_nodes_beside_the_expected_ones():
    result = cli_run("explain", "--engine", str(MISTAKE), "--batch", "1")
    assert result.exit_code == 1
    out = result.output
    assert "engine_mistake.py: dl/dw = -13.3333  ✗ expected -26.6667" in out
    assert "engine_mistake.py: l = 146.667  ✓ as expected" in out
    assert "First node that differs: dl_dd" in out
    doc = json.loads(cli_run("explain", "--engine", str(MISTAKE), "--batch", "1", "--format", "json").stdout)
    assert doc["engine"]["ok"]["grad_w"] is False and doc["engine"]["ok"]["loss"] is True
    assert doc["engine"]["nodes"]["d"] == doc["forward"]["d"]


def test_check_writes_junit_xml_in_the_shape_ci_systems_read(tmp_path):
    report = tmp_path / "report.xml"
    configs = [str(ROOT / "sgdtrace" / "configs" / c) for c in ("article.toml", "momentum.toml")]
    result = cli_run("check", *configs, "--engine", str(MISTAKE), "--format", "junit", "--output", str(report))
    assert result.exit_code == 1
    root = ET.parse(report).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == int(suite.get("tests")) == 2
    assert int(suite.get("failures")) == 2 and suite.get("errors") == "0"
    for case in cases:
        assert case.get("classname").startswith("sgdtrace.check.") and case.get("name") and case.get("time")
        (failure,) = case.findall("failure")
        assert failure.get("message").startswith("✗ diverge  first at epoch 1 batch 1 (step 1)")
        assert "Likely mistake: dl/dw is 1/2 times the right value" in failure.get("message")
    ok = cli_run("check", *configs, "--engine", str(CORRECT), "--format", "junit")
    assert ok.exit_code == 0
    assert not ET.fromstring(ok.stdout).findall(".//failure")


def test_check_runs_from_any_folder_with_skipped_configs_and_real_times(tmp_path):
    """`sgdtrace check --engine f.py --format junit` outside the source checkout: the gate's configs
    ship with the package; those the engine cannot serve are JUnit <skipped> with the reason; every
    time is the run's real time."""
    import os
    import subprocess
    import sys

    from sgdtrace.check import CONFIGS

    work = tmp_path / "course"
    work.mkdir()
    (work / "f.py").write_text(CORRECT.read_text())
    script = os.path.join(os.path.dirname(sys.executable), "sgdtrace")
    proc = subprocess.run(
        [script, "check", "--engine", "f.py", "--format", "junit", "--device", "cpu"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert os.path.relpath(work, ROOT).startswith(os.pardir)  # outside the checkout
    (suite,) = ET.fromstring(proc.stdout).findall("testsuite")
    cases = suite.findall("testcase")
    shipped = sorted(p for p in os.listdir(CONFIGS) if p.endswith(".toml"))
    assert sorted({c.get("file") for c in cases}) == [f"configs/{p}" for p in shipped]  # every one, once
    skipped = [c for c in cases if c.find("skipped") is not None]
    run = [c for c in cases if c.find("skipped") is None]
    assert int(suite.get("tests")) == len(cases) and int(suite.get("skipped")) == len(skipped) > 0
    for case in skipped:
        message = case.find("skipped").get("message")
        cfg = build_config(load_toml(os.path.join(CONFIGS, os.path.basename(case.get("file")))), {}, "c.toml")
        assert message and message == unserved(cfg, str(CORRECT)), (case.get("name"), message)
    for case in run:
        cfg = build_config(load_toml(os.path.join(CONFIGS, os.path.basename(case.get("file")))), {}, "c.toml")
        assert unserved(cfg, str(CORRECT)) is None and case.find("system-out") is not None
    times = [float(c.get("time")) for c in run]
    assert all(t > 0 for t in times)  # measured, not 0
    assert float(suite.get("time")) == pytest.approx(sum(times), abs=0.01)
    table = subprocess.run([script, "check", "--engine", "f.py"], cwd=work, capture_output=True, text=True)
    assert table.returncode == 0 and f"skipped {len(skipped)} configs the engine cannot serve" in table.stdout


def test_the_gates_configs_are_package_data():
    """Every file of sgdtrace/configs is named by pyproject.toml's package data (so a wheel ships it)."""
    import fnmatch
    import os

    from sgdtrace.check import CONFIGS
    from sgdtrace.config import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = globs["sgdtrace.configs"]
    files = [
        os.path.relpath(os.path.join(d, f), CONFIGS).replace(os.sep, "/")
        for d, _, names in os.walk(CONFIGS)
        for f in names
        if "__pycache__" not in d
    ]
    assert len(files) > 20
    # (a pattern's * stays in its folder, as setuptools' glob does)
    assert [f for f in files if not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)] == []


def test_check_runs_only_the_configs_an_engine_can_serve():
    from types import SimpleNamespace

    from sgdtrace.check import serves

    assert serves(Config()) and serves(Config(dtype="float64")) and serves(Config(dtype="bfloat16"))
    assert not serves(SimpleNamespace(optimizer="adam", dtype="float32"), str(CORRECT))  # update, no declaration
    assert serves(Config(world_size=4))  # its gradients on every rank
    adam = str(ROOT / "docs" / "examples" / "engine_adam.py")
    assert serves(Config(optimizer="adamw"), adam) and not serves(Config(), adam)
    assert not serves(Config(features=2, synthetic=9), str(CORRECT))  # gradients(w, b, x, y): one x column


def test_template_writes_a_starter_without_a_solution(tmp_path):
    out = tmp_path / "starter.py"
    result = cli_run("template", "--output", str(out))
    assert result.exit_code == 0
    text = out.read_text()
    for name in ("def gradients(w, b, x, y):", "def update(param, grad, state, hp):", "def forward(w, b, x, y):"):
        assert name in text
    assert text.count("raise NotImplementedError") == 3 and "return" not in text.split('"""')[-1]
    again = cli_run("template", "--output", str(out))
    assert again.exit_code == 2 and "exists" in again.stderr


def test_assert_matches_torch_both_ways():
    trace = assert_matches_torch(str(CORRECT), momentum=0.9)
    assert trace.verdict.ok
    spec = importlib.util.spec_from_file_location("engine_correct", CORRECT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert assert_matches_torch(module, Config(dtype="float64")).verdict.ok
    with pytest.raises(AssertionError) as failed:
        assert_matches_torch(MISTAKE)
    lines = str(failed.value).splitlines()
    # one message: where, yours, torch's, the distance, the allowance, the likely mistake
    assert lines[0] == "engine_mistake.py does not match torch at step 1 (epoch 1, batch 1), dl/dw:"
    assert lines[1].split() == ["yours", "-13.333333"] and lines[2].split() == ["torch's", "-26.666668"]
    assert lines[3].split()[0] == "|Δ|" and lines[4].split()[0] == "allowance"
    assert float(lines[4].split()[1]) > 0 and float(lines[3].split()[1]) > float(lines[4].split()[1])
    assert lines[5].startswith("  likely mistake: dl/dw is 1/2 times the right value") and len(lines) == 6


def _pytest_report(tmp_path, body: str) -> str:
    """What pytest prints for a test file calling assert_matches_torch (a real pytest, in a subprocess)."""
    import subprocess
    import sys

    test = tmp_path / "test_course.py"
    test.write_text("from sgdtrace.testing import assert_matches_torch\n\n\n" + textwrap.dedent(body))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return proc.stdout


def test_assert_matches_torch_shows_the_learners_line_not_sgdtraces_source(tmp_path):
    (tmp_path / "boom.py").write_text("def gradients(w, b, x, y):\n    return 1 / 0\n")
    out = _pytest_report(
        tmp_path,
        f"""
        def test_mistake():
            assert_matches_torch({str(MISTAKE)!r})


        def test_bad_option():
            assert_matches_torch({str(CORRECT)!r}, lr=-1)


        def test_broken_file():
            assert_matches_torch("boom.py")
        """,
    )
    assert "3 failed" in out
    for hidden in ("sgdtrace/", "def assert_matches_torch", "run_trace(", "__tracebackhide__", "raise "):
        assert hidden not in out, hidden  # none of the library's frames or source
    assert ">       assert_matches_torch(" in out  # the learner's own line, marked
    assert "E       AssertionError: engine_mistake.py does not match torch at step 1" in out
    assert "E         likely mistake: dl/dw is 1/2 times the right value" in out
    assert "E       sgdtrace.errors.ConfigError: lr=-1: the learning rate must be" in out
    assert "E       sgdtrace.engines.user.EngineError: gradients raised ZeroDivisionError at step 1" in out
    assert 'File "boom.py", line 2, in gradients' in out  # the learner's file's lines only


def test_a_torch_tensor_is_named_as_such():
    import torch

    assert user._describe(torch.tensor(1.0)).startswith("a torch Tensor")
    assert user._real(np.float32(1)) and user._real(2.5) and not user._real(True) and not user._real(None)
    assert not user._real(np.zeros(3)) and user._real(np.array(1.5))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_engine_forming_the_residuals_in_float64_passes_where_the_line_fits_exactly(dtype):
    """Noiseless data: near convergence the loss is the square of the residuals' rounding, which
    an engine working in float64 does not have (the tolerance model's second-order loss term)."""
    t = traced(CORRECT, synthetic=5000, batch_size=10, momentum=0.9, dtype=dtype)
    assert t.verdict.ok, t.verdict.first_divergent_step


def test_the_reply_is_never_unpickled(tmp_path):
    """A pickle (which could run code in the parent and forge the verdict) is not a reply."""
    import pickle

    class Forged:
        def __reduce__(self):
            return (print, ("forged",))

    with pytest.raises(ValueError):
        user._decode(pickle.dumps({"ok": True, "x": Forged()}))
    reply = user._decode(
        user._encode(
            {
                "ok": True,
                "parts": ["gradients"],
                "not_kept": [],
                "columns": {"w": np.arange(3, dtype=np.float32)},
                "forward": None,
            }
        )
    )
    assert reply["columns"]["w"].dtype == np.float32 and reply["forward"] is None


def test_a_config_file_names_the_engine_relative_to_itself(tmp_path):
    sub = tmp_path / "course"
    sub.mkdir()
    (sub / "mine.py").write_text(CORRECT.read_text())
    (sub / "run.toml").write_text('engine = "mine.py"\nengine_timeout = 30\nmomentum = 0.9\n')
    result = cli_run("run", "--config", str(sub / "run.toml"), "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["engine"]["name"] == "mine.py"
    (sub / "bad.toml").write_text("engine = 3\n")
    bad = cli_run("run", "--config", str(sub / "bad.toml"))
    assert bad.exit_code == 2 and "'engine' in bad.toml = 3: must be a string" in bad.stderr


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_engine_in_a_16_bit_dtype_runs_and_a_wrong_rule_is_still_caught(dtype):
    r = CliRunner().invoke(cli, ["run", "--engine", str(CORRECT), "--dtype", dtype, "--momentum", "0.9", "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        cli,
        ["run", "--engine", "docs/examples/textbook_rule.py", "--dtype", dtype, "--momentum", "0.9"]
        + ["--dampening", "0.5", "--quiet"],
    )
    assert r.exit_code == 1 and "Traceback" not in r.output


# ------------------------------------------------------------------ the child's reply is input too


def test_a_file_that_forges_its_reply_is_refused_in_one_line(tmp_path):
    """The user's file runs in the child, and can rewrite what the child sends back: here every
    parameter, gradient and the loss claimed "not kept". Exit 2, one line; no judge reads it."""
    path = write(
        tmp_path,
        """
        import sys

        import numpy as np

        main = sys.modules["__main__"]
        _real = main._encode


        def _forged(reply):
            reply["not_kept"] = ["w", "b", "grad_w", "grad_b", "loss"]
            return _real(reply)


        main._encode = _forged


        def update(param, grad, state, hp):
            return param - np.float32(hp.lr) * grad
        """,
        "forged.py",
    )
    for extra in ([], ["--momentum", "0.9"]):
        r = CliRunner().invoke(cli, ["run", "--engine", str(path), *extra])
        assert r.exit_code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.output
        assert lines[0].startswith("sgdtrace: error: forged.py: its process sent back an invalid reply: 'not_kept'")
        assert "'w'" in lines[0]
        assert ("buf_w, buf_b" in lines[0]) == bool(extra)


def _reply(**changes):
    steps = 3
    columns = {f: np.zeros(steps, dtype=np.float32) for f in ("grad_w", "grad_b", "loss", "w", "b", "buf_w", "buf_b")}
    reply = {"ok": True, "columns": columns, "parts": ["update"], "not_kept": [], "forward": None}
    reply.update(changes)
    return reply


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"parts": ["update", "backward"]}, "'parts' lists 'backward', not one of gradients, update, forward"),
        ({"parts": "update"}, "'parts' is not a list of names"),
        ({"parts": []}, "'parts' is empty"),
        ({"not_kept": ["loss"]}, "'not_kept' lists 'loss', not one of buf_w, buf_b"),
        ({"not_kept": ["buf_w", "buf_w"]}, "'not_kept' lists a name twice"),
        ({"not_kept": [1]}, "'not_kept' is not a list of names"),
        ({"not_kept": None}, "'not_kept' is not a list of names"),
        ({"forward": {"a": np.zeros(3)}}, "'forward' was not asked for"),
    ],
)
def test_every_part_of_the_reply_is_checked(monkeypatch, changes, words):
    monkeypatch.setattr(user, "run_child", lambda request, timeout, name: _reply(**changes))
    with pytest.raises(EngineError) as err:
        run_trace(Config(momentum=0.9), engine=UserEngine(str(CORRECT)))
    assert str(err.value) == f"engine_correct.py: its process sent back an invalid reply: {words}"


@pytest.mark.parametrize(
    "forward, words",
    [
        ({"z": np.zeros(3)}, "'forward' has a node 'z', not one of a, c, d, e, dl_dd"),
        ({"a": np.zeros(2)}, "'forward' node 'a' is not 3 float64 values"),
        ({"a": np.zeros(3, dtype=np.float32)}, "'forward' node 'a' is not 3 float64 values"),
        ({"a": np.zeros((3, 1))}, "'forward' node 'a' is not 3 float64 values"),
    ],
)
def test_the_forward_nodes_of_the_reply_are_checked(monkeypatch, forward, words):
    monkeypatch.setattr(user, "run_child", lambda request, timeout, name: _reply(forward=forward))
    with pytest.raises(EngineError, match=words):
        run_trace(Config(momentum=0.9), engine=UserEngine(str(CORRECT), forward_step=1))
    # a well-formed one passes through to the explanation
    good = {"a": np.arange(3.0), "dl_dd": np.ones(3)}
    monkeypatch.setattr(user, "run_child", lambda request, timeout, name: _reply(forward=good))
    engine = UserEngine(str(CORRECT), forward_step=1)
    run_trace(Config(momentum=0.9), engine=engine)
    assert set(engine.info.forward) == {"a", "dl_dd"}


def test_an_allowance_that_is_only_the_underflow_floor_is_said_in_words():
    """A learner reads "allowance 1.1754944e-38" as a number; the verdict says what it is: the
    underflow floor atol alone (nothing in the step rounds), or 0 (an exact operation), so the
    values must be equal."""
    import dataclasses

    from sgdtrace.divergence import tolerances
    from sgdtrace.testing import mismatch_message
    from sgdtrace.views.export import verdict_sentence

    trace = run_trace(Config(engine=str(MISTAKE)))
    f = trace.verdict.first_divergent_step
    assert "must be equal" not in verdict_sentence(trace) + mismatch_message(trace)  # an ordinary allowance
    atol = tolerances(trace.config)[1]
    for tol, words in ((atol, "1.1754944e-38 (only the underflow floor atol"), (0.0, "0 (the operation is exact")):
        trace.verdict = dataclasses.replace(trace.verdict, first_divergent_step=dataclasses.replace(f, tol=tol))
        for text in (verdict_sentence(trace), mismatch_message(trace)):
            assert words in text and "the values must be equal" in text, text
