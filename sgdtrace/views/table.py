"""The per-batch table: the article's columns, worked by hand, torch's values beside, and the verdict.

Views build, the CLI prints: :func:`run_view` returns a rich renderable.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
from rich import box
from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text

from sgdtrace.views.elements import Column, columns, index_text, step_ok, step_ulp
from sgdtrace.views.export import verdict_sentence
from sgdtrace.views.fmt import (  # noqa: F401  (LABELS: re-exported)
    LABELS,
    describe_data,
    fit,
    label,
    model_title,
    num,
    vector_text,
)
from sgdtrace.views.verdict import rich_text

#: rows shown in full up to this many steps; longer runs show the first and last rows
DEFAULT_ROWS = 40
#: the article's table columns, in its order ("lr" is the learning rate, shown on the hand row)
ARTICLE_ORDER = ("grad_w", "grad_b", "lr", "w", "b", "loss")


def _title(trace) -> str:
    cfg = trace.config
    opts = []
    if cfg.momentum and cfg.optimizer == "sgd":
        opts.append(
            f"momentum {cfg.momentum:g}"
            + (" nesterov" if cfg.nesterov else "")
            + (f" dampening {cfg.dampening:g}" if cfg.dampening else "")
        )
    if cfg.weight_decay:
        opts.append(f"weight decay {cfg.weight_decay:g}")
    if cfg.maximize:
        opts.append("maximize")
    if cfg.shuffle:
        opts.append(f"shuffle seed {cfg.effective_seed}")
    if cfg.drop_last:
        opts.append("drop last")
    if cfg.world_size > 1:
        opts.append(
            f"world size {cfg.world_size} (global batch {cfg.world_size}×{cfg.batch_size})"
            + ("" if cfg.set_epoch else ", no set_epoch")
        )
    epochs = f"{cfg.epochs} epoch" + ("s" if cfg.epochs != 1 else "")
    if cfg.optimizer != "sgd" and _optimizer_options(cfg):
        opts.insert(0, _optimizer_options(cfg))
    if cfg.scheduler is not None:
        opts.append(f"{cfg.scheduler.name} per {cfg.scheduler.interval}")
    from sgdtrace.config import OPTIMIZER_CLASSES  # the optimizer registry's torch class names

    name = OPTIMIZER_CLASSES[cfg.optimizer]
    init_w = vector_text(cfg.init_w) if isinstance(cfg.init_w, tuple) else f"{cfg.init_w:g}"
    initialised = any(cfg.init_w) if isinstance(cfg.init_w, tuple) else cfg.init_w
    return (
        f"{name} on {model_title(trace)}: {describe_data(trace.dataset.info)}\n"
        f"lr {cfg.lr:g} · batch size {cfg.batch_size} · {epochs}"
        + (f" · init w {init_w}, b {cfg.init_b:g}" if initialised or cfg.init_b else "")
        + "".join(" · " + o for o in opts)
        + f" · {cfg.dtype} on {trace.device}"
        + (f"\nhand side: {trace.engine.path} ('{_side(trace)}' rows)" if trace.engine is not None else "")
    )


def _side(trace) -> str:
    """The hand rows' label: "hand", or the user's engine file's stem (``good`` for good.py, whatever
    its length: one rule; the title names the file)."""
    if trace.engine is None:
        return "hand"
    return os.path.splitext(trace.hand)[0]


def fit_title(title: str, width: int) -> str:
    """``title`` with each line broken between its " · " parts so that it fits ``width`` columns (a
    part is never split; one longer than ``width`` gets a line of its own)."""
    out = []
    for line in title.split("\n"):
        current = ""
        for part in line.split(" · "):
            joined = f"{current} · {part}" if current else part
            if current and cell_len(joined) > width:
                out.append(current)
                current = part
            else:
                current = joined
        out.append(current)
    return "\n".join(out)


def _optimizer_options(cfg) -> str:
    """The optimizer's own options, as torch names them (only those that are not torch's default)."""
    from sgdtrace.config import _OPTION_DEFAULTS, OPTIMIZER_DEFAULTS, OPTIMIZER_OPTIONS

    out = []
    for key in OPTIMIZER_OPTIONS[cfg.optimizer]:
        value = getattr(cfg, key)
        default = OPTIMIZER_DEFAULTS[cfg.optimizer].get(key, _OPTION_DEFAULTS.get(key))
        if value != default and value is not None:
            out.append(
                key
                if value is True
                else f"{key} {','.join(f'{b:g}' for b in value) if key == 'betas' else f'{value:g}'}"
            )
    return " ".join(out)


def shown_steps(n_steps: int, rows: int | None, every: int = 1, keep: tuple[int, ...] = ()) -> list[int | None]:
    """Which steps get rows: all of them, or the first and last halves of ``rows`` with ``None`` for a gap.

    With ``every`` K > 1 only every K-th step is a candidate (the 1st, the (K+1)-th, ...) and the
    last step always is, so the final values are shown. Steps in ``keep`` (the first divergent
    step, the step where training blew up) are always shown.
    """
    limit = DEFAULT_ROWS if rows is None else rows
    candidates = list(range(0, n_steps, max(1, every)))
    if n_steps and candidates[-1] != n_steps - 1:
        candidates.append(n_steps - 1)
    if limit <= 0 or len(candidates) <= limit:
        picked = set(candidates)
    else:
        head = (limit + 1) // 2
        tail = limit - head
        picked = set(candidates[:head]) | set(candidates[-tail:] if tail else [])
    out: list[int | None] = []
    for k in sorted(picked | {k for k in keep if 0 <= k < n_steps}):
        if out and out[-1] is not None and k not in (out[-1] + 1, next_candidate(candidates, out[-1])):
            out.append(None)
        out.append(k)
    return out


def next_candidate(candidates: list[int], k: int) -> int | None:
    """The candidate step after ``k`` (for --every), or None."""
    import bisect

    i = bisect.bisect_right(candidates, k)
    return candidates[i] if i < len(candidates) else None


def summary_text(trace, shown: list[int | None]) -> Text:
    """One line: how many steps were shown, and where each parameter and the loss over the whole
    data set started and ended (the per-batch losses of the first and last steps are of different
    batches)."""
    n = trace.n_steps
    rows = sum(1 for k in shown if k is not None)
    out = Text(f"{n} steps, {rows} shown · " if rows < n else "", style="dim")
    if n:
        man, report = trace.manual, trace.report  # the true values and the data's loss: the report stage's
        truths = report.truths or {}
        parts = []
        for p in trace.model.params:
            true = f" (true {_value_text(truths[p.name])})" if p.name in truths else ""
            if p.size > 4:  # a matrix or a long vector: its norm
                start_norm = float(np.linalg.norm(np.asarray(trace.initial[p.name], dtype=np.float64)))
                end_norm = float(np.linalg.norm(man[p.name][-1].astype(np.float64)))
                parts.append(f"‖{p.label}‖ {num(start_norm)} → {num(end_norm)}")
                continue
            parts.append(f"{p.label} {_value_text(trace.initial[p.name])} → {_value_text(man[p.name][-1])}{true}")
        start, end = report.data_loss
        out.append(" · ".join(parts) + f" · data loss {num(start)} → {num(end)}", style="dim")
    return out


def _value_text(value) -> str:
    """A parameter's value: one number, or a short list of them."""
    flat = [float(v) for v in getattr(value, "flat", [value])]
    return num(flat[0]) if len(flat) == 1 else vector_text(flat)


