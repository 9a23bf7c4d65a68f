"""A progress bar on stderr for long runs: only on a terminal, only once a run has lasted a second.

The engines call ``update(stage, done, total)`` every few hundred steps and at each epoch's end
(``manual.PROGRESS_EVERY``), so a single ten-million-sample epoch moves the bar too. Until the
first second has passed an update costs one clock read; after it, rich redraws at most ten
times a second from its own thread, so the training loop never waits for the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Progress:
    """Callback target ``update(stage, done, total)``; shows a rich bar after ``delay`` seconds.

    One line per stage (``manual``, ``torch``): the bar, done/total steps, the rate in steps per
    second, the time spent and the time left. The bar is transient: it vanishes when the run ends.
    """

    def __init__(self, delay: float = 1.0, console: Any = None, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.start = clock()
        self.delay = delay
        self.console = console
        self._bar = None
        self._tasks: dict[str, int] = {}

    def update(self, stage: str, done: int, total: int) -> None:
        if self._bar is None:
            if self.clock() - self.start < self.delay:
                return
            self._bar = _make_bar(self.console)
            self._bar.start()
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(stage, total=total)
        self._bar.update(self._tasks[stage], completed=done)

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def rate_text(speed: float | None) -> str:
    """Steps per second, or blank before rich has measured a rate."""
    return "" if speed is None else f"{speed:,.0f} steps/s"


def _make_bar(console: Any = None):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import (
        Progress as RichProgress,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            return Text(rate_text(task.speed).rjust(16), style="progress.data.speed")

    return RichProgress(
        TextColumn("{task.description:>6}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console or Console(stderr=True, force_jupyter=False),
        transient=True,
        refresh_per_second=10,
    )
