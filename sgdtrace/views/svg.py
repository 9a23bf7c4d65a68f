"""Inline SVG for the HTML page and the notebook, drawn here: the ``plot`` command's three panels
(loss per step, w and b per step, the (w, b) path over the loss's contour ellipses) and the
article's DAG (laid out by hand, so no Graphviz ``dot`` binary is needed).

No matplotlib: a page builds in milliseconds and works without the ``plot`` extra. Colours come
from CSS variables with fallbacks and text uses ``currentColor``, so the dark theme applies;
every SVG carries ``role="img"``, a ``<title>`` and a ``<desc>`` (what a screen reader reads).
"""

from __future__ import annotations

import html

from sgdtrace.views.fmt import num


def _accessible(svg: str, ident: str, title: str, desc: str) -> str:
    """``svg`` from its ``<svg`` tag on, with role, labels, a title and a description added."""
    svg = svg[svg.index("<svg") :]
    head_end = svg.index(">") + 1
    head = svg[:head_end]
    head = head[:-1] + (f' role="img" aria-labelledby="{ident}-title {ident}-desc" class="sgd-svg">')
    return (
        head + f'<title id="{ident}-title">{html.escape(title)}</title>'
        f'<desc id="{ident}-desc">{html.escape(desc)}</desc>' + svg[head_end:]
    )


def plots_desc(trace) -> str:
    """What the plots show, in words (for readers who cannot see them)."""
    man, cfg = trace.manual, trace.config
    loss = man["loss"]
    if not trace.n_steps:
        return "No steps: nothing to plot."
    if not _scalar(trace):
        return (
            f"Two panels over {trace.n_steps} steps. Left: the batch loss per step, by hand and in torch, "
            f"from {num(loss[0])} at step 1 to {num(loss[-1])} at step {trace.n_steps}. Right: each weight "
            "and the bias after each step, against their true values where the data has them (no loss "
            "surface: the parameters span more than a plane)."
        )
    return (
        f"Three panels over {trace.n_steps} steps. Left: the batch loss per step, by hand and in torch, "
        f"from {num(loss[0])} at step 1 to {num(loss[-1])} at step {trace.n_steps}. Middle: w and b after "
        f"each step, w from {num(cfg.init_w)} to {num(man['w'][-1])}, b from {num(cfg.init_b)} to "
        f"{num(man['b'][-1])}. Right: the path of (w, b) over contour lines of the loss on the whole data "
        f"set, with the least-squares optimum starred."
    )


# ------------------------------------------------------------------ plots, drawn here

#: one panel's drawing size and the plot area's margins (left, right, top, bottom)
PANEL_W, PANEL_H = 400, 290
MARGIN = (58, 22, 30, 40)
#: a polyline keeps at most about this many points (long runs: first, min and max per bucket)
MAX_POINTS = 1500
COLOURS = {
    "hand": "var(--c-hand, #d62728)",
    "torch": "var(--fg, #222)",
    "w": "var(--c-w, #1f77b4)",
    "b": "var(--c-b, #e07b00)",
    "path": "var(--c-hand, #d62728)",
    "contour": "var(--c-contour, #7b8fa6)",
}


def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    return f"{v:.3g}" if 1e-3 <= a < 1e5 else f"{v:.1e}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (steps of 1, 2, 2.5 or 5 times a power of 10)."""
    import math

    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = mag
    for m in (1, 2, 2.5, 5, 10):
        step = m * mag
        if (hi - lo) / step <= count:
            break
    first = math.floor(lo / step) * step
    ticks, k = [], 0
    while True:
        t = first + k * step
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        if t >= hi - step * 1e-9:
            break
        k += 1
    return ticks


class _Scale:
    """A linear (or base-10 log) map from data to the drawing, over the ticks' span."""

    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False):
        import math

        self.log = log
        f = math.log10 if log else (lambda v: v)
        if log:  # whole decades, at most about six labelled
            e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
            stride = max(1, math.ceil((e1 - e0) / 6))
            e1 = e0 + stride * math.ceil((e1 - e0) / stride)
            self.ticks = [10.0**e for e in range(e0, e1 + 1, stride)]
        else:
            self.ticks = nice_ticks(lo, hi)
        self.lo, self.hi = f(self.ticks[0]), f(self.ticks[-1])
        if self.hi == self.lo:
            self.hi = self.lo + 1
        self.f, self.a, self.b = f, a, b

    def __call__(self, v: float) -> float:
        return self.a + (self.f(v) - self.lo) / (self.hi - self.lo) * (self.b - self.a)


