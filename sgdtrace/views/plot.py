"""The ``plot`` view: loss per step, w and b per step against their true values, and the (w, b) path
over contour lines of the full-data loss. Needs matplotlib (the ``plot`` extra); drawn with Agg.
"""

from __future__ import annotations

import math

import numpy as np

from sgdtrace.errors import SgdtraceError


class MissingMatplotlib(SgdtraceError):
    """matplotlib (a dependency) is not installed: an input error, exit code 2."""


def require_matplotlib():
    """matplotlib, or a one-line error saying how to install it (no backend is chosen)."""
    try:
        import matplotlib
    except ImportError:
        raise MissingMatplotlib(
            "plot needs matplotlib, one of sgdtrace's dependencies, and it is not installed: "
            "reinstall sgdtrace (`make install` in its folder) or run `pip install matplotlib`"
        ) from None
    return matplotlib


def _finite(a: np.ndarray) -> np.ndarray:
    return a[np.isfinite(a)]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _blowup_step(trace) -> int | None:
    d = trace.verdict.diverged_training
    return None if not d else int(d["step"])


def _mark_blowup(ax, trace, step: int) -> None:
    """A vertical line at the blow-up step, labelled with where it is."""
    d = trace.verdict.diverged_training
    ax.axvline(step, color="tab:purple", ls="--", lw=1.0)
    ax.annotate(
        f"blew up: step {step}\n(epoch {d['epoch']}, batch {d['batch']})",
        xy=(step, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(3, -3),
        textcoords="offset points",
        ha="left" if step <= 0.7 * max(trace.n_steps, 1) else "right",
        va="top",
        fontsize="small",
        color="tab:purple",
    )


def _say_why(ax, text: str) -> None:
    """A panel with nothing (or nothing changing) to draw says why, in its middle."""
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize="small",
        wrap=True,
        bbox=dict(boxstyle="round", fc="lightyellow", ec="0.6"),
    )


def _why_no_loss(trace, loss: np.ndarray) -> str | None:
    """Why the loss panel would be empty or flat: None when there is a line worth drawing."""
    finite = _finite(loss)
    cfg = trace.config
    if finite.size == 0:
        kinds = sorted({"nan" if np.isnan(v) else "inf" for v in loss})
        return (
            f"nothing to draw:\nthe batch loss is {' or '.join(kinds)} at every step:\n"
            f"(w·x + b − y)² leaves the range of {cfg.dtype}\n(w starts at {cfg.init_w:g}, b at {cfg.init_b:g})"
        )
    if finite.size > 1 and finite.min() == finite.max():
        return f"the batch loss is {finite[0]:g} at every step"
    return None


def _why_flat_params(trace, w: np.ndarray, b: np.ndarray) -> str | None:
    """Why w and b do not move: no finite value, or every update lost in the parameters' rounding."""
    fw, fb = _finite(w), _finite(b)
    cfg = trace.config
    if fw.size == 0 and fb.size == 0:
        return "nothing to draw: w and b are inf or nan at every step"
    if (
        fw.size == w.size
        and fb.size == b.size
        and w.size > 1
        and fw.min() == fw.max() == cfg.init_w
        and fb.min() == fb.max() == cfg.init_b
    ):
        return (
            f"w and b never change: each update lr·dl/dw is below half a unit in the last place of "
            f"w = {cfg.init_w:g}, b = {cfg.init_b:g} in {cfg.dtype}, so it rounds away"
        )
    return None


