"""tools/readme.py's ``<!-- machine: ... -->`` line: ``--check`` lets exactly the figures it names
differ from machine to machine (the ulp and allowance columns, the verdict's figures), nothing else."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def readme():
    spec = importlib.util.spec_from_file_location("readme_tool", ROOT / "tools" / "readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHECK = """$ sgdtrace check
sgdtrace check: manual engine vs torch on every config
config                   device  dtype     steps  max ulp  of tol  verdict
────────────────────────────────────────────────────────────────────────────────
adagrad.toml             cpu     float32      90        0      0%  ok
adam.toml                cpu     float32      90        0      0%  ok
momentum.toml            cpu     float32      90     9728     41%  ok

✓ 3 runs agree
"""

RUN = """$ sgdtrace run --optimizer adam
ep:b  n            dl/dw     dl/db    lr         w         b     loss  ulp
──────────────────────────────────────────────────────────────────────────
 1:1  3  hand   -26.6667       -24   0.1       0.1       0.1  146.667    0
         torch  -26.6667       -24   0.1       0.1       0.1  146.667

✓ agree  all 60 values within tolerance; max 0 ulp (bit-identical)
  max |Δ| 0 · max rel 0 · worst 0% of tolerance (rtol 2.4e-07)
"""

SPEC = "column max ulp; column of tol"


def _swap(text, old, new):
    assert old in text
    return text.replace(old, new)


def test_the_named_columns_may_differ(readme):
    other = _swap(
        CHECK,
        "adam.toml                cpu     float32      90        0      0%",
        "adam.toml                cpu     float32      90        1     11%",
    )
    assert readme.same_but_machine(CHECK, other, SPEC)
    assert not readme.same_but_machine(CHECK, other, None)  # no machine line: every figure is pinned
    assert not readme.same_but_machine(CHECK, other, "column of tol")  # only the column named


@pytest.mark.parametrize(
    "old,new",
    [
        ("float32      90        0      0%  ok\nadam", "float32      91        0      0%  ok\nadam"),  # steps
        ("0%  ok\nadam.toml", "0%  DIVERGE at 1:2 w\nadam.toml"),  # the verdict column
        ("adagrad.toml ", "adagrad.tomx "),  # a name
        ("✓ 3 runs agree", "✗ 1 of 3 runs diverges"),  # the summary
        ("momentum.toml            cpu     float32      90     9728     41%  ok\n", ""),  # a row fewer
    ],
)
def test_everything_else_is_pinned(readme, old, new):
    assert not readme.same_but_machine(CHECK, _swap(CHECK, old, new), SPEC)


def test_the_verdicts_figures_and_the_ulp_column(readme):
    spec = "column ulp; verdict"
    other = _swap(RUN, "146.667    0\n", "146.667    1\n")
    other = _swap(other, "max 0 ulp (bit-identical)", "max 1 ulp")
    other = _swap(other, "max |Δ| 0 · max rel 0 · worst 0%", "max |Δ| 7.5e-09 · max rel 7.5e-08 · worst 4%")
    assert readme.same_but_machine(RUN, other, spec)
    assert not readme.same_but_machine(RUN, other, "column ulp")  # the verdict's figures not named
    assert not readme.same_but_machine(RUN, _swap(other, "✓ agree", "✗ diverge"), spec)
    assert not readme.same_but_machine(RUN, _swap(other, "(rtol 2.4e-07)", "(rtol 4.4e-16)"), spec)
    assert not readme.same_but_machine(RUN, _swap(RUN, "146.667\n", "146.668\n"), spec)  # torch's value


def test_a_figure_of_another_line_under_the_column_is_pinned(readme):
    """Only whole words inside the column's span: the verdict's rtol, shifted under the ulp column
    by a wider figure before it, is still compared."""
    spec = "column ulp; verdict"
    wider = _swap(RUN, "max |Δ| 0 · max rel 0 · worst 0%", "max |Δ| 1.5e-05 · max rel 1.1e-07 · worst 11%")
    assert readme.same_but_machine(RUN, wider, spec)
    assert not readme.same_but_machine(RUN, _swap(wider, "(rtol 2.4e-07)", "(rtol 2.4e-08)"), spec)


def test_a_mark_beside_a_figure_is_pinned(readme):
    table = "$ x\nep:b  n       w ulp\n──────────────────\n 1:1  3  2.5321   0\n 1:2  3  2.7009 ⚠ 2\n"
    assert readme.same_but_machine(table, table.replace("⚠ 2", "⚠ 0"), "column ulp")
    assert not readme.same_but_machine(table, table.replace("⚠ 2", "  0"), "column ulp")


COMPARE = """$ sgdtrace compare --dtype float32 --dtype float64
manual vs torch, per run
run          field  max |Δ|  max rel  max ulp  of tol
──────────────────────────────────────────────────────────
cpu float32  w      4.8e-07  1.7e-07        2     33%  ok