def _decimate(xs, ys):
    """At most about MAX_POINTS points, keeping each bucket's first, lowest and highest (the envelope)."""
    import numpy as np

    n = len(xs)
    if n <= MAX_POINTS:
        return xs, ys
    buckets = MAX_POINTS // 3
    edges = np.linspace(0, n, buckets + 1).astype(int)
    keep = set()
    for lo, hi in zip(edges[:-1], edges[1:]):
        seg = ys[lo:hi]
        fin = np.isfinite(seg)
        keep.add(int(lo))
        if fin.any():
            idx = np.flatnonzero(fin)
            keep.add(int(lo + idx[np.argmin(seg[fin])]))
            keep.add(int(lo + idx[np.argmax(seg[fin])]))
    keep.add(n - 1)
    order = np.array(sorted(keep))
    return xs[order], ys[order]


def _polyline(xs, ys, sx, sy, style: str) -> str:
    """One or more polylines (broken where a value is inf or nan)."""
    import math

    runs, cur = [], []
    for x, y in zip(xs, ys):
        if math.isfinite(x) and math.isfinite(y):
            cur.append(f"{sx(x):.1f},{sy(y):.1f}")
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return "".join(f'<polyline points="{" ".join(r)}" fill="none" style="{style}"/>' for r in runs)


def _axes(sx: _Scale, sy: _Scale, xlabel: str, ylabel: str, title: str) -> list[str]:
    left, right, top, bottom = MARGIN
    x0, x1, y0, y1 = left, PANEL_W - right, PANEL_H - bottom, top
    out = [
        f'<text x="{(x0 + x1) / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold" '
        f'fill="currentColor">{html.escape(title)}</text>',
        f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="none" stroke="currentColor" '
        'stroke-width="1"/>',
    ]
    for t in sx.ticks:
        x = sx(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 4}" stroke="currentColor"/>'
            f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle" font-size="11" '
            f'fill="currentColor">{_fmt_tick(t)}</text>'
        )
    for t in sy.ticks:
        y = sy(t)
        out.append(
            f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x0}" y2="{y:.1f}" stroke="currentColor"/>'
            f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" style="stroke: var(--rule, #ddd)" '
            'stroke-width="0.5"/>'
            f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="currentColor">{_fmt_tick(t)}</text>'
        )
    out.append(
        f'<text x="{(x0 + x1) / 2}" y="{PANEL_H - 6}" text-anchor="middle" font-size="12" '
        f'fill="currentColor">{html.escape(xlabel)}</text>'
    )
    if ylabel:
        out.append(
            f'<text transform="translate(14 {(y0 + y1) / 2}) rotate(-90)" text-anchor="middle" '
            f'font-size="12" fill="currentColor">{html.escape(ylabel)}</text>'
        )
    return out


def _legend(items: list[tuple[str, str]]) -> str:
    left, right, top, _ = MARGIN
    x, y = PANEL_W - right - 118, top + 8
    rows = [
        f'<rect x="{x - 6}" y="{y - 6}" width="120" height="{16 * len(items) + 4}" rx="3" '
        'style="fill: var(--bg, #fff); stroke: var(--rule, #ccc)" fill-opacity="0.85"/>'
    ]
    for i, (label, style) in enumerate(items):
        yy = y + 16 * i + 4
        rows.append(
            f'<line x1="{x}" y1="{yy}" x2="{x + 22}" y2="{yy}" style="{style}"/>'
            f'<text x="{x + 28}" y="{yy + 4}" font-size="11" fill="currentColor">{html.escape(label)}</text>'
        )
    return "".join(rows)


