"""The judge's study over every model and both judge modes (tools/model_study.py): a fast sample
here, the full study (300 honest runs per model and mode, every planted mistake in every dtype)
marked slow; its figures are in docs/tolerance.md."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest

_PATH = Path(__file__).parents[1] / "tools" / "model_study.py"
_spec = importlib.util.spec_from_file_location("model_study", _PATH)
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def test_a_sample_of_honest_runs_uses_at_most_half_the_allowance():
    out = io.StringIO()
    result = study.honest(3, seed=11, out=out)
    for (model, judge), r in result.items():
        assert r["runs"] == 3, (model, judge, out.getvalue())
        assert not r["failed"], out.getvalue()
        assert r["worst"] <= 0.5


def test_planted_mistakes_are_caught_where_their_effect_exceeds_the_allowance_and_named():
    rows = study.planted(dtypes_=("float32",), out=io.StringIO())
    assert len(rows) == 2 * len(study.PLANTED)
    for row in rows:
        assert row["ok"], row
        assert row["caught"] is not None  # every one of them shows in float32 at these configs
        assert row["diagnosis"] in study.PLANTED[row["kind"]][1], row


@pytest.mark.slow
def test_the_full_study():
    out = io.StringIO()
    result = study.honest(300, seed=2026, out=out)
    for r in result.values():
        assert r["runs"] == 300 and not r["failed"] and r["worst"] <= 0.5, out.getvalue()
    assert all(row["ok"] for row in study.planted(out=out)), out.getvalue()