def plot_figure(trace, width: int = 1500, height: int = 450, dpi: int = 100):
    """The three panels as a matplotlib ``Figure`` (not registered with pyplot, so no backend is switched).

    A blow-up (the verdict's ``diverged_training``) is marked by a vertical line at its step in the
    first two panels and a cross on the path; a panel with nothing finite (or nothing changing) to
    draw says why in its middle.
    """
    require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    man = trace.manual
    ds = trace.dataset
    cfg = trace.config
    steps = np.arange(1, trace.n_steps + 1)
    blew = _blowup_step(trace)
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    scalar = getattr(trace, "model", None) is None or trace.model.scalar
    # the path over the loss surface is the article's (w, b) plane; on D features: no surface
    # a classifier on two features: its decision boundary over the data, as a third panel
    boundary = getattr(getattr(trace, "model", None), "module", None) is not None and hasattr(
        trace.model.module, "decision_boundary"
    )
    boundary = boundary and trace.dataset.x.reshape(len(trace.dataset), -1).shape[1] == 2
    ax_loss, ax_wb, *rest = fig.subplots(1, 3 if scalar or boundary else 2)
    ax_path = rest[0] if rest else None

    loss = man["loss"].astype(np.float64)
    ax_loss.plot(steps, loss, color="tab:red", lw=1.2, label="hand")
    ax_loss.plot(steps, trace.torch["loss"], color="black", lw=0.8, ls=":", label="torch")
    if np.all(_finite(loss) > 0) and _finite(loss).size:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel(getattr(getattr(trace.model, "module", None), "LOSS_LABEL", "batch loss (mean squared error)"))
    ax_loss.set_title("batch loss per step")
    why = _why_no_loss(trace, loss)
    if why:
        _say_why(ax_loss, why)
        if not _finite(loss).size:
            ax_loss.set_yticks([])
    if "lr" in man:  # a schedule: its rate on a second axis
        ax_lr = ax_loss.twinx()
        ax_lr.plot(steps, man["lr"], color="tab:green", lw=1.0, ls="--")
        ax_lr.set_ylabel("learning rate (dashed)", color="tab:green")
        ax_lr.tick_params(axis="y", colors="tab:green")

    if not scalar:
        _feature_params(ax_wb, trace, steps)
        if boundary:
            _decision_boundary(ax_path, trace)
        for ax in (ax_loss, ax_wb):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if trace.n_steps:
                ax.set_xlim(0.5, trace.n_steps + 0.5)
            if blew is not None:
                _mark_blowup(ax, trace, blew)
        ax_loss.legend(fontsize="small", loc="lower right" if blew else "best")
        _suptitle(fig, trace)
        fig.tight_layout()
        fit_titles(fig)
        return fig

    w, b = man["w"].astype(np.float64), man["b"].astype(np.float64)
    ax_wb.plot(steps, w, color="tab:blue", label="w")
    ax_wb.plot(steps, b, color="tab:orange", label="b")
    if ds.true_w is not None:
        ax_wb.axhline(ds.true_w, color="tab:blue", ls="--", lw=0.8, label=f"true w = {ds.true_w:g}")
    if ds.true_b is not None:
        ax_wb.axhline(ds.true_b, color="tab:orange", ls="--", lw=0.8, label=f"true b = {ds.true_b:g}")
    both = np.abs(np.concatenate((_finite(w), _finite(b))))
    scale = max([1.0] + [abs(v) for v in (ds.true_w, ds.true_b, cfg.init_w, cfg.init_b) if v is not None])
    if both.size and both.max() > 1e4 * scale:  # a blow-up: a linear axis would show a flat line then a spike
        ax_wb.set_yscale("symlog", linthresh=scale)
        # 0 and about four labelled decades each side, clear of the linear band around 0
        top = math.ceil(math.log10(both.max()))
        every = max(1, math.ceil((top - math.log10(scale)) / 4))
        ups = [10.0**e for e in range(top, math.floor(math.log10(scale)), -every)][::-1]
        ups = [u for u in ups if u >= 10 * scale]
        ax_wb.set_yticks([-u for u in ups[::-1]] + [0.0] + ups)
    ax_wb.set_xlabel("step")
    ax_wb.set_ylabel("value" + (" (symmetric log scale)" if ax_wb.get_yscale() == "symlog" else ""))
    ax_wb.set_title("w and b after each step")
    why = _why_flat_params(trace, w, b)
    if why:
        _say_why(ax_wb, why)

    for ax in (ax_loss, ax_wb):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if trace.n_steps:
            ax.set_xlim(0.5, trace.n_steps + 0.5)
        if blew is not None:
            _mark_blowup(ax, trace, blew)
        ax.legend(fontsize="small", loc="lower right" if ax is ax_loss and blew else "best")

    path_w = np.concatenate(([cfg.init_w], w))
    path_b = np.concatenate(([cfg.init_b], b))
    ok = np.isfinite(path_w) & np.isfinite(path_b)
    pw, pb = path_w[ok], path_b[ok]
    # the least-squares optimum of the full data, so the contours show where the path is heading
    plane = trace.report.plane  # the report stage's: the optimum and the loss over the (w, b) plane
    opt_w, opt_b = plane.optimum
    lo_w, hi_w = min(pw.min(), opt_w), max(pw.max(), opt_w)
    lo_b, hi_b = min(pb.min(), opt_b), max(pb.max(), opt_b)
    pad_w, pad_b = 0.15 * (hi_w - lo_w) + 0.5, 0.15 * (hi_b - lo_b) + 0.5
    ws = np.linspace(lo_w - pad_w, hi_w + pad_w, 200)
    bs = np.linspace(lo_b - pad_b, hi_b + pad_b, 200)
    with np.errstate(over="ignore", invalid="ignore"):
        surf = plane.surface(ws, bs)
    finite_surf = _finite(surf)
    if finite_surf.size and finite_surf.max() > 0:
        top = finite_surf.max()
        levels = np.unique(np.geomspace(max(finite_surf.min(), 1e-12 * max(top, 1.0)), top, 20))
        if levels.size > 1:
            cs = ax_path.contour(ws, bs, surf, levels=levels, cmap="viridis", linewidths=0.7)
            ax_path.clabel(cs, levels[::4], fmt=lambda v: f"{v:.2g}", fontsize=7, inline=True)
    ax_path.plot(pw, pb, "-", color="tab:red", lw=1.0, marker=".", ms=3, label="(w, b) path")
    ax_path.plot(pw[:1], pb[:1], "o", color="black", ms=5, label="start")
    ax_path.plot([opt_w], [opt_b], "*", color="gold", mec="black", ms=12, label="least squares")
    if blew is not None and np.isfinite(path_w[blew]) and np.isfinite(path_b[blew]):
        ax_path.plot(
            [path_w[blew]], [path_b[blew]], "X", color="tab:purple", ms=9, label=f"after step {blew} (blew up)"
        )
    ax_path.set_xlabel("w")
    ax_path.set_ylabel("b")
    ax_path.set_title("path over the full-data loss (contours: its value)")
    ax_path.legend(fontsize="small")

    _suptitle(fig, trace)
    fig.tight_layout()
    fit_titles(fig)
    return fig


