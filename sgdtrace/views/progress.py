"""A progress bar on stderr for long runs: only on a terminal, only once a run has lasted a second."""

from __future__ import annotations

import time


class Progress:
    """Callback target ``update(stage, done, total)``; shows a rich bar after a one-second delay."""

    def __init__(self, delay: float = 1.0):
        self.start = time.perf_counter()
        self.delay = delay
        self._bar = None
        self._tasks: dict[str, int] = {}

    def update(self, stage: str, done: int, total: int) -> None:
        if self._bar is None:
            if time.perf_counter() - self.start < self.delay:
                return
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeElapsedColumn

            self._bar = RichProgress(TextColumn("{task.description:>6}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._bar.start()
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(stage, total=total)
        self._bar.update(self._tasks[stage], completed=done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
