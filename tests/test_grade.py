"""``sgdtrace grade``: the documented scores, Gradescope's results.json and JUnit from outside the
source tree, partial credit from ``--judge step``, no reference value in the feedback, and a
failing submission scored 0 with a reason while the grader exits 0."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from sgdtrace import grade as grading
from sgdtrace.cli import cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = os.path.join(os.path.dirname(sys.executable), "sgdtrace")

GOOD = """
import numpy as np


def gradients(w, b, x, y):
    n = len(x)
    d = w * x + b - y
    return (d * d).sum() / n, 2 * (d * x).sum() / n, 2 * d.sum() / n


def sgd_update(param, grad, state, hp):
    g = grad + hp.weight_decay * param
    if hp.momentum:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = g
        else:
            state["momentum_buffer"] = hp.momentum * state["momentum_buffer"] + (1 - hp.dampening) * g
        buf = state["momentum_buffer"]
        g = g + hp.momentum * buf if hp.nesterov else buf
    return param - hp.lr * g


def adam_update(param, grad, state, hp):
    b1, b2 = hp.betas
    t = state["step"] = state.get("step", 0) + 1
    m = state["exp_avg"] = b1 * state.get("exp_avg", 0 * grad) + (1 - b1) * grad
    v = state["exp_avg_sq"] = b2 * state.get("exp_avg_sq", 0 * grad) + (1 - b2) * grad * grad
    if hp.amsgrad:
        v = state["max_exp_avg_sq"] = np.maximum(state.get("max_exp_avg_sq", v), v)
    return param - hp.lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + hp.eps)
"""


def submission(tmp_path: Path, source: str, name: str = "sub.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def outside(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed command, run from a folder outside the source checkout."""
    work = tmp_path / "course"
    work.mkdir(exist_ok=True)
    assert os.path.relpath(work, ROOT).startswith(os.pardir)
    return subprocess.run([SCRIPT, "grade", *args], cwd=work, capture_output=True, text=True, timeout=600)


