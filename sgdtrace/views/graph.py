"""The ``graph`` view: the article's forward DAG and backward functions beside torch's real autograd graph.

It renders a :class:`~sgdtrace.teaching.graph.GraphResult` (built by
:func:`~sgdtrace.teaching.graph.build_graph`, which runs torch's graph on one batch) and computes
nothing of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from sgdtrace.views.fmt import num

if TYPE_CHECKING:  # the record this view renders (built by sgdtrace.teaching.graph, which runs torch)
    from sgdtrace.teaching.graph import GraphResult


def is_article_dag(dag) -> bool:
    """The article's scalar DAG (``a = w·x``), not its vector form on D features."""
    return any(node.forward == "a = w·x" for node in dag)


def is_features_dag(dag) -> bool:
    """The article's DAG in vector form on D features (``a = X·w``), not another model's."""
    return any(node.forward.startswith("a = X·w") for node in dag)


# ------------------------------------------------------------------ rendering


def _grad_text(values: np.ndarray | None) -> str:
    if values is None:
        return "—"
    vals = values.tolist()
    shown = ", ".join(num(v) for v in vals[:3]) + (", …" if len(vals) > 3 else "")
    return shown if len(vals) == 1 else f"[{shown}]"


def manual_table(dag, title: str | None = None) -> Table:
    if title is None:
        title = (
            "The article's DAG (manual)"
            if is_article_dag(dag)
            else (
                "The DAG on D features, in vector form (manual)"
                if is_features_dag(dag)
                else "The DAG, in vector form (manual)"
            )
        )
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
        pad_edge=False,
    )
    for head in ("node", "forward", "backward function", "inputs"):
        table.add_column(head)
    for node in dag:
        table.add_row(node.name, node.forward, node.backward, ", ".join(node.inputs))
    return table


def tree_prefixes(depths: list[int]) -> list[str]:
    """The drawing before each node of a tree listed depth first: ``├`` for a child with a sibling
    after it, ``└`` for the last child, ``│`` continuing an ancestor's line to its next sibling."""

    def has_next_sibling(i: int) -> bool:
        for d in depths[i + 1 :]:
            if d <= depths[i]:
                return d == depths[i]
        return False

    prefixes = []
    last_at: dict[int, bool] = {}  # depth -> the latest node at that depth is a last child
    for i, depth in enumerate(depths):
        last_at[depth] = not has_next_sibling(i)
        if depth == 0:
            prefixes.append("")
            continue
        lines = "".join("  " if last_at[d] else "│ " for d in range(1, depth))
        prefixes.append("  " + lines + ("└ " if last_at[depth] else "├ "))
    return prefixes


def torch_table(g: GraphResult) -> Table:
    own = getattr(getattr(getattr(g.trace, "model", None), "module", None), "graph", None)
    if g.criterion is not None:
        crit = g.criterion
    elif own is not None:
        crit = own(g.trace.config)["criterion"]
    else:
        crit = "nn.MSELoss()" if g.loss == "mse" else "((out - y) ** 2).mean()"
    table = Table(
        title=f"torch's autograd graph from loss.grad_fn (loss = {crit}), epoch {g.epoch} batch {g.batch}",
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
        pad_edge=False,
    )
    for head, just in (
        ("torch node", "left"),
        ("manual", "left"),
        ("grad in (torch)", "right"),
        ("grad in (manual)", "right"),
        ("ulp", "right"),
    ):
        table.add_column(head, justify=just, no_wrap=not head.startswith("grad"))
    for node, u, prefix in zip(g.nodes, g.ulps, tree_prefixes([n.depth for n in g.nodes])):
        label = prefix + node.name
        if node.name == "AccumulateGrad":
            label += f" ({'weight' if node.maps_to in (('w',), ('W1',), ('W2',)) else 'bias'})"
        target = node.maps_to[0] if node.maps_to else None
        manual_grad = g.manual_grads.get(target) if target else None
        maps = ", ".join(node.maps_to) or "—"
        wrt = f"dl/d{target}" if target and target != "l" else "dz/dl"
        ulp = Text("—") if u is None else Text(str(u), style="green" if u == 0 else "yellow")
        table.add_row(
            label, f"{maps}  ({wrt})" if target else maps, _grad_text(node.grad), _grad_text(manual_grad), ulp
        )
    return table


def graph_view(g: GraphResult) -> Group:
    parts: list = [manual_table(g.manual_dag, g.title), Text(""), torch_table(g), Text("")]
    mark = Text("✓ parity" if g.structure_ok else "✗ no parity", style="bold green" if g.structure_ok else "bold red")
    mark.append(f"  {g.structure_note}", style="")
    parts.append(mark)
    if g.trace is not None:
        from sgdtrace.views.table import verdict_text

        parts.append(verdict_text(g.trace))
    return Group(*parts)


def graph_json(g: GraphResult) -> dict[str, Any]:
    from sgdtrace.divergence import json_number

    return {
        "loss": g.loss,
        "epoch": g.epoch,
        "batch": g.batch,
        "manual": [
            {"node": n.name, "forward": n.forward, "backward": n.backward, "inputs": list(n.inputs)}
            for n in g.manual_dag
        ],
        "torch": [
            {
                "node": n.name,
                "depth": n.depth,
                "children": n.children,
                "maps_to": list(n.maps_to),
                "grad": None if n.grad is None else [json_number(v) for v in n.grad.tolist()],
                "ulp": u,
            }
            for n, u in zip(g.nodes, g.ulps)
        ],
        "parity": {
            "structure": g.structure_ok,
            "note": g.structure_note,
            "verdict": None if g.trace is None else g.trace.verdict.ok,
        },
    }


def graph_dot(g: GraphResult) -> str:
    """Graphviz DOT: the manual DAG (forward edges), torch's graph (backward edges), dashed mapping edges."""
    lines = [
        "digraph sgdtrace {",
        "  rankdir=BT;",
        '  node [fontname="Helvetica"];',
        "  subgraph cluster_manual {",
        '    label="manual (the article\'s DAG)";'
        if is_article_dag(g.manual_dag) or is_features_dag(g.manual_dag)
        else '    label="manual (vector form)";',
        "    color=blue;",
    ]
    for node in g.manual_dag:
        shape = "box" if node.forward.startswith("leaf") else "ellipse"
        label = f"{node.forward}\\n{node.backward}" if not node.forward.startswith("leaf") else node.name
        lines.append(f'    m_{node.name} [shape={shape}, label="{label}"];')
    for node in g.manual_dag:
        for src in node.inputs:
            lines.append(f"    m_{src} -> m_{node.name} [color=blue];")
    lines += [
        "  }",
        "  subgraph cluster_torch {",
        f'    label="torch (loss.grad_fn, {g.loss})";',
        "    color=darkgreen;",
    ]
    for i, node in enumerate(g.nodes):
        lines.append(f'    t{i} [shape=box, style=filled, fillcolor="#d8f0d8", label="{node.name}"];')
    for i, node in enumerate(g.nodes):
        for c in node.children:
            lines.append(f"    t{i} -> t{c} [color=darkgreen];")
    lines.append("  }")
    for i, node in enumerate(g.nodes):
        for m in node.maps_to:
            lines.append(f"  t{i} -> m_{m} [style=dashed, color=gray, arrowhead=none];")
    lines.append("}")
    return "\n".join(lines) + "\n"
