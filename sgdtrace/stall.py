"""The stall: a step whose update ``lr·d`` is lost to rounding, so the parameter does not move.

In a type with p significand bits the representable values around ``w`` are ``ulp(w)`` apart
(2^-7 |w| or so in bfloat16); an update smaller than half of that rounds back to ``w`` itself.
Per step and parameter, on each side, ``stalled_<param>`` is true where the parameter after the
step equals the one before while the step's update ``lr·d`` (``d`` the optimizer's direction,
:func:`sgdtrace.engines.optimizers.sgd.direction`, from the values that side recorded) is not
zero. The verdict lists, per parameter that stalled in torch, the first such step and how many.
A parameter of many elements stalls element by element (``stalled_<param>`` has its shape); the
verdict counts the steps where any of its elements stalled.
"""

from __future__ import annotations

import numpy as np

from sgdtrace.engines import optimizers
from sgdtrace.engines.protocol import PARAMS, state_field
from sgdtrace.verdict import Stall

#: the recorded columns, one per parameter
FIELDS = tuple(f"stalled_{p}" for p in PARAMS)


def _before(col: np.ndarray, first) -> np.ndarray:
    """The value each step started from, in the column's own type (``first`` before step 1: a
    number, or an array of the value's shape)."""
    out = np.empty_like(col)
    if col.shape[0]:
        out[0] = np.asarray(first, dtype=np.float32 if col.dtype.itemsize == 2 else np.float64).astype(col.dtype)
        out[1:] = col[:-1]
    return out


def stalled(
    cols: dict[str, np.ndarray],
    config,
    other: dict[str, np.ndarray] | None = None,
    initial: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """``{"stalled_w": bool per step (and element), "stalled_b": ...}`` for one engine's columns.

    A state column this engine does not keep (a user's update that keeps no ``momentum_buffer``)
    is taken from ``other``, the other side's columns, to size the step's update. ``initial``:
    each parameter's initial value by name (default: the article's ``init_w``, ``init_b``)."""
    sgd = getattr(config, "optimizer", "sgd") == "sgd"
    opt = optimizers.get("sgd")
    lr = cols["lr"].astype(np.float64) if "lr" in cols else config.lr  # a schedule records its rate
    if initial is None:
        initial = {"w": config.init_w, "b": config.init_b}
    out = {}
    for name, init in initial.items():
        old = _before(cols[name], init)
        step_lr = lr.reshape(lr.shape + (1,) * (old.ndim - 1)) if np.ndim(lr) else lr
        with np.errstate(all="ignore"):
            g = cols["grad_" + name].astype(np.float64)
            if sgd:
                state = {
                    key: (cols if state_field(key, name) in cols else other)[state_field(key, name)].astype(np.float64)
                    for key in opt.state_keys(config)
                }
                d = opt.direction(old.astype(np.float64), g, state, config)
            else:  # the other optimizers: a step from a non-zero gradient (their directions: not yet)
                d = g
            step = step_lr * d
        out["stalled_" + name] = (cols[name] == old) & (step != 0) & np.isfinite(step) & np.isfinite(old)
    return out


def summary(flags: dict[str, np.ndarray]) -> list[Stall] | None:
    """The verdict's ``stalled``: ``None``, or one :class:`sgdtrace.verdict.Stall` per parameter that
    stalled (``first_step`` counts from 1 like the JSON's steps; a step counts where any element
    of the parameter stalled)."""
    out = []
    for field, flag in flags.items():
        name = field[len("stalled_") :]
        hit = np.flatnonzero(flag.reshape(flag.shape[0], -1).any(axis=1))
        if hit.size:
            out.append(Stall(name, int(hit[0]) + 1, int(hit.size)))
    return out or None


def spacing(value: float, dtype: str) -> tuple[float, float]:
    """The gaps from ``value`` (a value of the type) to its representable neighbours below and above."""
    from sgdtrace.dtypes import np_dtype

    t = np_dtype(dtype).type
    v = t(np.float32(value)) if np_dtype(dtype).itemsize == 2 else t(value)
    with np.errstate(all="ignore"):
        down, up = np.nextafter(v, t(-np.inf)), np.nextafter(v, t(np.inf))
    return float(v) - float(down), float(up) - float(v)
