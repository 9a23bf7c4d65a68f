"""Jupyter: a trace displays itself as the table and the verdict; its views are methods; the
article's notebook and the network's run top to bottom (nbclient) so they cannot rot."""

from __future__ import annotations

import os
import re
import sys

import pytest

import sgdtrace
from sgdtrace.views.fmt import fit
from sgdtrace.views.html import cell

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "docs", "notebooks", "article.ipynb")


@pytest.fixture(scope="module")
def article():
    return sgdtrace.trace()


def test_trace_displays_the_table_and_the_verdict(article):
    bundle = article._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    html, plain = bundle["text/html"], bundle["text/plain"]
    for k in range(3):
        for f in ("grad_w", "grad_b", "w", "b", "loss"):
            assert f"<td>{cell(article.manual[f][k])}</td>" in html
            assert fit(article.manual[f][k]) in plain  # the terminal table's formatting
    # the article's numbers, as written there and here
    assert "<td>-135.858</td>" in html and "<td>3.31716</td>" in html
    assert "✓ agree" in html and "✓ agree" in plain
    assert article._repr_html_() == html
    assert str(article) == plain
    assert "\x1b[" not in plain  # no terminal colour codes in the fallback
    assert article._repr_mimebundle_(include=["text/plain"]) == {"text/plain": plain}


def test_ipython_uses_the_bundle(article):
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    data, _ = InteractiveShell.instance().display_formatter.format(article)
    assert "-135.858" in data["text/html"] and "-135.858" in data["text/plain"]


def test_explain_displays_batch_two(article):
    view = article.explain(batch=2)
    html, plain = view._repr_html_(), str(view)
    assert view.explanation.batch == 2 and view.explanation.matches_trace
    assert f"<td>{cell(article.manual['grad_w'][1])}</td>" in html  # -135.858
    assert "Eq. 8" in plain and "-135.858" in plain and "Eq. 8" in html
    assert view.to_json()["manual"]["grad_w"] == pytest.approx(float(article.manual["grad_w"][1]))
    with pytest.raises(sgdtrace.SgdtraceError, match="--batch 4"):
        article.explain(batch=4)


def test_graph_displays_without_graphviz(article, monkeypatch):
    monkeypatch.setenv("PATH", "")  # no `dot` binary anywhere
    view = article.graph()
    html = view._repr_html_()
    assert html.count("<svg") == 1 and 'role="img"' in html and "<title" in html
    assert "MseLossBackward0" in html and "✓ parity" in html
    assert "AccumulateGrad" in str(view)
    assert view.to_dot().startswith("digraph")
    assert view.result.structure_ok


def test_plot_returns_a_figure(article):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    fig = article.plot()
    assert isinstance(fig, Figure)
    axes = fig.get_axes()
    assert len(axes) == 3
    assert list(axes[1].get_lines()[0].get_ydata()) == pytest.approx(article.manual["w"].tolist())


def test_to_pandas_one_row_per_step(article):
    pd = pytest.importorskip("pandas")
    frame = article.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert len(frame) == 3 and list(frame.index) == [1, 2, 3]
    assert frame["manual_grad_w"].tolist() == pytest.approx([-26.6667, -135.858, -169.192], abs=1e-3)
    assert frame["torch_w"].tolist() == article.torch["w"].tolist()
    assert frame["ok"].all() and (frame["ulp_loss"] == 0).all()


def test_to_pandas_without_pandas_names_the_extra(article, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(sgdtrace.SgdtraceError, match=r"sgdtrace\[pandas\]"):
        article.to_pandas()


def test_compare_result_displays_itself():
    from sgdtrace.compare import compare_runs

    result = compare_runs(sgdtrace.Config(), ("cpu",), ("float32", "float64"))
    bundle = result._repr_mimebundle_()
    assert "cpu float64" in bundle["text/html"] and "cpu float64" in bundle["text/plain"]
    assert "✓ all agree" in bundle["text/html"]


def test_long_run_is_summarised_in_the_notebook():
    t = sgdtrace.trace(epochs=30)
    html = t._repr_html_()
    assert html.count('<tr class="hand">') == 40 and "50 steps not shown" in html


class ZMQInteractiveShell:
    """Stands for Jupyter's kernel shell: rich takes a console for Jupyter's when ``get_ipython()``
    returns an object of this class name."""


@pytest.fixture
def inside_jupyter(monkeypatch):
    import builtins

    monkeypatch.setattr(builtins, "get_ipython", lambda: ZMQInteractiveShell(), raising=False)
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None, raising=False)


