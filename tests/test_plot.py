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
    r = CliRunner().invoke(cli, ["plot", "--output", str(out), "--epochs", "20", "--width", "640",
                                 "--height", "320"])
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
