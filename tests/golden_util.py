"""Render rich views at a fixed width, without colour, and compare with files under tests/golden/."""

from __future__ import annotations

import io
import os
from pathlib import Path

from rich.console import Console

GOLDEN = Path(__file__).parent / "golden"


def render(renderable, width: int = 100) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, soft_wrap=False).print(renderable)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def check_golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; SGDTRACE_UPDATE_GOLDEN=1 rewrites it (then read it by hand)."""
    path = GOLDEN / name
    if os.environ.get("SGDTRACE_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text
