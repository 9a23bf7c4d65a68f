"""The records ``sgdtrace graph`` builds: the hand side's DAG (its nodes, the article's and its
vector form), torch's backward nodes, and the result that puts them side by side.

A module of its own, importing no other part of the package: the graph of the linear models
(:mod:`sgdtrace.teaching.graph`) and the network's (:mod:`sgdtrace.teaching.network`) both build them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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

#: the same DAG on D features, in vector form (X of shape (n, D), w (D,), b (1,))
FEATURES_DAG = (
    ManualNode("z", "z = l", "dz/dl = 1", ("l",)),
    ManualNode("l", "l = (1/n)·Σ e", "dl/de = 1/n", ("e",)),
    ManualNode("e", "e = d² (n,)", "de/dd = 2d", ("d",)),
    ManualNode("d", "d = c − y (n,)", "dd/dc = 1", ("c", "y")),
    ManualNode("c", "c = a + b (n,)", "dc/da = 1, dc/db = 1", ("a", "b")),
    ManualNode("a", "a = X·w (n,)", "da_i/dw_j = x_ij: dl/dw = Xᵀ·dl/da", ("w", "x")),
    ManualNode("w", "leaf (parameter, (D,))", "accumulates dl/dw"),
    ManualNode("b", "leaf (parameter, (1,))", "accumulates dl/db"),
    ManualNode("x", "leaf (input X, (n, D), no gradient)", "—"),
    ManualNode("y", "leaf (target, no gradient)", "—"),
)


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
    manual_dag: tuple[ManualNode, ...] = MANUAL_DAG
    #: the manual table's title and the loss as torch's table names it (None: the linear model's)
    title: str | None = None
    criterion: str | None = None

    @property
    def ok(self) -> bool:
        return self.structure_ok and (self.trace is None or self.trace.verdict.ok)
