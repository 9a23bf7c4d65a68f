"""HTML: one self-contained page (``--format html``) and the fragments a notebook displays.

The page needs nothing from the network: the CSS is inline, the plots and the graph are inline
SVG, the full per-step data is a ``data:`` URI (CSV) on a download link, and a
Content-Security-Policy forbids any other source. It prints (print CSS: light, no link), follows
the reader's dark theme (``prefers-color-scheme``), and reads aloud: ``lang``, table captions,
``<th scope>``, a title and a description in every SVG.

Numbers are written as :func:`cell` writes them (6 significant digits, as ``--format markdown``).
"""

from __future__ import annotations

import html
import re
from typing import Any

from sgdtrace._version import __version__
from sgdtrace.views.fmt import LABELS, describe_data, num, percent, sci

CSS = """
:root { color-scheme: light dark; --bg: #ffffff; --fg: #1d1f21; --muted: #5c6166; --rule: #d5d8dc;
  --band: #f4f6f8; --ok: #1a7f37; --bad: #c62828; --warn: #9a6700; --accent: #1f6fb2; --node-bg: #ffffff;
  --c-hand: #d62728; --c-w: #1f77b4; --c-b: #c96a00; --c-contour: #8a9bb0; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #16181b; --fg: #e3e5e8; --muted: #a0a6ad; --rule: #3a3f45; --band: #1f2226;
    --ok: #57c26e; --bad: #ff7b72; --warn: #e3b341; --accent: #79b8ff; --node-bg: #16181b;
    --c-hand: #ff6b6b; --c-w: #6cb6ff; --c-b: #f0a04b; --c-contour: #56657a; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 76rem; margin: 0 auto; padding: 1.5rem; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; } h2 { font-size: 1.2rem; margin: 2rem 0 .5rem;
  border-bottom: 1px solid var(--rule); } h3 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
.muted, caption { color: var(--muted); }
caption { text-align: left; padding: .25rem 0; font-size: .9rem; caption-side: top; }
table { border-collapse: collapse; margin: .5rem 0; font-variant-numeric: tabular-nums; }
th, td { padding: .15rem .6rem; border-bottom: 1px solid var(--rule); vertical-align: top; }
thead th { border-bottom: 2px solid var(--fg); text-align: right; }
thead th.l, td.l, th[scope=row] { text-align: left; }
td { text-align: right; font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
tr.torch td { color: var(--muted); } tr.hand td, tr.hand th { border-bottom: none; }
tr.gap td { text-align: center; font-style: italic; color: var(--muted); }
.bad { color: var(--bad); font-weight: bold; } .ok { color: var(--ok); font-weight: bold; }
.warn { color: var(--warn); font-weight: bold; }
.verdict { border-left: 4px solid var(--ok); padding: .4rem .8rem; background: var(--band); }
.verdict.fail { border-left-color: var(--bad); } .verdict p { margin: .2rem 0; }
pre { background: var(--band); padding: .6rem .8rem; overflow-x: auto; font-size: .8rem; line-height: 1.35; }
.plot, .dag, .heatmap { margin: .5rem 0; }
.sgd-svg { width: 100%; height: auto; display: block; color: var(--fg); }
.plot { display: grid; grid-template-columns: repeat(auto-fit, minmax(17rem, 1fr)); gap: .75rem; }
.dag .sgd-svg { max-width: 40rem; color: var(--fg); } .heatmap .sgd-svg { width: auto; max-width: 100%; }
.scroll { overflow-x: auto; max-width: 100%; border: 1px solid var(--rule); }
.scroll > table { margin: 0; }
a { color: var(--accent); }
.steps .s1, .steps tr.hand > :first-child, .steps .s2, .steps tr.hand > :nth-child(2), .steps .s3,
.steps tr.hand > :nth-child(3), .steps tr.torch > :first-child { position: sticky; background: var(--bg); z-index: 1; }
.steps .s1, .steps tr.hand > :first-child { left: 0; min-width: 5.5rem; }
.steps .s2, .steps tr.hand > :nth-child(2) { left: 5.5rem; min-width: 3rem; }
.steps .s3, .steps tr.hand > :nth-child(3), .steps tr.torch > :first-child { left: 8.5rem; min-width: 4.5rem;
  box-shadow: 1px 0 0 var(--rule); }
.steps tr.hand > :nth-child(3), .steps tr.torch > :first-child { text-align: left; }
.steps thead th { background: var(--bg); }
.steps thead .s1, .steps thead .s2, .steps thead .s3 { z-index: 2; }
tr.mark > :first-child { box-shadow: inset 4px 0 0 var(--bad); }
tr.x > td { text-align: left; font-family: inherit; padding: 0 .6rem .2rem; }
tr.x details { position: sticky; left: .6rem; width: min(72rem, calc(100vw - 4rem)); }
summary { cursor: pointer; color: var(--accent); font-size: .85rem; }
details[open] > summary { margin-bottom: .3rem; }
details.marked > summary { color: var(--bad); font-weight: bold; }
.ex table { margin: .4rem 0 .8rem; } .ex caption { font-weight: bold; color: var(--fg); white-space: nowrap; }
table.eqs th, table.eqs td { border-bottom: none; }
table.eqs th[scope=row] { white-space: nowrap; text-align: left; color: var(--muted); font-weight: normal; }
table.eqs td { border-bottom: none; vertical-align: middle; }
table.eqs td.m { text-align: left; font-family: inherit; }
table.eqs td.tv { text-align: left; font-size: .85rem; color: var(--muted); font-family: inherit; min-width: 12rem; }
.ex { overflow-x: auto; }
math { font-size: 1.15rem; font-family: math, "STIX Two Math", "Latin Modern Math", "Cambria Math", serif; }
math[display=block] { margin: .3rem 0; }
.config-rest summary { margin-top: .4rem; }
@media print {
  :root { --bg: #fff; --fg: #000; --muted: #444; --band: #fff; --rule: #999; }
  body { font-size: 10pt; } main { max-width: none; padding: 0; }
  .noprint { display: none; }
  pre { white-space: pre-wrap; border: 1px solid #999; }
  section, figure, table.eqs, table.fwd { break-inside: avoid; } h2 { break-after: avoid; }
  .scroll, .ex { overflow: visible; border: none; }
  .steps th, .steps td { position: static !important; }
  tr.x details { position: static; width: auto; }
  summary { color: #000; } details:not([open]) { display: none; }
  tr.x:has(details:not([open])) { display: none; }
}
""".strip()