def _values(trace) -> tuple[str, ...]:
    """The gradients, the loss and the parameters (the article's FIELDS for its w and b)."""
    names = trace.model.names if getattr(trace, "model", None) is not None else ("w", "b")
    return tuple(f"grad_{p}" for p in names) + ("loss",) + names


def _order(trace) -> tuple[str, ...]:
    """The article's column order (dl/dw, dl/db, lr, w, b, loss) for every model's parameters."""
    names = trace.model.names if getattr(trace, "model", None) is not None else ("w", "b")
    return tuple(f"grad_{p}" for p in names) + ("lr",) + names + ("loss",)


def table_fields(trace) -> tuple[str, ...]:
    """The columns' fields: the article's (dl/dw, dl/db, loss, w, b), then the optimizer's state if any."""
    values = _values(trace)
    return tuple(f for f in values if f in trace.fields) + tuple(f for f in trace.fields if f not in values)


def step_table(trace, rows: int | None = None, every: int = 1, width: int | None = None) -> Table:
    """Two lines per step (hand, torch); the ulp column is the step's largest distance in ULPs.

    Columns in the article's order (n, dl/dw, dl/db, lr, w, b, loss). With momentum on, the
    buffers buf_w and buf_b join as two more columns. Each number gets at most 9 characters:
    6 significant digits, fewer where the value needs more room (ulp counts from 100,000 on
    are shown as 1e5, 5.5e7, ...). To fit ``width`` columns (the terminal's), the table
    narrows step by step (:data:`LAYOUTS`): fewer characters per number, the lr column
    (constant, and in the title) left out, the columns set one space apart instead of two,
    and the buffers folded onto rows of their own (``buf hand``, ``buf torch``: buf_w under
    dl/dw, buf_b under dl/db, the gradients they accumulate). A number is never cut: where
    even the narrowest layout is too wide, cells wrap.
    """
    values = _values(trace)
    buffers = any(f not in values and f != "lr" for f in _inline_fields(trace))
    shaped = any(np.ndim(trace.manual[f]) > 1 for f in trace.fields)
    layouts = [
        lay for lay in LAYOUTS if not (buffers and lay.lr) and (buffers or not lay.fold) and (shaped or not lay.norms)
    ]
    if width is None:
        return _step_table(trace, rows, every, layouts[0])
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=10_000, color_system=None, force_jupyter=False)
    for layout in layouts:
        table = _step_table(trace, rows, every, layout)
        widest = Measurement.get(console, console.options, table).maximum
        if widest <= width:
            break
    # the title breaks between its parts, never inside one ("weight decay" / "0.01"): rich wraps a
    # title at the table's own width, so that is the width to fit
    table.title = fit_title(table.title, min(width, widest))
    return table


