"""Data sources: a CSV file (--data) and a synthetic line (--synthetic), as config.data shows them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from sgdtrace.check import run_checks
from sgdtrace.cli import cli
from sgdtrace.config import Config
from sgdtrace.data import Dataset, load, read_csv, synthetic
from sgdtrace.errors import DataError
from sgdtrace.tracing import run_trace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_CSV = os.path.join(ROOT, "sgdtrace", "configs", "data", "ice-cream.csv")


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def one_error_line(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgdtrace: error: "), result.output
    for frag in fragments:
        assert frag in lines[0]
    return lines[0]


# ------------------------------------------------------------------ CSV


def test_csv_reads_x_and_y_by_header_name_and_ignores_other_columns(tmp_path):
    path = write(tmp_path, "d.csv", 'id,y,comment,x\n1,10,a,0\n2,12.5,"b, c",1\n3,-3e2,,2.25\n')
    ds = read_csv(path)
    assert ds.x[:, 0].tolist() == [0.0, 1.0, 2.25]  # x is (n, D): one column here
    assert ds.y.tolist() == [10.0, 12.5, -300.0]
    assert ds.x.dtype == np.float64
    assert ds.info == {"source": "csv", "path": path, "n": 3}


def test_csv_header_names_are_matched_without_case_or_spaces(tmp_path):
    ds = read_csv(write(tmp_path, "d.csv", " X , Y \n1,2\n3,4\n"))
    assert ds.x[:, 0].tolist() == [1.0, 3.0] and ds.y.tolist() == [2.0, 4.0]


def test_shipped_csv(tmp_path):
    ds = read_csv(SHIPPED_CSV)
    assert len(ds) == 10
    assert ds.x[0, 0] == 1.5 and ds.y[-1] == 18.7


def test_csv_run_json_shows_the_source_and_the_first_batch_by_hand(tmp_path):
    path = write(tmp_path, "d.csv", "x,y,other\n1,3,9\n2,5,9\n4,9,9\n")
    result = run_cli("run", "--data", path, "--batch-size", "2", "--dtype", "float64", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["config"]["data"] == {"source": "csv", "path": path, "n": 3}
    first, last = doc["steps"]
    # batch 1 at w = b = 0: x = 1, 2; y = 3, 5; d = -3, -5
    # loss = (9 + 25)/2 = 17; dl/dw = (2/2)(-3*1 - 5*2) = -13; dl/db = (2/2)(-8) = -8
    assert first["indices"] == [0, 1] and first["n"] == 2
    assert first["manual"]["loss"] == 17.0 and first["torch"]["loss"] == 17.0
    assert first["manual"]["grad_w"] == -13.0 and first["manual"]["grad_b"] == -8.0
    # update: w = 0 - 0.01 * -13 = 0.13, b = 0.08
    assert first["manual"]["w"] == pytest.approx(0.13, rel=1e-15)
    assert first["manual"]["b"] == pytest.approx(0.08, rel=1e-15)
    # batch 2 is the partial batch of one: x = 4, y = 9; d = 0.13*4 + 0.08 - 9 = -8.4; 1/n = 1
    assert last["indices"] == [2] and last["n"] == 1
    assert last["manual"]["grad_w"] == pytest.approx(2 * -8.4 * 4, rel=1e-14)
    assert last["manual"]["loss"] == pytest.approx(8.4**2, rel=1e-14)
    assert doc["verdict"]["ok"] is True


@pytest.mark.parametrize(
    "text,fragments",
    [
        ("a,b\n1,2\n", ["has no column 'x' or 'y'"]),
        ("x,z\n1,2\n", ["has no column 'y'"]),
        ("", ["the file is empty"]),
        ("x,y\n", ["a header but no data rows"]),
        ("x,y\n1,2\n3,abc\n", ["row 3, column y: 'abc' is not a number"]),
        ("x,y\n1,2\n3,inf\n", ["row 3, column y: 'inf'", "finite"]),
        ("x,y\n1,2\n3,\n", ["row 3 has no y value", "column x has 2 values, column y has 1"]),
        ("x,y\n1,2\n3\n", ["column x has 2 values but column y has 1"]),
    ],
)
def test_bad_csv_is_one_error_line_naming_the_problem(tmp_path, text, fragments):
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(DataError):
        read_csv(path)
    one_error_line(run_cli("run", "--data", path), f"--data {path!r}", *fragments)


def test_missing_and_binary_csv_files(tmp_path):
    one_error_line(run_cli("run", "--data", str(tmp_path / "nope.csv")), "no such file")
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"x,y\n\x00\x01\n")
    one_error_line(run_cli("run", "--data", str(binary)), "binary file")
    one_error_line(run_cli("run", "--data", str(tmp_path)), "is a folder")


def test_bad_csv_writes_no_output_file(tmp_path):
    out = tmp_path / "out.json"
    path = write(tmp_path, "bad.csv", "x,y\n1,oops\n")
    one_error_line(run_cli("run", "--data", path, "--format", "json", "--output", str(out)), "'oops'")
    assert not out.exists()


def test_mismatched_lengths_name_both(tmp_path):
    # the article's snippet: nine x and eight y
    with pytest.raises(DataError, match="x has 9 values but y has 8"):
        Dataset.from_arrays(range(9), [10, 12, 14, 16, 20, 22, 24, 26])


# ------------------------------------------------------------------ synthetic


def test_synthetic_is_reproducible_and_the_seed_matters():
    a = synthetic(50, 2.0, 10.0, 0.5, seed=7)
    b = synthetic(50, 2.0, 10.0, 0.5, seed=7)
    c = synthetic(50, 2.0, 10.0, 0.5, seed=8)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


def test_synthetic_without_noise_lies_on_the_line():
    ds = synthetic(200, -1.5, 4.0, 0.0, seed=3)
    assert len(ds) == 200
    assert ((ds.x >= 0) & (ds.x < 10)).all()
    assert np.array_equal(ds.y, -1.5 * ds.x[:, 0] + 4.0)
    assert (ds.true_w, ds.true_b) == (-1.5, 4.0)


def test_synthetic_noise_has_the_requested_spread():
    ds = synthetic(20000, 3.0, -2.0, 0.25, seed=1)
    resid = ds.y - (3.0 * ds.x[:, 0] - 2.0)
    # the sample std of 20000 normal draws is within 3% of sigma with overwhelming probability
    assert resid.std() == pytest.approx(0.25, rel=0.03)
    assert abs(resid.mean()) < 0.25 * 4 / np.sqrt(20000)


def test_synthetic_run_json_config_data():
    result = run_cli(
        "run",
        "--synthetic",
        "25",
        "--true-w",
        "-3",
        "--true-b",
        "1.5",
        "--noise",
        "0.2",
        "--seed",
        "4",
        "--epochs",
        "2",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["config"]["data"] == {
        "source": "synthetic",
        "n": 25,
        "true_w": -3.0,
        "true_b": 1.5,
        "noise": 0.2,
        "seed": 4,
    }
    assert len(doc["steps"]) == 2 * 9  # ceil(25 / 3) batches per epoch, the last of one sample
    assert doc["steps"][8]["n"] == 1


def test_synthetic_default_seed_is_zero_and_recorded():
    cfg = Config(synthetic=5)
    assert load(cfg).info["seed"] == 0
    assert np.array_equal(load(cfg).x, synthetic(5, 2.0, 10.0, 0.0, 0).x)


def test_data_and_synthetic_together_is_an_error(tmp_path):
    path = write(tmp_path, "d.csv", "x,y\n1,2\n")
    one_error_line(run_cli("run", "--data", path, "--synthetic", "5"), "choose one data source")


@pytest.mark.parametrize(
    "flag,value,fragment",
    [
        ("--synthetic", "0", "--synthetic 0"),
        ("--noise", "-1", "--noise -1.0"),
        ("--true-w", "nan", "--true-w nan"),
    ],
)
def test_bad_synthetic_values(flag, value, fragment):
    args = ["run", "--synthetic", "5", flag, value] if flag != "--synthetic" else ["run", flag, value]
    one_error_line(run_cli(*args), fragment)


# ------------------------------------------------------------------ the shipped CSV config


def test_csv_config_resolves_its_data_next_to_it_and_passes_the_gate(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the path in csv.toml is relative to the file, not to the working folder
    result = run_checks([os.path.join(ROOT, "sgdtrace", "configs", "csv.toml")], ["cpu"])
    assert result.ok
    (row,) = result.rows
    assert row.trace.dataset.info["source"] == "csv"
    assert os.path.samefile(row.trace.dataset.info["path"], SHIPPED_CSV)


def test_csv_training_approaches_the_least_squares_line():
    """Many epochs over the shipped CSV end near the least-squares fit (computed here by numpy)."""
    ds = read_csv(SHIPPED_CSV)
    w_ls, b_ls = np.polyfit(ds.x[:, 0], ds.y, 1)
    t = run_trace(Config(data=SHIPPED_CSV, lr=0.02, batch_size=10, epochs=3000, dtype="float64"))
    assert t.verdict.ok
    assert t.manual["w"][-1] == pytest.approx(w_ls, rel=1e-6)
    assert t.manual["b"][-1] == pytest.approx(b_ls, rel=1e-6)


# ------------------------------------------------------------------ ambiguous headers, short rows, stdin


@pytest.mark.parametrize(
    "header, named",
    [
        ("x,y,x", ["column x twice", "'x' (column 1) and 'x' (column 3)"]),
        ("x,X,y", ["column x twice", "'x' (column 1) and 'X' (column 2)"]),
        ("y, Y ,x", ["column y twice", "'y' (column 1) and 'Y' (column 2)"]),
        ("id,x,y,y", ["column y twice", "(column 3) and 'y' (column 4)"]),
    ],
)
def test_a_header_naming_x_or_y_twice_is_a_clash(tmp_path, header, named):
    path = write(
        tmp_path,
        "d.csv",
        header + "\n" + "\n".join(",".join(["1"] * header.count(",") + ["2"]) for _ in range(3)) + "\n",
    )
    with pytest.raises(DataError):
        read_csv(path)
    one_error_line(run_cli("run", "--data", path), f"--data {path!r}", *named)


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("x,y\n1,12\n2\n3,16\n", ["row 3 has no y value", "column x has 3 values but column y has 2"]),
        ("y,x\n12,1\n14\n16,3\n", ["row 3 has no x value", "column x has 2 values but column y has 3"]),
        ("x,y\n1,12\n2,14\n3\n4,18\n5,20\n", ["row 4 has no y value"]),
        ("id,x,y\n1,1,12\n2\n3,3,16\n", ["row 3 has 1 field but the header has 3 (no x or y value)"]),
    ],
)
def test_a_short_middle_row_is_named(tmp_path, text, fragments):
    path = write(tmp_path, "d.csv", text)
    one_error_line(run_cli("run", "--data", path), *fragments)


def test_data_from_standard_input():
    text = "x,y\n1,3\n2,5\n4,9\n"
    r = CliRunner().invoke(cli, ["run", "--data", "-", "--format", "json", "--dtype", "float64"], input=text)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["config"]["data"] == {"source": "csv", "path": "-", "n": 3}
    assert doc["steps"][0]["indices"] == [0, 1, 2] and doc["steps"][0]["manual"]["loss"] == pytest.approx(
        (9 + 25 + 81) / 3
    )
    bad = CliRunner().invoke(cli, ["run", "--data", "-"], input="x,y\n1,oops\n")
    one_error_line(bad, "--data '-'", "row 2, column y", "'oops'")


def test_data_options_without_their_data_warn_on_stderr_and_the_run_goes_on(tmp_path):
    """run takes --true-w; it has no effect without --synthetic: a warning (an option run does not
    take in this form, such as --every with --format json, is exit 2 with that one line)."""
    r = CliRunner().invoke(cli, ["run", "--true-w", "3", "--format", "json"])
    assert r.exit_code == 0, r.output
    (line,) = r.stderr.splitlines()
    assert line.startswith("sgdtrace: warning: ") and "--true-w" in line
    assert json.loads(r.stdout)["config"]["data"]["source"] == "article"
    assert CliRunner().invoke(cli, ["run", "--synthetic", "4", "--true-w", "3"]).stderr == ""
    r = CliRunner().invoke(cli, ["run", "--true-w", "3", "--format", "json", "--every", "2"])
    assert r.exit_code == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and "--every 2" in r.stderr


def test_run_options_from_a_config_file(tmp_path):
    cfg = write(tmp_path, "c.toml", "rows = 4\nevery = 2\nreference = 'exact'\nquiet = true\nepochs = 10\n")
    from_file = CliRunner().invoke(cli, ["run", "--config", cfg])
    by_flags = CliRunner().invoke(
        cli, ["run", "--rows", "4", "--every", "2", "--reference", "exact", "--quiet", "--epochs", "10"]
    )
    assert from_file.exit_code == by_flags.exit_code == 0, from_file.output
    assert from_file.stdout == by_flags.stdout
    assert from_file.stdout != CliRunner().invoke(cli, ["run", "--epochs", "10"]).stdout


# ------------------------------------------------------------------ the fast reader reads what the row reader reads


def _both(tmp_path, text: str, name: str = "d.csv"):
    from sgdtrace.data import _parse_fast, _parse_rows

    path = write(tmp_path, name, text)
    with open(path, "rb") as fh:
        decoded = fh.read().decode("utf-8-sig")
    fast = _parse_fast(decoded, "l")
    slow = _parse_rows(decoded, "l")
    return fast, slow, read_csv(path)


@pytest.mark.parametrize(
    "text",
    [
        "x,y\n1,2\n3,4\n",
        "x,y\r\n1,2\r\n3,4\r\n",
        "\ufeffx,y\n1,2\n3,4\n",
        "y,x\n2,1\n4,3\n",
        " X , Y \n 1 , 2 \n\t3\t,4\n",
        "\n\nx,y\n\n1,2\n\n3,4\n\n\n",
        "x,y,z\n1,2,a\n3,4,b\n",
        "x,y\n1_0,2\n0.1,1e-310\n-0,+5\n",
        "x,y\n1,2\n ,\n3,4\n",  # a blank row with commas: skipped by both
        'x,y\n"1",2\n3,"4.5"\n',  # quoted fields
        "x,y\n1,2\n3,4",  # no final newline
        "x,y\n1,2\n1e308,-1e308\n",
        "x,y\n1,2\n   \n3,4\n",  # a blank row without commas: skipped by the row reader
        "\ufeffx,y\r\n1,2\r\n3,4",  # a BOM, CRLF, no final newline
        "x,y\n1,2\n\x0c\n3,4\n",  # a form feed alone: a blank row to the row reader
    ],
)
def test_the_fast_reader_gives_the_row_readers_values(tmp_path, text):
    fast, slow, ds = _both(tmp_path, text)
    assert ds.x[:, 0].tolist() == slow[0] and ds.y.tolist() == slow[1]
    if fast is not None:
        assert fast[0].tolist() == slow[0] and fast[1].tolist() == slow[1]


@pytest.mark.parametrize("text", ["x2,x1,y\n1,2,3\n4,5,6\n", "x1,y,x2\n1,2,3\n4.5,5,-6\n", "y,x2,x1\n1,2,3\n"])
def test_the_fast_reader_takes_feature_columns_in_any_order(tmp_path, text):
    """Every column x or y (np.loadtxt reads them all): x1..xD in their order, whatever the file's."""
    fast, slow, ds = _both(tmp_path, text)
    assert fast is not None
    assert np.array_equal(fast[0], np.asarray(slow[0], dtype=np.float64).reshape(fast[0].shape))
    assert np.array_equal(ds.x, fast[0]) and np.array_equal(ds.y, fast[1]) and fast[1].tolist() == slow[1]
    header = text.split("\n")[0].split(",")
    first = dict(zip(header, map(float, text.split("\n")[1].split(","))))
    assert ds.x[0].tolist() == [first[f"x{j + 1}"] for j in range(ds.x.shape[1])] and ds.y[0] == first["y"]