def test_a_correct_submission_scores_full_marks_in_gradescopes_json_from_any_folder(tmp_path):
    (tmp_path / "course").mkdir()
    submission(tmp_path / "course", GOOD, "good.py")
    proc = outside(tmp_path, "good.py", "--format", "gradescope", "--output", "results.json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "course" / "results.json").read_text())
    assert doc["score"] == 10.0
    assert [t["name"] for t in doc["tests"]] == ["gradients", "SGD with momentum", "Adam"]
    for t in doc["tests"]:
        assert set(t) == {"name", "score", "max_score", "output", "visibility"} and t["score"] == t["max_score"]
    assert doc["tests"][2]["visibility"] == "after_due_date"


def test_partial_credit_is_the_share_of_agreeing_steps_and_the_feedback_names_no_reference_value(tmp_path):
    """An update wrong at one step only (the third of each run): under --judge step that step alone
    fails, so the part keeps points * (n - 1)/n."""
    slip = GOOD.replace(
        "    return param - hp.lr * g\n",
        "    state['k'] = state.get('k', 0) + 1\n    return param - (2 if state['k'] == 3 else 1) * hp.lr * g\n",
    )
    path = submission(tmp_path, slip)
    result = grading.grade(str(path))
    sgd = result.parts[1]
    assert sgd.steps == 27 and sgd.agreeing == 24 and sgd.score == pytest.approx(3 * 24 / 27, abs=1e-4)
    assert result.parts[0].score == 4 and result.parts[2].score == 3
    assert "step 3 (epoch 1, batch 3), w: the update's step is 2 times torch's" in sgd.output
    assert not re.search(r"\d\.\d{4,}", sgd.output)  # no value of either side
    shown = grading.grade(str(path), show_values=True).parts[1].output
    assert re.search(r"yours -?\d\.\d{4,}.*torch's -?\d\.\d{4,}", shown)


def test_each_part_names_the_mistake(tmp_path):
    slips = GOOD.replace("if hp.nesterov", "if not hp.nesterov").replace(
        "(m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + hp.eps)", "m / (np.sqrt(v) + hp.eps)"
    )
    slips = slips.replace("2 * (d * x).sum() / n, 2 * d.sum() / n", "2 * d.sum() / n, 2 * (d * x).sum() / n")
    result = grading.grade(str(submission(tmp_path, slips)))
    gradients, sgd, adam = (p.output for p in result.parts)
    assert "the two gradients swapped" in gradients
    assert "Nesterov's step (g + momentum * buf) where plain momentum" in sgd and "Nesterov momentum left out" in sgd
    assert "Adam's bias corrections left out" in adam
    assert result.score == 0


@pytest.mark.parametrize(
    "body, reason",
    [
        ('raise RuntimeError("not done")', "gradients raised RuntimeError at step 1"),
        ("while True:\n        pass", "still running after 3 s"),
        ("return [1, 2, 3]", "gradients returned a list of 3 values"),
    ],
)
def test_a_failing_submission_scores_0_with_a_reason_and_the_grader_exits_0(tmp_path, body, reason):
    path = submission(tmp_path, f"def gradients(w, b, x, y):\n    {body}\n")
    r = CliRunner().invoke(cli, ["grade", str(path), "--engine-timeout", "3", "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["score"] == 0 and reason in doc["parts"][0]["output"]
    assert "defines no function sgd_update" in doc["parts"][1]["output"]
    assert all(p["output"].count("\n") == 0 for p in doc["parts"])  # one line each


def test_a_command_is_graded_on_the_parts_it_implements(tmp_path):
    cmd = f"{sys.executable} {ROOT / 'docs' / 'examples' / 'engine_cmd.py'}"
    result = grading.grade(None, cmd)
    assert result.score == 10, [p.output for p in result.parts]
    r = CliRunner().invoke(cli, ["grade", "--engine-cmd", f"{sys.executable} -c 'print(1)'", "--format", "junit"])
    assert r.exit_code == 0
    (suite,) = ET.fromstring(r.stdout).findall("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["gradients", "SGD with momentum", "Adam"]
    assert all(c.find("failure") is not None for c in cases) and suite.get("failures") == "3"


def test_junit_passes_a_part_only_at_full_points(tmp_path):
    path = submission(tmp_path, GOOD.replace("(1 - b1**t)", "(1 - b1**(t + 1))"))
    r = CliRunner().invoke(cli, ["grade", str(path), "--format", "junit"])
    cases = ET.fromstring(r.stdout).find("testsuite").findall("testcase")
    assert [c.find("failure") is None for c in cases] == [True, True, False]


def test_the_sample_assignment_is_printed_and_an_assignment_of_ones_own_is_read(tmp_path):
    r = CliRunner().invoke(cli, ["grade", "--example-assignment"])
    assert r.exit_code == 0 and r.stdout == Path(grading.EXAMPLE).read_text()
    own = tmp_path / "hw.toml"
    own.write_text(
        'title = "hw"\n[[part]]\nname = "adam"\npoints = 2\ngrades = ["update"]\n'
        '[[part.config]]\noptimizer = "adam"\nepochs = 1\n'
    )
    path = submission(tmp_path, GOOD.replace("def adam_update", "def update"))
    result = grading.grade(str(path), assignment=str(own))  # the part's function falls back to update
    assert result.title == "hw" and result.score == 2


@pytest.mark.parametrize(
    "args, words",
    [
        ([], "give one submission"),
        (["nope.py"], "SUBMISSION 'nope.py': no such file"),
        (["x.txt"], "must be a Python file"),
        (["--engine-cmd", "a 'b"], "not a command line"),
    ],
)
def test_grades_own_usage_errors_are_exit_2(args, words):
    r = CliRunner().invoke(cli, ["grade", *args])
    assert r.exit_code == 2 and words in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize(
    "toml, words",
    [
        ("[[part]]\nname = 'a'\npoints = -1\n", "points = -1: must be a number >= 0"),
        ("[[part]]\nname = 'a'\npoints = 1\ngrades = ['loss']\n", "grades = ['loss']"),
        ("[[part]]\nname = 'a'\npoints = 1\nvisibility = 'secret'\n", "visibility = 'secret'"),
        ("[[part]]\nname = 'a'\npoints = 1\n[[part.config]]\nlr = 'x'\n", "part 'a': 'lr'"),
        ("title = 'x'\n", "no [[part]] tables"),
        ("[[part]\n", "not valid TOML"),
    ],
)
def test_a_bad_assignment_is_exit_2_naming_what(tmp_path, toml, words):
    hw = tmp_path / "hw.toml"
    hw.write_text(toml)
    path = submission(tmp_path, GOOD)
    r = CliRunner().invoke(cli, ["grade", str(path), "--assignment", str(hw)])
    assert r.exit_code == 2 and words in r.stderr, r.stderr
