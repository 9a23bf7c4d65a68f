"""The plot view writes a real PNG of the requested size; without matplotlib, one clear error line."""

from __future__ import annotations

import struct
import sys

import pytest
from click.testing import CliRunner

from sgdtrace.cli import cli

pytest.importorskip("matplotlib")


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_png_of_requested_size(tmp_path):
    out = tmp_path / "run.png"
    r = CliRunner().invoke(cli, ["plot", "--output", str(out), "--epochs", "20", "--width", "640", "--height", "320"])
    assert r.exit_code == 0, r.output
    assert _png_size(out) == (640, 320)
    assert out.stat().st_size > 10_000  # three panels of lines, not an empty canvas


def test_plot_of_a_blown_up_run_still_draws(tmp_path):
    out = tmp_path / "blow.png"
    r = CliRunner().invoke(cli, ["plot", "--output", str(out), "--lr", "0.1", "--epochs", "3"])
    assert r.exit_code in (0, 1), r.output
    assert _png_size(out) == (1500, 450)


def test_plot_needs_png_output(tmp_path):
    r = CliRunner().invoke(cli, ["plot"])
    assert r.exit_code == 2 and "--output" in r.output
    r = CliRunner().invoke(cli, ["plot", "--output", str(tmp_path / "x.jpg")])
    assert r.exit_code == 2 and ".png" in r.output


def test_missing_matplotlib_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out = tmp_path / "p.png"
    r = CliRunner().invoke(cli, ["plot", "--output", str(out)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgdtrace: error: plot needs matplotlib")
    assert not out.exists()


# ------------------------------------------------------------------ what the panels say

import numpy as np  # noqa: E402

from sgdtrace.config import Config  # noqa: E402
from sgdtrace.tracing import run_trace  # noqa: E402


def _figure(**opts):
    from sgdtrace.views.plot import plot_figure

    t = run_trace(Config(**opts))
    return t, plot_figure(t)  # not registered with pyplot: nothing to close


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def _vertical_lines_at(ax) -> list[float]:
    out = []
    for line in ax.get_lines():
        xs = np.asarray(line.get_xdata(), dtype=float)
        if xs.size == 2 and xs[0] == xs[1] and line.get_transform() != ax.transData:  # axvline: x in data, y in axes
            out.append(float(xs[0]))
    return out


@pytest.mark.parametrize(
    "opts",
    [
        dict(momentum=0.9, lr=0.03, epochs=30),
        dict(lr=1.0, epochs=30),
        dict(momentum=0.9, nesterov=True, lr=0.01, epochs=30),
    ],
)
def test_a_blowup_is_marked_on_the_step_panels_and_the_path(opts):
    t, fig = _figure(**opts)
    step = t.verdict.diverged_training["step"]
    ax_loss, ax_wb, ax_path = fig.axes[:3]
    for ax in (ax_loss, ax_wb):
        assert _vertical_lines_at(ax) == [step]
        assert any(s.startswith(f"blew up: step {step}\n") for s in _texts(ax))
    assert any(f"after step {step} (blew up)" == h.get_label() for h in ax_path.get_lines())


def test_a_converging_run_has_no_blowup_mark():
    t, fig = _figure(epochs=30)
    for ax in fig.axes[:3]:
        assert _vertical_lines_at(ax) == []
        assert not any("blew up" in s for s in _texts(ax))
    assert fig._suptitle.get_text().endswith("30 epochs, float32")


def test_a_flat_panel_says_why():
    """--init-w 1e30: the batch loss overflows float32 at every step, so the loss panel has no line."""
    t, fig = _figure(init_w=1e30)
    assert not np.isfinite(t.manual["loss"]).any()
    why = [s for s in _texts(fig.axes[0]) if s.startswith("nothing to draw")]
    assert len(why) == 1 and "inf at every step" in why[0] and "float32" in why[0] and "1e+30" in why[0]
    assert "1 epoch," in fig._suptitle.get_text()


def test_axes_are_labelled_steps_are_integers_contours_are_labelled():
    t, fig = _figure(epochs=3)
    for ax in fig.axes[:3]:
        assert ax.get_xlabel() and ax.get_ylabel()
    for ax in fig.axes[:2]:
        ticks = [x for x in ax.get_xticks() if ax.get_xlim()[0] <= x <= ax.get_xlim()[1]]
        assert ticks and all(float(x).is_integer() for x in ticks), ticks
    labels = [s for s in _texts(fig.axes[2])]
    assert labels and all(float(s) > 0 for s in labels), labels  # each a value of the loss


@pytest.mark.parametrize("width, height", [(1200, 450), (900, 400), (640, 320), (1500, 450)])
@pytest.mark.parametrize("schedule", [None, "StepLR"])
def test_titles_fit_their_panels_and_the_figure(width, height, schedule):
    """No title is cut: each panel's title lies within its panel and the figure, the figure's title
    within the figure, every word kept (a schedule adds the learning-rate axis, and a narrow
    --width leaves the panels less room)."""
    from sgdtrace.config import parse_scheduler_flags
    from sgdtrace.views.plot import MIN_TITLE_POINTS, plot_figure

    sched = parse_scheduler_flags(schedule, ("step_size=2",)) if schedule else None
    trace = run_trace(Config(epochs=10, scheduler=sched))
    fig = plot_figure(trace, width, height)
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    words = {
        "batch loss per step",
        "w and b after each step",
        "path over the full-data loss (contours: its value)",
    }
    seen = set()
    for ax in fig.get_axes():
        title = ax.title
        if not title.get_text():
            continue
        seen.add(" ".join(title.get_text().split()))
        box, panel = title.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert panel.x0 - 1 <= box.x0 and box.x1 <= panel.x1 + 1, (title.get_text(), box, panel)
        assert box.x0 >= 0 and box.x1 <= width and box.y1 <= height
        assert title.get_fontsize() >= MIN_TITLE_POINTS
    assert seen == words
    sup = fig._suptitle.get_window_extent(renderer)
    assert sup.x0 >= 0 and sup.x1 <= width and sup.y1 <= height