@pytest.mark.parametrize(
    "text",
    [
        "x,y\n1,2,3\n4,5\n",  # a row wider than the header (every column x or y)
        "x,y\n1,2\n4\n",  # a row narrower than the header
        "x,y\n1,2\n3,4,\n",  # a trailing comma
        "x1,x2,y,note\n1,2,3,a\n4,5,6\n",  # an ignored column, and a row without it
    ],
)
def test_a_row_of_another_width_goes_to_the_row_reader(tmp_path, text):
    """The fast reader gives up on a row whose width is not the header's (from the file's text or
    its bytes), and the row reader names the row."""
    from sgdtrace.data import _parse_fast, _parse_rows

    assert _parse_fast(text, "l") is None and _parse_fast(text.encode(), "l") is None
    with pytest.raises(DataError) as slow:
        _parse_rows(text, "l")
    with pytest.raises(DataError) as read:
        read_csv(write(tmp_path, "d.csv", text))
    assert str(read.value).split(": ", 1)[1] == str(slow.value).split(": ", 1)[1]


def test_the_fast_reader_takes_well_formed_files(tmp_path):
    fast, slow, _ = _both(tmp_path, "x,y,note\n" + "".join(f"{i * 0.1!r},{i * 2.5 - 1},n{i}\n" for i in range(500)))
    assert fast is not None and fast[0].tolist() == slow[0] and fast[1].tolist() == slow[1]


