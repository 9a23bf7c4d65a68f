"""The ``compare`` view: per run and field, the largest distances and how close they came to tolerance."""

from __future__ import annotations

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from sgdtrace.verdict import FieldSummary
from sgdtrace.views.fmt import LABELS, percent, sci


def _worst(d) -> tuple[float, float, int, float, int | None]:
    w = FieldSummary.of(d)
    return w.max_abs, w.max_rel, w.max_ulp, w.max_tol_ratio, w.first_bad


def _field_table(title: str, rows) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
        title=title,
        title_justify="left",
        title_style="bold",
    )
    for name, justify in (
        ("run", "left"),
        ("field", "left"),
        ("max |Δ|", "right"),
        ("max rel", "right"),
        ("max ulp", "right"),
        ("of tol", "right"),
        ("", "left"),
    ):
        table.add_column(name, justify=justify)
    for label, div, epoch, batch in rows:
        for i, (f, d) in enumerate(div.items()):
            a, r, u, ratio, bad = _worst(d)
            mark = (
                Text("ok", style="green")
                if bad is None
                else Text(f"✗ from {epoch[bad]}:{batch[bad]}", style="bold red")
            )
            table.add_row(
                label if i == 0 else "",
                LABELS[f],
                sci(a),
                sci(r),
                str(u),
                percent(ratio),
                mark,
                end_section=i == len(div) - 1,
            )
    return table


def compare_view(result) -> Group:
    side = result.runs[0].hand if result.runs and getattr(result.runs[0], "engine", None) else "manual"
    parts = [
        _field_table(
            f"{side} vs torch, per run",
            [(f"{t.device} {t.config.dtype}", t.divergence, t.epoch, t.batch) for t in result.runs],
        )
    ]
    if result.cross:
        base = result.runs[0]
        parts += [
            Text(""),
            _field_table(
                "torch on one device vs torch on another",
                [(f"{c.a} vs {c.b} {c.dtype}", c.divergence, base.epoch, base.batch) for c in result.cross],
            ),
        ]
    if getattr(result, "drift", None):
        parts += [Text(""), _drift_table(result.drift)]
    ok = result.ok
    parts += [
        Text(""),
        Text("✓ all agree" if ok else "✗ divergence found (see ✗ above)", style="bold green" if ok else "bold red"),
    ]
    return Group(*parts)


def _drift_table(drifts) -> Table:
    """Torch in one dtype vs torch in another: distances only (not judged, not in the exit code)."""
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
        title_justify="left",
        title="torch in one dtype vs torch in another: the drift, not judged",
        title_style="bold",
    )
    for name in ("runs", "field", "max |Δ|", "max rel", "max ulp", "last |Δ|"):
        table.add_column(name, justify="left" if name in ("runs", "field") else "right")
    for dr in drifts:
        label = f"{dr.a['device']} {dr.a['dtype']} vs {dr.b['dtype']}"
        for i, (f, a) in enumerate(dr.abs.items()):
            fin = np.isfinite(a)

            def top(v):
                return sci(float(v[fin].max())) if fin.any() else "n/f"

            table.add_row(
                label if i == 0 else "",
                LABELS[f],
                top(a),
                top(dr.rel[f]),
                str(int(dr.ulp[f][fin].max())) if fin.any() else "n/f",
                sci(float(a[-1])) if a.size and fin[-1] else "n/f",
                end_section=i == len(dr.abs) - 1,
            )
    return table


def compare_text(result, fmt: str) -> str:
    """csv or markdown: one row per run (or cross pair) and field."""
    rows = [("manual vs torch", f"{t.device} {t.config.dtype}", t.divergence) for t in result.runs]
    rows += [("torch vs torch", f"{c.a} vs {c.b} {c.dtype}", c.divergence) for c in result.cross]
    head = ["kind", "run", "field", "max_abs", "max_rel", "max_ulp", "max_tol_ratio", "ok"]
    body = []
    for kind, label, div in rows:
        for f, d in div.items():
            a, r, u, ratio, bad = _worst(d)
            body.append([kind, label, f, repr(a), repr(r), str(u), repr(ratio), "true" if bad is None else "false"])
    for dr in getattr(result, "drift", ()):  # across dtypes: distances only, no tolerance, not judged
        for f, a in dr.abs.items():
            fin = a[np.isfinite(a)]
            body.append(
                [
                    "drift",
                    f"{dr.a['device']} {dr.a['dtype']} vs {dr.b['dtype']}",
                    f,
                    repr(float(fin.max())) if fin.size else "",
                    repr(float(np.nanmax(dr.rel[f]))) if fin.size else "",
                    str(int(dr.ulp[f].max())),
                    "",
                    "",
                ]
            )
    if fmt == "csv":
        return "\n".join(",".join(r) for r in [head] + body) + "\n"
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"
