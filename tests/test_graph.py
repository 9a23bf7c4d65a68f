"""The graph view: the article's DAG beside torch's real grad_fn graph, node by node."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from golden_util import check_golden, render

from sgdtrace import Config
from sgdtrace.cli import cli
from sgdtrace.teaching.graph import build_graph
from sgdtrace.tracing import run_trace
from sgdtrace.views import graph as gv


@pytest.fixture(scope="module")
def mse():
    return build_graph(run_trace(Config()), 1, 1, "mse")


@pytest.fixture(scope="module")
def explicit():
    return build_graph(run_trace(Config(), torch_loss="explicit"), 1, 1, "explicit")


def test_torch_graph_walked_from_grad_fn(mse, explicit):
    assert [n.name for n in mse.nodes] == [
        "MseLossBackward0",
        "AddBackward0",
        "MulBackward0",
        "AccumulateGrad",
        "AccumulateGrad",
    ]
    assert [n.maps_to for n in mse.nodes] == [("l", "e", "d"), ("c",), ("a",), ("w",), ("b",)]
    assert [n.name for n in explicit.nodes] == [
        "MeanBackward0",
        "PowBackward0",
        "SubBackward0",
        "AddBackward0",
        "MulBackward0",
        "AccumulateGrad",
        "AccumulateGrad",
    ]
    assert [n.maps_to for n in explicit.nodes] == [("l",), ("e",), ("d",), ("c",), ("a",), ("w",), ("b",)]
    assert mse.structure_ok and explicit.structure_ok
    assert "fused" in mse.structure_note and "one to one" in explicit.structure_note


def test_gradients_into_each_node_match_the_chain_rule(explicit):
    """Batch 1 by hand: dz/dl = 1, dl/de = 1/3, dl/dd = dl/dc = dl/da = 2d/3 = -20/3, -8, -28/3."""
    g = {n.maps_to[0]: n.grad.tolist() for n in explicit.nodes}
    assert g["l"] == [1.0]
    assert g["e"] == pytest.approx([1 / 3] * 3, rel=1e-7)
    for node in ("d", "c", "a"):
        assert g[node] == pytest.approx([-20 / 3, -8, -28 / 3], rel=1e-7)
    assert g["w"] == pytest.approx([-80 / 3], rel=1e-7) and g["b"] == [-24.0]
    assert all(u == 0 for u in explicit.ulps)


def test_parity_verdict_holds_for_both_losses(mse, explicit):
    assert mse.ok and explicit.ok
    assert mse.trace.verdict.ok and explicit.trace.verdict.ok


def test_golden_graph(mse, explicit):
    check_golden("graph_mse.txt", render(gv.graph_view(mse), width=110))
    check_golden("graph_explicit.txt", render(gv.graph_view(explicit), width=110))


def test_dot_and_json(mse):
    dot = gv.graph_dot(mse)
    assert dot.startswith("digraph sgdtrace {") and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    assert "MseLossBackward0" in dot and "m_a -> m_c" in dot and "style=dashed" in dot
    doc = gv.graph_json(mse)
    assert doc["parity"] == {"structure": True, "note": mse.structure_note, "verdict": True}
    assert [n["node"] for n in doc["manual"]][:6] == ["z", "l", "e", "d", "c", "a"]


def test_cli_graph():
    runner = CliRunner()
    r = runner.invoke(cli, ["graph", "--format", "dot", "--loss", "explicit"])
    assert r.exit_code == 0 and "PowBackward0" in r.output
    r = runner.invoke(cli, ["graph", "--format", "json", "--batch", "3"])
    assert r.exit_code == 0 and json.loads(r.output)["batch"] == 3
    r = runner.invoke(cli, ["graph", "--batch", "9"])
    assert r.exit_code == 2 and "--batch 9" in r.output
