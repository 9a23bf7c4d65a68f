"""Every bad input gets one clear line on stderr, exit code 2, no traceback and no --output file.

Each case runs through the real command line (``sgdtrace.cli.cli`` in click's CliRunner) and is
checked the same way by :func:`assert_usage_error`: exactly one line on stderr, starting
``sgdtrace: error:``, naming the bad value (``names``) and what is allowed; exit code 2; nothing
on stdout; no traceback; and the ``--output`` file the command was given does not exist afterwards.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from sgdtrace.cli import cli


def invoke(args, tmp_path: Path, output: bool = True):
    out = tmp_path / "out.txt"
    argv = list(args) + (["--output", str(out)] if output else [])
    result = CliRunner().invoke(cli, argv, catch_exceptions=True)
    return result, out


def assert_usage_error(result, out: Path, *names: str) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    err = result.stderr
    assert "Traceback" not in err and "Traceback" not in result.stdout
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("sgdtrace: error: "), line
    for name in names:
        assert name in line, (name, line)
    assert result.stdout == ""
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".sgdtrace-")]  # no temp file left
    return line


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    return str(p)


# ------------------------------------------------------------------ options


@pytest.mark.parametrize(
    "args,names",
    [
        (["--lr", "abc"], ["--lr", "'abc'", "float"]),
        (["--lr", "0"], ["--lr 0.0", "> 0"]),
        (["--lr", "-0.5"], ["--lr -0.5", "> 0"]),
        (["--lr", "nan"], ["--lr nan", "finite"]),
        (["--lr", "inf"], ["--lr inf", "finite"]),
        (["--lr", "-inf"], ["--lr -inf", "finite"]),
        (["--batch-size", "0"], ["--batch-size 0", ">= 1"]),
        (["--batch-size", "-3"], ["--batch-size -3", ">= 1"]),
        (["--batch-size", "2.5"], ["--batch-size", "'2.5'", "integer"]),
        (["--batch-size", "100000000000000000000"], ["--batch-size 100000000000000000000", "[1, 10_000_000]"]),
        (["--epochs", "0"], ["--epochs 0", ">= 1"]),
        (["--epochs", "-1"], ["--epochs -1", ">= 1"]),
        (["--epochs", "5000000"], ["--epochs 5000000", "15_000_000 steps", "at most 10_000_000"]),
        (["--momentum", "-0.1"], ["--momentum -0.1", ">= 0"]),
        (["--momentum", "nan"], ["--momentum nan", "finite"]),
        (["--weight-decay", "-1"], ["--weight-decay -1.0", ">= 0"]),
        (["--weight-decay", "inf"], ["--weight-decay inf", "finite"]),
        (["--dampening", "1.5"], ["--dampening 1.5", "[0, 1]"]),
        (["--dampening", "-0.1"], ["--dampening -0.1", "[0, 1]"]),
        (["--nesterov"], ["--nesterov", "momentum > 0"]),
        (["--nesterov", "--momentum", "0.9", "--dampening", "0.1"], ["--nesterov", "zero dampening"]),
        (["--device", "tpu"], ["--device 'tpu'", "cpu, cuda, cuda:N, auto"]),
        (["--device", "cuda:x"], ["--device 'cuda:x'", "cpu, cuda, cuda:N, auto"]),
        (["--dtype", "float8"], ["--dtype", "'float8'", "'float32', 'float64', 'bfloat16', 'float16'"]),
        (["--format", "xml"], ["--format", "'xml'", "'table', 'json', 'csv', 'markdown'"]),
        (["--seed", "-1"], ["--seed -1", ">= 0"]),
        (["--synthetic", "0"], ["--synthetic 0", ">= 1"]),
        (["--synthetic", "100000000"], ["--synthetic 100000000", "[1, 10_000_000]"]),
        (["--synthetic", "5", "--noise", "-1"], ["--noise -1.0", ">= 0"]),
        (["--synthetic", "5", "--true-w", "1e300"], ["--synthetic data: y[0]", "overflows float32", "--dtype float64"]),
        (["--init-w", "inf"], ["--init-w inf", "finite"]),
        (["--init-b", "3.402823466385289e+38"], ["--init-b 3.402823466385289e+38", "does not fit float32"]),
        (["--lr", "1e39"], ["--lr 1e+39", "does not fit float32", "--dtype float64"]),
        (["--rtol", "-1"], ["--rtol -1.0", ">= 0"]),
        (["--atol", "nan"], ["--atol nan", "finite"]),
        (["--drop-last", "--batch-size", "10"], ["--drop-last", "--batch-size 10", "9 samples"]),
        (["--no-such-option"], ["No such option", "--no-such-option"]),
    ],
)
def test_bad_option(args, names, tmp_path):
    result, out = invoke(["run", *args], tmp_path)
    assert_usage_error(result, out, *names)


def test_cuda_asked_for_but_absent(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", "cuda:3"):
        result, out = invoke(["run", "--device", device], tmp_path)
        assert_usage_error(result, out, f"--device {device}", "CUDA is not available", "--device cpu")


def test_cuda_index_beyond_the_machine(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result, out = invoke(["run", "--device", "cuda:4"], tmp_path)
    assert_usage_error(result, out, "--device cuda:4", "no such GPU", "cuda:0..cuda:0")


def test_compare_repeated_bad_device(tmp_path):
    result, out = invoke(["compare", "--device", "cpu", "--device", "gpu"], tmp_path)
    assert_usage_error(result, out, "'gpu'", "cpu, cuda, cuda:N, auto")


# ------------------------------------------------------------------ data files


@pytest.mark.parametrize(
    "content,names",
    [
        ("", ["is empty", "x and y"]),
        ("\n  \n\n", ["is empty"]),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["binary file, not CSV"]),
        (b"x,y\n1,\xff\xfe\n", ["not UTF-8"]),
        ("a,y\n1,2\n", ["has no column 'x'"]),
        ("x,b\n1,2\n", ["has no column 'y'"]),
        ("u,v\n1,2\n", ["has no column 'x' or 'y'"]),
        ("x,y\n", ["a header but no data rows"]),
        ("x,y\n1,2\n3,abc\n", ["row 3, column y", "'abc' is not a number"]),
        ("x,y\n1,2\nnan,4\n", ["row 3, column x", "'nan'", "finite"]),
        ("x,y\n1,inf\n", ["row 2, column y", "'inf'", "finite"]),
        ("x,y\n1,-Infinity\n", ["row 2, column y", "finite"]),
        ("x,y\n1,2\n3,4,5\n", ["row 3 has 3 fields but the header has 2"]),
        ("x,y\n1,2\n1e39,3\n", ["data row 2, column x", "overflows float32"]),
        ("x,y\n1,2\n3\n", ["column x has 2 values but column y has 1"]),
        ("x,y\n1,\n2\n", ["row 2 has no y value", "column x has 2 values, column y has 0"]),
        ("x,y\n1,\n2,3\n", ["row 2 has no y value", "column x has 2 values, column y has 1"]),
        ("x,y\n" + "a" * 200_000 + ",1\n", ["not a CSV file sgdtrace can read", "field larger than field limit"]),
    ],
)
def test_bad_data_file(content, names, tmp_path):
    path = write(tmp_path, "data.csv", content)
    result, out = invoke(["run", "--data", path], tmp_path)
    assert_usage_error(result, out, f"--data {path!r}", *names)


def test_the_articles_snippet_nine_x_eight_y(tmp_path):
    # the article's code: x = 0..8 but y lacks 18 (nine x, eight y)
    xs = list(range(9))
    ys = [10, 12, 14, 16, 20, 22, 24, 26]
    rows = [f"{x},{ys[i]}" if i < len(ys) else f"{x}," for i, x in enumerate(xs)]
    path = write(tmp_path, "snippet.csv", "x,y\n" + "\n".join(rows) + "\n")
    result, out = invoke(["run", "--data", path], tmp_path)
    line = assert_usage_error(result, out, "column x has 9 values, column y has 8", "every x needs its y")
    # the same slip with a short last row (no trailing comma)
    path = write(tmp_path, "snippet2.csv", "x,y\n" + "\n".join(rows[:8] + ["8"]) + "\n")
    result, out = invoke(["run", "--data", path], tmp_path)
    assert_usage_error(result, out, "column x has 9 values but column y has 8")
    assert line


def test_library_refuses_mismatched_arrays():
    from sgdtrace.data import Dataset
    from sgdtrace.errors import DataError

    with pytest.raises(DataError, match="x has 9 values but y has 8"):
        Dataset.from_arrays(range(9), [10, 12, 14, 16, 20, 22, 24, 26])


def test_missing_data_file(tmp_path):
    path = str(tmp_path / "nope.csv")
    result, out = invoke(["run", "--data", path], tmp_path)
    assert_usage_error(result, out, f"--data {path!r}", "no such file")


def test_data_path_is_a_folder(tmp_path):
    # an unreadable file: chmod 000 does not stop root, so a folder stands in for one
    result, out = invoke(["run", "--data", str(tmp_path)], tmp_path)
    assert_usage_error(result, out, "--data", "is a folder, not a CSV file")


def test_unreadable_data_file(tmp_path, monkeypatch):
    # permission denied, simulated (the tests may run as root): open() raises as it would
    path = write(tmp_path, "locked.csv", "x,y\n1,2\n")
    real_open = builtins.open

    def fake_open(file, *a, **k):
        if str(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    result, out = invoke(["run", "--data", path], tmp_path)
    assert_usage_error(result, out, f"--data {path!r}", "cannot be read (Permission denied)")


# ------------------------------------------------------------------ config files


@pytest.mark.parametrize(
    "content,names",
    [
        ("lr = \n", ["not valid TOML", "line 1"]),
        ("lr = 0.1\nbatch_size 3\n", ["not valid TOML", "line 2"]),
        ("[run\nlr = 1\n", ["not valid TOML", "line 1"]),
        ("learning_rate = 0.1\n", ["unknown key 'learning_rate'", "known keys"]),
        ("batchsize = 3\n", ["unknown key 'batchsize'", "did you mean 'batch_size'?"]),
        ("epoches = 3\n", ["unknown key 'epoches'", "did you mean 'epochs'?"]),
        ('lr = "fast"\n', ["'lr' in cfg.toml = 'fast'", "must be a number"]),
        ("batch_size = 2.5\n", ["'batch_size' in cfg.toml = 2.5", "whole number"]),
        ('shuffle = "yes"\n', ["'shuffle' in cfg.toml = 'yes'", "true or false"]),
        ("device = 0\n", ["'device' in cfg.toml = 0", "a string"]),
        ("epochs = [1, 2]\n", ["'epochs' in cfg.toml = an array", "whole number"]),
        ("lr = nan\n", ["'lr' in cfg.toml nan", "finite"]),
        ("lr = -0.1\n", ["'lr' in cfg.toml -0.1", "> 0"]),
        ("batch_size = 0\n", ["'batch_size' in cfg.toml 0", ">= 1"]),
        ("dampening = 2\n", ["'dampening' in cfg.toml 2.0", "[0, 1]"]),
        ('format = "xml"\n', ["'format' in cfg.toml 'xml'", "table, json, csv, markdown"]),
        ('dtype = "half"\n', ["'dtype' in cfg.toml 'half'", "float32, float64"]),
        (b"lr = 0.1\n\xff\n", ["not a text file"]),
    ],
)
def test_bad_config_file(content, names, tmp_path):
    path = write(tmp_path, "cfg.toml", content)
    result, out = invoke(["run", "--config", path], tmp_path)
    assert_usage_error(result, out, *names)


def test_missing_config_file(tmp_path):
    path = str(tmp_path / "nope.toml")
    result, out = invoke(["run", "--config", path], tmp_path)
    assert_usage_error(result, out, f"--config {path!r}", "no such file")


def test_config_names_a_missing_data_file(tmp_path):
    path = write(tmp_path, "cfg.toml", 'data = "gone.csv"\n')
    result, out = invoke(["run", "--config", path], tmp_path)
    assert_usage_error(result, out, "gone.csv", "no such file")


def test_check_with_a_bad_config(tmp_path):
    good = write(tmp_path, "good.toml", "lr = 0.01\n")
    bad = write(tmp_path, "bad.toml", "lr = 0\n")
    result, out = invoke(["check", good, bad], tmp_path)
    assert_usage_error(result, out, "'lr' in bad.toml 0.0", "> 0")
    result, out = invoke(["check", str(tmp_path / "none.toml")], tmp_path)
    assert_usage_error(result, out, "none.toml", "no such file or folder")


# ------------------------------------------------------------------ output


def test_output_in_a_missing_folder(tmp_path):
    target = tmp_path / "no" / "such" / "out.json"
    result = CliRunner().invoke(cli, ["run", "--format", "json", "--output", str(target)])
    assert_usage_error(result, tmp_path / "out.txt", "--output", "does not exist")
    assert not target.parent.exists()


def test_output_is_a_folder(tmp_path):
    result = CliRunner().invoke(cli, ["run", "--output", str(tmp_path)])
    assert result.exit_code == 2 and result.stderr.startswith("sgdtrace: error: ")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_no_output_file_on_a_late_error(tmp_path, monkeypatch):
    """An error after the run has begun (CUDA missing is found late) leaves no file behind."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for fmt in ("table", "json", "csv", "markdown"):
        result, out = invoke(["run", "--device", "cuda", "--format", fmt], tmp_path)
        assert_usage_error(result, out, "CUDA is not available")