def test_text_fallbacks_are_written_inside_a_jupyter_kernel(article, inside_jupyter):
    """Inside a kernel rich displays what a Console prints unless told not to; the text fallback
    must still be the text (not empty, and not shown as a second display)."""
    from rich.console import Console

    assert Console().is_jupyter  # the stand-in is taken for a kernel
    assert "✓ agree" in str(article) and "-135.858" in article._repr_mimebundle_()["text/plain"]
    assert "Eq. 8" in str(article.explain(batch=2))
    assert "AccumulateGrad" in str(article.graph())


def test_graph_ids_are_stable_and_distinct(article):
    first, second = article.graph()._repr_html_(), article.graph()._repr_html_()
    ids = [re.search(r'id="(dag\d+)', html).group(1) for html in (first, second)]
    assert ids[0] != ids[1]  # two graphs on one page do not share SVG ids
    assert first.replace(ids[0], "X") == second.replace(ids[1], "X")  # no address or time in the page


def _code_outputs(nb):
    return [(c.source, c.outputs) for c in nb.cells if c.cell_type == "code"]


def _one_display_per_cell(nb) -> None:
    """Each code cell shows its result once (no copy displayed by rich), with a text fallback."""
    for source, outputs in _code_outputs(nb):
        shown = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
        assert len(outputs) == len(shown) == 1, (source, [o.output_type for o in outputs])
        assert shown[0].data.get("text/plain", "").strip(), source


def _stored(path: str):
    """The notebook as stored: valid, run top to bottom once, one display per cell, no machine's
    Python recorded, small enough for GitHub to show."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    _one_display_per_cell(nb)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))  # run top to bottom, once
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "version" not in nb.metadata.get("language_info", {})  # no machine's Python recorded
    assert os.path.getsize(path) < 400_000
    return nb


def _executed(path: str, tmp_path):
    """The notebook run from scratch, as a reader gets it (nbclient): no error, one display per cell.
    Returns its outputs' HTML and plain text."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    _one_display_per_cell(nb)
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plot
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    plain = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    return html, plain


def test_notebook_is_stored_with_its_outputs():
    """GitHub and the docs site show the results: the notebook is stored run (by `make readme`)."""
    nb = _stored(NOTEBOOK)
    html = "".join(o.get("data", {}).get("text/html", "") for _, outs in _code_outputs(nb) for o in outs)
    assert "<td>-135.858</td>" in html and "training blew up" in html


def test_notebook_runs_top_to_bottom(tmp_path):
    html, plain = _executed(NOTEBOOK, tmp_path)
    assert "<td>-135.858</td>" in html and "✓ agree" in html  # the table and the verdict
    assert "-135.858" in plain and "✓ agree" in plain  # and the same as text
    assert "Eq. 8" in html and "Eq. 8" in plain  # batch 2 explained
    assert "MseLossBackward0" in html and "<svg" in html  # the graph
    assert "training blew up" in html and "-29.1597" in html  # the lr = 0.1 blow-up
    assert "(True, 0)" in plain


# ------------------------------------------------------------------ the network's notebook

NETWORK = os.path.join(os.path.dirname(__file__), "..", "docs", "notebooks", "network.ipynb")


def _network_outputs(html: str, plain: str) -> None:
    """What docs/notebooks/network.ipynb shows: the run agreeing, relu's verdict, batch 2 worked
    layer by layer, torch's graph of the network, tanh's verdict and the pandas frame."""
    assert "✓ agree" in html and "✓ agree" in plain  # the table's verdict
    assert "H = 8 on 2 features" in plain
    assert "(True, 0)" in plain  # relu: agrees, no element of z1 within rounding of the kink
    assert "batch 2 of 16" in plain and "δ1 = dl/dh ⊙ relu'(z1)" in plain  # batch 2 explained
    assert "AddmmBackward0" in html and "ReluBackward0" in html and "<svg" in html  # the graph
    assert "(True, None)" in plain  # tanh: agrees, no kink to be ambiguous about
    assert "manual_w1[3,1]" in plain  # one row per step, a column per element


def test_network_notebook_is_stored_with_its_outputs():
    nb = _stored(NETWORK)
    outputs = [o for _, outs in _code_outputs(nb) for o in outs]
    _network_outputs(
        "".join(o.get("data", {}).get("text/html", "") for o in outputs),
        "".join(o.get("data", {}).get("text/plain", "") for o in outputs),
    )
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_network_notebook_runs_top_to_bottom(tmp_path):
    _network_outputs(*_executed(NETWORK, tmp_path))