class Layout(NamedTuple):
    """How wide the run table's numbers are: at most ``width`` characters, ``digits`` significant digits."""

    width: int
    digits: int
    lr: bool  # the lr column shown
    gap: int  # spaces between columns
    fold: bool = False  # the momentum buffers on rows of their own instead of two more columns
    norms: bool = False  # every field of a parameter with a shape as its norm (one column, not one per element)


#: the run table's layouts, widest first; :func:`step_table` takes the first that fits the terminal
LAYOUTS = (
    Layout(9, 6, True, 1),
    Layout(8, 5, True, 1),
    Layout(8, 5, False, 1),
    Layout(8, 5, False, 0),
    Layout(7, 4, False, 0),
    Layout(6, 3, False, 0),
    Layout(8, 5, False, 1, True),
    Layout(8, 5, False, 0, True),
    Layout(7, 4, False, 0, True),
    Layout(6, 3, False, 0, True),
    Layout(9, 6, True, 1, False, True),
    Layout(8, 5, False, 1, False, True),
    Layout(7, 4, False, 0, False, True),
    Layout(6, 3, False, 0, False, True),
)
#: where a folded buffer is shown: under the gradient it accumulates
FOLDED = {"buf_w": "grad_w", "buf_b": "grad_b"}


def _state_fields(trace) -> list[str]:
    values = _values(trace)
    return [f for f in table_fields(trace) if f not in values and f != "lr"]


def _inline_fields(trace) -> tuple[str, ...]:
    """The step table's fields: with more optimizer state than two buffers (Adam & co.), or state of
    parameters with a shape, the state goes to its own table (:func:`state_table`)."""
    fields = table_fields(trace)
    state = _state_fields(trace)
    shaped = any(trace.manual[f].ndim > 1 for f in state)
    return tuple(f for f in fields if f not in state) if len(state) > 2 or shaped else fields


