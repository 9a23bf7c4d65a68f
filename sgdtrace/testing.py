"""For course test suites and CI: hold an engine file to torch in one line of pytest.

::

    from sgdtrace.testing import assert_matches_torch

    def test_my_engine():
        assert_matches_torch("my_engine.py", momentum=0.9, epochs=5)

The file runs in a child process, as with ``sgdtrace run --engine`` (a module is run through
its file the same way), and is judged by the same rounding-aware model. A failure is one
message (step, field, yours, torch's, the allowance, the likely mistake) raised from this
function, whose frame pytest hides: the report shows the test's line, not sgdtrace's source.
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


def mismatch_message(trace) -> str:
    """Why ``trace``'s engine does not match torch, in one message: where (step, epoch, batch,
    field), yours, torch's, the distance, the allowance, and the likely mistake."""
    from sgdtrace.views.fmt import field_label
    from sgdtrace.views.verdict import allowance, show

    f = trace.verdict.first_divergent_step
    name = trace.engine.name if trace.engine is not None else "the hand engine"
    carried = f" ({show(f.carried)} of it carried in from earlier steps)" if f.carried else ""
    lines = [
        f"{name} does not match torch at step {f.step} (epoch {f.epoch}, batch {f.batch}), {field_label(f.field)}:",
        f"  yours      {show(f.manual)}",
        f"  torch's    {show(f.torch)}",
        f"  |Δ|        {show(f.abs)}{carried}",
        f"  allowance  {allowance(trace, f.tol)}",
        "  likely mistake: "
        + (
            f.diagnosis["text"] if f.diagnosis else "none that the numbers point to (a wrong formula, or a wrong value)"
        ),
    ]
    engine = trace.engine
    listed = getattr(trace.verdict, "divergent_steps", None)
    if listed and listed["count"] > 1:
        lines.append(f"  {listed['count']} steps diverge in all (each started from torch's values)")
    if engine is not None and engine.not_kept:
        lines.append(f"  not kept by {engine.name}: {', '.join(engine.not_kept)} (torch's state; not judged)")
    return "\n".join(lines)


def assert_matches_torch(engine: Any = None, config: Any = None, *, command: str | None = None, **options: Any):
    """Run ``engine`` (a path, or a module: its file) on the hand side of ``config`` (a
    :class:`sgdtrace.Config`, default the article's run) with ``options`` (Config's fields, e.g.
    ``lr=0.05, momentum=0.9``); return the trace when every value agrees with torch.

    Raises ``AssertionError`` naming the step, the field, your value, torch's, the rounding
    allowance and the likely mistake, or :class:`sgdtrace.SgdtraceError`
    (:class:`sgdtrace.engines.user.EngineError`) when the file itself fails (an exception, a wrong
    return, a missing function, a time-out) or an option is bad (named as its keyword, ``lr``).
    Either is raised from this frame, with sgdtrace's own frames left out of the traceback.

    ``command``: an engine in any language instead of a file (``--engine-cmd``'s JSON lines),
    e.g. ``assert_matches_torch(command="./my_engine", optimizer="adam", judge="step")``. Every run
    option is a keyword: ``optimizer``, ``dtype``, ``scheduler`` (:func:`sgdtrace.config.make_schedule`),
    ``features``, ``judge="step"`` (every divergent step listed, the first one in the message).
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this function's source
    from sgdtrace.config import Config
    from sgdtrace.errors import SgdtraceError
    from sgdtrace.tracing import run_trace

    error: SgdtraceError | None = None
    try:
        cfg = config if config is not None else Config()
        if (engine is None) == (command is None):
            raise TypeError("assert_matches_torch: give an engine file (or module), or command=, not both")
        which = {"engine_cmd": command} if command is not None else {"engine": _path(engine)}
        trace = run_trace(cfg.replace(**which, **options))
    except SgdtraceError as exc:  # raised again below, without the library's frames
        error = exc
    if error is not None:
        raise error.with_traceback(None) from None
    if not trace.verdict.ok:
        raise AssertionError(mismatch_message(trace)) from None
    return trace
