"""Your code under the judge everywhere: every optimizer, schedule, dtype and model (``--engine``),
a declaration of what a file serves (``SGDTRACE``), an engine in any language (``--engine-cmd``).

Most runs use :class:`tests.test_engine_user.InProcess` (the child's code without a process);
the process paths (the JSON-lines command, the CLI) start real ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sgdtrace import Config
from sgdtrace.check import serves, unserved
from sgdtrace.cli import cli
from sgdtrace.engines.command import CommandEngine, decode, encode
from sgdtrace.engines.user import EngineError
from sgdtrace.tracing import run_trace
from tests.test_engine_user import InProcess

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
ADAM, RMSPROP, ADAGRAD = EXAMPLES / "engine_adam.py", EXAMPLES / "engine_rmsprop.py", EXAMPLES / "engine_adagrad.py"
FEATURES, CMD_PY, CMD_C = EXAMPLES / "engine_features.py", EXAMPLES / "engine_cmd.py", EXAMPLES / "engine_cmd.c"
SCHEDULE = {"name": "StepLR", "interval": "step", "step_size": 2, "gamma": 0.8}


def write(tmp_path: Path, source: str, name: str = "mine.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def traced(path, **opts):
    return run_trace(Config(**opts), engine=InProcess(str(path)))


def cli_run(*args):
    return CliRunner().invoke(cli, list(args))


def scheduled(**opts) -> Config:
    from sgdtrace.config import make_schedule

    return Config(scheduler=make_schedule(SCHEDULE, "test"), **opts)


# ------------------------------------------------------------------ every optimizer, schedule and dtype


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize(
    "engine, opts",
    [
        (ADAM, {"optimizer": "adam"}),
        (ADAM, {"optimizer": "adamw", "weight_decay": 0.1}),
        (ADAM, {"optimizer": "adam", "amsgrad": True, "weight_decay": 0.05}),
        (RMSPROP, {"optimizer": "rmsprop", "momentum": 0.5, "centered": True}),
        (ADAGRAD, {"optimizer": "adagrad", "lr_decay": 0.01, "initial_accumulator_value": 0.1}),
    ],
    ids=["adam", "adamw", "amsgrad", "rmsprop", "adagrad"],
)
def test_a_correct_engine_of_every_optimizer_passes_with_a_schedule(engine, opts, dtype):
    cfg = scheduled(dtype=dtype, epochs=20, lr=0.05, **opts)
    t = run_trace(cfg, engine=InProcess(str(engine)))
    assert t.verdict.ok, t.verdict.first_divergent_step
    assert "lr" in t.manual  # the schedule's rate, recorded per step
    assert t.engine.parts == ("update",) and t.engine.not_kept == ()


def test_the_hyper_parameters_are_torchs_names_with_the_steps_scheduled_rate(tmp_path):
    """The rate each call is given is the schedule's for that step; an update that keeps its own
    constant rate is caught at the first step the schedule changes it."""
    seen = tmp_path / "seen.txt"
    path = write(
        tmp_path,
        f"""
        def update(param, grad, state, hp):
            with open({str(seen)!r}, "a") as f:
                f.write(f"{{hp.param}} {{hp.lr!r}} {{sorted(vars(hp))}}\\n")
            return param - hp.lr * grad
        """,
    )
    cfg = scheduled(epochs=2)
    t = run_trace(cfg, engine=InProcess(str(path)))
    assert t.verdict.ok
    lines = seen.read_text().splitlines()
    assert [ln.split()[0] for ln in lines[:2]] == ["w", "b"]
    rates = [float(ln.split()[1]) for ln in lines[::2]]
    assert rates == pytest.approx(t.torch["lr"].tolist(), rel=0, abs=0)  # the same doubles torch used
    assert "momentum" in lines[0] and "nesterov" in lines[0] and "param" in lines[0]
    const = write(tmp_path, "def update(param, grad, state, hp):\n    return param - 0.01 * grad\n", "const.py")
    bad = run_trace(cfg, engine=InProcess(str(const)))
    assert not bad.verdict.ok and bad.verdict.first_divergent_step.step == 3  # StepLR(2): the third step's rate


def test_values_are_of_the_runs_dtype_ml_dtypes_in_bfloat16(tmp_path):
    seen = tmp_path / "types.txt"
    path = write(
        tmp_path,
        f"""
        def gradients(w, b, x, y):
            with open({str(seen)!r}, "a") as f:
                f.write(f"{{w.dtype}} {{x.dtype}}\\n")
            n = len(x)
            d = w * x + b - y
            return (d * d).sum() / n, 2 * (d * x).sum() / n, 2 * d.sum() / n
        """,
    )
    assert traced(path, dtype="bfloat16", epochs=2).verdict.ok
    assert set(seen.read_text().split()) == {"bfloat16"}


def test_np_sum_on_bfloat16_accumulates_in_bfloat16():
    """What docs/own-engine.md says: NumPy adds ml_dtypes' bfloat16 one term after the other in
    bfloat16 (a sum of ones stalls at 256), where torch adds in float32."""
    import ml_dtypes

    assert float(np.ones(1000, dtype=ml_dtypes.bfloat16).sum()) == 256.0


def test_a_gradient_summed_term_by_term_in_bfloat16_passes(tmp_path):
    """A loop over 64 samples in bfloat16: each addition rounds; the allowance of a user's engine
    is a sum in any order in the run's own type."""
    path = write(
        tmp_path,
        """
        def gradients(w, b, x, y):
            n = len(x)
            loss = gw = gb = 0 * w
            for xi, yi in zip(x, y):
                d = w * xi + b - yi
                loss = loss + d * d
                gw = gw + d * xi
                gb = gb + d
            return loss / n, 2 * gw / n, 2 * gb / n
        """,
    )
    t = traced(path, dtype="bfloat16", synthetic=64, noise=1.0, batch_size=64, epochs=10, lr=0.02)
    assert t.verdict.ok, t.verdict.first_divergent_step


