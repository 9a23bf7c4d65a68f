"""Jupyter: a trace (and a compare or check result) that displays itself, and its views as methods.

In a notebook::

    import sgdtrace
    t = sgdtrace.trace()      # shows the table and the verdict
    t.explain(batch=2)        # batch 2 worked equation by equation
    t.graph()                 # the article's DAG (inline SVG, no Graphviz) beside torch's grad_fn graph
    t.plot()                  # a matplotlib Figure: loss, w and b, the (w, b) path
    t.to_pandas()             # one row per step (needs pandas: pip install 'sgdtrace[pandas]')

Each object gives ``text/html`` and a ``text/plain`` fallback (the terminal's view without colour),
so it reads the same in a console, in JupyterLab and in a notebook rendered to a static page.
"""

from __future__ import annotations

import itertools
from typing import Any

from sgdtrace.errors import SgdtraceError

#: numbers the graphs shown in one session (their SVG ids must differ within a page, and a notebook
#: run top to bottom gets the same ids every time, so its stored outputs are stable)
_GRAPH_IDS = itertools.count(1)


class MissingPandas(SgdtraceError):
    """pandas (the ``pandas`` extra) is not installed."""


def _plain(renderable: Any, width: int = 110) -> str:
    from sgdtrace.views.html import _rich_text

    return _rich_text(renderable, width).rstrip("\n")


def _bundle(obj, include=None, exclude=None) -> dict[str, str]:
    data = {"text/plain": obj._plain_text(), "text/html": obj._repr_html_()}
    if include:
        data = {k: v for k, v in data.items() if k in include}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude}
    return data


class Displayable:
    """``_repr_mimebundle_`` from a class's ``_repr_html_`` and ``_plain_text``; ``_repr_pretty_`` for IPython."""

    def _repr_html_(self) -> str:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _plain_text(self) -> str:  # pragma: no cover
        raise NotImplementedError

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return _bundle(self, include, exclude)

    def _repr_pretty_(self, p, cycle: bool) -> None:
        p.text(self._plain_text())

    def __str__(self) -> str:
        return self._plain_text()


class TraceView(Displayable):
    """A :class:`sgdtrace.tracing.Trace` displayed in Jupyter, and its views as methods (the Trace, a
    record, hands each of its display methods to this wrapper)."""

    def __init__(self, trace):
        self.trace = trace

    @property
    def display_rows(self) -> int | None:
        """Table rows shown before a long run is summarised (the trace's ``display_rows``)."""
        return self.trace.display_rows

    def _repr_html_(self) -> str:
        from sgdtrace.views.html import trace_fragment

        return trace_fragment(self.trace, self.display_rows)

    def _plain_text(self) -> str:
        from sgdtrace.views.table import run_view

        return _plain(run_view(self.trace, self.display_rows))

    def to_html(self, batch: int | None = None, epoch: int = 1) -> str:
        """The whole self-contained page that ``sgdtrace run --format html`` writes."""
        from sgdtrace.teaching.report import run_html

        return run_html(self.trace, batch, epoch)

    def explain(self, batch: int = 1, epoch: int = 1) -> ExplainView:
        """One batch (both counted from 1) worked equation by equation, torch's values beside."""
        from sgdtrace.teaching.explain import explain_step

        return ExplainView(explain_step(self.trace, batch, epoch))

    def graph(self, batch: int = 1, epoch: int = 1, loss: str = "mse") -> GraphView:
        """The article's DAG beside torch's real ``grad_fn`` graph for one batch (no Graphviz needed)."""
        from sgdtrace.teaching.graph import build_graph

        return GraphView(build_graph(self.trace, batch, epoch, loss))

    def plot(self, width: int = 1200, height: int = 380, dpi: int = 100):
        """The ``plot`` command's three panels as a matplotlib ``Figure`` (needs the ``plot`` extra)."""
        from sgdtrace.views.plot import plot_figure

        return plot_figure(self.trace, width, height, dpi)

    def to_pandas(self):
        """One row per step: epoch, batch, n, then ``manual_<field>``, ``torch_<field>``, ``ulp_<field>``,
        ``ok_<field>`` for each field, and ``ok`` (the step within tolerance). A field with a shape
        (D features) has a column per element, ``manual_w[0]``, ... as in the CSV. Needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise MissingPandas(
                "to_pandas needs pandas, which is not installed: pip install 'sgdtrace[pandas]' (or pip install pandas)"
            ) from None
        import numpy as np

        trace = self.trace

        def parts(f: str):
            """(suffix, element selector) per element of the field: ``("", ...)`` for a scalar."""
            shape = np.shape(trace.manual[f])[1:]
            if not shape:
                return [("", ...)]
            return [("[" + ",".join(map(str, i)) + "]", (slice(None), *i)) for i in np.ndindex(*shape)]

        cols: dict[str, Any] = {"epoch": trace.epoch, "batch": trace.batch, "n": trace.n}
        ok = None
        for f in trace.fields:
            for s, at in parts(f):
                cols[f"manual_{f}{s}"] = trace.manual[f][at]
                cols[f"torch_{f}{s}"] = trace.torch[f][at]
        for f in trace.fields:
            d = trace.divergence[f]
            for s, at in parts(f):
                cols[f"abs_{f}{s}"] = d.abs[at]
                cols[f"ulp_{f}{s}"] = d.ulp[at]
                cols[f"ok_{f}{s}"] = d.ok[at]
            every = d.ok.reshape(d.ok.shape[0], -1).all(axis=1)
            ok = every if ok is None else ok & every
        cols["ok"] = ok
        frame = pd.DataFrame(cols)
        frame.index = pd.RangeIndex(1, trace.n_steps + 1, name="step")
        return frame


class ExplainView(Displayable):
    """``trace.explain(batch=K)``: displays the batch's equations; ``.explanation`` holds the numbers."""

    def __init__(self, explanation):
        self.explanation = explanation

    def _repr_html_(self) -> str:
        from sgdtrace.views.html import _scoped_css, explain_html

        return f'<div class="sgdtrace"><style>{_scoped_css()}</style>{explain_html(self.explanation)}</div>'

    def _plain_text(self) -> str:
        from sgdtrace.views.explain import explain_view

        return _plain(explain_view(self.explanation))

    def to_json(self) -> dict[str, Any]:
        from sgdtrace.views.explain import explain_json

        return explain_json(self.explanation)