def test_out_of_memory_is_a_clear_error(tmp_path, monkeypatch):
    import sgdtrace.tracing

    def boom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(sgdtrace.tracing, "run_trace", boom)
    result, out = invoke(["run"], tmp_path)
    assert_usage_error(result, out, "not enough memory")


# ------------------------------------------------------------------ legal values at the edges work


@pytest.mark.parametrize(
    "args,steps",
    [
        (["--batch-size", "100"], 1),  # larger than the data: one batch of all nine
        (["--batch-size", "10000000"], 1),
        (["--lr", "1e-30"], 3),  # tiny: w and b barely move
        (["--lr", "5e-324", "--dtype", "float64"], 3),  # the smallest float64, a subnormal
        (["--epochs", "1", "--batch-size", "1"], 9),
        (["--dampening", "1", "--momentum", "0.5"], 3),
        (["--dampening", "0", "--momentum", "0"], 3),
        (["--synthetic", "1"], 1),  # a single sample
        (["--seed", str(2**63 - 1), "--shuffle"], 3),
    ],
)
def test_legal_edges_work(args, steps, tmp_path):
    import json

    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli, ["run", *args, "--format", "json", "--output", str(out)])
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert result.stderr == ""
    doc = json.loads(out.read_text())
    assert len(doc["steps"]) == steps and doc["verdict"]["ok"]