# ------------------------------------------------------------------ every model: gradients by arity


def test_gradients_of_params_serves_d_features_and_the_article_model(tmp_path):
    t = traced(FEATURES, synthetic=48, features=3, batch_size=16, epochs=5, optimizer="adam")
    assert t.verdict.ok and t.engine.parts == ("gradients",)
    assert t.manual["grad_w"].shape == (t.n_steps, 3)
    same = write(
        tmp_path,
        """
        import numpy as np

        def gradients(params, x, y):
            w, b = params["w"], params["b"]
            d = x[:, 0] * w + b - y
            n = len(y)
            return np.mean(d * d), {"w": 2 * np.mean(d * x[:, 0]), "b": 2 * np.mean(d)}
        """,
    )
    assert traced(same, epochs=5, momentum=0.9).verdict.ok


def test_the_article_form_on_d_features_is_refused_naming_the_general_form():
    with pytest.raises(EngineError, match=r"gradients\(params, x, y\) -> \(loss, grads\)"):
        traced(EXAMPLES / "engine_correct.py", synthetic=9, features=2)


@pytest.mark.parametrize(
    "body, words",
    [
        ('return 0.0, {"w": g["w"]}', "no gradient for 'b'"),
        ('return 0.0, {"w": g["w"], "b": g["b"], "c": 1.0}', "a gradient for 'c'"),
        ('return 0.0, {"w": g["w"][:2], "b": g["b"]}', "expected a NumPy array of shape (3,)"),
        ('return 0.0, {"w": list(g["w"]), "b": g["b"]}', "a list of 3 values for grads['w']"),
        ("return g", "expected a tuple (loss, grads)"),
    ],
)
def test_a_wrong_gradients_dict_is_exit_2_naming_what(tmp_path, body, words):
    path = write(
        tmp_path,
        f"""
        import numpy as np

        def gradients(params, x, y):
            g = {{"w": np.zeros(3), "b": np.zeros(1)}}
            {body}
        """,
    )
    with pytest.raises(EngineError, match=None) as err:
        traced(path, synthetic=9, features=3)
    assert words in str(err.value) and "step 1" in str(err.value)


# ------------------------------------------------------------------ state under other names


