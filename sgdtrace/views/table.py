"""The per-batch table: the article's columns, worked by hand, torch's values beside, and the verdict.

Views build, the CLI prints: :func:`run_view` returns a rich renderable.
"""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from sgdtrace.divergence import BUFFER_FIELDS, FIELDS, tolerances
from sgdtrace.views.export import verdict_sentence
from sgdtrace.views.fmt import LABELS, describe_data, num, percent, sci

#: rows shown in full up to this many steps; longer runs show the first and last rows
DEFAULT_ROWS = 40


def _title(trace) -> str:
    cfg = trace.config
    opts = []
    if cfg.momentum:
        opts.append(f"momentum {cfg.momentum:g}" + (" nesterov" if cfg.nesterov else "")
                    + (f" dampening {cfg.dampening:g}" if cfg.dampening else ""))
    if cfg.weight_decay:
        opts.append(f"weight decay {cfg.weight_decay:g}")
    if cfg.maximize:
        opts.append("maximize")
    if cfg.shuffle:
        opts.append(f"shuffle seed {cfg.effective_seed}")
    if cfg.drop_last:
        opts.append("drop last")
    epochs = f"{cfg.epochs} epoch" + ("s" if cfg.epochs != 1 else "")
    return (f"SGD on ypred = w·x + b: {describe_data(trace.dataset.info)}\n"
            f"lr {cfg.lr:g} · batch size {cfg.batch_size} · {epochs} · init w {cfg.init_w:g}, b {cfg.init_b:g}"
            + "".join(" · " + o for o in opts) + f" · {cfg.dtype} on {trace.device}")


def shown_steps(n_steps: int, rows: int | None) -> list[int | None]:
    """Which steps get rows: all of them, or the first and last halves of ``rows`` with ``None`` for the gap."""
    limit = DEFAULT_ROWS if rows is None else rows
    if limit <= 0 or n_steps <= limit:
        return list(range(n_steps))
    head = (limit + 1) // 2
    tail = limit - head
    return list(range(head)) + [None] + list(range(n_steps - tail, n_steps))


def table_fields(trace) -> tuple[str, ...]:
    """The columns' fields: the article's (dl/dw, dl/db, loss, w, b), then momentum's buffers if any."""
    order = FIELDS + BUFFER_FIELDS
    return tuple(sorted(trace.fields, key=lambda f: order.index(f) if f in order else len(order)))


def step_table(trace, rows: int | None = None) -> Table:
    """Two lines per step (hand, torch); the ulp column is the step's largest distance in ULPs.

    With momentum on, the buffers buf_w and buf_b join as two more columns; to keep a step on
    80 columns, the lr column (constant, and in the title) gives way and each number gets at
    most 8 characters: 5 significant digits, fewer where the value needs more room (ulp
    counts from 100,000 on are shown as 1e5, 5.5e7, ...).
    """
    fields = table_fields(trace)
    buffers = any(f in BUFFER_FIELDS for f in fields)
    fmt = _fit if buffers else num
    multi = trace.config.epochs > 1
    # with the buffers, the columns are set one space apart instead of two
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 0 if buffers else 1, 0, 0), show_edge=False, pad_edge=False,
                  title=_title(trace), title_justify="left", title_style="bold")
    table.add_column("ep:b" if multi else "batch", justify="right")
    table.add_column("n", justify="right")
    if not buffers:
        table.add_column("lr", justify="right")
    table.add_column("", justify="left")
    for f in fields:
        table.add_column(LABELS[f], justify="right")
    table.add_column("ulp", justify="right")

    ok_all = None
    for f in fields:
        ok_all = trace.divergence[f].ok if ok_all is None else ok_all & trace.divergence[f].ok
    lr = [] if buffers else [f"{trace.config.lr:g}"]
    blank = [""] * len(lr)
    for k in shown_steps(trace.n_steps, rows):
        if k is None:
            hidden = trace.n_steps - (len(shown_steps(trace.n_steps, rows)) - 1)
            table.add_row("⋮", "", *blank, "", Text(f"{hidden} steps not shown", style="italic"), end_section=True)
            continue
        step = f"{trace.epoch[k]}:{trace.batch[k]}" if multi else str(trace.batch[k])
        ulps = [int(trace.divergence[f].ulp[k]) for f in fields if trace.divergence[f].finite[k]]
        worst = max(ulps) if ulps else 0
        shown = _short_exponent(f"{worst:.2g}") if buffers and worst >= 100_000 else worst
        if not ok_all[k]:
            mark = Text(f"✗ {shown}", style="bold red")
        elif len(ulps) < len(fields):
            mark = Text("n/f", style="yellow")
        else:
            mark = Text(str(shown), style="green" if worst == 0 else "")
        man = [_cell(fmt(trace.manual[f][k]), trace.divergence[f].ok[k]) for f in fields]
        ref = [_cell(fmt(trace.torch[f][k]), trace.divergence[f].ok[k]) for f in fields]
        table.add_row(step, str(trace.n[k]), *lr, "hand", *man, mark)
        table.add_row("", "", *blank, Text("torch", style="dim"), *ref, "", end_section=k != trace.n_steps - 1)
    return table


def _cell(text: str, ok) -> Text:
    return Text(text, style="" if ok else "bold red")


def _fit(value, width: int = 8) -> str:
    """A value in at most ``width`` characters: 5 significant digits, fewer where it needs room.

    Exponents are written short (``1.5e-5``, ``-2.25e5``) to leave the room to digits.
    """
    for digits in (5, 4, 3, 2):
        text = _short_exponent(num(value, digits))
        if len(text) <= width:
            break
    return text


def _short_exponent(text: str) -> str:
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def verdict_text(trace) -> Text:
    """The verdict line(s): agree or diverge (naming the first divergent step), and any blow-up."""
    v = trace.verdict
    rtol, atol = tolerances(trace.config)
    out = Text()
    if v.ok:
        out.append("✓ agree", style="bold green")
        out.append(f"  {trace.n_steps} steps × {len(trace.fields)} values within tolerance: "
                   f"max {v.max_ulp} ulp, max |Δ| {sci(v.max_abs)}, at most {percent(v.max_tol_ratio)} "
                   f"of the tolerance (rtol {sci(rtol)}, atol {sci(atol)})")
    else:
        f = v.first_divergent_step
        out.append("✗ diverge", style="bold red")
        out.append(f"  first at epoch {f['epoch']} batch {f['batch']} (step {f['step']}), {LABELS[f['field']]}: "
                   f"hand {_show(f['manual'])}, torch {_show(f['torch'])}, |Δ| {_show(f['abs'])} "
                   f"> tolerance {_show(f['tol'])}")
    if v.diverged_training:
        d = v.diverged_training
        out.append("\n⚠ training blew up", style="bold yellow")
        out.append(f" at epoch {d['epoch']} batch {d['batch']}: {d['reason']}.\n  Hint: {d['hint']}.")
    return out


def _show(value) -> str:
    return value if isinstance(value, str) else ("n/a" if value is None else num(value, 8))


def run_view(trace, rows: int | None = None) -> Group:
    """The ``sgdtrace run`` screen: the step table, then the verdict."""
    return Group(step_table(trace, rows), Text(""), verdict_text(trace))


__all__ = ["run_view", "step_table", "table_fields", "verdict_text", "verdict_sentence", "shown_steps"]