def _panel(ident: str, title: str, desc: str, body: list[str]) -> str:
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {PANEL_W} {PANEL_H}" width="{PANEL_W}" '
        f'height="{PANEL_H}" font-family="system-ui, sans-serif">' + "".join(body) + "</svg>"
    )
    return _accessible(svg, ident, title, desc)


def _range(*arrays):
    import numpy as np

    vals = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return 0.0, 1.0
    return float(vals.min()), float(vals.max())


def loss_panel(trace, ident: str) -> str:
    import numpy as np

    steps = np.arange(1, trace.n_steps + 1, dtype=np.float64)
    hand = trace.manual["loss"].astype(np.float64)
    torch = trace.torch["loss"].astype(np.float64)
    lo, hi = _range(hand, torch)
    left, right, top, bottom = MARGIN
    log = lo > 0 and hi / lo >= 100  # a log axis only when the loss spans two decades or more
    sx = _Scale(1.0, max(float(trace.n_steps), 1.0), left, PANEL_W - right)
    sy = _Scale(lo, hi, PANEL_H - bottom, top, log=log)
    body = _axes(sx, sy, "step", "loss" + (" (log scale)" if log else ""), "batch loss per step")
    hs, hv = _decimate(steps, hand)
    ts, tv = _decimate(steps, torch)
    hand_style = f"stroke: {COLOURS['hand']}; stroke-width: 2"
    torch_style = f"stroke: {COLOURS['torch']}; stroke-width: 1.2; stroke-dasharray: 3 3"
    body += [
        _polyline(hs, hv, sx, sy, hand_style),
        _polyline(ts, tv, sx, sy, torch_style),
        _legend([("hand", hand_style), ("torch", torch_style)]),
    ]
    desc = (
        f"The loss on each batch, at the parameters the batch started with: by hand (solid) and in torch "
        f"(dotted), from {num(hand[0])} at step 1 to {num(hand[-1])} at step {trace.n_steps}"
        f"{'; log scale' if log else ''}."
    )
    return _panel(ident, "Batch loss per step", desc, body)


def _scalar(trace) -> bool:
    return getattr(trace, "model", None) is None or trace.model.scalar


