"""How the views show a field of many elements (a parameter of shape (D,), its gradient, its state).

A field of the article's model is one number per step: one column. A field of a parameter with
a shape is an array per step; tables and the Markdown export show

* every element as a column of its own (``w[0]``, ``w[1]``, ...; ``b`` for a one-element
  parameter) while the parameter has at most :data:`MAX_ELEMENTS` elements,
* else one column, the 2-norm of the row (``‖w‖``), red where any element disagrees; the
  verdict names the first bad element and the ulp column counts the worst element.

JSON writes every element (nested lists of the parameter's shape), CSV one column per element
(``manual_w[0]``, ``manual_w1[0,1]``): see docs/json.md and docs/models.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sgdtrace.views.fmt import label

#: elements shown one column each; a parameter with more is summarised by its norm
MAX_ELEMENTS = 4


def index_text(index: tuple[int, ...]) -> str:
    """``[2]``, ``[0,1]``; nothing for a scalar."""
    return "" if not index else "[" + ",".join(map(str, index)) + "]"


@dataclass(frozen=True)
class Column:
    """One column of a table: a field, and which of its elements (``()`` the value itself; an index;
    or ``None``: the 2-norm of the step's row)."""

    field: str
    index: tuple[int, ...] | None
    label: str

    def value(self, cols: dict, k: int) -> float:
        v = cols[self.field][k]
        if self.index is None:
            a = np.asarray(v, dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):
                return float(np.sqrt(np.sum(a * a))) if np.isfinite(a).all() else math.nan
        return float(v[self.index]) if self.index else float(v)

    def ok(self, trace, k: int) -> bool:
        d = trace.divergence[self.field].ok[k]
        return bool(d[self.index]) if self.index else bool(np.all(d))


def shape_of(trace, field: str) -> tuple[int, ...]:
    """The shape of one step's value of ``field`` (``()`` for the loss, the rate, the article's)."""
    return tuple(np.shape(trace.manual[field])[1:]) if field in trace.manual else ()


def columns(trace, field: str, norms: bool = False) -> list[Column]:
    """The table columns of ``field``: itself, each element, or its norm (see the module docstring);
    ``norms``: the norm of every field of more than one element (a narrow terminal)."""
    shape = shape_of(trace, field)
    name = label(field)
    size = int(np.prod(shape)) if shape else 1
    if not shape:
        return [Column(field, (), name)]
    if size == 1:
        return [Column(field, (0,) * len(shape), name)]
    if size <= MAX_ELEMENTS and not norms:
        return [Column(field, tuple(int(i) for i in idx), name + index_text(idx)) for idx in np.ndindex(*shape)]
    return [Column(field, None, f"‖{name}‖")]


def step_ulp(trace, fields, k: int) -> tuple[int, int, int]:
    """The step's largest ulp distance over every element of ``fields`` that is finite on both sides,
    how many values were judged and how many of them were finite."""
    worst, values, finite = 0, 0, 0
    for f in fields:
        d = trace.divergence[f]
        fin = np.asarray(d.finite[k])
        values += fin.size
        finite += int(fin.sum())
        if fin.any():
            worst = max(worst, int(np.asarray(d.ulp[k])[fin].max()))
    return worst, values, finite


def step_ok(trace, fields) -> np.ndarray:
    """Per step: every element of every field within its allowance."""
    ok = None
    for f in fields:
        d = trace.divergence[f].ok
        d = d.reshape(d.shape[0], -1).all(axis=1)
        ok = d if ok is None else ok & d
    return ok