#: no source outside the page: inline styles, data: images; scripts, fonts, frames and fetches none
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def cell(value: float) -> str:
    """A number as the page writes it: 6 significant digits, inf/-inf/nan spelled out."""
    return num(value)


def page(title: str, body: str) -> str:
    """The whole document around ``body``."""
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="sgdtrace {esc(__version__)}">\n'
        f"<title>{esc(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n<main>\n"
        f"{body}\n</main>\n</body>\n</html>\n"
    )


# ------------------------------------------------------------------ pieces of a run


def title_of(trace) -> str:
    from sgdtrace.views.table import _title

    return _title(trace).replace("\n", " · ")


def config_html(trace, split: bool = False) -> str:
    """The configuration as a two-column table (the JSON contract's ``config`` keys). ``split``: the
    options this run uses first, the rest (another optimizer's, options not set) in a collapsed section."""
    from sgdtrace.views.export import _config_json

    cfg = _config_json(trace)
    data = cfg.pop("data")
    rows = [("data", describe_data(data))] + [(k, _value(v)) for k, v in cfg.items()]
    rest = []
    if split:
        unused = set(unused_options(trace.config, cfg))
        rest = [r for r in rows if r[0] in unused]
        rows = [r for r in rows if r[0] not in unused]
    head = '<thead><tr><th scope="col" class="l">option</th><th scope="col" class="l">value</th></tr></thead>'

    def body(rs):
        return "".join(f'<tr><th scope="row">{esc(k)}</th><td class="l">{esc(v)}</td></tr>' for k, v in rs)

    caption = "Configuration: the options this run uses" if split else "Configuration"
    out = (
        f'<table class="config"><caption>{caption} (as <code>--format json</code> writes them)</caption>'
        f"{head}<tbody>{body(rows)}</tbody></table>"
    )
    if rest:
        out += (
            f'<details class="config-rest"><summary>{len(rest)} more options, not used by this run</summary>'
            f'<table class="config-rest"><caption>Options that do not apply to this run (their values as '
            f"<code>--format json</code> writes them)</caption>{head}<tbody>{body(rest)}</tbody></table></details>"
        )
    return out


