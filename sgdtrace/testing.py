"""For course test suites and CI: hold an engine file to torch in one line of pytest.

::

    from sgdtrace.testing import assert_matches_torch

    def test_my_engine():
        assert_matches_torch("my_engine.py", momentum=0.9, epochs=5)

The file runs in a child process, as with ``sgdtrace run --engine`` (a module is run through
its file the same way), and is judged by the same rounding-aware model.
"""

from __future__ import annotations

import os
from typing import Any


def _path(engine: Any) -> str:
    if isinstance(engine, (str, os.PathLike)):
        return os.fspath(engine)
    path = getattr(engine, "__file__", None)
    if not path:
        raise TypeError(f"engine: a path to a .py file or a module loaded from one, not {type(engine).__name__}")
    return path


def assert_matches_torch(engine: Any, config: Any = None, **options: Any):
    """Run ``engine`` (a path, or a module: its file) on the hand side of ``config`` (a
    :class:`sgdtrace.Config`, default the article's run) with ``options`` (Config's fields, e.g.
    ``lr=0.05, momentum=0.9``); return the trace when every value agrees with torch.

    Raises ``AssertionError`` with the verdict's sentence and the likely mistake (the step, the
    field, your value, torch's, the rounding allowance), or :class:`sgdtrace.SgdtraceError`
    (:class:`sgdtrace.engines.user.EngineError`) when the file itself fails (an exception, a wrong
    return, a missing function, a time-out).
    """
    from sgdtrace.config import Config
    from sgdtrace.tracing import run_trace
    from sgdtrace.views.export import verdict_sentence

    cfg = config if config is not None else Config()
    cfg = cfg.replace(engine=_path(engine), **options)
    trace = run_trace(cfg)
    if not trace.verdict.ok:
        f = trace.verdict.first_divergent_step
        lines = [verdict_sentence(trace)]
        lines.append(
            f"  step {f['step']} (epoch {f['epoch']}, batch {f['batch']}), {f['field']}: "
            f"yours {f['manual']}, torch's {f['torch']}, allowance {f['tol']}"
        )
        if not f.get("diagnosis"):  # (a diagnosis is in the sentence)
            lines.append("  likely mistake: none that the numbers point to")
        raise AssertionError("\n".join(lines))
    return trace