def _step_table(trace, rows: int | None, every: int, layout: Layout) -> Table:
    fields = _inline_fields(trace)
    scheduled = "lr" in fields  # a schedule: the rate of each step, on both lines, judged
    width, digits = layout.width, layout.digits
    multi = trace.config.epochs > 1
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, layout.gap, 0, 0),
        show_edge=False,
        pad_edge=False,
        title=_title(trace),
        title_justify="left",
        title_style="bold",
    )
    # the article's column order: n, dl/dw, dl/db, lr, w, b, loss (then the buffers); a field of
    # many elements: a column per element, or its norm (sgdtrace.views.elements)
    article = _order(trace)
    fs = [f for f in article if f in fields or (f == "lr" and layout.lr)]
    fs += [f for f in fields if f not in article and not (layout.fold and f in FOLDED)]
    order = [c for f in fs for c in (columns(trace, f, layout.norms) if f in fields else [Column(f, (), label(f))])]
    folded = [f for f in fields if layout.fold and f in FOLDED]
    # overflow "fold": a cell too wide for a narrow terminal wraps; it is never cut with "…"
    table.add_column("ep:b" if multi else "batch", justify="right", overflow="fold")
    table.add_column("n", justify="right", overflow="fold")
    table.add_column("", justify="left", overflow="fold")
    for c in order:
        table.add_column(c.label, justify="right", overflow="fold")
    table.add_column("ulp", justify="right", overflow="fold")

    stalled = getattr(trace, "stalled", None) or {}
    ok_all = step_ok(trace, fields)
    lr = f"{trace.config.lr:g}"
    witness, gc = trace.reference, trace.gradcheck
    if witness is not None:
        err_m, err_t = witness.errors(trace.manual), witness.errors(trace.torch)
    v = trace.verdict
    blew = v.diverged_training.step - 1 if v.diverged_training else None
    keep = tuple(d.step - 1 for d in (v.first_divergent_step, v.diverged_training) if d)
    shown = shown_steps(trace.n_steps, rows, every, keep)
    for i, k in enumerate(shown):
        if k is None:
            hidden = shown[i + 1] - shown[i - 1] - 1
            table.add_row("⋮", "", "⋮", *(["⋮"] * len(order)), Text(f"+{hidden}", style="italic"), end_section=True)
            continue
        step = f"{trace.epoch[k]}:{trace.batch[k]}" if multi else str(trace.batch[k])
        worst, judged, finite = step_ulp(trace, fields, k)
        ulp_text = fit(worst, 5, 2) if worst >= 100_000 else str(worst)
        if not ok_all[k]:
            mark = Text(f"✗ {ulp_text}", style="bold red")
        elif finite < judged:
            mark = Text("n/f", style="yellow")
        else:
            mark = Text(ulp_text, style="green" if worst == 0 else "")
        if k == blew:  # where training blew up (first inf/nan, or where the rate first exceeds the limit)
            mark = Text("⚠ ", style="bold yellow") + mark

        def row(values: dict, lr_cell="") -> list:
            """The cells in column order; ``values`` by column, or by field for a field's one column."""
            return [
                lr_cell if c.field == "lr" and not scheduled else values.get(c, values.get(c.field, "")) for c in order
            ]

        def cell(value, c: Column, side=None) -> Text:
            out = Text(fit(value, width, digits), style="" if c.ok(trace, k) else "bold red")
            flag = None if side is None else side.get(f"stalled_{c.field}")
            if flag is not None and _stalled(flag[k], c):  # the update was lost to rounding
                out.append("=", style="bold yellow")
            return out

        def cells(cols: dict, side=None) -> dict:
            return {c: cell(c.value(cols, k), c, side) for c in order if c.field in fields}

        last = k == shown[-1]
        table.add_row(
            step, str(trace.n[k]), _side(trace), *row(cells(trace.manual, stalled.get("manual", {})), lr), mark
        )
        table.add_row(
            "",
            "",
            Text("torch", style="dim"),
            *row(cells(trace.torch, stalled.get("torch", {}))),
            "",
            end_section=not last and witness is None and gc is None and not folded and trace.ranks is None,
        )
        if folded:
            buf = {f: Column(f, (), label(f)) for f in folded}
            table.add_row("", "", "buf hand", *row({FOLDED[f]: cell(trace.manual[f][k], buf[f]) for f in folded}), "")
            table.add_row(
                "",
                "",
                Text("buf torch", style="dim"),
                *row({FOLDED[f]: cell(trace.torch[f][k], buf[f]) for f in folded}),
                "",
                end_section=not last and witness is None and gc is None and trace.ranks is None,
            )
        if trace.ranks is not None:
            _rank_rows(table, trace, k, row, width, digits, last, order)
        if witness is not None:
            table.add_row(
                "",
                "",
                Text("exact", style="cyan"),
                *row({f: Text(fit(witness.floats[f][k], width, digits), style="cyan") for f in fields}),
                "",
            )
            table.add_row(
                "", "", Text("err hand", style="dim"), *row({f: fit(err_m[f][1][k], width, 2) for f in fields}), ""
            )
            table.add_row(
                "",
                "",
                Text("err torch", style="dim"),
                *row({f: fit(err_t[f][1][k], width, 2) for f in fields}),
                "",
                end_section=not last and gc is None,
            )
        if gc is not None:
            status = "n/a" if not gc.finite[k] else ("ok" if gc.ok[k] else Text("✗", style="bold red"))
            table.add_row(
                "",
                "",
                Text("numeric", style="dim"),
                *row({f: fit(gc.numeric[f][k], width, digits) for f in fields if f in gc.numeric}),
                status,
                end_section=not last,
            )
    return table