def unused_options(config, keys) -> list[str]:
    """The configuration's keys that do not apply to this run: another optimizer's options, and
    options not set (no seed, no scheduler, no engine, no features, one process)."""
    from sgdtrace.config import OPTIMIZER_OPTIONS

    mine = set(OPTIMIZER_OPTIONS[config.optimizer])
    others = {o for opts in OPTIMIZER_OPTIONS.values() for o in opts} - mine
    out = []
    for k in keys:
        v = keys[k] if isinstance(keys, dict) else None
        unset = k in ("seed", "scheduler", "engine", "features", "foreach", "fused", "eps") and v is None
        if k in others or unset or (k == "world_size" and v == 1):
            out.append(k)
    return out


def _value(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):  # the initial values by parameter
        return ", ".join(f"{k} {_value(x)}" for k, x in v.items())
    return str(v)


def steps_html(trace, rows: int | None = None, every: int = 1, report=None) -> str:
    """The per-batch table as the terminal shows it: hand and torch rows per step, long runs elided.

    With ``report`` (:class:`~sgdtrace.teaching.report.RunReport`): the report's rows, each followed
    by its explanation in a ``<details>`` (the first divergent step open, the marked steps marked)."""
    from sgdtrace.views.elements import Column, columns, step_ok, step_ulp
    from sgdtrace.views.table import _order, shown_steps, table_fields

    fields = table_fields(trace)
    article = _order(trace)
    fs = [f for f in article if f in fields or f == "lr"] + [f for f in fields if f not in article]
    # a field of many elements: a column per element, or its norm (sgdtrace.views.elements)
    order = [c for f in fs for c in (columns(trace, f) if f in fields else [Column(f, (), LABELS.get(f, f))])]
    multi = trace.config.epochs > 1
    v = trace.verdict
    keep = tuple(d.step - 1 for d in (v.first_divergent_step, v.diverged_training) if d)
    blew = v.diverged_training.step - 1 if v.diverged_training else None
    shown = report.shown if report is not None else shown_steps(trace.n_steps, rows, every, keep)
    ok_all = step_ok(trace, fields)
    lr = f"{trace.config.lr:g}"
    heads = ["epoch:batch" if multi else "batch", "n", "engine"] + [c.label for c in order] + ["ulp"]
    sticky = {0: ' class="s1"', 1: ' class="s2"', 2: ' class="l s3"'}
    thead = "".join(f'<th scope="col"{sticky.get(i, "")}>{esc(h)}</th>' for i, h in enumerate(heads))
    out = []
    for i, k in enumerate(shown):
        if k is None:
            hidden = shown[i + 1] - shown[i - 1] - 1
            out.append(
                f'<tr class="gap"><td colspan="{len(heads)}">⋮ {hidden} steps not shown '
                f"(all of them are in the CSV below)</td></tr>"
            )
            continue
        step = f"{trace.epoch[k]}:{trace.batch[k]}" if multi else str(trace.batch[k])
        worst, judged, finite = step_ulp(trace, fields, k)
        if not ok_all[k]:
            mark = f'<span class="bad">✗ {worst}</span>'
        elif finite < judged:
            mark = '<span class="warn">n/f</span>'
        else:
            mark = f'<span class="ok">{worst}</span>' if worst == 0 else str(worst)
        if k == blew:
            mark = '<span class="warn" title="training blew up here">⚠</span> ' + mark

        def cells(values: dict, lr_cell: str = "", side: str = "") -> str:
            tds = []
            lost = (getattr(trace, "stalled", None) or {}).get(side, {})  # the stall: update lost to rounding
            for c in order:
                if c.field == "lr":
                    tds.append(f"<td>{lr_cell}</td>")
                else:
                    bad = "" if c.ok(trace, k) else ' class="bad"'
                    flags = lost.get(f"stalled_{c.field}")
                    stalled = flags is not None and bool((flags[k][c.index] if c.index else flags[k]).any())
                    stall = '<span class="warn" title="update lost to rounding">=</span>' if stalled else ""
                    tds.append(f"<td{bad}>{cell(c.value(values, k))}{stall}</td>")
            return "".join(tds)

        marked = report is not None and k in report.marked
        out.append(
            f'<tr class="hand{" mark" if marked else ""}"><th scope="row" rowspan="2">{step}</th>'
            f'<td rowspan="2">{trace.n[k]}</td><td>{esc(trace.hand)}</td>{cells(trace.manual, lr, "manual")}'
            f'<td rowspan="2">{mark}</td></tr>'
        )
        out.append(f'<tr class="torch"><td>torch</td>{cells(trace.torch, "", "torch")}</tr>')
        if report is not None:
            out.append(f'<tr class="x"><td colspan="{len(heads)}">{_row_details(report, k, multi)}</td></tr>')
    caption = (
        f"{esc(title_of(trace))}. Per batch: the values worked by hand and torch's beneath; "
        "dl/dw, dl/db and the loss on the batch at the parameters it started with, w and b after "
        "its update; ulp: the step's largest distance in units in the last place (0: bit-identical)."
    )
    return (
        f'<div class="scroll"><table class="steps"><caption>{caption}</caption><thead><tr>{thead}</tr></thead>'
        f"<tbody>{''.join(out)}</tbody></table></div>"
    )