#: the colours of a parameter's elements (D features), in turn
ELEMENT_COLOURS = ("#1f77b4", "#e07b00", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
#: element lines drawn with a legend entry each
LEGEND_LINES = 8


def _feature_params_panel(trace, ident: str) -> str:
    """D features: every element of every parameter after each step, each with its true value dashed."""
    import numpy as np

    model = trace.model
    truths = trace.report.truths or {}
    steps = np.arange(1, trace.n_steps + 1, dtype=np.float64)
    series = []
    for p in model.params:
        values = trace.manual[p.name].astype(np.float64).reshape(trace.n_steps, -1)
        true = truths.get(p.name)
        for j in range(values.shape[1]):
            name = p.label if values.shape[1] == 1 else f"{p.label}[{j}]"
            series.append((name, values[:, j], None if true is None else float(true.reshape(-1)[j])))
    truth_values = np.array([t for _, _, t in series if t is not None], dtype=np.float64)
    lo, hi = _range(*(v for _, v, _ in series), truth_values)
    left, right, top, bottom = MARGIN
    sx = _Scale(1.0, max(float(trace.n_steps), 1.0), left, PANEL_W - right)
    sy = _Scale(lo, hi, PANEL_H - bottom, top)
    title = "each weight and the bias after each step"
    body = _axes(sx, sy, "step", "", title)
    legend = []
    for i, (name, values, true) in enumerate(series):
        colour = ELEMENT_COLOURS[i % len(ELEMENT_COLOURS)]
        style = f"stroke: {colour}; stroke-width: 1.6"
        xs, ys = _decimate(steps, values)
        body.append(_polyline(xs, ys, sx, sy, style))
        if true is not None:
            dashed = f"stroke: {colour}; stroke-width: 1; stroke-dasharray: 6 4"
            body.append(_polyline([1.0, max(float(trace.n_steps), 1.0)], [true, true], sx, sy, dashed))
        if i < LEGEND_LINES:
            legend.append((name, style))
    body.append(_legend(legend))
    desc = "; ".join(f"{name} from {num(v[0])} to {num(v[-1])}" for name, v, _ in series[:LEGEND_LINES])
    desc = f"After each step: {desc}" + (" (the true values dashed)." if truths else ".")
    return _panel(ident, title, desc, body)


def params_panel(trace, ident: str) -> str:
    import numpy as np

    if not _scalar(trace):
        return _feature_params_panel(trace, ident)
    ds = trace.dataset
    steps = np.arange(1, trace.n_steps + 1, dtype=np.float64)
    w, b = trace.manual["w"].astype(np.float64), trace.manual["b"].astype(np.float64)
    truths = [v for v in (ds.true_w, ds.true_b) if v is not None]
    lo, hi = _range(w, b, np.array(truths, dtype=np.float64))
    left, right, top, bottom = MARGIN
    sx = _Scale(1.0, max(float(trace.n_steps), 1.0), left, PANEL_W - right)
    sy = _Scale(lo, hi, PANEL_H - bottom, top)
    body = _axes(sx, sy, "step", "", "w and b after each step")
    ws, wv = _decimate(steps, w)
    bs, bv = _decimate(steps, b)
    w_style = f"stroke: {COLOURS['w']}; stroke-width: 2"
    b_style = f"stroke: {COLOURS['b']}; stroke-width: 2"
    legend = [("w", w_style), ("b", b_style)]
    body += [_polyline(ws, wv, sx, sy, w_style), _polyline(bs, bv, sx, sy, b_style)]
    for name, value, colour in (("w", ds.true_w, COLOURS["w"]), ("b", ds.true_b, COLOURS["b"])):
        if value is not None:
            style = f"stroke: {colour}; stroke-width: 1; stroke-dasharray: 6 4"
            body.append(_polyline([1.0, max(float(trace.n_steps), 1.0)], [value, value], sx, sy, style))
            legend.append((f"true {name} = {value:g}", style))
    body.append(_legend(legend))
    truth = (
        f"; the true values (dashed) are w = {ds.true_w:g}, b = {ds.true_b:g}"
        if ds.true_w is not None and ds.true_b is not None
        else ""
    )
    desc = (
        f"w (from {num(trace.config.init_w)} to {num(w[-1])}) and b (from {num(trace.config.init_b)} to "
        f"{num(b[-1])}) after each step{truth}."
    )
    return _panel(ident, "w and b after each step", desc, body)


def path_panel(trace, ident: str) -> str:
    """The (w, b) path over contour lines of the full-data loss: ellipses around the least-squares
    optimum, since the loss is quadratic in (w, b): L - L* = d^T A d with A = (1/N)[[Σx², Σx], [Σx, N]]."""
    import math

    import numpy as np

    cfg = trace.config
    plane = trace.report.plane  # the report stage's: the optimum and the curvature A
    pw = np.concatenate(([cfg.init_w], trace.manual["w"].astype(np.float64)))
    pb = np.concatenate(([cfg.init_b], trace.manual["b"].astype(np.float64)))
    ok = np.isfinite(pw) & np.isfinite(pb)
    pw, pb = pw[ok], pb[ok]
    opt_w, opt_b = plane.optimum
    lo_w, hi_w = _range(pw, np.array([opt_w]))
    lo_b, hi_b = _range(pb, np.array([opt_b]))
    pad_w, pad_b = 0.1 * (hi_w - lo_w) + 0.5, 0.1 * (hi_b - lo_b) + 0.5
    left, right, top, bottom = MARGIN
    sx = _Scale(lo_w - pad_w, hi_w + pad_w, left, PANEL_W - right)
    sy = _Scale(lo_b - pad_b, hi_b + pad_b, PANEL_H - bottom, top)
    body = _axes(sx, sy, "w", "b", "path over the full-data loss")
    clip = f"{ident}-clip"
    x0, x1, y0, y1 = left, PANEL_W - right, PANEL_H - bottom, top
    body.append(f'<clipPath id="{clip}"><rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}"/></clipPath>')
    a, lam, vec = plane.curvature, plane.eigenvalues, plane.eigenvectors
    contours = []
    if lam.min() > 1e-12 * max(lam.max(), 1e-300):
        corners = [(sx.ticks[i], sy.ticks[j]) for i in (0, -1) for j in (0, -1)]
        reach = max(np.array([cw - opt_w, cb - opt_b]) @ a @ np.array([cw - opt_w, cb - opt_b]) for cw, cb in corners)
        t = np.linspace(0, 2 * math.pi, 73)
        circle = np.stack([np.cos(t), np.sin(t)])
        for level in np.geomspace(reach * 1e-4, reach, 12):
            pts = vec @ (np.sqrt(level / lam)[:, None] * circle)
            contours.append(" ".join(f"{sx(opt_w + u):.1f},{sy(opt_b + v):.1f}" for u, v in pts.T))
    body.append(
        f'<g clip-path="url(#{clip})" fill="none" style="stroke: {COLOURS["contour"]}" stroke-width="0.8">'
        + "".join(f'<polygon points="{c}"/>' for c in contours)
        + "</g>"
    )
    path_style = f"stroke: {COLOURS['path']}; stroke-width: 1.6"
    step = max(1, len(pw) // MAX_POINTS)
    keep = np.r_[np.arange(0, len(pw), step), len(pw) - 1] if len(pw) else np.array([], dtype=int)
    body.append(f'<g clip-path="url(#{clip})">' + _polyline(pw[keep], pb[keep], sx, sy, path_style))
    if len(pw):
        body.append(f'<circle cx="{sx(pw[0]):.1f}" cy="{sy(pb[0]):.1f}" r="4" fill="currentColor"/>')
    body.append(
        f'<path d="{_star(sx(opt_w), sy(opt_b), 9)}" style="fill: #f2c200" stroke="currentColor" '
        'stroke-width="0.8"/></g>'
    )
    body.append(_legend([("(w, b) path", path_style), ("contours of loss", f"stroke: {COLOURS['contour']}")]))
    desc = (
        f"The path of (w, b) from the start ({num(cfg.init_w)}, {num(cfg.init_b)}), drawn as a dot, to "
        f"({num(pw[-1]) if len(pw) else 'n/a'}, {num(pb[-1]) if len(pb) else 'n/a'}), over contour lines "
        f"(ellipses) of the mean squared error on the whole data set; the star is the least-squares optimum "
        f"w = {num(opt_w)}, b = {num(opt_b)}."
    )
    return _panel(ident, "The (w, b) path over the full-data loss", desc, body)


def _star(cx: float, cy: float, r: float) -> str:
    import math

    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        ang = -math.pi / 2 + i * math.pi / 5
        pts.append(f"{cx + rad * math.cos(ang):.1f},{cy + rad * math.sin(ang):.1f}")
    return "M" + " L".join(pts) + " Z"


def plots_svg(trace, ident: str = "plots") -> str:
    """The ``plot`` command's three panels as three inline ``<svg>`` elements (no matplotlib needed)."""
    if not trace.n_steps:
        return f"<p>{plots_desc(trace)}</p>"
    with _quiet():
        path = path_panel(trace, f"{ident}-path") if _scalar(trace) else ""  # the (w, b) plane: the article's
        return loss_panel(trace, f"{ident}-loss") + params_panel(trace, f"{ident}-wb") + path


def _quiet():
    import numpy as np

    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


# ------------------------------------------------------------------ the article's DAG, by hand

#: node -> (x, y) centre in the drawing; leaves at the bottom, the root z at the top
_POS = {
    "w": (70, 430),
    "x": (190, 430),
    "b": (330, 430),
    "y": (470, 430),
    "a": (130, 350),
    "c": (260, 280),
    "d": (380, 210),
    "e": (380, 140),
    "l": (380, 80),
    "z": (380, 22),
}


#: the network's DAG (--model mlp): x, W1, b1 into z1, h, then W2, b2 into z2, the loss
_NETWORK_POS = {
    "x": (50, 430),
    "W1": (130, 430),
    "b1": (210, 430),
    "W2": (330, 430),
    "b2": (420, 430),
    "y": (520, 430),
    "z1": (130, 345),
    "h": (130, 265),
    "z2": (280, 185),
    "l": (280, 105),
    "z": (280, 30),
}


def dag_svg(ident: str, dag) -> str:
    """The manual DAG (leaves w, x, b, y; nodes a, c, d, e, l, z) with each node's backward function.

    Arrows point the way the forward pass goes (inputs to outputs); each node's label is its
    forward formula, and under it, in the accent colour, the local derivative the chain rule
    multiplies on the way back.
    """
    from sgdtrace.views.graph import is_article_dag

    article = is_article_dag(dag)
    network = any(node.name == "z1" for node in dag)
    pos = _NETWORK_POS if network else _POS
    w, h = 620, 470
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}">',
        '<defs><marker id="' + ident + '-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="currentColor"/>'
        "</marker></defs>",
        '<g fill="none" stroke="currentColor" stroke-width="1.2">',
    ]
    for node in dag:
        x2, y2 = pos[node.name]
        for src in node.inputs:
            x1, y1 = pos[src]
            # stop short of the boxes (half-height 14) so the arrowheads show
            dy = 16 if y1 > y2 else -16
            parts.append(f'<line x1="{x1}" y1="{y1 - dy}" x2="{x2}" y2="{y2 + dy}" marker-end="url(#{ident}-arrow)"/>')
    parts.append("</g>")
    for node in dag:
        x, y = pos[node.name]
        leaf = node.forward.startswith("leaf")
        label = node.name if leaf else node.forward
        bw = max(30, 8 * len(label) + 16)
        cls = "sgd-leaf" if leaf else "sgd-node"
        parts.append(
            f'<g class="{cls}"><rect x="{x - bw / 2:.0f}" y="{y - 14}" width="{bw:.0f}" height="28" '
            f'rx="{4 if leaf else 14}" style="fill: var(--node-bg, #fff)" stroke="currentColor"/>'
            f'<text x="{x}" y="{y + 5}" text-anchor="middle" fill="currentColor" '
            f'font-size="14">{html.escape(label)}</text>'
        )
        if leaf and node.backward != "—":  # under the leaf: the gradient it accumulates
            parts.append(
                f'<text x="{x}" y="{y + 32}" text-anchor="middle" font-size="11" '
                f'style="fill: var(--accent, #1f6fb2)">{html.escape(node.backward)}</text>'
            )
        elif not leaf:  # beside the node: its backward function
            parts.append(
                f'<text x="{x + bw / 2 + 6:.0f}" y="{y + 5}" font-size="12" '
                f'style="fill: var(--accent, #1f6fb2)">{html.escape(node.backward)}</text>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    desc = (
        "The forward pass, leaves at the bottom: a = w·x; c = a + b (ypred); d = c − y; e = d²; "
        "l = (1/n)·Σ e; z = l. Beside each node its backward function: dz/dl = 1, dl/de = 1/n, "
        "de/dd = 2d, dd/dc = 1, dc/da = 1 and dc/db = 1, da/dw = x; w and b accumulate dl/dw and dl/db."
    )
    if network:
        desc = (
            "The network's forward pass, leaves at the bottom: z1 = X·W1ᵀ + b1; h = act(z1); z2 = h·W2ᵀ + b2; "
            "the loss l of z2 and y; z = l. Beside each node its backward step in matrix form: δ2 = dl/dz2, "
            "dl/dW2 = δ2ᵀ·h, dl/db2 = Σ δ2, dl/dh = δ2·W2, δ1 = dl/dh ⊙ act'(z1), dl/dW1 = δ1ᵀ·X, dl/db1 = Σ δ1."
        )
        return _accessible("".join(parts), ident, "The network's computation graph (the manual DAG)", desc)
    if not article:
        desc = "The same DAG on D features, in vector form: a = X·w is a dot product per sample, " + desc[
            len("The forward pass, leaves at the bottom: ") :
        ].replace("da/dw = x", "da_i/dw_j = x_ij")
        return _accessible("".join(parts), ident, "The computation graph on D features (the manual DAG)", desc)
    return _accessible("".join(parts), ident, "The article's computation graph (the manual DAG)", desc)