def _element(values, c: Column) -> bool:
    """A column's element of one step's flags (all of them, for a norm)."""
    return bool(values[c.index]) if c.index else bool(values if c.index == () else np.all(values))


def _stalled(flags, c: Column) -> bool:
    """Did the column's element (or any element, for a norm) stall at this step?"""
    return bool(flags[c.index]) if c.index else bool(flags if c.index == () else flags.any())


#: ranks shown one row each; past this, the first ones and a row counting the others
RANK_ROWS = 4


def _rank_rows(table, trace, k: int, row, width: int, digits: int, last: bool, order=()) -> None:
    """``--world-size N``: under the step's averaged row, each rank's n, own gradients and loss
    (by hand; red where torch's differ beyond the rounding allowance), its largest ulp distance."""
    rt = trace.ranks
    world = rt.world_size
    shown = range(world) if world <= RANK_ROWS else range(RANK_ROWS - 1)
    for r in shown:
        ok = all(bool(np.all(rt.divergence[f].ok[k, r])) for f in rt.manual)
        worst = max(int(np.max(rt.divergence[f].ulp[k, r])) for f in rt.manual)
        own = {f: rt.manual[f][:, r] for f in rt.manual}
        cells = {
            c: Text(
                fit(c.value(own, k), width, digits),
                style="dim" if _element(rt.divergence[c.field].ok[k, r], c) else "bold red",
            )
            for c in order
            if c.field in rt.manual
        }
        mark = Text(str(worst), style="dim") if ok else Text(f"✗ {worst}", style="bold red")
        end = r == world - 1 and not last
        table.add_row(
            "",
            Text(str(int(rt.n[k, r])), style="dim"),
            Text(f"rank {r}", style="dim"),
            *row(cells),
            mark,
            end_section=end,
        )
    if world > RANK_ROWS:
        rest = range(RANK_ROWS - 1, world)
        bad = [r for r in rest if not all(bool(rt.divergence[f].ok[k, r]) for f in rt.manual)]
        losses = rt.manual["loss"][k, RANK_ROWS - 1 :]
        note = f"ranks {rest[0]}-{rest[-1]}: loss {num(losses.min())}..{num(losses.max())}"
        table.add_row(
            "",
            "",
            Text(note, style="dim"),
            *row({}),
            Text("✗ rank " + ", ".join(map(str, bad)), style="bold red") if bad else Text("ok", style="dim"),
            end_section=not last,
        )


def ranks_text(trace) -> Text:
    """The rank axis in words: the samples DistributedSampler repeated, a forgotten set_epoch."""
    rt = trace.ranks
    out = Text(style="dim")
    if rt is None:
        return out
    cfg = trace.config
    names = trace.model.names if trace.model is not None else ("w", "b")
    grads = ", ".join(label("grad_" + p) for p in names)
    out.append(
        f"{rt.world_size} ranks × {cfg.batch_size} samples per step; the step's {grads} are DDP's average "
        f"(each rank's times 1/{rt.world_size}, summed), its loss the ranks' mean"
    )
    for e, padded in enumerate(rt.plan.padded):
        if padded.size:
            out.append(
                f"\nepoch {e + 1}: DistributedSampler repeats sample{'s' if padded.size > 1 else ''} "
                f"{', '.join(map(str, padded.tolist()))} so every rank gets {rt.plan.per_rank}"
            )
        if rt.plan.dropped[e].size:
            out.append(
                f"\nepoch {e + 1}: drop_last leaves out sample{'s' if rt.plan.dropped[e].size > 1 else ''} "
                f"{', '.join(map(str, rt.plan.dropped[e].tolist()))}"
            )
    if not cfg.set_epoch and cfg.epochs > 1:
        out.append(
            "\n--no-set-epoch: sampler.set_epoch(e) was never called, so every epoch repeats "
            "epoch 1's order" + (" (shuffle draws from seed + 0 each time)" if cfg.shuffle else "")
        )
    return out