def _decision_boundary(ax, trace) -> None:
    """Two features: the samples by label, and the line w·x + b = 0 at the start and the end (hand)."""
    x = trace.dataset.x.reshape(len(trace.dataset), -1).astype(np.float64)
    y = trace.dataset.y
    ax.scatter(x[y == 0, 0], x[y == 0, 1], s=10, color="tab:blue", label="y = 0")
    ax.scatter(x[y == 1, 0], x[y == 1, 1], s=10, color="tab:orange", label="y = 1")
    lo, hi = float(np.min(x[:, 0])), float(np.max(x[:, 0]))
    xs = np.linspace(lo, hi, 50)
    start = {p: np.asarray(trace.initial[p], dtype=np.float64) for p in ("w", "b")}
    end = {p: trace.manual[p][-1].astype(np.float64) for p in ("w", "b")} if trace.n_steps else start
    for values, style, label in ((start, ":", "start"), (end, "-", "end")):
        line = trace.model.module.decision_boundary(values, xs)
        if line is not None and np.all(np.isfinite(line)):
            ax.plot(xs, line, color="black", ls=style, lw=1.0, label=f"w·x + b = 0 ({label})")
    ax.set_ylim(float(np.min(x[:, 1])) - 0.5, float(np.max(x[:, 1])) + 0.5)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_title("decision boundary p = 1/2")
    ax.legend(fontsize="small", loc="best")


def _suptitle(fig, trace) -> None:
    from sgdtrace.config import OPTIMIZER_CLASSES
    from sgdtrace.views.fmt import model_title

    cfg = trace.config
    fig.suptitle(
        f"{OPTIMIZER_CLASSES[cfg.optimizer]} on {model_title(trace)}: lr {cfg.lr:g}, batch size {cfg.batch_size}, "
        f"{_plural(cfg.epochs, 'epoch')}, {cfg.dtype}",
        fontsize="medium",
    )


