"""Property: whatever the options and data files, the CLI exits 0, 1 or 2 and never shows a traceback.

Exit 2 always comes with exactly one line on stderr, ``sgdtrace: error: ...``, and no --output
file. The epochs and sizes drawn are small or absurd (rejected at once), never legal and huge,
so each example runs in milliseconds.
"""

from __future__ import annotations

import os
import tempfile

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgdtrace.cli import cli

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

texty = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "-0", "1e-300", "5e-324", "1e308", "nan", "inf", "-inf", "1e", "0x10", "1_0", ""]),
    texty,
)
small_ints = st.one_of(
    st.integers(-3, 12).map(str), st.sampled_from(["10**3", "1.5", "", "99999999999999999999999"]), texty
)

OPTIONS = {
    "--lr": floats,
    "--batch-size": small_ints,
    "--epochs": st.one_of(st.integers(-2, 4).map(str), st.sampled_from(["0", "x", "-9", "1e3", "123456789012"])),
    "--init-w": floats,
    "--init-b": floats,
    "--momentum": floats,
    "--dampening": floats,
    "--weight-decay": floats,
    "--seed": small_ints,
    "--synthetic": st.one_of(st.integers(-2, 30).map(str), st.just("100000000000")),
    "--true-w": floats,
    "--noise": floats,
    "--device": st.one_of(st.sampled_from(["cpu", "auto", "cuda", "cuda:1", "gpu", "CPU", ""]), texty),
    "--dtype": st.one_of(st.sampled_from(["float32", "float64", "float16", "double"]), texty),
    "--format": st.one_of(st.sampled_from(["table", "json", "csv", "markdown", "xml"]), texty),
    "--rtol": floats,
    "--atol": floats,
}
FLAGS = ["--shuffle", "--no-shuffle", "--drop-last", "--nesterov", "--maximize", "--quiet"]


def check_result(result, out_path: str) -> None:
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.stderr, repr(result.exception))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sgdtrace: error: "), result.stderr
        assert not os.path.exists(out_path)
    else:
        assert os.path.exists(out_path)


@SETTINGS
@given(
    opts=st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.none(), max_size=6).flatmap(
        lambda keys: st.fixed_dictionaries({k: OPTIONS[k] for k in keys})
    ),
    flags=st.lists(st.sampled_from(FLAGS), max_size=3, unique=True),
)
def test_random_options_never_crash(opts, flags):
    args = ["run"]
    for k, v in opts.items():
        args += [k, v]
    args += flags
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        result = CliRunner().invoke(cli, args + ["--output", out])
        check_result(result, out)


cell = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.sampled_from(["", " ", "x", "y", "nan", "1e39", "-1e400", "0x1", "1,5", '"2"', "\t3"]),
    texty,
)
row = st.lists(cell, min_size=0, max_size=4).map(lambda cells: ",".join(cells))
header = st.sampled_from(["x,y", "y,x", "X, Y", "x,y,z", "x", "a,b", "", "x,y,x"])
csv_text = st.builds(
    lambda h, rows, nl: h + nl + nl.join(rows) + nl, header, st.lists(row, max_size=8), st.sampled_from(["\n", "\r\n"])
)
csv_file = st.one_of(
    csv_text.map(lambda t: t.encode("utf-8")),
    st.binary(max_size=64),
    csv_text.map(lambda t: b"\xef\xbb\xbf" + t.encode("utf-8")),
)


@SETTINGS
@given(
    content=csv_file,
    fmt=st.sampled_from(["table", "json", "csv", "markdown"]),
    batch=st.integers(1, 5),
    shuffle=st.booleans(),
)
def test_random_data_files_never_crash(content, fmt, batch, shuffle):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.csv")
        with open(path, "wb") as fh:
            fh.write(content)
        out = os.path.join(tmp, "out")
        args = ["run", "--data", path, "--format", fmt, "--batch-size", str(batch), "--output", out]
        result = CliRunner().invoke(cli, args + (["--shuffle"] if shuffle else []))
        check_result(result, out)


toml_value = st.one_of(
    st.integers(-5, 10).map(str),
    st.floats(allow_nan=True).map(
        lambda f: "nan" if f != f else ("inf" if f == float("inf") else ("-inf" if f == float("-inf") else repr(f)))
    ),
    st.sampled_from(["true", "false", '"cpu"', '"float64"', '"json"', "[1, 2]", "{a = 1}", '"x.csv"', "", "=", "'"]),
)
toml_key = st.sampled_from(
    [
        "lr",
        "batch_size",
        "batch-size",
        "epochs",
        "momentum",
        "dampening",
        "device",
        "dtype",
        "format",
        "shuffle",
        "seed",
        "learning_rate",
        "epoch",
        "data",
        "output",
        "[run]",
        "",
    ]
)


@SETTINGS
@given(lines=st.lists(st.tuples(toml_key, toml_value), max_size=5))
def test_random_config_files_never_crash(lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cfg.toml")
        with open(path, "w") as fh:
            fh.write("".join(f"{k} = {v}\n" if not k.startswith("[") else k + "\n" for k, v in lines))
        out = os.path.join(tmp, "out")
        result = CliRunner().invoke(cli, ["run", "--config", path, "--output", out])
        if result.exit_code != 2 and "output" in dict(lines) and not os.path.exists(out):
            out = os.path.join(tmp, "x.csv")  # the file named its own output
        assert result.exit_code in (0, 1, 2), (result.exit_code, result.stderr, repr(result.exception))
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert "Traceback" not in result.stderr
        if result.exit_code == 2:
            assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("sgdtrace: error: ")