def summary_html(trace, rows: int | None = None, every: int = 1) -> str:
    from sgdtrace.views.table import shown_steps, summary_text

    return f'<p class="muted">{esc(summary_text(trace, shown_steps(trace.n_steps, rows, every)).plain)}</p>'


#: the largest CSV a page holds (bytes): a longer run's page names ``--format csv`` instead
CSV_BUDGET = 256_000


def csv_link(trace, most: int | None = None) -> str:
    """A download link holding every step as CSV (``--format csv``), as a ``data:`` URI; past
    ``most`` bytes of CSV, the command that writes it instead."""
    from sgdtrace.views.export import trace_to_csv

    text = trace_to_csv(trace)
    if most is not None and len(text) > most:
        return (
            f'<p class="muted">Every step as CSV: <code>sgdtrace run … --format csv</code> with this run\'s options '
            f"({trace.n_steps} rows, {len(text):,} bytes: more than a page holds).</p>"
        )
    uri = "data:text/csv;charset=utf-8," + percent_encode(text)
    return (
        f'<p class="noprint"><a download="sgdtrace-steps.csv" href="{uri}">Download every step as CSV</a> '
        f'<span class="muted">({trace.n_steps} rows, {len(text):,} bytes; the columns of '
        f"<code>--format csv</code>)</span></p>"
    )


_UNSAFE = re.compile(r"[^A-Za-z0-9,._+:-]+")


def percent_encode(text: str) -> str:
    """``urllib.parse.quote(text, safe=",.-_+:")``, several times faster on CSV (few characters need it)."""
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), text)


def verdict_html(trace) -> str:
    """The verdict lines, as the terminal prints them."""
    from sgdtrace.views.verdict import plain

    v = trace.verdict
    lines = plain(trace).split("\n")
    paras = []
    for line in lines:
        cls = ""
        if line.startswith("✓"):
            cls = ' class="ok"'
        elif line.startswith("✗"):
            cls = ' class="bad"'
        elif line.startswith("⚠"):
            cls = ' class="warn"'
        paras.append(f"<p{cls}>{esc(line.strip())}</p>")
    fail = "" if v.ok else " fail"
    return f'<div class="verdict{fail}" role="status">{"".join(paras)}</div>'


def trace_fragment(trace, rows: int | None = None, every: int = 1) -> str:
    """What a notebook shows for a trace: the table, the summary line and the verdict."""
    return (
        f'<div class="sgdtrace"><style>{_scoped_css()}</style>{steps_html(trace, rows, every)}'
        f"{summary_html(trace, rows, every)}{verdict_html(trace)}</div>"
    )


def _scoped_css() -> str:
    """The few rules a notebook fragment needs (the notebook's own theme does the rest)."""
    return (
        ".sgdtrace td{font-family:ui-monospace,monospace;text-align:right}"
        ".sgdtrace caption{text-align:left;caption-side:top;opacity:.8}"
        ".sgdtrace .bad{color:#c62828;font-weight:bold}.sgdtrace .ok{color:#1a7f37;font-weight:bold}"
        ".sgdtrace .warn{color:#9a6700;font-weight:bold}.sgdtrace tr.torch td{opacity:.75}"
        ".sgdtrace .verdict p{margin:.2em 0}.sgdtrace pre{font-size:.8em}"
    )


