"""The ``graph`` view: the article's forward DAG and backward functions beside torch's real autograd graph.

The manual DAG is the article's decomposition (leaves w, x, b, y; nodes a, c, d, e, l, z), each node
with its backward function. Torch's graph is not drawn from memory: the learner's model
(:class:`~sgdtrace.engines.torch_ref.LinearModel`) and loss are run on one batch and the graph is
walked from ``loss.grad_fn`` through ``next_functions``. A hook on every node records the gradient
that flows into it during ``loss.backward()``, so each torch node is shown beside the manual node it
computes, with both gradients.

``nn.MSELoss`` fuses d, e and l into one node (MseLossBackward0); with ``loss="explicit"`` the model
computes ``((out - y) ** 2).mean()``, whose graph (SubBackward0, PowBackward0, MeanBackward0) matches
the article's decomposition one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from sgdtrace.views.fmt import num



@dataclass(frozen=True)
class ManualNode:
    name: str
    forward: str  # how it is computed
    backward: str  # its backward function: the local derivative(s) the chain rule multiplies
    inputs: tuple[str, ...] = ()


#: the article's DAG, root first (z) down to the leaves
MANUAL_DAG = (
    ManualNode("z", "z = l", "dz/dl = 1", ("l",)),
    ManualNode("l", "l = (1/n)·Σ e", "dl/de = 1/n", ("e",)),
    ManualNode("e", "e = d²", "de/dd = 2d", ("d",)),
    ManualNode("d", "d = c − y", "dd/dc = 1", ("c", "y")),
    ManualNode("c", "c = a + b", "dc/da = 1, dc/db = 1", ("a", "b")),
    ManualNode("a", "a = w·x", "da/dw = x", ("w", "x")),
    ManualNode("w", "leaf (parameter)", "accumulates dl/dw"),
    ManualNode("b", "leaf (parameter)", "accumulates dl/db"),
    ManualNode("x", "leaf (input, no gradient)", "—"),
    ManualNode("y", "leaf (target, no gradient)", "—"),
)

#: which manual node(s) each torch backward node computes; the first is the node whose output it is
TORCH_TO_MANUAL = {
    "MseLossBackward0": ("l", "e", "d"),
    "MeanBackward0": ("l",),
    "PowBackward0": ("e",),
    "SubBackward0": ("d",),
    "AddBackward0": ("c",),
    "MulBackward0": ("a",),
}


@dataclass
class TorchNode:
    name: str  # e.g. "AddBackward0"
    depth: int
    maps_to: tuple[str, ...]
    children: list[int] = field(default_factory=list)
    grad: np.ndarray | None = None  # the gradient flowing into the node's output during backward


@dataclass
class GraphResult:
    loss: str
    nodes: list[TorchNode]  # depth-first from loss.grad_fn
    manual_grads: dict[str, np.ndarray]  # dl/d(node) by the manual engine, at the manual start params
    ulps: list[int | None]  # per torch node: the largest ulp distance to the manual gradient
    structure_ok: bool
    structure_note: str
    step: int
    epoch: int
    batch: int
    trace: Any = None

    @property
    def ok(self) -> bool:
        return self.structure_ok and (self.trace is None or self.trace.verdict.ok)


def build_graph(trace, batch: int = 1, epoch: int = 1, loss: str = "mse") -> GraphResult:
    """Build torch's graph for one batch of ``trace`` and map it, node by node, to the manual DAG."""
    import torch

    from sgdtrace.engines import manual
    from sgdtrace.engines.torch_ref import LinearModel, make_criterion
    from sgdtrace.views.explain import explain_step, step_of

    k = step_of(trace.plan, batch, epoch)
    cfg = trace.config
    dtype = getattr(torch, cfg.dtype)
    tw = cfg.init_w if k == 0 else float(trace.torch["w"][k - 1])
    tb = cfg.init_b if k == 0 else float(trace.torch["b"][k - 1])
    idx = trace.indices(k)
    device = torch.device(trace.device)
    data = torch.as_tensor(trace.dataset.x[idx], dtype=dtype).to(device)
    target = torch.as_tensor(trace.dataset.y[idx], dtype=dtype).to(device)
    model = LinearModel(tw, tb, dtype).to(device)
    out = make_criterion(loss)(model(data), target)

    nodes: list[TorchNode] = []

    def walk(fn, depth: int) -> int:
        name = type(fn).__name__
        if name == "AccumulateGrad":
            maps = ("w",) if fn.variable is model.weight else ("b",)
        else:
            maps = TORCH_TO_MANUAL.get(name, ())
        i = len(nodes)
        node = TorchNode(name, depth, maps)
        nodes.append(node)

        def hook(grad_inputs, grad_outputs, node=node):
            node.grad = grad_outputs[0].detach().to("cpu", torch.float64).numpy().reshape(-1).copy()

        fn.register_hook(hook)
        for child, _ in fn.next_functions:
            if child is not None:
                node.children.append(walk(child, depth + 1))
        return i

    walk(out.grad_fn, 0)
    out.backward()

    ex = explain_step(trace, batch, epoch)
    n = ex.n
    up = ex.nodes["dl_dd"]
    # dl/d(node) by the manual engine's own factors: dz/dl = 1, dl/de = 1/n, dl/dd = dl/dc = dl/da = 2d/n
    grads = {"l": np.array([1.0]), "e": np.full(n, manual.dl_de(n)), "d": up, "c": up, "a": up,
             "w": np.array([ex.grad_w]), "b": np.array([ex.grad_b])}
    ulps: list[int | None] = []
    for node in nodes:
        target_node = node.maps_to[0] if node.maps_to else None
        if target_node is None or node.grad is None:
            ulps.append(None)
            continue
        m = grads[target_node].astype(cfg.dtype)
        t = node.grad.astype(cfg.dtype)
        if m.shape != t.shape:
            ulps.append(None)
            continue
        from sgdtrace.divergence import ulp_distance

        ulps.append(int(ulp_distance(m, t).max()))

    chain = [m for node in nodes if node.name != "AccumulateGrad" for m in node.maps_to]
    leaves = sorted(m for node in nodes if node.name == "AccumulateGrad" for m in node.maps_to)
    covered = sorted(set(chain))
    structure_ok = covered == ["a", "c", "d", "e", "l"] and leaves == ["b", "w"] and len(chain) == 5
    fused = [node.name for node in nodes if len(node.maps_to) > 1]
    if not structure_ok:
        note = f"torch's graph covers {covered} and leaves {leaves}; expected a, c, d, e, l and w, b"
    elif fused:
        note = f"every manual node has its torch counterpart; {fused[0]} computes d, e and l in one fused node"
    else:
        note = "one to one: every manual node a, c, d, e, l has exactly one torch node"
    return GraphResult(loss, nodes, grads, ulps, structure_ok, note, k, epoch, batch, trace)


