"""CSV and Markdown exports (shape and values), --every and the summary line, witness columns."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
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


# ------------------------------------------------------------------ non-finite numbers, every format

_JSON_INVALID = re.compile(r"\b(Infinity|NaN)\b")


@pytest.fixture(scope="module")
def non_finite():
    """A run that blows up (inf, -inf and nan in its steps), with a non-finite value in every other
    kind of field too: the divergence's carried part and tolerance, the verdict's maxima and first
    divergent step, the configuration; the ground truth and the gradient check attached."""
    import dataclasses
    import math

    from sgdtrace.verdict import FirstDivergence

    t = run_trace(Config(lr=0.5, epochs=60))
    assert any(np.isneginf(c).any() for c in t.torch.values()) and any(np.isnan(c).any() for c in t.torch.values())
    for d in t.divergence.values():
        d.carried[0], d.tol[1] = math.nan, math.inf
    t.verdict.max_tol_ratio, t.verdict.max_abs, t.verdict.max_rel = math.inf, math.nan, -math.inf
    t.verdict.ok = False
    t.verdict.first_divergent_step = FirstDivergence(
        1,
        1,
        1,
        "w",
        math.nan,
        math.inf,
        None,
        -math.inf,
        math.inf,
        closer="hand",
        exact_error={"hand": 0.5, "torch": math.inf},
    )
    t.verdict.diverged_training = dataclasses.replace(t.verdict.diverged_training, radius=math.inf)
    object.__setattr__(t.config, "atol", math.inf)  # past validation: as a value a view could meet
    t.reference, t.gradcheck = exact_reference(t), gradcheck(t)
    return t


def _strict_json(text: str):
    def refuse(token):
        raise AssertionError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _results(t):
    from sgdtrace.check import CheckResult, CheckRow
    from sgdtrace.compare import CompareResult, cross_compare

    other = run_trace(Config(lr=0.5, epochs=60, dtype="float64"))
    from sgdtrace.compare import drift

    compare = CompareResult([t, other], [cross_compare(other, other)], [drift(t, other)])
    return compare, CheckResult([CheckRow("blown.toml", t)])


def test_every_json_writes_non_finite_numbers_as_strings(non_finite):
    from sgdtrace.views.export import compare_to_json, json_pieces, to_json_text, trace_to_json

    t = non_finite
    docs = {"run (with the witnesses)": "".join(json_pieces(t))}
    t_plain = dataclasses_copy(t)
    docs["run (streamed)"] = "".join(json_pieces(t_plain))
    compare, check = _results(t)
    docs["compare"] = to_json_text(compare_to_json(compare))
    docs["check"] = to_json_text(check.to_json())
    for name, text in docs.items():
        assert not _JSON_INVALID.search(text), name
        _strict_json(text)
    for text in (docs["run (with the witnesses)"], docs["run (streamed)"]):
        doc = _strict_json(text)
        assert doc["config"]["atol"] == "inf"
        v = doc["verdict"]
        assert (v["max_tol_ratio"], v["max_abs"], v["max_rel"]) == ("inf", "nan", "-inf")
        first = v["first_divergent_step"]
        assert (first["manual"], first["torch"], first["carried"], first["tol"]) == ("nan", "inf", "-inf", "inf")
        assert first["exact_error"] == {"hand": 0.5, "torch": "inf"}
        assert v["diverged_training"]["radius"] == "inf"
        assert doc["steps"][0]["divergence"]["w"]["carried"] == "nan"
        assert doc["steps"][1]["divergence"]["w"]["tol"] == "inf"
        values = [s["torch"][f] for s in doc["steps"] for f in ("grad_w", "loss")]
        assert {"inf", "-inf", "nan"} <= set(values)
    witnessed = _strict_json(docs["run (with the witnesses)"])
    assert any(e["rel"] in ("inf", "nan") for s in witnessed["steps"] for e in s["reference_error"]["torch"].values())
    assert _strict_json(docs["check"])["checks"][0]["verdict"]["max_tol_ratio"] == "inf"
    assert _strict_json(docs["compare"])["runs"][0]["verdict"]["max_abs"] == "nan"
    assert trace_to_json(t)["verdict"]["max_rel"] == "-inf"


def dataclasses_copy(t):
    """The trace without its witnesses: the streamed JSON path."""
    import copy

    u = copy.copy(t)
    u.reference = u.gradcheck = None
    return u


def test_every_text_format_spells_non_finite_numbers_as_json_does(non_finite):
    from sgdtrace.teaching.report import run_html as run_page
    from sgdtrace.views.check import check_junit, check_markdown
    from sgdtrace.views.compare import compare_text
    from sgdtrace.views.html import check_page, compare_page

    t = non_finite
    compare, check = _results(t)
    texts = {
        "csv": trace_to_csv(t),
        "markdown": trace_to_markdown(t),
        "html": run_page(t),
        "compare csv": compare_text(compare, "csv"),
        "compare markdown": compare_text(compare, "markdown"),
        "compare html": compare_page(compare),
        "check markdown": check_markdown(check),
        "check junit": check_junit(check),
        "check html": check_page(check),
    }
    for name, text in texts.items():
        assert not _JSON_INVALID.search(text), name
        assert not re.search(r"\b(Inf|NAN|INF)\b", text), name
    rows = list(csv.DictReader(io.StringIO(texts["csv"])))
    cells = {v for r in rows for v in r.values()}
    assert {"inf", "-inf", "nan"} <= cells
    for r in rows:
        for v in r.values():
            if v and v.lstrip("-").lower() in ("inf", "nan", "infinity"):
                assert v in ("inf", "-inf", "nan"), v
    assert "| nan |" in texts["markdown"] and "inf" in texts["html"] and ">nan<" in texts["html"]
    for r in csv.reader(io.StringIO(texts["compare csv"])):
        for v in r:
            if v.lstrip("-").lower() in ("inf", "nan", "infinity"):
                assert v in ("inf", "-inf", "nan"), v
    import xml.etree.ElementTree as ET

    ET.fromstring(texts["check junit"].split("\n", 1)[1])