# ------------------------------------------------------------------ explain and graph


def _rich_text(renderable: Any, width: int = 110) -> str:
    """A rich renderable as plain text, trailing spaces stripped. ``force_jupyter=False``: inside a
    Jupyter kernel rich would otherwise display the renderable itself and write nothing here."""
    import io

    from rich.console import Console

    from sgdtrace.views.fmt import strip_trailing

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, soft_wrap=False, force_jupyter=False).print(renderable)
    return strip_trailing(buf.getvalue())


def explain_html(ex) -> str:
    """One batch explained: the results beside torch's, then every equation with its numbers."""
    from sgdtrace.views.explain import explain_json, explain_view

    doc = explain_json(ex)
    rows = "".join(
        f'<tr><th scope="row">{esc(LABELS.get(f, f))}</th><td>{_cells(doc["manual"][f])}</td>'
        f"<td>{_cells(doc['torch'][f])}</td><td>{doc['ulp'][f]}</td></tr>"
        for f in doc["manual"]
    )
    start = ", ".join(f"{p} = {_cells(v)}" for p, v in doc["start"].items())
    table = (
        f'<table class="explain"><caption>Epoch {ex.epoch}, batch {ex.batch} (step {ex.step + 1}): '
        f"samples {esc(', '.join(map(str, ex.indices.tolist()[:12])))}{' …' if ex.n > 12 else ''}, "
        f"starting from {start}</caption>"
        '<thead><tr><th scope="col" class="l">value</th><th scope="col">by hand</th>'
        f'<th scope="col">torch</th><th scope="col">ulp</th></tr></thead><tbody>{rows}</tbody></table>'
    )
    text = _rich_text(explain_view(ex))
    return f'{table}<pre aria-label="Batch {ex.batch} worked equation by equation">{esc(text)}</pre>'


def _cells(value) -> str:
    """A value of the explain page: a number (:func:`cell`), or a list of them."""
    if isinstance(value, list):
        return "(" + ", ".join(_cells(v) for v in value) + ")"
    return cell(value)


def graph_html(g, ident: str = "dag") -> str:
    """The article's DAG drawn as SVG, and torch's autograd graph as a table mapped onto it."""
    from sgdtrace.views.graph import _grad_text
    from sgdtrace.views.svg import dag_svg

    own = getattr(getattr(getattr(g.trace, "model", None), "module", None), "graph", None)
    if own is not None:  # a model's own DAG: its loss, and the DAG as a list (the drawing is the linear model's)
        crit = own(g.trace.config)["criterion"]
    else:
        crit = "nn.MSELoss()" if g.loss == "mse" else "((out - y) ** 2).mean()"
    rows = []
    for node, u in zip(g.nodes, g.ulps):
        name = node.name + (
            f" ({'weight' if node.maps_to == ('w',) else 'bias'})" if node.name == "AccumulateGrad" else ""
        )
        target = node.maps_to[0] if node.maps_to else None
        manual = g.manual_grads.get(target) if target else None
        indent = f' style="padding-left:{0.6 + 1.2 * node.depth:.1f}rem"'
        rows.append(
            f'<tr><th scope="row"{indent}>{"└ " if node.depth else ""}{esc(name)}</th>'
            f'<td class="l">{esc(", ".join(node.maps_to) or "—")}</td><td>{esc(_grad_text(node.grad))}</td>'
            f"<td>{esc(_grad_text(manual))}</td><td>{'—' if u is None else u}</td></tr>"
        )
    mark = ('<p class="ok">✓ parity: ' if g.structure_ok else '<p class="bad">✗ no parity: ') + esc(g.structure_note)
    if own is not None:
        items = "".join(
            f"<li><code>{esc(n.name)}</code>: {esc(n.forward)}; backward {esc(n.backward)}</li>" for n in g.manual_dag
        )
        figure = (
            f'<figure class="dag"><ul>{items}</ul>'
            '<figcaption class="muted">The DAG in vector form.</figcaption></figure>'
        )
    else:
        which = "The DAG in vector form" if g.manual_dag[5].forward != "a = w·x" else "The article's DAG"
        figure = (
            f'<figure class="dag">{dag_svg(ident, g.manual_dag)}<figcaption class="muted">{which}, drawn here '
            "(no Graphviz needed): arrows go forward, each node's backward function beside it.</figcaption>"
            f"</figure>"
        )
    return figure + (
        f'<div class="scroll"><table class="torch-graph"><caption>torch\'s autograd graph, walked from '
        f"<code>loss.grad_fn</code> (loss = <code>{esc(crit)}</code>), epoch {g.epoch} batch {g.batch}: "
        "each node, the manual node(s) it computes, and the gradient flowing into it in each engine"
        '</caption><thead><tr><th scope="col" class="l">torch node</th><th scope="col" class="l">manual</th>'
        '<th scope="col">grad in (torch)</th><th scope="col">grad in (manual)</th><th scope="col">ulp</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>{mark}</p>"
    )