__all__ = ["plots_svg", "plots_desc", "dag_svg"]


# ------------------------------------------------------------------ the network's weights as heatmaps

#: a heatmap draws at most this many rows and columns of a matrix (its top-left corner; the caption says so)
HEAT_CAP = 32
#: the three maps of one parameter at one step: hand, torch, |Δ|/allowance
HEAT_SIDES = (("hand", "by hand"), ("torch", "in torch"), ("ratio", "|Δ| / allowance"))
_HEAT_POS, _HEAT_NEG, _HEAT_BAD = "var(--c-w, #1f77b4)", "var(--c-b, #c96a00)", "var(--bad, #c62828)"


def heat_params(trace) -> tuple:
    """The parameters drawn as heatmaps: every matrix and vector of a model that has a matrix
    (the network's W1, b1, W2); none for a model of scalars or of one weight vector."""
    import numpy as np

    params = trace.params
    if not trace.n_steps or not any(len(p.shape) == 2 for p in params):
        return ()
    return tuple(p for p in params if len(p.shape) in (1, 2) and int(np.prod(p.shape)) > 1)


def _grid(a):
    """A parameter's values as a 2-D float64 array (a vector: one row)."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    return a.reshape(1, -1) if a.ndim == 1 else a


def _opacity(v: float) -> str:
    """A share in [0, 1] as one of eleven opacities (0, 0.1, ..., 1): 0 only for 0 (or not a number),
    so an entry off by the least is never drawn as equal."""
    v = min(max(v, 0.0), 1.0) if v == v else 0.0
    level = max(round(v * 10), 1) if v > 0 else 0
    return "1" if level == 10 else f"0.{level}" if level else "0"


def _cells(grid, cell: int, x0: int, y0: int, shade) -> str:
    """One map's cells, one square subpath each, gathered into one ``<path>`` per colour and opacity
    (``shade(v)``: a value's fill and opacity); each path says its opacity in ``data-level``."""
    groups: dict[tuple[str, str], list[str]] = {}
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            groups.setdefault(shade(float(v)), []).append(f"M{x0 + j * cell} {y0 + i * cell}h{cell}v{cell}h-{cell}z")
    return "".join(
        f'<path style="fill: {fill}" fill-opacity="{o}" data-level="{o}" d="{"".join(d)}"/>'
        for (fill, o), d in sorted(groups.items())
    )


def _scale_bar(x0: int, y0: int, width: int, stops: list[tuple[str, str]], labels: tuple[str, str, str]) -> str:
    """A colour scale: ``stops`` (fill, opacity) left to right, labelled at both ends and the middle."""
    w = width / len(stops)
    out = [
        f'<rect x="{x0 + i * w:.1f}" y="{y0}" width="{w + 0.3:.1f}" height="7" style="fill: {f}" fill-opacity="{o}"/>'
        for i, (f, o) in enumerate(stops)
    ]
    out.append(f'<rect x="{x0}" y="{y0}" width="{width}" height="7" fill="none" style="stroke: var(--rule, #ccc)"/>')
    for x, anchor, text in zip((x0, x0 + width / 2, x0 + width), ("start", "middle", "end"), labels):
        out.append(
            f'<text x="{x:.1f}" y="{y0 + 18}" font-size="9" text-anchor="{anchor}" fill="currentColor">'
            f"{html.escape(text)}</text>"
        )
    return "".join(out)


def heatmap_svg(trace, param, k: int, ident: str) -> str:
    """One parameter after step ``k`` (0-based): hand, torch and |Δ|/allowance side by side, in one
    ``<svg>`` whose ``<g class="heat">`` carries the parameter, the step, the shape drawn and the
    largest share of the allowance used."""
    import numpy as np

    hand, torch_ = _grid(trace.manual[param.name][k]), _grid(trace.torch[param.name][k])
    ratio = _grid(trace.divergence[param.name].ratio[k])
    rows, cols = hand.shape
    r, c = min(rows, HEAT_CAP), min(cols, HEAT_CAP)
    with _quiet():
        both = np.concatenate([hand[:r, :c].ravel(), torch_[:r, :c].ravel()])
        both = np.abs(both[np.isfinite(both)])
        vmax = float(both.max()) if both.size and both.max() > 0 else 1.0
        worst = float(np.nanmax(ratio)) if ratio.size else 0.0
    cell = max(4, min(14, 140 // max(r, c)))
    mw = max(c * cell, 90)
    gap, top = 18, 16
    width = 3 * mw + 2 * gap
    height = top + r * cell + 34

    def value(v: float):
        return (_HEAT_POS if v >= 0 else _HEAT_NEG), _opacity(abs(v) / vmax)

    def share(v: float):
        return _HEAT_BAD, _opacity(v)

    body = [
        f'<g class="heat" data-param="{param.name}" data-step="{k + 1}" data-rows="{r}" data-cols="{c}" '
        f'data-shape="{"x".join(map(str, param.shape))}" data-max-ratio="{worst:.3g}">'
    ]
    for n, ((side, label), grid) in enumerate(zip(HEAT_SIDES, (hand, torch_, ratio))):
        x0 = n * (mw + gap)
        body.append(
            f'<text x="{x0}" y="11" font-size="11" fill="currentColor">{html.escape(label)}</text>'
            f'<g data-side="{side}">{_cells(grid[:r, :c], cell, x0, top, share if side == "ratio" else value)}</g>'
            f'<rect x="{x0}" y="{top}" width="{c * cell}" height="{r * cell}" fill="none" '
            'style="stroke: var(--rule, #ccc)"/>'
        )
        y = top + r * cell + 6
        if side == "ratio":
            stops = [(_HEAT_BAD, _opacity(i / 8)) for i in range(9)]
            body.append(_scale_bar(x0, y, mw, stops, ("0", "0.5", "≥ 1")))
        else:
            stops = [(_HEAT_NEG, _opacity(1 - i / 4)) for i in range(4)] + [
                (_HEAT_POS, _opacity(i / 4)) for i in range(5)
            ]
            body.append(_scale_bar(x0, y, mw, stops, (f"−{vmax:.3g}", "0", f"{vmax:.3g}")))
    body.append("</g>")
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" font-family="system-ui, sans-serif">' + "".join(body) + "</svg>"
    )
    cut = f" (the first {r} of {rows} rows, {c} of {cols} columns drawn)" if (r, c) != (rows, cols) else ""
    desc = (
        f"{param.label}, shape {' x '.join(map(str, param.shape))}, after step {k + 1}{cut}: its values by hand "
        f"and in torch on one colour scale (blue positive, orange negative, -{num(vmax)} to {num(vmax)}), and "
        f"each entry's |hand - torch| as a share of its allowance (largest {num(worst)}; 1 or more is beyond)."
    )
    return _accessible(svg, ident, f"{param.label} after step {k + 1}", desc)


def heatmaps_svg(trace, steps, ident: str = "heat") -> list[tuple[str, str]]:
    """For each matrix or vector parameter (:func:`heat_params`) and each 0-based step of ``steps``
    (repeats dropped): its heatmaps (:func:`heatmap_svg`) and a caption: the shape, the step,
    the largest share of the allowance used, and the cut where the matrix is larger than
    :data:`HEAT_CAP`. Empty for a model without a matrix."""
    import numpy as np

    out = []
    steps = sorted({int(k) for k in steps if 0 <= int(k) < trace.n_steps})
    for p in heat_params(trace):
        for k in steps:
            rows, cols = _grid(trace.manual[p.name][k]).shape
            with _quiet():
                worst = float(np.nanmax(trace.divergence[p.name].ratio[k]))
            cut = (
                f"; only the first {min(rows, HEAT_CAP)} × {min(cols, HEAT_CAP)} entries drawn"
                if rows > HEAT_CAP or cols > HEAT_CAP
                else ""
            )
            caption = (
                f"{p.label} ({' × '.join(map(str, p.shape))}) after step {k + 1}: the largest "
                f"|Δ| / allowance is {worst:.3g}{cut}."
            )
            out.append((heatmap_svg(trace, p, k, f"{ident}-{p.name}-{k + 1}"), caption))
    return out
