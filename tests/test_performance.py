"""Speed and scale, without timing anything: instant start, a columnar trace, the bytes per step,
the CUDA code paths run on the CPU, progress inside an epoch, streamed JSON equal to json.dumps.

Speed itself is measured by benchmarks/bench.py, never here.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

from sgdtrace import divergence
from sgdtrace.config import Config
from sgdtrace.engines import manual, protocol
from sgdtrace.models import linear
from sgdtrace.tracing import run_trace

FIELDS = ("grad_w", "grad_b", "loss", "w", "b")


# ------------------------------------------------------------------ instant start


def _modules_after(argv: list[str]) -> list[str]:
    """Run the CLI on ``argv`` in a fresh interpreter; which of torch, numpy got imported."""
    code = (
        f"import sys\nfrom sgdtrace.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('MODULES:', *(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("MODULES:")][-1]
    return line.split()[1:]


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["run", "--help"], ["compare", "--help"]])
def test_help_and_version_import_neither_torch_nor_numpy(argv):
    assert _modules_after(argv) == []


def test_the_real_command_imports_no_torch_for_help():
    # python -m sgdtrace, as a user runs it; -X importtime lists every module imported
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sgdtrace", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert "Usage:" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "sgdtrace.cli" in imported  # the check sees the CLI's own imports
    assert not {m for m in imported if m.split(".")[0] in ("torch", "numpy")}


def test_a_run_does_import_torch():
    # the counter-check: the same probe does see torch when a command needs it
    assert "torch" in _modules_after(["run", "--quiet", "--format", "csv"])


# ------------------------------------------------------------------ the columnar trace


def _expected_bytes_per_step(dtype_bytes: int, values: int) -> int:
    """By hand: each engine ``values`` columns of the dtype; epoch, batch, n as int64; stable_lr
    float64; per field abs, rel, tol, carried, ratio float64 + ulp uint64 + ok, finite bool = 50 bytes."""
    return 2 * values * dtype_bytes + 3 * 8 + 8 + values * (6 * 8 + 2)


@pytest.mark.parametrize(
    "dtype, momentum, values, size", [("float32", 0.0, 5, 4), ("float64", 0.0, 5, 8), ("float32", 0.9, 7, 4)]
)
def test_the_trace_is_columns_with_a_fixed_cost_per_step(dtype, momentum, values, size):
    cfg = Config(synthetic=200, batch_size=8, epochs=2, dtype=dtype, momentum=momentum)
    t = run_trace(cfg)
    assert t.n_steps == 50
    cols = t.columns()
    for name, col in cols.items():
        assert isinstance(col, np.ndarray) and col.shape == (t.n_steps,), name
        assert col.dtype != object, name
    assert len(cols) == 4 + values * 10
    per_step = _expected_bytes_per_step(size, values)
    assert t.nbytes == per_step * t.n_steps
    # the figure the README states: 322 bytes a step in float32, so a million steps is ~322 MB
    if (dtype, momentum) == ("float32", 0.0):
        assert per_step == 322


# ------------------------------------------------------------------ the CUDA code paths, on the CPU


@pytest.mark.parametrize(
    "cfg",
    [
        Config(),
        Config(synthetic=300, batch_size=7, shuffle=True, seed=5, noise=0.5),
        Config(synthetic=120, batch_size=16, epochs=3, momentum=0.9, nesterov=True, weight_decay=0.01, dtype="float64"),
    ],
    ids=["article", "shuffled", "momentum-float64"],
)
def test_torch_backend_and_sync_free_recorder_match_the_default_path(cfg):
    default = run_trace(cfg)
    forced = run_trace(cfg, manual_backend="torch", sync_free=True)
    # the recorder only changes how torch's values are read: bit for bit the same
    for f, col in default.torch.items():
        np.testing.assert_array_equal(forced.torch[f], col, err_msg=f)
    # the manual engine on torch tensors does the same arithmetic as on NumPy arrays; sums
    # may be reduced in another order, so the two are held to the tolerance model
    div = divergence.compare_columns(
        default.manual, forced.manual, default.dataset.x, default.dataset.y, default.plan, default.config
    )
    for f, d in div.items():
        assert d.ok.all(), f
    assert default.verdict.ok and forced.verdict.ok
    assert set(forced.manual) == set(default.manual)


def test_the_article_first_batch_on_the_torch_backend():
    # the article's batch 1: x = 0, 1, 2; y = 10, 12, 14; w = b = 0, so d = -y and
    # dl/dw = (2/3)(-(0*10 + 1*12 + 2*14)) = -80/3 = -26.667, dl/db = (2/3)(-36) = -24,
    # loss = (100 + 144 + 196)/3 = 146.667, w = 0.01 * 80/3 = 0.26667, b = 0.24
    t = run_trace(Config(), manual_backend="torch", sync_free=True)
    expect = {"grad_w": -80 / 3, "grad_b": -24.0, "loss": 440 / 3, "w": 0.8 / 3, "b": 0.24}
    for f, v in expect.items():
        assert t.manual[f][0] == pytest.approx(v, rel=1e-6)
        assert t.torch[f][0] == pytest.approx(v, rel=1e-6)


def test_loop_context_wraps_only_the_per_step_loop():
    # the CUDA tests put set_sync_debug_mode("error") here; on the CPU check it is entered once
    import contextlib

    from sgdtrace import data
    from sgdtrace.engines import torch_ref

    entered = []

    @contextlib.contextmanager
    def guard():
        entered.append(True)
        yield

    cfg = Config(synthetic=50, batch_size=5)
    ds = data.load(cfg)
    plan = data.plan(len(ds), cfg)
    import torch

    man = manual.run(ds.x, ds.y, plan, cfg, manual.ArrayBackend("torch", cfg.dtype), loop_context=guard)
    ref = torch_ref.run(ds.x, ds.y, cfg, torch.device("cpu"), plan.n_steps, sync_free=True, loop_context=guard)
    assert entered == [True, True]
    assert man["w"].shape == ref["w"].shape == (10,)


# ------------------------------------------------------------------ progress inside an epoch


def test_progress_is_reported_within_a_single_epoch():
    calls: list[tuple[str, int, int]] = []
    steps = 3 * protocol.PROGRESS_EVERY + 10
    run_trace(Config(synthetic=steps, batch_size=1), progress=lambda s, k, n: calls.append((s, k, n)))
    for stage in ("manual", "torch"):
        done = [k for s, k, n in calls if s == stage]
        assert all(n == steps for s, k, n in calls if s == stage)
        every = protocol.PROGRESS_EVERY
        assert done == [every, 2 * every, 3 * every, steps]


def test_progress_bar_waits_a_second_then_shows_each_stage():
    import io

    from rich.console import Console

    from sgdtrace.views.progress import Progress, rate_text

    buf = io.StringIO()
    now = [0.0]
    bar = Progress(delay=1.0, console=Console(file=buf, width=120, force_terminal=True), clock=lambda: now[0])
    bar.update("manual", 10, 100)
    assert not bar.shown  # a short run never shows a bar
    now[0] = 1.5
    bar.update("manual", 100, 100)
    bar.update("torch", 40, 100)
    assert bar.shown
    bar.close()
    text = buf.getvalue()
    assert "manual" in text and "torch" in text and "40/100" in text
    assert rate_text(None) == "" and rate_text(12345.6) == "12,346 steps/s"


def test_no_progress_bar_when_quiet_or_not_a_terminal():
    from sgdtrace.cli import progress_reporter

    assert progress_reporter(quiet=True) == (None, None)
    # under pytest stderr is captured, not a terminal
    assert progress_reporter(quiet=False) == (None, None)


# ------------------------------------------------------------------ big runs: judging and exports


def test_batch_sums_in_chunks_equal_one_pass(monkeypatch):
    cfg = Config(synthetic=1000, batch_size=7, epochs=2, shuffle=True, seed=3, noise=1.0, lr=0.001)
    t = run_trace(cfg)
    whole = divergence.compare_columns(t.manual, t.torch, t.dataset.x, t.dataset.y, t.plan, cfg)
    monkeypatch.setattr(linear, "CHUNK_SAMPLES", 20)  # a chunk of 2 batches (the batch sums are the model's)
    chunked = divergence.compare_columns(t.manual, t.torch, t.dataset.x, t.dataset.y, t.plan, cfg)
    for f in whole:
        np.testing.assert_array_equal(chunked[f].tol, whole[f].tol, err_msg=f)
        np.testing.assert_array_equal(chunked[f].ok, whole[f].ok, err_msg=f)


@pytest.mark.parametrize(
    "cfg",
    [
        Config(),
        Config(lr=0.1, epochs=40),  # blows up: inf and nan values, null distances
        Config(
            synthetic=50, batch_size=7, epochs=3, shuffle=True, seed=3, momentum=0.9, nesterov=True, dtype="float64"
        ),  # its verdict does not matter here, only the text
        Config(synthetic=600, batch_size=1, drop_last=True),
    ],
    ids=["article", "blow-up", "momentum-shuffled", "batch-1"],
)
def test_streamed_json_is_exactly_json_dumps(cfg):
    from sgdtrace.views import export as ex

    with np.errstate(all="ignore"):
        t = run_trace(cfg)
    expected = ex.to_json_text(ex.trace_to_json(t))
    assert ex.trace_to_json_text(t) == expected
    assert len(list(ex.trace_json_chunks(t))) >= 2  # the head, then steps


def test_streamed_json_comes_in_pieces(monkeypatch):
    import json

    from sgdtrace.views import export as ex

    monkeypatch.setattr(ex, "JSON_CHUNK_STEPS", 10)
    t = run_trace(Config(synthetic=95, batch_size=1))
    pieces = list(ex.trace_json_chunks(t))
    assert len(pieces) == 1 + 10 + 1  # the head; ten pieces of up to 10 steps; the tail
    doc = json.loads("".join(pieces))
    assert len(doc["steps"]) == 95 and doc["steps"][94]["indices"] == [94]


def test_long_run_table_is_summarised():
    from sgdtrace.cli import render_text
    from sgdtrace.views.table import run_view

    t = run_trace(Config(synthetic=500, batch_size=1))
    text = render_text(run_view(t), width=140)
    assert "+460" in text  # 20 first + 20 last of 500: the gap row counts the 460 hidden
    assert "500 steps, 40 shown" in text  # the summary line
    assert len(text.splitlines()) < 140  # 40 steps of 3 lines, the title and the verdict, not 1,500


def test_output_into_a_pipe_writes_into_it_and_keeps_it(tmp_path):
    # --output /dev/null (or a FIFO) must be written into, never replaced by a renamed file
    from sgdtrace.cli import write_output

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, encoding="utf-8").read()))
    reader.start()
    write_output(iter(["one ", "two\n"]), str(fifo))
    reader.join(timeout=10)
    assert got == ["one two\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_cli_json_to_a_file_is_the_full_document(tmp_path):
    import json

    from click.testing import CliRunner

    from sgdtrace.cli import cli

    out = tmp_path / "t.json"
    res = CliRunner().invoke(
        cli, ["run", "--synthetic", "40", "--batch-size", "4", "--format", "json", "--output", str(out)]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert len(doc["steps"]) == 10 and doc["verdict"]["ok"] is True