# ------------------------------------------------------------------ pages


def _where(trace, k: int) -> tuple[int, int]:
    e, j = divmod(k, trace.plan.steps_per_epoch)
    return j + 1, e + 1


#: the most bytes a run's page takes: past it, shown batches open to the command that explains them
PAGE_BUDGET = 980_000


def _hole(k: int) -> str:
    return f"\x00ex{k}\x00"


def _row_details(report, k: int, multi: bool) -> str:
    """A shown row's explanation, one click away: the first divergent step open, a marked step marked. The
    body is a placeholder that :func:`run_page` fills once it knows what fits in the page."""
    trace = report.trace
    batch, epoch = _where(trace, k)
    name = f"{epoch}:{batch}" if multi else f"Batch {batch}"
    mark = report.marked.get(k)
    opened = " open" if k == report.opened else ""
    cls = ' class="marked"' if mark else ""
    summary = f"{name} explained" + (f": {mark}" if mark else "")
    return f"<details{cls}{opened}><summary>{esc(summary)}</summary>{_hole(k)}</details>"


def _unexplained(report, k: int) -> str:
    batch, epoch = _where(report.trace, k)
    return f"<code>{esc(explain_command(report.trace, batch, epoch))}</code>"


def _fill(report, text: str) -> str:
    """Each shown row's explanation in its place: the focus step's, the marked steps', then the
    others in order, while the page stays within :data:`PAGE_BUDGET`; the rest: the command."""
    holes = [k for k in report.shown if k is not None and _hole(k) in text]
    order = [report.focus] + [k for k in report.marked if k != report.focus]
    order += [k for k in holes if k not in order]
    size = len(text.encode()) + sum(len(_unexplained(report, k).encode()) for k in holes)
    body = {}
    for k in order:
        ex = report.explanations.get(k)
        if ex is None or k not in holes:
            continue
        full = _explained(ex)
        extra = len(full.encode()) - len(_unexplained(report, k).encode())
        if size + extra <= PAGE_BUDGET or k == report.focus:
            body[k] = full
            size += extra
    return re.sub(
        "\x00ex(\\d+)\x00", lambda m: body.get(int(m.group(1))) or _unexplained(report, int(m.group(1))), text
    )


def _explained(ex) -> str:
    """A batch's explanation on the page: typeset in MathML where :func:`~sgdtrace.views.mathml.typeset`
    says so, else the values beside torch's and the equations as ``sgdtrace explain`` writes them."""
    from sgdtrace.views.mathml import explanation_html, typeset

    return explanation_html(ex) if typeset(ex) else explain_html(ex)


def explain_command(trace, batch: int, epoch: int) -> str:
    cmd = f"sgdtrace explain --batch {batch}"
    return cmd + (f" --epoch {epoch}" if trace.config.epochs > 1 else "")