torch in one dtype vs torch in another: the drift, not judged
runs                    field  max |Δ|  max rel  max ulp  last |Δ|
───────────────────────────────────────────────────────────────────
cpu float32 vs float64  w        0.016   0.0054        1     0.012
"""


def test_each_table_has_its_own_columns(readme):
    """Two tables in one block, the same headers at other places: each masked under its own."""
    spec = "column max |Δ|; column max rel; column max ulp; column of tol; column last |Δ|"
    other = _swap(COMPARE, "4.8e-07  1.7e-07        2     33%", "3.3e-06  1.0e-05      128     36%")
    other = _swap(other, "0.016   0.0054        1     0.012", "0.017   0.0049        3     0.013")
    assert readme.same_but_machine(COMPARE, other, spec)
    assert not readme.same_but_machine(COMPARE, _swap(other, "cpu float32  w ", "cpu float32  b "), spec)
    assert not readme.same_but_machine(COMPARE, _swap(other, "vs float64  w", "vs float64  b"), spec)
    assert not readme.same_but_machine(COMPARE, other, "column max |Δ|; column max rel; column max ulp; column of tol")


def test_all_lets_the_report_differ_but_not_its_title(readme):
    report = "$ sgdtrace doctor\nsgdtrace doctor: this machine\ncpu  AMD EPYC\n"
    assert readme.same_but_machine(report, "$ sgdtrace doctor\nsgdtrace doctor: this machine\ncpu  Xeon\nmore\n", "all")
    assert not readme.same_but_machine(report, "$ sgdtrace doctor\nsgdtrace: error: boom\n", "all")


def test_an_unknown_item_is_an_error_in_the_page(readme):
    with pytest.raises(ValueError, match="'ulp' is not"):
        readme.machine_items("ulp")


def test_check_keeps_the_line_and_reports_only_real_changes(readme, monkeypatch):
    page = f"text\n<!-- machine: {SPEC} -->\n<!-- sh: sgdtrace check -->\n```\n{CHECK}```\nmore\n"
    now = _swap(CHECK, "90        0      0%  ok\nadam", "90        1     16%  ok\nadam")
    monkeypatch.setattr(readme, "run_examples", lambda cmd: now)
    new, changed = readme.refresh(page, check=True)
    assert changed == []  # only the machine's figures moved
    assert new == page.replace(CHECK, now)  # a rewrite pastes this machine's output, the line kept
    _, changed = readme.refresh(page, check=False)
    assert changed == ["sgdtrace check"]  # without --check, any change is one
    monkeypatch.setattr(readme, "run_examples", lambda cmd: _swap(now, "✓ 3 runs agree", "✗ 1 of 3 runs diverges"))
    assert readme.refresh(page, check=True)[1] == ["sgdtrace check"]


def test_the_pages_machine_lines_are_well_formed(readme):
    for path in readme.pages():
        for m in readme.MARK.finditer(path.read_text(encoding="utf-8")):
            readme.machine_items(m.group("machine"))