def test_adam_state_under_its_own_names_passes_and_is_named_not_kept(tmp_path):
    path = write(
        tmp_path,
        """
        import numpy as np

        def update(param, grad, state, hp):
            b1, b2 = hp.betas
            state["t"] = t = state.get("t", 0) + 1
            state["m"] = m = b1 * state.get("m", 0.0) + (1 - b1) * grad
            state["v"] = v = b2 * state.get("v", 0.0) + (1 - b2) * grad * grad
            return param - hp.lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + hp.eps)
        """,
    )
    for dtype in ("float32", "float64"):
        t = traced(path, optimizer="adam", epochs=20, dtype=dtype)
        assert t.verdict.ok, (dtype, t.verdict.first_divergent_step)
        assert set(t.engine.not_kept) == {"exp_avg_w", "exp_avg_b", "exp_avg_sq_w", "exp_avg_sq_b"}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_state_under_its_own_names_passes_under_judge_step_too(tmp_path, dtype):
    """Under --judge step a state kept under other names goes on from the file's own values (it
    cannot be started from torch's); torch's names are started from torch's."""
    path = write(
        tmp_path,
        """
        import numpy as np

        def update(param, grad, state, hp):
            b1, b2 = hp.betas
            state["t"] = t = state.get("t", 0) + 1
            state["m"] = m = b1 * state.get("m", 0 * grad) + (1 - b1) * grad
            state["exp_avg_sq"] = v = b2 * state.get("exp_avg_sq", 0 * grad) + (1 - b2) * grad * grad
            return param - hp.lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + hp.eps)
        """,
    )
    t = traced(path, optimizer="adam", epochs=20, dtype=dtype, judge="step")
    assert t.verdict.ok, t.verdict.first_divergent_step
    assert set(t.engine.not_kept) == {"exp_avg_w", "exp_avg_b"} and "exp_avg_sq_w" in t.manual
    assert t.verdict.divergent_steps["count"] == 0


def test_a_wrong_adam_under_its_own_names_is_still_caught(tmp_path):
    path = write(
        tmp_path,
        """
        import numpy as np

        def update(param, grad, state, hp):
            b1, b2 = hp.betas
            state["m"] = m = b1 * state.get("m", 0.0) + (1 - b1) * grad
            state["v"] = v = b2 * state.get("v", 0.0) + (1 - b2) * grad * grad
            return param - hp.lr * m / (np.sqrt(v) + hp.eps)   # no bias correction
        """,
    )
    t = traced(path, optimizer="adam", epochs=5)
    assert not t.verdict.ok and t.verdict.first_divergent_step.step == 1


# ------------------------------------------------------------------ SGDTRACE: what a file serves


def test_a_declaration_picks_the_configs_and_refuses_the_others(tmp_path):
    assert serves(Config(optimizer="adam"), str(ADAM)) and not serves(Config(optimizer="sgd"), str(ADAM))
    assert "declares SGDTRACE optimizer adam, adamw" in unserved(Config(optimizer="rmsprop"), str(ADAM))
    only_grads = write(tmp_path, "def gradients(w, b, x, y):\n    return 0.0, 0.0, 0.0\n", "g.py")
    assert serves(Config(optimizer="adagrad"), str(only_grads))  # the update is sgdtrace's own
    r = cli_run("run", "--engine", str(ADAM))
    assert r.exit_code == 2 and "declares SGDTRACE optimizer adam, adamw, not --optimizer sgd" in r.stderr
    for decl, words in (
        ("SGDTRACE = 3", "SGDTRACE is a int, not a dict"),
        ('SGDTRACE = {"optimiser": "adam"}', "a key 'optimiser'; allowed: optimizer, model, dtype"),
        ('SGDTRACE = {"optimizer": []}', "give a name or a list of names"),
        ("SGDTRACE = {'optimizer': NAME}", "must be a literal dict"),
    ):
        bad = write(tmp_path, decl + "\ndef update(p, g, s, hp):\n    return p\n", "bad.py")
        r = cli_run("run", "--engine", str(bad))
        assert r.exit_code == 2 and words in r.stderr and "Traceback" not in r.output, r.stderr
    dtype = write(tmp_path, 'SGDTRACE = {"dtype": ["float64"]}\ndef update(p, g, s, hp):\n    return p\n', "d.py")
    r = cli_run("run", "--engine", str(dtype))
    assert r.exit_code == 2 and "declares SGDTRACE dtype float64, not --dtype float32" in r.stderr


# ------------------------------------------------------------------ --engine-cmd: any language


def test_values_round_trip_exactly_through_json():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.standard_normal(50) * 10.0 ** rng.integers(-300, 300, 50), [np.inf, -np.inf, np.nan, 0.0]])
    import json

    back = decode(json.loads(json.dumps(encode(v))), v.shape)
    assert np.array_equal(back, v, equal_nan=True)
    m = v[:12].reshape(3, 4)
    assert np.array_equal(decode(json.loads(json.dumps(encode(m))), (3, 4)), m)
    with pytest.raises(ValueError, match="not a list of shape"):
        decode([1.0, 2.0], (3,))
    with pytest.raises(ValueError, match="is not a number"):
        decode(["x"], (1,))


