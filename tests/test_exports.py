"""CSV and Markdown exports (shape and values), --every and the summary line, witness columns."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner
from golden_util import render

from sgdtrace import Config
from sgdtrace.cli import cli
from sgdtrace.reference import exact_reference, gradcheck
from sgdtrace.tracing import run_trace
from sgdtrace.views.export import trace_to_csv, trace_to_markdown, verdict_sentence
from sgdtrace.views.table import run_view, shown_steps


@pytest.fixture(scope="module")
def article():
    return run_trace(Config())


def test_csv_one_row_per_step_flat_columns(article):
    rows = list(csv.DictReader(io.StringIO(trace_to_csv(article))))
    assert len(rows) == 3
    assert list(rows[0])[:5] == ["epoch", "batch", "n", "manual_grad_w", "manual_grad_b"]
    assert all("." not in c and " " not in c for c in rows[0])
    # values are the trace's float32 values, written exactly (repr of the float)
    assert float(rows[0]["manual_grad_b"]) == -24.0
    assert float(rows[1]["torch_w"]) == float(article.torch["w"][1])
    assert [r["ok"] for r in rows] == ["true"] * 3


def test_csv_with_witnesses(article):
    article.reference, article.gradcheck = exact_reference(article), gradcheck(article)
    try:
        rows = list(csv.DictReader(io.StringIO(trace_to_csv(article))))
    finally:
        article.reference = article.gradcheck = None
    assert float(rows[0]["exact_w"]) == pytest.approx(4 / 15, rel=1e-15)
    assert 0 < float(rows[0]["relerr_torch_w"]) < 1e-6
    assert rows[0]["gradcheck_ok"] == "true"
    assert float(rows[0]["gradcheck_numeric_grad_w"]) == pytest.approx(-80 / 3, rel=1e-8)


def test_markdown_table_shape(article):
    md = trace_to_markdown(article)
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3  # header, separator, one row per step
    widths = {line.count("|") for line in table}
    assert len(widths) == 1
    assert "| 1 | 1 | 3 | -26.6667 | -26.6667 | -24 | -24 | 146.667 | 146.667 | 0.266667 | 0.266667 |" in md
    # the verdict closes the export, in the words the table uses (one sentence builder)
    assert md.rstrip().endswith(verdict_sentence(article)) and verdict_sentence(article).startswith("✓ agree")


def test_shown_steps_every_and_rows():
    assert shown_steps(5, None) == [0, 1, 2, 3, 4]
    assert shown_steps(10, None, every=3) == [0, 3, 6, 9]
    assert shown_steps(11, None, every=3) == [0, 3, 6, 9, 10]  # the last step is always shown
    assert shown_steps(100, 4, every=10) == [0, 10, None, 90, 99]
    assert shown_steps(100, 0, every=50) == [0, 50, 99]


def test_summary_line_and_gap(article):
    t = run_trace(Config(epochs=30))
    text = render(run_view(t, rows=4, every=5), width=120)
    assert "90 steps, 4 shown" in text
    assert "+79" in text  # steps 6..84 hidden between the 2nd and the 18th shown
    assert "w 0 → " in text and "(true 2)" in text and "(true 10)" in text
    text = render(run_view(article), width=120)
    # all shown: no count; the loss over the whole data set: mean((2x + 10)^2, x = 0..8) = 3156/9 = 350.667
    assert "steps, " not in text and "data loss 350.667 → " in text


def test_cli_formats_to_output(tmp_path):
    runner = CliRunner()
    for fmt in ("csv", "markdown", "json"):
        out = tmp_path / f"run.{fmt}"
        r = runner.invoke(cli, ["run", "--format", fmt, "--output", str(out), "--reference", "exact", "--gradcheck"])
        assert r.exit_code == 0, r.output
        assert out.read_text().strip()
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["reference"]["arithmetic"] == "fraction"
    assert doc["gradcheck"]["ok"] is True and doc["steps"][0]["gradcheck"]["ok"] is True
    r = runner.invoke(cli, ["run", "--reference", "exact", "--every", "2"])
    assert r.exit_code == 0 and "exact" in r.output and "3 steps, 2 shown" in r.output
    r = runner.invoke(cli, ["run", "--every", "0"])
    assert r.exit_code == 2


@pytest.mark.parametrize("width", [60, 80, 120])
def test_no_number_is_ever_cut_at_any_width(width):
    """Runs with tiny (1e-13), huge (1e26, 1e31) and infinite values, with and without momentum's
    buffers and the witnesses' rows, printed by `sgdtrace run` on a terminal of 60, 80 and 120
    columns: no cell ends in "…", no line is wider than the terminal, and every number in the
    table is whole (it parses; none is split at its exponent)."""
    import re

    runs = [
        ["--synthetic", "300", "--batch-size", "1", "--init-w", "1.9999", "--init-b", "10.0001"],
        ["--momentum", "0.9", "--lr", "0.03", "--epochs", "30"],  # a momentum blow-up to 1e26
        ["--init-w", "-3.3e30", "--epochs", "2"],  # overflowing losses
        ["--lr", "1e-7", "--batch-size", "2", "--dtype", "float64", "--epochs", "3"],
    ]
    for args in runs:
        for witness in ([], ["--reference", "exact"]):
            result = CliRunner().invoke(cli, ["run", "--rows", "8", *args, *witness], env={"COLUMNS": str(width)})
            assert result.exit_code in (0, 1), result.output
            text = result.output
            assert "…" not in text, (args, witness, width)
            assert max(len(line) for line in text.splitlines()) <= width
            lines = text.split("─" * 10, 1)[1].splitlines()[1:]  # below the header rule
            rows = []
            for line in lines:
                if "→" in line or line.startswith(("✓", "✗ diverge", "⚠ training")):
                    break  # the summary line and the verdict follow the table
                rows.append(line)
            assert rows
            for token in re.findall(r"[-+]?[0-9][-+0-9.e]*", "\n".join(rows)):
                assert not token.endswith(("e", "e-", "e+", ".")), (token, args, width)  # not split at its exponent
                float(token)
