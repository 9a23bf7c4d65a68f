"""The report stage: what the views show of a run beyond its records, computed once.

Data flows one way: config -> data + batch plan -> engines -> Trace -> divergence -> verdict ->
**report** -> views. A :class:`Report` holds the quantities a view shows that need computing: the
parameters the data were made with, the whole data set's loss at the start and the end, the
article's (w, b) plane (the least-squares optimum, the loss's curvature, the loss on a grid), and,
for one batch, its explanation (:func:`sgdtrace.teaching.explain.explain_step`) and the graph
beside torch's (:func:`sgdtrace.teaching.graph.build_graph`, which runs torch). The views read
``trace.report`` (made here the first time a view asks, then kept with the trace) and render; they
import no engine, no torch and no teaching computation (``tests/test_imports.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Plane:
    """The article's model's (w, b) plane over the whole data set (float64): the loss is quadratic
    in (w, b), ``L(w, b) - L* = dᵀ A d`` with ``d`` the distance to the least-squares optimum and
    ``A = (1/N)[[Σx², Σx], [Σx, N]]`` (half the loss's Hessian)."""

    optimum: tuple[float, float]  # the least-squares (w*, b*)
    curvature: np.ndarray  # A, 2 x 2
    eigenvalues: np.ndarray  # A's, ascending (numpy.linalg.eigh)
    eigenvectors: np.ndarray  # as columns
    sums: tuple[float, ...]  # n, Σx², Σx, Σy, Σxy, Σy²

    def surface(self, ws: np.ndarray, bs: np.ndarray) -> np.ndarray:
        """The whole data's mean squared error on the grid ``ws`` x ``bs`` (rows: b), from the sums,
        so a grid costs O(grid), not O(grid x samples)."""
        n, sxx, sx, sy, sxy, syy = self.sums
        W, B = np.meshgrid(ws, bs)
        return (W * W * sxx + 2 * W * B * sx + n * B * B - 2 * W * sxy - 2 * B * sy + syy) / n


def plane(dataset) -> Plane:
    """The article's (w, b) plane of ``dataset`` (one feature)."""
    x, y = dataset.x[:, 0].astype(np.float64), dataset.y.astype(np.float64)
    design = np.stack([x, np.ones_like(x)], axis=1)
    (opt_w, opt_b), *_ = np.linalg.lstsq(design, y, rcond=None)
    n = float(len(x))
    a = np.array([[np.sum(x * x), np.sum(x)], [np.sum(x), n]]) / n
    lam, vec = np.linalg.eigh(a)
    sums = (x.shape[0], (x * x).sum(), x.sum(), y.sum(), (x * y).sum(), (y * y).sum())
    return Plane((float(opt_w), float(opt_b)), a, lam, vec, sums)


@dataclass(frozen=True)
class Batch:
    """One batch as the page shows it: its explanation and its graph beside torch's."""

    batch: int
    epoch: int
    explanation: Any  # sgdtrace.teaching.explain.Explanation (or FeatureExplanation)
    graph: Any  # sgdtrace.teaching.graph.GraphResult


@dataclass
class Report:
    """What the views show of one run beyond its records (:func:`report` makes it)."""

    trace: Any = field(repr=False)
    truths: dict[str, np.ndarray] | None  # the parameters the data were made with (synthetic, the article's)
    data_loss: tuple[float, float] | None  # the whole data's loss at the initial and the final parameters
    _plane: Plane | None = field(default=None, repr=False)
    _batches: dict[tuple[int, int], Batch] = field(default_factory=dict, repr=False)
    _explained: dict[tuple[int, int], Any] = field(default_factory=dict, repr=False)

    @property
    def plane(self) -> Plane | None:
        """The article's (w, b) plane (None for a model with parameters of a shape: no plane to draw)."""
        if self._plane is None and _scalar(self.trace):
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                self._plane = plane(self.trace.dataset)
        return self._plane

    def explanation(self, batch: int, epoch: int = 1) -> Any:
        """Batch ``batch`` of epoch ``epoch`` (both from 1) explained (worked out once)."""
        key = (batch, epoch)
        if key not in self._explained:
            from sgdtrace.teaching.explain import explain_step

            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a blow-up is shown, not warned of
                self._explained[key] = explain_step(self.trace, batch, epoch)
        return self._explained[key]

    def batch(self, batch: int, epoch: int = 1) -> Batch:
        """Batch ``batch`` of epoch ``epoch`` (both from 1) explained, and its graph beside torch's."""
        key = (batch, epoch)
        if key not in self._batches:
            from sgdtrace.teaching.graph import build_graph

            ex = self.explanation(batch, epoch)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                g = build_graph(self.trace, batch, epoch)
            self._batches[key] = Batch(batch, epoch, ex, g)
        return self._batches[key]


def _scalar(trace) -> bool:
    return getattr(trace, "model", None) is None or trace.model.scalar


def report(trace) -> Report:
    """The run's report: the true parameters and the whole data's loss at the start and the end
    (float64); the plane and any batch's explanation are worked out when first asked for."""
    model, ds = trace.model, trace.dataset
    truths = model.module.true_values(ds, model)
    loss = None
    if trace.n_steps:
        start = model.module.data_loss(model, ds, trace.initial)
        end = model.module.data_loss(model, ds, {p: trace.manual[p][-1].astype("float64") for p in model.names})
        loss = (start, end)
    return Report(trace, truths, loss)


__all__ = ["Batch", "Plane", "Report", "plane", "report"]
