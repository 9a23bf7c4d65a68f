"""sgdtrace: SGD on y = w*x + b worked by hand beside torch.optim.SGD, divergences judged.

The library is usable from a notebook::

    import sgdtrace
    result = sgdtrace.trace(sgdtrace.Config(lr=0.01, batch_size=3))
    result.verdict.ok

Importing this package does not import torch or numpy; :func:`trace` does.
"""

from sgdtrace._version import __version__
from sgdtrace.config import Config  # pure Python, no torch
from sgdtrace.errors import SgdtraceError


def trace(config: "Config | None" = None, **overrides):
    """Run both engines over the same batches and judge them: see :func:`sgdtrace.tracing.run_trace`."""
    from sgdtrace.tracing import run_trace

    if config is None:
        config = Config()
    if overrides:
        config = config.replace(**overrides)
    return run_trace(config)


__all__ = ["Config", "SgdtraceError", "trace", "__version__"]