class GraphView(Displayable):
    """``trace.graph()``: the DAG as inline SVG and torch's graph as a table; ``.result`` holds the data."""

    def __init__(self, result):
        self.result = result
        self._ident = f"dag{next(_GRAPH_IDS)}"

    def _repr_html_(self) -> str:
        from sgdtrace.views.html import _scoped_css, graph_html

        return f'<div class="sgdtrace"><style>{_scoped_css()}</style>{graph_html(self.result, ident=self._ident)}</div>'

    def _plain_text(self) -> str:
        from sgdtrace.views.graph import graph_view

        return _plain(graph_view(self.result))

    def to_dot(self) -> str:
        """Graphviz DOT text, for those who have Graphviz (nothing here needs it)."""
        from sgdtrace.views.graph import graph_dot

        return graph_dot(self.result)

    def to_json(self) -> dict[str, Any]:
        from sgdtrace.views.graph import graph_json

        return graph_json(self.result)


class CompareNotebook(Displayable):
    """Mixed into :class:`sgdtrace.compare.CompareResult`."""

    def _repr_html_(self) -> str:
        from sgdtrace.views.html import _scoped_css, compare_fragment

        return f'<div class="sgdtrace"><style>{_scoped_css()}</style>{compare_fragment(self)}</div>'

    def _plain_text(self) -> str:
        from sgdtrace.views.compare import compare_view

        return _plain(compare_view(self))

    def to_html(self) -> str:
        from sgdtrace.views.html import compare_page

        return compare_page(self)


class CheckNotebook(Displayable):
    """Mixed into :class:`sgdtrace.check.CheckResult`."""

    def _repr_html_(self) -> str:
        from sgdtrace.views.html import _scoped_css, check_fragment

        return f'<div class="sgdtrace"><style>{_scoped_css()}</style>{check_fragment(self)}</div>'

    def _plain_text(self) -> str:
        from sgdtrace.views.check import check_view

        return _plain(check_view(self))

    def to_html(self) -> str:
        from sgdtrace.views.html import check_page

        return check_page(self)


__all__ = ["TraceView", "CompareNotebook", "CheckNotebook", "ExplainView", "GraphView", "MissingPandas"]
