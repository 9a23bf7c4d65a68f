"""Where features meet: every pair of option values of ``sgdtrace run``, on tiny data.

The promise: an honest run never fails the gate (exit 0), and a combination sgdtrace does not run
is refused in one line naming both options, documented in docs/options.md (exit 2); never a
traceback, never exit 1. The pairwise covering array (tests/combinations.py) puts every pair of
values the tool accepts into some honest row, and every pair it refuses into a row of its own.

Which pairs are refused is asked of the code itself, without training: each pair's command line runs
with ``run_trace`` replaced by a stub, so a refusal is the command's own exit 2. A pair refused only
because a third option sits at its default (``--amsgrad`` with the default optimizer) counts as
accepted when setting that option (named in the message) makes it run. Every refusal must then be
one of :data:`sgdtrace.config.COMBINATIONS`, the table docs/options.md publishes.

Runs are in-process (``CliRunner``); the data-parallel rows share ONE process group
(:func:`sgdtrace.engines.torch_ddp.run_many`), started once for the module.
"""

from __future__ import annotations

import json
import os
import re
from unittest import mock

import combinations as C
import pytest
from click.testing import CliRunner

from sgdtrace import tracing
from sgdtrace.cli import cli
from sgdtrace.config import COMBINATIONS, combinations_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _WouldTrain(Exception):
    """The command got past every check: it would train now."""


def _stub(*_args, **_kw):
    raise _WouldTrain


_REFUSALS: dict[C.Row, str | None] = {}


def refusal_of(row: C.Row) -> str | None:
    """The command's own refusal of ``row`` (its stderr), or None where it would train; no training."""
    if row not in _REFUSALS:
        with mock.patch.object(tracing, "run_trace", _stub):
            r = CliRunner().invoke(cli, C.argv(row))
        if isinstance(r.exception, _WouldTrain):
            _REFUSALS[row] = None
        else:
            assert r.exit_code == 2 and not isinstance(r.exception, Exception), (
                f"{C.describe(row)}: exit {r.exit_code} before training: {r.output}{r.exception!r}"
            )
            _REFUSALS[row] = r.stderr.strip()
    return _REFUSALS[row]


def _says(message: str, names: tuple[str, ...]) -> bool:
    """The message names each of ``names`` (one of its ``|`` alternatives)."""
    return all(any(alt in message for alt in n.split("|")) for n in names)


def _named(message: str) -> list[int]:
    """The dimensions whose flags the message names."""
    return [d for d, (name, _) in enumerate(C.DIMENSIONS) if any(f in message for f in C.FLAGS[name])]


def accepted(pair: C.Pair) -> bool:
    """The pair runs, with the rest at their defaults, or with one more option the refusal names set."""
    message = refusal_of(C.row_of(*pair))
    if message is None:
        return True
    for d in _named(message):
        if d in (pair[0][0], pair[1][0]):
            continue
        if any(refusal_of(C.row_of(*pair, (d, v))) is None for v in range(1, len(C.DIMENSIONS[d][1]))):
            return True
    return False


ROWS, REFUSED = C.pairwise(accepted)
#: and every pair of values alone, the rest at their defaults (as a learner adds two options): the
#: honest ones (beyond the covering array's rows) and the refused ones, each row once
_ALONE = list(dict.fromkeys(C.row_of(*p) for p in C.all_pairs()))
ALONE = [row for row in _ALONE if refusal_of(row) is None and row not in set(ROWS)]
REFUSED_ROWS = [row for row in _ALONE if refusal_of(row) is not None]


def _honest_params():
    out = []
    for row in ROWS + ALONE:
        name = C.describe(row)
        out.append(pytest.param(row, id=name))
    return out