@pytest.mark.parametrize(
    "opts",
    [
        {"momentum": 0.9, "nesterov": True},
        {"optimizer": "adam", "dtype": "bfloat16"},
        {"optimizer": "adamw", "synthetic": 24, "features": 2, "batch_size": 8, "dtype": "float64"},
    ],
)
def test_the_python_command_example_agrees(opts):
    engine = CommandEngine(f"{sys.executable} {CMD_PY}")
    t = run_trace(Config(epochs=10, **opts), engine=engine)
    assert t.verdict.ok, t.verdict.first_divergent_step
    assert t.engine.parts == ("gradients", "update") and t.engine.not_kept == ()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
def test_the_c_example_agrees_and_a_wrong_model_is_one_line(tmp_path):
    exe = tmp_path / "engine_c"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(CMD_C), "-lm"], check=True)
    for opts in ({"momentum": 0.9}, {"optimizer": "adam", "dtype": "bfloat16", "epochs": 30}):
        t = run_trace(Config(**opts), engine=CommandEngine(str(exe)))
        assert t.verdict.ok and t.engine.parts == ("gradients",)
    r = cli_run("run", "--engine-cmd", str(exe), "--synthetic", "9", "--features", "2")
    assert r.exit_code == 2 and "serves the article's model" in r.stderr and r.stderr.count("\n") == 1


FAULTY = {
    "crash": ('raise RuntimeError("boom in my engine")', "exited (code 1) without a reply", "boom in my engine"),
    "hang": ("time.sleep(60)", "no reply after 2 s", "--engine-timeout"),
    "garbage": ('print("hello there", flush=True)', "the reply is not JSON: 'hello there'", "op 'update'"),
    "shape": ('print(json.dumps({"value": [1.0, 2.0], "state": {}}), flush=True)', "a list where a number", "value"),
    "no value": ('print(json.dumps({"state": {}}), flush=True)', 'lacks "value"', "step 1"),
    "array": ("print(json.dumps([1]), flush=True)", "a list, not a JSON object", "step 1"),
    "nan as text": ('print(json.dumps({"value": "NaN?", "state": {}}), flush=True)', "is not a number", "value"),
}


@pytest.mark.parametrize("name", list(FAULTY))
def test_a_faulty_command_is_exit_2_in_one_line_naming_the_op_and_step(tmp_path, name):
    body, words, more = FAULTY[name]
    script = write(
        tmp_path,
        f"""
        import json, sys, time
        for line in sys.stdin:
            r = json.loads(line)
            if r["op"] == "start":
                print(json.dumps({{"parts": ["update"]}}), flush=True)
            else:
                {body}
        """,
        "faulty.py",
    )
    r = cli_run("run", "--engine-cmd", f"{sys.executable} {script}", "--engine-timeout", "2", "--quiet")
    assert r.exit_code == 2, r.output
    assert words in r.stderr and more in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_engine_cmd_options_are_checked_before_anything_runs():
    r = cli_run("run", "--engine-cmd", "/no/such/program")
    assert r.exit_code == 2 and "cannot start it" in r.stderr
    r = cli_run("run", "--engine-cmd", "a 'b")
    assert r.exit_code == 2 and "not a command line" in r.stderr
    r = cli_run("run", "--engine-cmd", "x", "--engine", str(EXAMPLES / "engine_correct.py"))
    assert r.exit_code == 2 and "choose one engine" in r.stderr
    r = cli_run("run", "--engine-cmd", "x", "--world-size", "2")
    assert r.exit_code == 2 and "--world-size 2 with --engine-cmd" in r.stderr


def test_a_command_engine_stops_its_process_group(tmp_path):
    """A child the command started does not outlive the run."""
    marker = tmp_path / "pid"
    script = write(
        tmp_path,
        f"""
        import json, subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(marker)!r}, "w").write(str(child.pid))
        for line in sys.stdin:
            print(json.dumps({{"parts": ["gradients"]}}), flush=True)
            break
        import time; time.sleep(60)
        """,
        "spawner.py",
    )
    r = cli_run("run", "--engine-cmd", f"{sys.executable} {script}", "--engine-timeout", "2")
    assert r.exit_code == 2
    pid = int(marker.read_text())
    import time

    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the command's child outlived the run")


def test_the_docs_course_exercises_pass_under_pytest():
    """docs/own-engine.md's pytest file for a gradients, an Adam, a D-feature and a logistic exercise."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / "test_course_exercises.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and "4 passed" in proc.stdout, proc.stdout[-2000:]