# ------------------------------------------------------------------ rendering


def _grad_text(values: np.ndarray | None) -> str:
    if values is None:
        return "—"
    vals = values.tolist()
    shown = ", ".join(num(v) for v in vals[:3]) + (", …" if len(vals) > 3 else "")
    return shown if len(vals) == 1 else f"[{shown}]"


def manual_table() -> Table:
    table = Table(title="The article's DAG (manual)", title_justify="left", title_style="bold",
                  box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False, pad_edge=False)
    for head in ("node", "forward", "backward function", "inputs"):
        table.add_column(head)
    for node in MANUAL_DAG:
        table.add_row(node.name, node.forward, node.backward, ", ".join(node.inputs))
    return table


def tree_prefixes(depths: list[int]) -> list[str]:
    """The drawing before each node of a tree listed depth first: ``├`` for a child with a sibling
    after it, ``└`` for the last child, ``│`` continuing an ancestor's line to its next sibling."""

    def has_next_sibling(i: int) -> bool:
        for d in depths[i + 1:]:
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
    crit = "nn.MSELoss()" if g.loss == "mse" else "((out - y) ** 2).mean()"
    table = Table(title=f"torch's autograd graph from loss.grad_fn (loss = {crit}), "
                        f"epoch {g.epoch} batch {g.batch}",
                  title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0),
                  show_edge=False, pad_edge=False)
    for head, just in (("torch node", "left"), ("manual", "left"), ("grad in (torch)", "right"),
                       ("grad in (manual)", "right"), ("ulp", "right")):
        table.add_column(head, justify=just, no_wrap=not head.startswith("grad"))
    for node, u, prefix in zip(g.nodes, g.ulps, tree_prefixes([n.depth for n in g.nodes])):
        label = prefix + node.name
        if node.name == "AccumulateGrad":
            label += f" ({'weight' if node.maps_to == ('w',) else 'bias'})"
        target = node.maps_to[0] if node.maps_to else None
        manual_grad = g.manual_grads.get(target) if target else None
        maps = ", ".join(node.maps_to) or "—"
        wrt = f"dl/d{target}" if target and target != "l" else "dz/dl"
        ulp = Text("—") if u is None else Text(str(u), style="green" if u == 0 else "yellow")
        table.add_row(label, f"{maps}  ({wrt})" if target else maps, _grad_text(node.grad),
                      _grad_text(manual_grad), ulp)
    return table


def graph_view(g: GraphResult) -> Group:
    parts: list = [manual_table(), Text(""), torch_table(g), Text("")]
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
        "loss": g.loss, "epoch": g.epoch, "batch": g.batch,
        "manual": [{"node": n.name, "forward": n.forward, "backward": n.backward, "inputs": list(n.inputs)}
                   for n in MANUAL_DAG],
        "torch": [{"node": n.name, "depth": n.depth, "children": n.children, "maps_to": list(n.maps_to),
                   "grad": None if n.grad is None else [json_number(v) for v in n.grad.tolist()], "ulp": u}
                  for n, u in zip(g.nodes, g.ulps)],
        "parity": {"structure": g.structure_ok, "note": g.structure_note,
                   "verdict": None if g.trace is None else g.trace.verdict.ok},
    }


def graph_dot(g: GraphResult) -> str:
    """Graphviz DOT: the manual DAG (forward edges), torch's graph (backward edges), dashed mapping edges."""
    lines = ["digraph sgdtrace {", "  rankdir=BT;", '  node [fontname="Helvetica"];',
             "  subgraph cluster_manual {", '    label="manual (the article\'s DAG)";', "    color=blue;"]
    for node in MANUAL_DAG:
        shape = "box" if node.forward.startswith("leaf") else "ellipse"
        label = f"{node.forward}\\n{node.backward}" if not node.forward.startswith("leaf") else node.name
        lines.append(f'    m_{node.name} [shape={shape}, label="{label}"];')
    for node in MANUAL_DAG:
        for src in node.inputs:
            lines.append(f"    m_{src} -> m_{node.name} [color=blue];")
    lines += ["  }", "  subgraph cluster_torch {", f'    label="torch (loss.grad_fn, {g.loss})";', "    color=darkgreen;"]
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