def test_a_large_well_formed_csv_never_reaches_the_row_reader(tmp_path, monkeypatch):
    """The row-by-row reader costs ~4 µs a row (0.87 s for 200,000); a well-formed file must not need it."""
    import sgdtrace.data as data_module

    def refuse(*args):
        raise AssertionError("the row-by-row reader was used")

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, 200_000)
    path = tmp_path / "big.csv"
    np.savetxt(path, np.column_stack([x, 2 * x + 10]), delimiter=",", header="x,y", comments="", fmt="%.17g")
    monkeypatch.setattr(data_module, "_parse_rows", refuse)
    ds = read_csv(str(path))
    assert np.array_equal(ds.x[:, 0], x) and np.array_equal(ds.y, 2 * x + 10)


_cell = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: f"{f:.6e}"),
    st.sampled_from(
        [
            "",
            " ",
            "\t",
            "x",
            "nan",
            "1e39",
            "1e400",
            "-1e-400",
            "0x1",
            "1_0",
            " 2 ",
            '"3"',
            '"1,5"',
            "\x0b4",
            "\xa05",
            "1e",
            "+.5",
            "-0",
            "\u2003",
            "\x1c6",
            "Infinity",
        ]
    ),
)
_row = st.lists(_cell, min_size=0, max_size=4).map(",".join)
_header = st.sampled_from(["x,y", "y,x", " X , Y ", "x,y,z", "id,x,y", "x", "a,b", "", "x,y,x", "\u00a0x,y"])
_csv_text = st.builds(
    lambda lead, h, rows, nl, end: lead + h + nl + nl.join(rows) + end,
    st.sampled_from(["", "\n", " , \n", "\r\n"]),
    _header,
    st.lists(_row, max_size=8),
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.sampled_from(["", "\n", "\n\n", "\r\n"]),
)


