"""The ``plot`` view: loss per step, w and b per step against their true values, and the (w, b) path
over contour lines of the full-data loss. Needs matplotlib (the ``plot`` extra); drawn with Agg.
"""

from __future__ import annotations

import numpy as np

from sgdtrace.errors import SgdtraceError


class MissingMatplotlib(SgdtraceError):
    """matplotlib (the ``plot`` extra) is not installed: an input error, exit code 2."""


def require_matplotlib():
    """matplotlib, or a one-line error naming the extra to install (no backend is chosen)."""
    try:
        import matplotlib
    except ImportError:
        raise MissingMatplotlib("plot needs matplotlib, which is not installed: "
                                "pip install 'sgdtrace[plot]' (or pip install matplotlib)") from None
    return matplotlib


def require_pyplot():
    """matplotlib's pyplot on the Agg backend, or a one-line error naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise MissingMatplotlib("plot needs matplotlib, which is not installed: "
                                "pip install 'sgdtrace[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _surface(trace, ws: np.ndarray, bs: np.ndarray) -> np.ndarray:
    """The mean squared error over the whole data set on a (w, b) grid, in float64."""
    x, y = trace.dataset.x, trace.dataset.y
    W, B = np.meshgrid(ws, bs)
    # sum_i (w x_i + b - y_i)^2 expanded, so the grid costs O(grid) not O(grid * samples)
    n = x.shape[0]
    sxx, sx, sy, sxy, syy = (x * x).sum(), x.sum(), y.sum(), (x * y).sum(), (y * y).sum()
    return (W * W * sxx + 2 * W * B * sx + n * B * B - 2 * W * sxy - 2 * B * sy + syy) / n


def _finite(a: np.ndarray) -> np.ndarray:
    return a[np.isfinite(a)]


def plot_figure(trace, width: int = 1500, height: int = 450, dpi: int = 100):
    """The three panels as a matplotlib ``Figure`` (not registered with pyplot, so no backend is switched)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    man = trace.manual
    ds = trace.dataset
    cfg = trace.config
    steps = np.arange(1, trace.n_steps + 1)
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax_loss, ax_wb, ax_path = fig.subplots(1, 3)

    loss = man["loss"].astype(np.float64)
    ax_loss.plot(steps, loss, color="tab:red", lw=1.2, label="hand")
    ax_loss.plot(steps, trace.torch["loss"], color="black", lw=0.8, ls=":", label="torch")
    if np.all(_finite(loss) > 0) and _finite(loss).size:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("batch loss per step")
    ax_loss.legend(fontsize="small")

    ax_wb.plot(steps, man["w"], color="tab:blue", label="w")
    ax_wb.plot(steps, man["b"], color="tab:orange", label="b")
    if ds.true_w is not None:
        ax_wb.axhline(ds.true_w, color="tab:blue", ls="--", lw=0.8, label=f"true w = {ds.true_w:g}")
    if ds.true_b is not None:
        ax_wb.axhline(ds.true_b, color="tab:orange", ls="--", lw=0.8, label=f"true b = {ds.true_b:g}")
    ax_wb.set_xlabel("step")
    ax_wb.set_title("w and b after each step")
    ax_wb.legend(fontsize="small")

    path_w = np.concatenate(([cfg.init_w], man["w"].astype(np.float64)))
    path_b = np.concatenate(([cfg.init_b], man["b"].astype(np.float64)))
    ok = np.isfinite(path_w) & np.isfinite(path_b)
    pw, pb = path_w[ok], path_b[ok]
    # the least-squares optimum of the full data, so the contours show where the path is heading
    A = np.stack([ds.x, np.ones_like(ds.x)], axis=1)
    (opt_w, opt_b), *_ = np.linalg.lstsq(A, ds.y, rcond=None)
    lo_w, hi_w = min(pw.min(), opt_w), max(pw.max(), opt_w)
    lo_b, hi_b = min(pb.min(), opt_b), max(pb.max(), opt_b)
    pad_w, pad_b = 0.15 * (hi_w - lo_w) + 0.5, 0.15 * (hi_b - lo_b) + 0.5
    ws = np.linspace(lo_w - pad_w, hi_w + pad_w, 200)
    bs = np.linspace(lo_b - pad_b, hi_b + pad_b, 200)
    surf = _surface(trace, ws, bs)
    levels = np.geomspace(max(surf.min(), 1e-12 * max(surf.max(), 1.0)), surf.max(), 20)
    ax_path.contour(ws, bs, surf, levels=levels, cmap="viridis", linewidths=0.7)
    ax_path.plot(pw, pb, "-", color="tab:red", lw=1.0, marker=".", ms=3, label="(w, b) path")
    ax_path.plot(pw[:1], pb[:1], "o", color="black", ms=5, label="start")
    ax_path.plot([opt_w], [opt_b], "*", color="gold", mec="black", ms=12, label="least squares")
    ax_path.set_xlabel("w")
    ax_path.set_ylabel("b")
    ax_path.set_title("path over the full-data loss")
    ax_path.legend(fontsize="small")

    fig.suptitle(f"SGD on ypred = w·x + b: lr {cfg.lr:g}, batch size {cfg.batch_size}, {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}, "
                 f"{cfg.dtype}", fontsize="medium")
    fig.tight_layout()
    return fig


def plot_trace(trace, output: str, width: int = 1500, height: int = 450, dpi: int = 100) -> None:
    """Draw the three panels into ``output`` (PNG, ``width`` x ``height`` pixels), written atomically."""
    from sgdtrace.output import atomic_write

    fig = plot_figure(trace, width, height, dpi)
    atomic_write(output, lambda path: fig.savefig(path, format="png", dpi=dpi))