def run_page(report) -> str:
    """``sgdtrace run --format html``: the whole report of one run, computed by
    :func:`sgdtrace.teaching.report.build_report`: the verdict, the plots, the batch that matters
    explained, every shown batch one click from its explanation, the configuration, the graph."""
    trace = report.trace
    rows, every = report.rows, report.every
    title = (
        "sgdtrace: "
        + ("agree" if trace.verdict.ok else "diverge")
        + (", training blew up" if trace.verdict.diverged_training else "")
    )
    kb, ke = _where(trace, report.focus)
    ex = report.explanations[report.focus]
    body = [
        f'<header><h1>{esc(title)}</h1><p class="muted">{esc(title_of(trace))} · sgdtrace '
        f"{esc(__version__)}</p></header>",
        f'<section aria-labelledby="h-verdict"><h2 id="h-verdict">Verdict</h2>{verdict_html(trace)}</section>',
        f'<section aria-labelledby="h-plots"><h2 id="h-plots">Plots</h2>{_plots(trace)}</section>',
        _weights(trace, (report.focus, trace.n_steps - 1)),
        f'<section aria-labelledby="h-explain"><h2 id="h-explain">Batch {kb}'
        f"{f' of epoch {ke}' if trace.config.epochs > 1 else ''} explained ({esc(report.why)})</h2>"
        f"{_explained(ex)}"
        '<p class="muted">Every batch of the table below opens to its own explanation (a long run\'s page '
        "works out as many as keep it under 1 MB, the marked ones first; a row past them opens to the "
        "<code>sgdtrace explain</code> command that works its batch out).</p></section>",
        f'<section aria-labelledby="h-steps"><h2 id="h-steps">Every batch, by hand and in torch</h2>'
        f"{steps_html(trace, rows, every, report=report)}{summary_html(trace, rows, every)}"
        f"{csv_link(trace, CSV_BUDGET)}</section>",
        f'<section aria-labelledby="h-config"><h2 id="h-config">Configuration</h2>{config_html(trace, True)}</section>',
    ]
    if report.graph is not None:
        body.append(
            f'<section aria-labelledby="h-graph"><h2 id="h-graph">The graph beside torch\'s</h2>'
            f"{graph_html(report.graph)}</section>"
        )
    return _fill(report, page(title, "\n".join(body)))


def _plots(trace, ident: str = "plots") -> str:
    from sgdtrace.views.svg import plots_svg

    return (
        f'<figure class="plot">{plots_svg(trace, ident)}</figure>'
        '<p class="muted">The same panels as <code>sgdtrace plot</code>, drawn as SVG; every value is in '
        "the CSV below.</p>"
    )


def _weights(trace, steps) -> str:
    """The network's weights as heatmaps (:func:`sgdtrace.views.svg.heatmaps_svg`), at the focus
    step and the last: by hand, in torch, and |Δ| / allowance; empty for a model without a matrix."""
    from sgdtrace.views.svg import HEAT_CAP, heatmaps_svg

    maps = heatmaps_svg(trace, steps)
    if not maps:
        return ""
    figures = "".join(
        f'<figure class="heatmap">{svg}<figcaption class="muted">{esc(caption)}</figcaption></figure>'
        for svg, caption in maps
    )
    return (
        '<section aria-labelledby="h-weights"><h2 id="h-weights">Weights, by hand and in torch</h2>'
        f"{figures}"
        '<p class="muted">Each matrix and vector after the step explained above and after the last step: '
        "the hand side's values and torch's on one scale (blue positive, orange negative), then each "
        "entry's |hand − torch| as a share of the allowance its step grants (blank: equal; full red: 1 "
        f"or more, beyond). At most {HEAT_CAP} × {HEAT_CAP} entries are drawn.</p></section>"
    )


def _field_rows(label: str, div: dict, epoch, batch) -> str:
    from sgdtrace.verdict import FieldSummary

    out = []
    for i, (f, d) in enumerate(div.items()):
        s = FieldSummary.of(d)
        mark = (
            '<span class="ok">ok</span>'
            if s.first_bad is None
            else f'<span class="bad">✗ from {epoch[s.first_bad]}:{batch[s.first_bad]}</span>'
        )
        head = f'<th scope="rowgroup" rowspan="{len(div)}">{esc(label)}</th>' if i == 0 else ""
        out.append(
            f'<tr>{head}<td class="l">{esc(LABELS.get(f, f))}</td><td>{sci(s.max_abs)}</td>'
            f"<td>{sci(s.max_rel)}</td><td>{s.max_ulp}</td><td>{percent(s.max_tol_ratio)}</td>"
            f'<td class="l">{mark}</td></tr>'
        )
    return "".join(out)


def _field_table(caption: str, rows: str) -> str:
    heads = "".join(
        f'<th scope="col"{" class=l" if h in ("run", "field", "") else ""}>{h}</th>'
        for h in ("run", "field", "max |Δ|", "max rel", "max ulp", "of tol", "")
    )
    return (
        f'<div class="scroll"><table class="compare"><caption>{esc(caption)}</caption><thead><tr>{heads}'
        f"</tr></thead><tbody>{rows}</tbody></table></div>"
    )


