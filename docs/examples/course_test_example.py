"""A course's test of a learner's engine: docs/own-engine.md runs it to show what pytest prints
(it fails on purpose: engine_mistake.py leaves out the 2 of de/dd = 2d)."""

from sgdtrace.testing import assert_matches_torch


def test_engine_mistake():
    assert_matches_torch("engine_mistake.py")