#: lines drawn with a legend entry each; past this, the legend names the first ones
LEGEND_LINES = 10


def _feature_params(ax, trace, steps) -> None:
    """Each parameter's elements after each step (w[0], w[1], ..., b), each against its true value
    (dashed, same colour) where the data has one."""
    model = trace.model
    truths = trace.report.truths or {}
    colours = iter(f"C{i % 10}" for i in range(10_000))
    lines = 0
    for p in model.params:
        values = trace.manual[p.name].astype(np.float64).reshape(trace.n_steps, -1)
        true = truths.get(p.name)
        for j in range(values.shape[1]):
            colour = next(colours)
            name = p.label if values.shape[1] == 1 else f"{p.label}[{j}]"
            lines += 1
            ax.plot(steps, values[:, j], color=colour, lw=1.2, label=name if lines <= LEGEND_LINES else None)
            if true is not None:
                t = float(true.reshape(-1)[j])
                ax.axhline(
                    t, color=colour, ls="--", lw=0.8, label=f"true {name} = {t:g}" if lines <= LEGEND_LINES else None
                )
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.set_title("each weight and the bias after each step (dashed: true values)")
    ax.legend(fontsize="x-small", ncol=2)


def _wrap_to(text_artist, limit: float, renderer) -> None:
    """Break ``text_artist``'s words into lines no wider than ``limit`` pixels (a word longer than the
    limit keeps a line of its own: a title is never cut)."""
    words = text_artist.get_text().replace("\n", " ").split()
    lines: list[str] = []
    current = ""
    for word in words:
        trial = f"{current} {word}" if current else word
        text_artist.set_text(trial)
        if current and text_artist.get_window_extent(renderer).width > limit:
            lines.append(current)
            current = word
        else:
            current = trial
    lines.append(current)
    text_artist.set_text("\n".join(lines))


#: the smallest font the titles shrink to before they wrap (points)
MIN_TITLE_POINTS = 9.0


def _too_wide(text_artist, limit: float, renderer) -> bool:
    return text_artist.get_window_extent(renderer).width > limit


def fit_titles(fig) -> None:
    """Fit each panel's title within its panel and the figure's title within the figure (a narrow
    --width, the learning-rate axis a schedule adds): the panels' titles shrink together, down to
    :data:`MIN_TITLE_POINTS`, then a title still too wide wraps at its spaces; never cut. The
    figure is laid out again for the new sizes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)  # the renderer that measures the text (plot_trace writes PNG with Agg too)
    for _ in range(3):  # a new layout changes the panels' widths a little: measure again
        renderer = fig.canvas.get_renderer()
        panels = [(ax.title, ax.get_window_extent(renderer).width) for ax in fig.get_axes() if ax.title.get_text()]
        sup = fig._suptitle
        wide = [(t, limit) for t, limit in panels if _too_wide(t, limit, renderer)]
        sup_wide = sup is not None and _too_wide(sup, 0.98 * fig.bbox.width, renderer)
        if not wide and not sup_wide:
            break
        size = min(t.get_fontsize() for t, _ in panels) if panels else MIN_TITLE_POINTS
        while wide and size > MIN_TITLE_POINTS and any(_too_wide(t, limit, renderer) for t, limit in panels):
            size = max(MIN_TITLE_POINTS, size - 0.5)
            for t, _ in panels:  # one size for the three, so they read as a set
                t.set_fontsize(size)
        for t, limit in panels:
            if _too_wide(t, limit, renderer):
                _wrap_to(t, limit, renderer)
        if sup_wide:
            _wrap_to(sup, 0.98 * fig.bbox.width, renderer)
        fig.tight_layout()


def plot_trace(trace, output: str, width: int = 1500, height: int = 450, dpi: int = 100) -> None:
    """Draw the three panels into ``output`` (PNG, ``width`` x ``height`` pixels), written atomically."""
    from sgdtrace.output import atomic_write

    fig = plot_figure(trace, width, height, dpi)
    atomic_write(output, lambda path: fig.savefig(path, format="png", dpi=dpi))