def test_single_sample_csv(tmp_path):
    path = write(tmp_path, "one.csv", "x,y\n2,14\n")
    result = CliRunner().invoke(cli, ["run", "--data", path, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    import json

    step = json.loads(result.stdout)["steps"][0]
    # one sample, w = b = 0: d = -14; dl/dw = 2 * -14 * 2 = -56; dl/db = -28; loss = 196
    assert step["manual"]["grad_w"] == -56.0 and step["manual"]["grad_b"] == -28.0
    assert step["manual"]["loss"] == 196.0


def test_tiny_lr_barely_moves():
    result = CliRunner().invoke(cli, ["run", "--lr", "1e-30", "--format", "json"])
    import json

    doc = json.loads(result.stdout)
    # w = 0 - 1e-30 * (-80/3): representable in float32 (smallest normal 1.2e-38)
    assert doc["steps"][0]["manual"]["w"] == pytest.approx(80 / 3 * 1e-30, rel=1e-6)
    assert os.environ.get("SGDTRACE_NEVER_SET") is None


# ------------------------------------------------------------------ output that cannot be written

FORMATS = ("table", "json", "csv", "markdown")
needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")


def _script() -> str:
    import sys

    return str(Path(sys.executable).parent / "sgdtrace")


def _assert_one_output_error(rc: int, stderr: str, name: str) -> None:
    assert rc == 2, (rc, stderr)
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert lines == [f"sgdtrace: error: cannot write to {name}: No space left on device"], stderr


@needs_dev_full
@pytest.mark.parametrize(
    "command",
    [["run"], ["compare"], ["check", "sgdtrace/configs/article.toml"], ["explain", "--batch", "2"], ["graph"]],
)
def test_a_full_disk_via_output_is_exit_2_naming_the_file(command, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    formats = FORMATS if command[0] in ("run", "compare") else ("table", "json")
    for fmt in formats:
        result = CliRunner().invoke(cli, command + ["--format", fmt, "--output", "/dev/full"])
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        _assert_one_output_error(result.exit_code, result.stderr, "/dev/full")
        assert result.stdout == ""


@needs_dev_full
@pytest.mark.parametrize("fmt", ["table", "json"])
def test_a_full_disk_on_standard_output_is_exit_2(fmt):
    """`sgdtrace run > /dev/full`: the real process, its standard output a full device."""
    import subprocess

    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [_script(), "run", "--format", fmt], stdout=full, stderr=subprocess.PIPE, text=True, timeout=300
        )
    _assert_one_output_error(proc.returncode, proc.stderr, "standard output")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_reader_that_leaves_ends_the_run_silently_with_its_verdict(fmt):
    """`sgdtrace run ... | head -1`: the pipe closes after one line; the rest cannot be written.

    The pipe's buffer is cut to one page (Linux) and 60 steps in every format are longer than
    that, so writing the rest meets the closed pipe. The exit code is still the verdict's (0: the
    run agrees) and stderr stays empty.
    """
    import fcntl
    import subprocess

    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
        epochs = "20"
    except OSError:  # not Linux: a run longer than the usual 64 KiB buffer in every format
        epochs = "400"
    rows = ["--rows", "0"] if fmt == "table" else []  # (--rows shapes the table only: elsewhere, exit 2)
    proc = subprocess.Popen(
        [_script(), "run", "--epochs", epochs, *rows, "--format", fmt], stdout=write_end, stderr=subprocess.PIPE
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        first = reader.readline()
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=300)
    assert first  # the reader got its line
    assert (rc, err) == (0, "")


def test_sigterm_while_writing_output_leaves_no_file(tmp_path):
    """SIGTERM while --output is being written: no temporary file and no partial file stay.

    The real process, with the JSON's pieces slowed down so the signal lands mid-write: the test
    waits until the temporary file exists, then sends SIGTERM.
    """
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run.json"
    code = (
        "import time, sys\n"
        "import sgdtrace.views.export as ex\n"
        "real = ex.json_pieces\n"
        "def slow(trace):\n"
        "    for piece in real(trace):\n"
        "        yield piece\n"
        "        time.sleep(0.5)\n"
        "ex.json_pieces = slow\n"
        "from sgdtrace.cli import main\n"
        f"main(['run', '--synthetic', '200', '--batch-size', '1', '--format', 'json', '--output', {str(out)!r}])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        deadline = time.monotonic() + 240
        while not [p for p in tmp_path.iterdir() if p.name.startswith(".sgdtrace-")]:
            assert proc.poll() is None, "the run ended before its output was being written"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 143, (rc, proc.stderr.read())
    assert list(tmp_path.iterdir()) == []  # neither .sgdtrace-* nor a partial run.json


def test_output_error_messages_name_the_stream():
    from sgdtrace.output import OutputError, write_pieces

    class Full:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

        def fileno(self):
            raise ValueError  # not a real file: nothing to point at the null device

    import sys

    real = sys.stdout
    sys.stdout = Full()
    try:
        with pytest.raises(OutputError, match="^cannot write to standard output: No space left on device$"):
            write_pieces(["x"], None)
    finally:
        sys.stdout = real


def test_check_names_its_files_as_configs_not_as_an_option(tmp_path):
    data = write(tmp_path, "data.csv", "x,y\n1,2\n")
    result, out = invoke(["check", data], tmp_path)
    line = assert_usage_error(result, out, "config", "data.csv", "TOML", "--data")
    assert "--config" not in line
    bad = write(tmp_path, "bad.toml", "lr = 0.01\nlr = 3\n")
    result, out = invoke(["check", bad], tmp_path)
    line = assert_usage_error(result, out, "config", "bad.toml", "not valid TOML")
    assert "--config" not in line


def test_missing_matplotlib_names_no_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(cli, ["plot", "--output", str(tmp_path / "p.png")])
    line = assert_usage_error(result, tmp_path / "p.png", "plot needs matplotlib", "pip install matplotlib")
    assert "sgdtrace[plot]" not in line
