"""What ``sgdtrace run --format html`` shows, computed: the rows of the per-batch table, each shown
batch's explanation, the batch that opens first, and the graph beside torch's.

The view (:func:`sgdtrace.views.html.run_page`) renders a :class:`RunReport` and computes nothing.

A page explains every shown batch, up to :data:`EXPLAINED` of them: the first ones, and always the
first divergent step, the step where training blew up and the batch asked for (``--batch``). A
shown row past that opens to its values and the ``sgdtrace explain`` command that works it out, so
a page of 1,000 shown steps stays under 1 MB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: the most shown batches a page explains equation by equation (the rest: the command that does)
EXPLAINED = 40


@dataclass
class RunReport:
    """One run's page, computed: the trace, the table's rows, each explained step's explanation."""

    trace: Any
    shown: list[int | None]  # the table's steps (0-based), None for a gap
    explanations: dict[int, Any]  # step -> Explanation (or FeatureExplanation) of the shown rows explained
    focus: int  # the step the page explains first (0-based)
    why: str  # why that step: "the first divergent batch", "as asked (--batch)", ...
    graph: Any  # the graph beside torch's, at the focus step (None where it cannot be built)
    marked: dict[int, str] = field(default_factory=dict)  # step -> its mark ("first divergent step", ...)
    rows: int | None = None
    every: int = 1
    limit: int = EXPLAINED  # the most shown batches explained
    opened: int | None = None  # the step whose row opens in the table: the first divergent one


def focus_step(trace, batch: int | None = None, epoch: int = 1) -> tuple[int, int, str]:
    """The (batch, epoch) the page opens, and why: the one asked for, else the first divergent step,
    else where training blew up, else the first batch."""
    if batch is not None:
        return batch, epoch, "as asked (--batch)"
    v = trace.verdict
    if v.first_divergent_step:
        d = v.first_divergent_step
        return int(d["batch"]), int(d["epoch"]), "the first divergent batch"
    if v.diverged_training:
        d = v.diverged_training
        return int(d["batch"]), int(d["epoch"]), "where training blew up"
    return 1, 1, "the first batch: nothing diverged"


def explained_steps(shown: list[int | None], keep: tuple[int, ...], most: int = EXPLAINED) -> list[int]:
    """The shown steps a page explains: the first ``most`` shown, and every step in ``keep``."""
    steps = [k for k in shown if k is not None]
    picked = set(steps[:most]) | {k for k in keep if k in set(steps)}
    return sorted(picked)


def build_report(trace, batch: int | None = None, epoch: int = 1, rows: int | None = None, every: int = 1) -> RunReport:
    """Compute what the page shows: the table's rows (as the table view picks them), the
    explanation of each explained row and the graph at the focus step, from the run's report stage
    (:attr:`trace.report <sgdtrace.report.Report>`, which works each out once)."""
    from sgdtrace.views.table import shown_steps

    kb, ke, why = focus_step(trace, batch, epoch)
    focus = trace.plan.step(kb, ke)
    v = trace.verdict
    marked: dict[int, str] = {}
    if v.diverged_training:
        marked[v.diverged_training.step - 1] = "training blew up here"
    if v.first_divergent_step:
        marked[v.first_divergent_step.step - 1] = "the first divergent step"
    keep = tuple(d.step - 1 for d in (v.first_divergent_step, v.diverged_training) if d) + (focus,)
    shown = shown_steps(trace.n_steps, rows, every, keep)
    explanations = {}
    for k in explained_steps(shown, keep):  # each worked out once, by the report stage (sgdtrace.report)
        e, j = divmod(k, trace.plan.steps_per_epoch)
        explanations[k] = trace.report.explanation(j + 1, e + 1)
    g = trace.report.batch(kb, ke).graph
    opened = v.first_divergent_step.step - 1 if v.first_divergent_step else None
    return RunReport(trace, shown, explanations, focus, why, g, marked, rows, every, opened=opened)


def run_html(trace, batch: int | None = None, epoch: int = 1, rows: int | None = None, every: int = 1) -> str:
    """``sgdtrace run --format html``: the report computed, then rendered."""
    from sgdtrace.views.html import run_page

    return run_page(build_report(trace, batch, epoch, rows, every))


__all__ = ["RunReport", "build_report", "run_html", "focus_step", "explained_steps", "EXPLAINED"]
