"""The engine protocol: the two parts every engine has, and the loop that drives them.

The article itself draws the seam. One batch's forward and backward pass (Equations 1-3 and
6-11) is one part; the optimizer's step (Equations 4-5, grown into ``torch.optim``'s
algorithms) is the other::

    gradients(w, b, x, y)          -> (loss, grad_w, grad_b)      the article's form
    gradients(params, x, y)        -> (loss, grads)               every model
    update(param, grad, state, hp) -> new param

The article's form takes NumPy scalars ``w``, ``b`` and 1-D ``x``, ``y``. The general form takes
``params``, a dict of arrays by the model's parameter names in their declared shapes
(:class:`sgdtrace.models.Param`), ``x`` of shape (n, D) and ``y`` (n,), and returns the loss and
a dict of gradients of the same shapes. ``update`` is called per parameter, with arrays of the
parameter's shape (element-wise, as torch's single-tensor optimizers are).

``state`` is a dict kept for one parameter across steps (empty before the first), with
torch's own names for what the optimizer keeps (``momentum_buffer`` for SGD); ``hp`` holds the
optimizer's hyper-parameters by torch's keyword names. sgdtrace's hand-worked gradients
(:mod:`sgdtrace.engines.manual`) and each hand-worked optimizer
(:mod:`sgdtrace.engines.optimizers`) are implementations; :func:`run` drives any pair of them
over a batch plan and fills the same columns the torch side fills.

The columns a run records follow from the model's parameters and the optimizer's state: per
parameter ``grad_<p>``, then ``loss``, then per parameter ``<p>`` (the five fields of the
article's table, :data:`FIELDS`, for its w and b), then one column per state entry and
parameter (:func:`state_field`); each column is ``(steps, *shape)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgdtrace.labels import STATE_NAMES

#: the values of the article's table, per step: the batch's loss and gradients at the
#: parameters the step started from, and the parameters after its update
FIELDS = ("grad_w", "grad_b", "loss", "w", "b")
#: the column of the learning rate each step used (float64), recorded under a schedule
LR = "lr"
#: the article model's parameters, as the fields name them
PARAMS = ("w", "b")
#: the recorded names of state entries that do not follow ``<state>_<param>`` (part 1's names)
_STATE_NAMES = STATE_NAMES

#: engines report progress every this many steps (and at each epoch's end): fine enough for a
#: bar over a ten-million-sample epoch, one integer comparison per step otherwise
PROGRESS_EVERY = 256


def state_field(key: str, param: str) -> str:
    """The column of one parameter's state entry: ``buf_w`` for SGD's momentum buffer, else
    ``<state>_<param>`` (``exp_avg_w``)."""
    return f"{_STATE_NAMES.get(key, key)}_{param}"


def state_fields(keys, params=PARAMS) -> tuple[str, ...]:
    """The columns of the given state entries, parameter by parameter (``buf_w, buf_b``)."""
    return tuple(state_field(key, p) for key in keys for p in params)


def value_fields(params=PARAMS) -> tuple[str, ...]:
    """The gradients, the loss and the parameters (the article's :data:`FIELDS` for its w and b)."""
    return tuple(f"grad_{p}" for p in params) + ("loss",) + tuple(params)


def fields_for(state_keys, params=PARAMS) -> tuple[str, ...]:
    """Every column a run records, in the order the views show them (``params``: the names)."""
    return value_fields(params) + state_fields(state_keys, params)


def article_model(config=None):
    """The article's model: linear, ``w`` and ``b`` scalars."""
    from sgdtrace import models

    return models.build(config, None)


def model_for(config, x):
    """The model of ``config`` on the samples ``x``: the article's form for 1-D x, or one column
    without ``config.features``; D features otherwise."""
    from sgdtrace import models

    x = np.asarray(x)
    features = getattr(config, "features", None)
    if features is None and (x.ndim == 1 or x.shape[1] == 1):
        return models.build(config, None)
    return models.build(config, features if features is not None else int(x.shape[1]))


@dataclass(frozen=True)
class Engine:
    """One side of the judge: a ``gradients`` part and an ``update`` part with its hyper-parameters.

    ``state_keys`` names the state entries ``update`` keeps that are recorded (and judged) per
    step, in torch's names. ``hp_at``: under a learning-rate schedule, the hyper-parameters of step
    ``k`` (``hp_at(k)``, in place of ``hp``), and ``lr_at(k)`` the rate it used (a Python float),
    recorded as the float64 column ``lr``.
    """

    name: str
    gradients: Callable[..., tuple]
    update: Callable[[Any, Any, dict, Any], Any]
    hp: Any
    state_keys: tuple[str, ...] = ()
    hp_at: Callable[[int], Any] | None = None
    lr_at: Callable[[int], float] | None = None
    #: the model's parameters (:class:`sgdtrace.models.Param`); None: the article's scalar w and b,
    #: with the four-argument ``gradients(w, b, x, y)``
    params: tuple | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return PARAMS if self.params is None else tuple(p.name for p in self.params)

    @property
    def article_form(self) -> bool:
        """The four-argument ``gradients(w, b, x, y)`` on scalars (every parameter a scalar)."""
        return self.params is None or all(p.shape == () for p in self.params)

    @property
    def fields(self) -> tuple[str, ...]:
        return fields_for(self.state_keys, self.names)


def run(
    engine: Engine,
    x: np.ndarray,
    y: np.ndarray,
    plan,
    init: dict[str, Any],
    backend,
    progress: Callable[[int], None] | None = None,
    loop_context: Callable[[], Any] = contextlib.nullcontext,
    reset: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Train with ``engine`` over ``plan``; return one column per field (see :attr:`Engine.fields`).

    ``reset`` (``--judge step``): the other side's columns (torch's), by field; each step from the
    second on starts from their values at the previous step's end: every parameter, and every
    recorded state entry (torch's names: :func:`state_field`), so that each step is judged alone.

    ``init``: each parameter's initial value by name (a number, or a float64 array of its shape).
    ``x``: (n, D), or 1-D (n,) in the article's form.

    ``backend`` (:class:`sgdtrace.engines.manual.ArrayBackend`) says where the arrays live. Per
    step nothing leaves the device: the values are written into preallocated columns, which are
    copied to the host once, at the end. Everything copied to the device (samples, each epoch's
    order) goes there before the loop; the loop runs inside ``loop_context()`` (the CUDA tests
    put ``torch.cuda.set_sync_debug_mode("error")`` there). Overflow is a result (a blow-up that
    the verdict reports), so NumPy's floating-point warnings are silenced.
    """
    shapes = {p: () for p in PARAMS} if engine.params is None else {p.name: p.shape for p in engine.params}
    cols = {f: backend.column(plan.n_steps, shapes.get(_param_of(f, shapes), ())) for f in engine.fields}
    if engine.hp_at is not None:
        cols[LR] = np.empty(plan.n_steps, dtype=np.float64)
    xs, ys = backend.asarray(samples(x, engine.article_form)), backend.asarray(y)
    orders = [backend.index(order) for order in plan.orders]
    report = PROGRESS_EVERY if progress is not None else -1
    values = {p: backend.param(init[p]) for p in shapes}
    restart = None if reset is None else _restart(reset, shapes, engine.state_keys, backend)
    with loop_context(), np.errstate(all="ignore"):
        if restart is not None:
            _loop_step(engine, xs, ys, orders, plan.batch_sizes().tolist(), values, cols, progress, report, restart)
        elif engine.article_form:
            _loop(
                engine, xs, ys, orders, plan.batch_sizes().tolist(), *values.values(), backend, cols, progress, report
            )
        else:
            _loop_params(engine, xs, ys, orders, plan.batch_sizes().tolist(), values, cols, progress, report)
    return {f: c if f == LR else backend.to_numpy(c) for f, c in cols.items()}


def samples(x, article_form: bool) -> np.ndarray:
    """The inputs as ``gradients`` takes them: 1-D in the article's form (its one x column), else (n, D)."""
    x = np.asarray(x)
    if article_form:
        return x.reshape(x.shape[0], -1)[:, 0] if x.ndim > 1 else x
    return x.reshape(x.shape[0], -1)


def _param_of(field: str, shapes: dict) -> str | None:
    """The parameter a field is of (``grad_w``, ``w``, ``buf_w``, ``exp_avg_sq_w``: ``w``), or None (``loss``)."""
    if field in shapes:
        return field
    for p in shapes:
        if field.endswith("_" + p):
            return p
    return None


def _loop(engine: Engine, xs, ys, orders, size_list, w, b, backend, cols, progress, report) -> None:
    """The per-step work: the gradients on each batch, each parameter's update, the columns."""
    gradients, update, hp, hp_at, lr_at = engine.gradients, engine.update, engine.hp, engine.hp_at, engine.lr_at
    lr_col = cols.get(LR)
    gw_col, gb_col, l_col, w_col, b_col = (cols[f] for f in FIELDS)
    state_w: dict[str, Any] = {}
    state_b: dict[str, Any] = {}
    # (column, state dict, key) for every recorded state entry
    recorded = [
        (cols[state_field(key, p)], st, key) for key in engine.state_keys for p, st in (("w", state_w), ("b", state_b))
    ]
    k = 0
    for order in orders:
        xe, ye = backend.take(xs, order), backend.take(ys, order)
        start = 0
        for n in size_list:
            xb, yb = xe[start : start + n], ye[start : start + n]
            start += n
            if hp_at is not None:  # a schedule: this step's rate (and momentum or beta1)
                hp = hp_at(k)
                lr_col[k] = lr_at(k)
            loss, gw, gb = gradients(w, b, xb, yb)  # forward and backward on the batch
            w = update(w, gw, state_w, hp)  # the optimizer's step, one parameter at a time
            b = update(b, gb, state_b, hp)
            gw_col[k] = gw
            gb_col[k] = gb
            l_col[k] = loss
            w_col[k] = w
            b_col[k] = b
            for col, st, key in recorded:
                col[k] = st[key]
            k += 1
            if k == report:
                progress(k)
                report += PROGRESS_EVERY
        if progress is not None:
            progress(k)


def _loop_params(engine: Engine, xs, ys, orders, size_list, params: dict, cols, progress, report) -> None:
    """The per-step work for every model: ``gradients(params, x, y) -> (loss, grads)`` on each
    batch, each parameter's update (element-wise on its array), the columns."""
    gradients, update, hp, hp_at, lr_at = engine.gradients, engine.update, engine.hp, engine.hp_at, engine.lr_at
    lr_col = cols.get(LR)
    names = tuple(params)
    states: dict[str, dict[str, Any]] = {p: {} for p in names}
    grad_cols = [(p, cols["grad_" + p]) for p in names]
    param_cols = [(p, cols[p]) for p in names]
    l_col = cols["loss"]
    recorded = [(cols[state_field(key, p)], states[p], key) for key in engine.state_keys for p in names]
    k = 0
    for order in orders:
        xe, ye = (xs, ys) if order is None else (xs[order], ys[order])
        start = 0
        for n in size_list:
            xb, yb = xe[start : start + n], ye[start : start + n]
            start += n
            if hp_at is not None:
                hp = hp_at(k)
                lr_col[k] = lr_at(k)
            loss, grads = gradients(dict(params), xb, yb)
            for p in names:
                params[p] = update(params[p], grads[p], states[p], hp)
            l_col[k] = loss
            for p, col in grad_cols:
                col[k] = grads[p]
            for p, col in param_cols:
                col[k] = params[p]
            for col, st, key in recorded:
                col[k] = st[key]
            k += 1
            if k == report:
                progress(k)
                report += PROGRESS_EVERY
        if progress is not None:
            progress(k)


def _restart(reset: dict[str, np.ndarray], shapes: dict, state_keys, backend) -> Callable[[int, dict, dict], None]:
    """``restart(k, params, states)``: set the parameters and the recorded state entries to the other
    side's values at the end of step ``k - 1`` (``--judge step``), in the engine's array type."""
    names = tuple(shapes)
    entries = [
        (p, key, reset[state_field(key, p)]) for key in state_keys for p in names if state_field(key, p) in reset
    ]

    def value(col, k):
        v = col[k]
        return backend.param(float(v) if np.ndim(v) == 0 else np.asarray(v, dtype=np.float64))

    def restart(k: int, params: dict, states: dict) -> None:
        for p in names:
            params[p] = value(reset[p], k - 1)
        for p, key, col in entries:
            states[p][key] = value(col, k - 1)

    return restart


def _loop_step(engine: Engine, xs, ys, orders, size_list, params: dict, cols, progress, report, restart) -> None:
    """:func:`_loop_params` (or the article's four-argument form) with every step from the second
    on started from the other side's values (``--judge step``)."""
    gradients, update, hp, hp_at, lr_at = engine.gradients, engine.update, engine.hp, engine.hp_at, engine.lr_at
    lr_col = cols.get(LR)
    names = tuple(params)
    article = engine.article_form
    states: dict[str, dict[str, Any]] = {p: {} for p in names}
    recorded = [(cols[state_field(key, p)], states[p], key) for key in engine.state_keys for p in names]
    k = 0
    for order in orders:
        xe, ye = (xs, ys) if order is None else (xs[order], ys[order])
        start = 0
        for n in size_list:
            xb, yb = xe[start : start + n], ye[start : start + n]
            start += n
            if k > 0:
                restart(k, params, states)
            if hp_at is not None:
                hp = hp_at(k)
                lr_col[k] = lr_at(k)
            if article:
                loss, gw, gb = gradients(params["w"], params["b"], xb, yb)
                grads = {"w": gw, "b": gb}
            else:
                loss, grads = gradients(dict(params), xb, yb)
            for p in names:
                params[p] = update(params[p], grads[p], states[p], hp)
            cols["loss"][k] = loss
            for p in names:
                cols["grad_" + p][k] = grads[p]
                cols[p][k] = params[p]
            for col, st, key in recorded:
                col[k] = st[key]
            k += 1
            if k == report:
                progress(k)
                report += PROGRESS_EVERY
        if progress is not None:
            progress(k)