def state_table(trace, rows: int | None = None, every: int = 1) -> Table | None:
    """The optimizer's state per shown step: one column per state entry (torch's names), a line per
    parameter and engine (when there is more of it than the step table's two compact buffer
    columns hold: Adam's exp_avg and exp_avg_sq, ...)."""
    state = _state_fields(trace)
    if len(state) <= 2 and not any(trace.manual[f].ndim > 1 for f in state):
        return None
    keys = list(dict.fromkeys(f.rsplit("_", 1)[0] for f in state))  # exp_avg, exp_avg_sq, ...
    multi = trace.config.epochs > 1
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
        pad_edge=False,
        title=f"{trace.config.optimizer}'s state",
        title_justify="left",
        title_style="bold",
    )
    table.add_column("ep:b" if multi else "batch", justify="right")
    table.add_column("p")
    table.add_column("", justify="left")
    for key in keys:
        table.add_column(key, justify="right")
    v = trace.verdict
    keep = tuple(d["step"] - 1 for d in (v.first_divergent_step, v.diverged_training) if d)
    shown = shown_steps(trace.n_steps, rows, every, keep)
    for k in shown:
        if k is None:
            table.add_row("⋮", "", "", *(["⋮"] * len(keys)), end_section=True)
            continue
        step = f"{trace.epoch[k]}:{trace.batch[k]}" if multi else str(trace.batch[k])

        def cell(cols, c: Column) -> Text:
            return Text(fit(c.value(cols, k), 10, 6), style="" if c.ok(trace, k) else "bold red")

        names = trace.model.names
        for i, p in enumerate(names):
            fs = [f"{key}_{p}" for key in keys]
            elements = columns(trace, fs[0])  # a line per element of the parameter (or its norm)
            for j, e in enumerate(elements):
                first, end = i == 0 and j == 0, i == len(names) - 1 and j == len(elements) - 1
                name = p if not e.index or np.size(trace.manual[p][0]) == 1 else p + index_text(e.index)
                name = f"‖{p}‖" if e.index is None else name
                line = [Column(f, e.index, "") for f in fs]
                table.add_row(step if first else "", name, "hand", *(cell(trace.manual, c) for c in line))
                table.add_row(
                    "",
                    "",
                    Text("torch", style="dim"),
                    *(cell(trace.torch, c) for c in line),
                    end_section=end and k != shown[-1],
                )
    return table


def verdict_text(trace) -> Text:
    """The verdict line(s): agree or diverge (naming the first divergent step), and any blow-up
    (the sentences: :mod:`sgdtrace.views.verdict`)."""
    return rich_text(trace)


class _Never:
    """No stall column (an engine that recorded none): no step stalled."""

    def __getitem__(self, k) -> bool:
        return False


_NEVER = _Never()


def run_view(trace, rows: int | None = None, every: int = 1, width: int | None = None) -> Group:
    """The ``sgdtrace run`` screen: the step table (and the optimizer's state table), a summary
    line, then the verdict (and any witness).

    ``width``: the columns the table must fit in (the terminal's); None: the widest layout.
    """
    parts = [step_table(trace, rows, every, width)]
    state = state_table(trace, rows, every)
    if state is not None:
        parts += [Text(""), state]
    parts.append(summary_text(trace, shown_steps(trace.n_steps, rows, every)))
    if trace.ranks is not None:
        parts.append(ranks_text(trace))
    parts += [Text(""), verdict_text(trace)]
    if trace.reference is not None:
        parts.append(Text(trace.reference.describe() + "; err = |value − exact| / |exact|", style="cyan"))
    if trace.gradcheck is not None:
        parts.append(Text(trace.gradcheck.summary() + " (row 'numeric': the central differences)"))
    return Group(*parts)


__all__ = [
    "run_view",
    "step_table",
    "state_table",
    "table_fields",
    "verdict_text",
    "verdict_sentence",
    "shown_steps",
    "summary_text",
]