def compare_fragment(result) -> str:
    """The compare view: per run and field the largest distances; torch vs torch across devices."""
    parts = [
        _field_table(
            "manual vs torch, per run",
            "".join(_field_rows(f"{t.device} {t.config.dtype}", t.divergence, t.epoch, t.batch) for t in result.runs),
        )
    ]
    if result.cross:
        base = result.runs[0]
        parts.append(
            _field_table(
                "torch on one device vs torch on another",
                "".join(
                    _field_rows(f"{c.a} vs {c.b} {c.dtype}", c.divergence, base.epoch, base.batch) for c in result.cross
                ),
            )
        )
    ok = result.ok
    parts.append(
        f'<div class="verdict{"" if ok else " fail"}" role="status"><p class="{"ok" if ok else "bad"}">'
        f"{'✓ all agree' if ok else '✗ divergence found (see ✗ above)'}</p></div>"
    )
    return "".join(parts)


def compare_page(result) -> str:
    """``sgdtrace compare --format html``: the compare tables, then each run's verdict and steps."""
    first = result.runs[0]
    body = [
        f"<header><h1>sgdtrace compare: {'all agree' if result.ok else 'divergence found'}</h1>"
        f'<p class="muted">{esc(title_of(first))}</p></header>',
        f'<section aria-labelledby="h-compare"><h2 id="h-compare">Manual vs torch, and device vs device</h2>'
        f"{compare_fragment(result)}</section>",
        f'<section aria-labelledby="h-config"><h2 id="h-config">Configuration</h2>{config_html(first)}</section>',
    ]
    for i, t in enumerate(result.runs):
        body.append(
            f'<section aria-labelledby="h-run{i}"><h2 id="h-run{i}">{esc(t.device)} {esc(t.config.dtype)}'
            f"</h2>{verdict_html(t)}{steps_html(t)}{summary_html(t)}{csv_link(t)}</section>"
        )
    return page("sgdtrace compare", "\n".join(body))


def check_fragment(result) -> str:
    from sgdtrace.views.check import HEAD, _row

    rows = []
    for r in result.rows:
        cells = _row(r)
        cls = "ok" if r.trace.verdict.ok else "bad"
        rows.append(
            f'<tr><th scope="row">{esc(cells[0])}</th>'
            + "".join(f"<td{' class=l' if j < 2 else ''}>{esc(c)}</td>" for j, c in enumerate(cells[1:-1]))
            + f'<td class="l"><span class="{cls}">{esc(cells[-1])}</span></td></tr>'
        )
    heads = "".join(
        f'<th scope="col"{"" if h in ("steps", "max ulp", "of tol") else " class=l"}>{esc(h)}</th>' for h in HEAD
    )
    failed = sum(1 for r in result.rows if not r.trace.verdict.ok)
    summary = f"✓ {len(result.rows)} runs agree" if result.ok else f"✗ {failed} of {len(result.rows)} runs diverge"
    return (
        f'<div class="scroll"><table class="check"><caption>manual engine vs torch on every config and device'
        f"</caption><thead><tr>{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        f'<div class="verdict{"" if result.ok else " fail"}" role="status"><p class="{"ok" if result.ok else "bad"}">'
        f"{esc(summary)}</p></div>"
    )


def check_page(result) -> str:
    """``sgdtrace check --format html``: the gate's table, then each failing run's verdict."""
    body = [
        f"<header><h1>sgdtrace check: {'pass' if result.ok else 'fail'}</h1></header>",
        f'<section aria-labelledby="h-check"><h2 id="h-check">Every config on every device</h2>'
        f"{check_fragment(result)}</section>",
    ]
    for i, r in enumerate(result.rows):
        if not r.trace.verdict.ok:
            body.append(
                f'<section aria-labelledby="h-fail{i}"><h2 id="h-fail{i}">{esc(r.config)} on '
                f"{esc(r.trace.device)}</h2>{verdict_html(r.trace)}{steps_html(r.trace)}</section>"
            )
    return page("sgdtrace check", "\n".join(body))


__all__ = [
    "run_page",
    "compare_page",
    "check_page",
    "trace_fragment",
    "compare_fragment",
    "check_fragment",
    "explain_html",
    "graph_html",
    "steps_html",
    "verdict_html",
    "config_html",
    "cell",
    "page",
    "CSS",
]