def test_the_covering_array_covers_every_accepted_pair_with_honest_rows():
    covered = {p for row in ROWS for p in C.pairs_of(row)}
    pairs = C.all_pairs()
    refused = set(REFUSED)
    assert all(p in covered for p in pairs if p not in refused)
    assert not refused & covered  # no row holds a refused pair
    assert {C.row_of(*p) for p in refused} <= set(REFUSED_ROWS)  # each is tried alone
    assert all(refusal_of(row) is None for row in ROWS)  # and no row is refused as a whole
    # far fewer runs than the whole space, and every dimension's every value is tried
    space = 1
    for _, values in C.DIMENSIONS:
        space *= len(values)
    assert len(ROWS) < 200 < space
    for d, (_, values) in enumerate(C.DIMENSIONS):
        assert {row[d] for row in ROWS} == set(range(len(values)))
    # deterministic: the same array again
    assert C.pairwise(accepted) == (ROWS, REFUSED)


@pytest.fixture(scope="module")
def ddp_groups():
    """The torch side of every data-parallel row, run in one process group: ``{config: gathered}``."""
    import torch

    from sgdtrace.engines import torch_ddp

    jobs = []

    def record(x, y, config, device, ports=None):
        jobs.append((x, y, config))
        raise _WouldTrain

    for row in ROWS + ALONE:
        if C.DIMENSIONS[3][1][row[3]][0] != "1":
            with mock.patch.object(torch_ddp, "run", record):
                r = CliRunner().invoke(cli, C.argv(row))
            assert isinstance(r.exception, _WouldTrain), (C.describe(row), r.output)
    if not jobs:
        return {}
    gathered = torch_ddp.run_many(jobs, torch.device("cpu"))
    return {config: g for (_, _, config), g in zip(jobs, gathered)}


def _no_traceback(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


@pytest.mark.parametrize("row", _honest_params())
def test_an_honest_combination_agrees(row, ddp_groups, monkeypatch):
    from sgdtrace.engines import torch_ddp

    if ddp_groups:
        monkeypatch.setattr(torch_ddp, "run", lambda x, y, config, device, ports=None: ddp_groups[config])
    r = CliRunner().invoke(cli, C.argv(row))
    _no_traceback(r)
    assert r.exit_code == 0, f"{C.describe(row)}: exit {r.exit_code}\n{r.output}"
    assert r.stdout.strip()
    # stderr: sgdtrace's own warnings at most (an option the run does not use), nothing from below
    assert all(line.startswith("sgdtrace: warning: ") for line in r.stderr.splitlines()), r.stderr
    if "--format" in C.argv(row) and C.argv(row)[C.argv(row).index("--format") + 1] == "json":
        json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))


@pytest.mark.parametrize("row", REFUSED_ROWS, ids=[C.describe(row) for row in REFUSED_ROWS])
def test_a_refused_combination_says_why_in_one_line(row):
    r = CliRunner().invoke(cli, C.argv(row))
    _no_traceback(r)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgdtrace: error: "), r.stderr
    # one of the documented combinations, naming its two options and at least one of the pair's
    rows = [ref for ref in COMBINATIONS.values() if ref.why in lines[0]]
    assert rows, f"not in docs/options.md's table: {lines[0]}"
    assert any(_says(lines[0], ref.names) for ref in rows), lines[0]
    assert {d for d, v in enumerate(row) if v} & set(_named(lines[0])), lines[0]


@pytest.mark.parametrize("key", list(COMBINATIONS))
def test_every_refusal_in_the_table_is_the_codes(key):
    """Each row of the table: its example is refused with its reason, naming both options."""
    ref = COMBINATIONS[key]
    r = CliRunner().invoke(cli, list(ref.example))
    _no_traceback(r)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ref.why in lines[0], r.stderr
    assert _says(lines[0], ref.names), lines[0]


def test_the_docs_table_of_combinations_is_the_codes():
    with open(os.path.join(ROOT, "docs", "options.md"), encoding="utf-8") as fh:
        page = fh.read()
    section = re.search(r"^## Combinations\n(.*?)(?=^## |\Z)", page, flags=re.S | re.M)
    assert section, "docs/options.md has no Combinations section"
    assert combinations_table() in section.group(1)
    assert len(COMBINATIONS) == section.group(1).count("\n| `")
