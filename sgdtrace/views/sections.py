"""The pieces the ``explain`` views write with: a section of equations, a value beside torch's (and
the user's), the samples' list, SGD's lines and the update's title.

Shared by :mod:`sgdtrace.views.explain` and :mod:`sgdtrace.views.network`, importing neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from sgdtrace.views.fmt import num

if TYPE_CHECKING:  # the record these pieces render
    from sgdtrace.teaching.explain import Explanation

#: per-sample rows and sum terms written out before the rest is elided
MAX_SAMPLES = 8
MAX_TERMS = 4


def _torch(ex: Explanation, field: str, label: str | None = None) -> Text:
    u = ex.ulp(field)
    t = Text("torch: ", style="dim")
    t.append(f"{label or field} = {num(ex.torch_value(field))}")
    t.append(f"  ({u} ulp)", style="green" if u == 0 else "yellow")
    return t


def _yours(ex: Explanation, field: str, label: str | None = None) -> Text:
    """The user's value for ``field`` beside the expected one, within the step's rounding allowance or not."""
    ok = ex.user_ok(field)
    t = Text(f"{ex.user_name}: ", style="dim")
    t.append(f"{label or field} = {num(ex.user[field])}")
    t.append(
        "  ✓ as expected" if ok else f"  ✗ expected {num(ex.expected[field])}", style="green" if ok else "bold red"
    )
    return t


#: the per-sample nodes a user's forward returns, as the table heads them


class _Section:
    """Rows of (equation label, formula) in a grid, so long formulas wrap under their own column."""

    def __init__(self, title: str):
        self.title = title
        self.grid = Table.grid(padding=(0, 1))
        self.grid.add_column(width=7, no_wrap=True, style="bold")
        self.grid.add_column()

    def row(self, eq: str, text: str | Text, result: str | None = None) -> None:
        t = text if isinstance(text, Text) else Text(text)
        if result is not None:
            t.append(" = ")
            t.append(result, style="bold")
        self.grid.add_row(eq, t)

    def torch(self, ex: Explanation, field: str, label: str | None = None) -> None:
        self.grid.add_row("", _torch(ex, field, label))
        if ex.user is not None and field in ex.user:  # --engine: the user's value beside the expected one
            self.grid.add_row("", _yours(ex, field, label))

    def render(self) -> Group:
        return Group(Text(self.title, style="bold"), self.grid)


def _per_sample(values: list[str]) -> str:
    if len(values) > MAX_SAMPLES:
        values = values[:MAX_SAMPLES] + ["…"]
    return ", ".join(values)


def _shape(v) -> str:
    return "(" + ", ".join(map(str, np.shape(v))) + ("," if np.ndim(v) == 1 else "") + ")"


def _sgd_rules(cfg, p: str, step: int) -> dict[str, str]:
    """torch.optim.SGD's lines for parameter ``p``, as formulas (element by element)."""
    g = f"dl/d{p}"
    if cfg.maximize:
        g = f"−{g}"
    if cfg.weight_decay:
        g = f"({g} + {cfg.weight_decay:g}·{p})"
    if not cfg.momentum:
        return {"param": f"{p} − lr·{g}"}
    buf = f"buf_{p}"
    state = g if step == 0 else f"{cfg.momentum:g}·{buf} + {1 - cfg.dampening:g}·{g}"
    param = f"{p} − lr·({g} + {cfg.momentum:g}·{buf})" if cfg.nesterov else f"{p} − lr·{buf}"
    return {"state": state + (" (the first step starts the buffer)" if step == 0 else ""), "param": param}


def _update_title(cfg) -> str:
    from sgdtrace.config import OPTIMIZER_CLASSES

    if cfg.optimizer == "sgd":
        plain = not cfg.momentum and not cfg.weight_decay and not cfg.maximize
        return "Update (Equations 4-5" + ("" if plain else ", as torch.optim.SGD grows them") + "), element by element"
    return (
        f"Update: torch.optim.{OPTIMIZER_CLASSES[cfg.optimizer]}'s algorithm (sgdtrace explain on the "
        "article's data shows it line by line), element by element"
    )


def closing_note(matches: bool, elements: bool = False) -> Text:
    """An explanation's last line: its values are the run's own, bit for bit (``matches``), or a
    warning that they differ (which would mean explain recomputes differently from the run)."""
    if not matches:  # pragma: no cover - explain recomputes each step as the run did
        return Text("Warning: the recomputed values differ from the run's manual trace.", style="bold red")
    largest = " (the largest over the elements)" if elements else ""
    return Text(
        "These are the manual engine's own values for this step (bit for bit as in the run); "
        f"'ulp' counts the floats between them and torch's{largest}.",
        style="dim",
    )