_number = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.3e}"),
    st.sampled_from(["-0", "+1", ".5", "5.", "1E3", "1e-320", "007"]),
)
_padded = st.builds(
    lambda pre, n, post: pre + n + post,
    st.sampled_from(["", "", " ", "\t"]),
    _number,
    st.sampled_from(["", "", " ", "\t"]),
)
_well_formed = st.sampled_from(["x,y", "y,x", " X , Y ", "x,y,z", "id,x,y"]).flatmap(
    lambda h: st.builds(
        lambda rows, nl, blank: h + nl + nl.join(rows if not blank else rows[:1] + [""] + rows[1:]) + nl,
        st.lists(
            st.lists(_padded, min_size=h.count(",") + 1, max_size=h.count(",") + 1).map(",".join),
            min_size=1,
            max_size=8,
        ),
        st.sampled_from(["\n", "\r\n"]),
        st.booleans(),
    )
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(text=st.one_of(_csv_text, _well_formed))
def test_the_fast_reader_agrees_with_the_row_reader_on_any_text(text):
    """Whatever the text, the fast reader gives the row reader's values, or says the row reader must look."""
    from sgdtrace.data import _parse_fast, _parse_rows

    def outcome(parse):
        try:
            return parse(text, "l")
        except DataError as exc:
            return str(exc)

    fast, slow = outcome(_parse_fast), outcome(_parse_rows)
    if isinstance(fast, str):  # a bad header: refused the same way
        assert fast == slow
    elif fast is not None:
        assert not isinstance(slow, str), slow
        assert fast[0].dtype == fast[1].dtype == np.float64
        for got, want in zip(fast, slow):  # bit for bit (-0.0 is not 0.0)
            assert got.view(np.int64).tolist() == np.array(want, dtype=np.float64).view(np.int64).tolist()
