"""One batch worked equation by equation: the numbers ``sgdtrace explain`` shows.

Every number comes from the hand engine's own functions (:func:`sgdtrace.engines.manual.forward_backward`
and the optimizer's ``update`` through the engine protocol), run at the parameters (and optimizer
state) the batch started from, in the run's dtype, so the page shows exactly what the engine
computed; :func:`explain_step` checks that they equal the trace's columns bit for bit. Torch's
values for the same batch come from the trace, i.e. from the real autograd + torch.optim loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sgdtrace.engines import manual
from sgdtrace.engines.protocol import state_field


@dataclass
class Explanation:
    """One batch: where it sits in the run, its samples, every node and factor, the update, torch's values."""

    trace: Any
    step: int  # 0-based global step
    epoch: int  # 1-based
    batch: int  # 1-based
    indices: np.ndarray
    x: np.ndarray  # the batch's samples in the run's dtype (float64 values)
    y: np.ndarray
    w0: float  # parameters (and optimizer state, by field: buf_w, ...) the batch started from
    b0: float
    state0: dict[str, float | None]
    nodes: dict[str, np.ndarray]  # a, c, d, e, dl_dd per sample (float64 copies of the dtype's values)
    loss: float
    grad_w: float
    grad_b: float
    w1: float
    b1: float
    state1: dict[str, float | None]
    matches_trace: bool  # the recomputed values equal the manual trace's columns bit for bit
    # --engine FILE.py: the values are sgdtrace's own (expected) at the parameters the user's file
    # started the step from; the file's own values for the step and, where it defines forward, its nodes
    user: dict[str, float] | None = None
    user_nodes: dict[str, np.ndarray] | None = None
    user_nodes_bad: dict[str, np.ndarray] | None = None  # per node and sample: beyond rounding of the expected
    user_name: str | None = None
    expected: dict[str, float] | None = None  # what the user's values should be: the update from ITS gradients
    #: per parameter: the spacing of the dtype's values around it, beside the update lr·d (the stall)
    spacing: dict[str, dict[str, Any]] | None = None
    # worked out here for the view (which renders them and computes nothing): the step's rate, SGD's
    # momentum, the schedule's closed form, the chain rule's constant factors, the optimizer's lines
    rate: float = 0.0
    momentum: float | None = None
    closed_rate: float | None = None
    chain: dict[str, int] | None = None
    lines: dict[str, list] | None = None  # by parameter: Line, for Adam, AdamW, RMSprop, Adagrad

    #: the scalar form (the article's w and b); FeatureExplanation is the vector form
    form = "scalar"

    @property
    def n(self) -> int:
        return int(self.indices.shape[0])

    @property
    def fields(self) -> list[str]:
        """The recorded fields, in the order the page lists them."""
        return ["loss", "grad_w", "grad_b", "w", "b", *self.state1]

    @property
    def values(self) -> dict[str, float | None]:
        """The hand engine's values for this step, by field."""
        return {
            "loss": self.loss,
            "grad_w": self.grad_w,
            "grad_b": self.grad_b,
            "w": self.w1,
            "b": self.b1,
            **self.state1,
        }

    def torch_value(self, field: str) -> float:
        return float(self.trace.torch[field][self.step])

    def user_ok(self, field: str) -> bool:
        """--engine: is the user's value within the step's rounding allowance of the expected one
        (sgdtrace's own, from the same starting parameters)?"""
        tol = float(self.trace.divergence[field].tol[self.step])
        return bool(abs(self.user[field] - self.expected[field]) <= tol)

    def ulp(self, field: str) -> int:
        return int(self.trace.divergence[field].ulp[self.step])


def _value(v: Any) -> float:
    return float(v.item()) if hasattr(v, "item") else float(v)


def _array(v: Any) -> np.ndarray:
    if hasattr(v, "cpu"):
        v = v.cpu().numpy()
    return np.asarray(v, dtype=np.float64)


def backend_for(trace) -> manual.ArrayBackend:
    """The array back end the run's hand engine used: NumPy on the CPU, torch tensors on a device."""
    cfg = trace.config
    if trace.device == "cpu":
        return manual.ArrayBackend("numpy", cfg.dtype)
    import torch

    return manual.ArrayBackend("torch", cfg.dtype, torch.device(trace.device))


def explain_step(trace, batch: int, epoch: int = 1) -> Explanation:
    """Recompute one step with the hand engine's functions, from the trace's state before it.

    A model of parameters with a shape (D features) is explained in vector form
    (:func:`explain_features`)."""
    model = getattr(trace, "model", None)
    if model is not None and model.name == "mlp":  # a network: layer by layer
        from sgdtrace.teaching.network import explain_network

        ex = explain_network(trace, batch, epoch)
        ex.rate = step_rate(trace, trace.plan.step(batch, epoch))
        return ex
    if model is not None and not model.scalar:
        return explain_features(trace, batch, epoch)
    k = trace.plan.step(batch, epoch)
    cfg = trace.config
    backend = backend_for(trace)
    eng = manual.engine(cfg, backend, trace.plan, schedule=getattr(trace, "schedule", None))
    hp = eng.hp_at(k) if eng.hp_at is not None else eng.hp
    man = trace.manual

    def start(field: str, init: float | None) -> float | None:
        return init if k == 0 else float(man[field][k - 1])

    w0, b0 = start("w", cfg.init_w), start("b", cfg.init_b)
    state0 = {state_field(key, p): start(state_field(key, p), None) for key in eng.state_keys for p in ("w", "b")}

    idx = trace.indices(k)
    xb = backend.asarray(trace.model.module.inputs(trace.model, trace.dataset.x[idx]))
    yb = backend.asarray(trace.dataset.y[idx])
    w, b = backend.param(w0), backend.param(b0)
    with np.errstate(all="ignore"):  # a blown-up step is shown with its inf and nan, as the run had them
        r = manual.forward_backward(w, b, xb, yb, len(idx), backend.scalar)
    states = {
        p: {
            key: backend.param(state0[state_field(key, p)])
            for key in eng.state_keys
            if state0[state_field(key, p)] is not None
        }
        for p in ("w", "b")
    }
    if k > 0:  # the optimizer's step count, as torch keeps it beside the state ("step")
        for st in states.values():
            st["step"] = k
    with np.errstate(all="ignore"):
        w1 = eng.update(w, r.grad_w, states["w"], hp)
        b1 = eng.update(b, r.grad_b, states["b"], hp)
    state1 = {state_field(key, p): _value(states[p][key]) for key in eng.state_keys for p in ("w", "b")}

    got = {"grad_w": r.grad_w, "grad_b": r.grad_b, "loss": r.loss, "w": w1, "b": b1, **state1}
    dtype = man["w"].dtype
    matches = all(
        np.array(_value(v), dtype=dtype).tobytes() == man[f][k : k + 1].tobytes() for f, v in got.items() if f in man
    )
    nodes = {name: _array(getattr(r, name)) for name in ("a", "c", "d", "e", "dl_dd")}
    e, j = divmod(k, trace.plan.steps_per_epoch)
    ex = Explanation(
        trace,
        k,
        e + 1,
        j + 1,
        idx,
        _array(xb),
        _array(yb),
        w0,
        b0,
        state0,
        nodes,
        _value(r.loss),
        _value(r.grad_w),
        _value(r.grad_b),
        _value(w1),
        _value(b1),
        state1,
        matches,
    )
    ex.spacing = _spacing(trace, k, {"w": (w0, _value(r.grad_w)), "b": (b0, _value(r.grad_b))}, state1)
    ex.rate, ex.closed_rate = step_rate(trace, k), closed_form_rate(trace, k)
    ex.momentum = step_momentum(trace, k) if cfg.optimizer == "sgd" else None
    ex.chain = {"dd/dc": manual.DD_DC, "dc/da": manual.DC_DA, "dc/db": manual.DC_DB}
    if cfg.optimizer != "sgd":
        ex.lines = {p: optimizer_lines(ex, p) for p in ("w", "b")}
    info = getattr(trace, "engine", None)
    if info is not None:  # the user's values beside the expected ones
        ex.user = {f: float(man[f][k]) for f in got if f in man}
        ex.user_nodes = info.forward if info.forward_step == k else None
        ex.user_nodes_bad = None if ex.user_nodes is None else judge_nodes(ex, ex.user_nodes)
        ex.user_name = info.name
        # the update expected from the user's own gradients (a wrong gradient is named once, at the gradient)
        states = {
            p: {
                key: backend.param(state0[state_field(key, p)])
                for key in eng.state_keys
                if state0[state_field(key, p)] is not None
            }
            for p in ("w", "b")
        }
        if k > 0:
            for st in states.values():
                st["step"] = k
        gw, gb = backend.param(ex.user["grad_w"]), backend.param(ex.user["grad_b"])
        uw1, ub1 = eng.update(w, gw, states["w"], hp), eng.update(b, gb, states["b"], hp)
        ex.expected = {
            "loss": ex.loss,
            "grad_w": ex.grad_w,
            "grad_b": ex.grad_b,
            "w": _value(uw1),
            "b": _value(ub1),
            **{state_field(key, p): _value(states[p][key]) for key in eng.state_keys for p in ("w", "b")},
        }
    return ex


def _node_scale(ex: Explanation, name: str) -> np.ndarray:
    """What the node is rounded from (the magnitude its rounding scales with), per sample."""
    wx = np.abs(ex.w0 * ex.x)
    m = wx + abs(ex.b0) + np.abs(ex.y)
    d = np.abs(ex.nodes["d"])
    return {"a": wx, "c": wx + abs(ex.b0), "d": m, "e": 2 * d * m + d * d, "dl_dd": 2 * m / ex.n}[name]


def judge_nodes(ex: Explanation, nodes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """--engine with forward: per node the user's file returned, per sample, whether it differs from
    the expected node beyond two roundings of what the node is computed from."""
    from sgdtrace.divergence import tolerances

    rtol, atol = tolerances(ex.trace.config)
    return {n: np.abs(nodes[n] - ex.nodes[n]) > atol + 2 * rtol * _node_scale(ex, n) for n in nodes if n in ex.nodes}


# ------------------------------------------------------------------ D features: the same, in vector form


@dataclass
class FeatureExplanation:
    """One batch of a model with parameters of a shape (linear on D features), in vector form:
    every node per sample (``a = x_i·w``, ``c``, ``d``, ``e``, ``dl/dd``), the gradients and the
    update per parameter, torch's values beside them. Values are float64 copies of the run's dtype."""

    trace: Any
    step: int  # 0-based global step
    epoch: int  # 1-based
    batch: int  # 1-based
    indices: np.ndarray
    x: np.ndarray  # (n, D)
    y: np.ndarray  # (n,)
    start: dict[str, np.ndarray]  # each parameter the batch started from
    state0: dict[str, np.ndarray | None]  # each state field before the step (None: not yet made)
    nodes: dict[str, np.ndarray]  # a, c, d, e, dl_dd per sample
    loss: float
    grads: dict[str, np.ndarray]  # by parameter
    new: dict[str, np.ndarray]  # each parameter after the update
    state1: dict[str, np.ndarray]  # each state field after the step
    matches_trace: bool  # the recomputed values equal the manual trace's columns bit for bit
    user: dict[str, Any] | None = None  # (a user's engine: not for these models)
    rate: float = 0.0  # the step's learning rate

    form = "vector"

    @property
    def n(self) -> int:
        return int(self.indices.shape[0])

    @property
    def fields(self) -> list[str]:
        names = list(self.start)
        return ["loss", *(f"grad_{p}" for p in names), *names, *self.state1]

    @property
    def values(self) -> dict[str, Any]:
        """The hand engine's values for this step, by field (arrays of each parameter's shape)."""
        return {
            "loss": self.loss,
            **{f"grad_{p}": g for p, g in self.grads.items()},
            **self.new,
            **self.state1,
        }

    def torch_value(self, field: str):
        return self.trace.torch[field][self.step].astype(np.float64)

    def ulp(self, field: str) -> int:
        """The largest distance in ulp over the field's elements."""
        return int(np.max(self.trace.divergence[field].ulp[self.step]))


def explain_features(trace, batch: int, epoch: int = 1) -> FeatureExplanation:
    """Recompute one step of a model with parameters of a shape with the hand engine's functions,
    from the trace's state before it, and check the values against the trace bit for bit."""
    k = trace.plan.step(batch, epoch)
    cfg, model = trace.config, trace.model
    backend = backend_for(trace)
    eng = manual.engine(cfg, backend, trace.plan, model, getattr(trace, "schedule", None))
    hp = eng.hp_at(k) if eng.hp_at is not None else eng.hp
    man = trace.manual
    names = model.names
    start = {p: trace.initial[p] if k == 0 else man[p][k - 1] for p in names}
    state0 = {
        state_field(key, p): (None if k == 0 else man[state_field(key, p)][k - 1])
        for key in eng.state_keys
        for p in names
    }
    idx = trace.indices(k)
    xb = backend.asarray(model.module.inputs(model, trace.dataset.x[idx]))
    yb = backend.asarray(trace.dataset.y[idx])
    params = {p: backend.param(np.asarray(start[p], dtype=np.float64)) for p in names}
    # a model written against ops (``OPS``: its ``forward_backward(ops, params, x, y, loss)``)
    own = model.module.forward_backward if getattr(model.module, "OPS", False) else None
    if own is not None:  # a model written against ops: its own nodes, by HandOps (the hand engine)
        from sgdtrace.models.ops import HandOps

        out = own(HandOps(cfg.dtype), params, xb, yb, cfg.loss)
        r = None
        grads = {p: out["grad_" + p] for p in names}
        loss_value = out["loss"]
        nodes = {key: _array(out[key]) for key in getattr(model.module, "EXPLAIN_NODES", ()) if key in out}
    else:
        r = manual.forward_backward(params["w"], params["b"], xb, yb, len(idx), backend.scalar)
        grads = {"w": r.grad_w, "b": r.grad_b}
        loss_value = r.loss
        nodes = {name: _array(getattr(r, name)) for name in ("a", "c", "d", "e", "dl_dd")}
    states = {p: {key: backend.param(state0[state_field(key, p)]) for key in eng.state_keys if k > 0} for p in names}
    if k > 0:  # the optimizer's step count, as torch keeps it beside the state ("step")
        for st in states.values():
            st["step"] = k
    new = {p: eng.update(params[p], grads[p], states[p], hp) for p in names}
    state1 = {state_field(key, p): _array(states[p][key]) for key in eng.state_keys for p in names}
    got = {"loss": loss_value, **{f"grad_{p}": g for p, g in grads.items()}, **new}
    dtype = man["w"].dtype
    matches = all(
        np.asarray(_array(v), dtype=np.float64).astype(dtype).tobytes() == man[f][k].tobytes() for f, v in got.items()
    ) and all(np.asarray(v).astype(dtype).tobytes() == man[f][k].tobytes() for f, v in state1.items())
    e, j = divmod(k, trace.plan.steps_per_epoch)
    ex = FeatureExplanation(
        trace,
        k,
        e + 1,
        j + 1,
        idx,
        _array(xb),
        _array(yb),
        {p: np.asarray(v, dtype=np.float64) for p, v in start.items()},
        {f: None if v is None else np.asarray(v, dtype=np.float64) for f, v in state0.items()},
        nodes,
        _value(loss_value),
        {p: _array(g) for p, g in grads.items()},
        {p: _array(v) for p, v in new.items()},
        state1,
        matches,
    )
    ex.rate = step_rate(trace, k)
    return ex


# ------------------------------------------------------------------ data-parallel SGD (--world-size N)


class _RankView:
    """One rank of a ``--world-size N`` trace, seen as a one-process trace: its own batch, its
    own gradients and loss (by hand and torch's, judged); w, b and the state are the run's."""

    def __init__(self, trace, rank: int):
        rt = trace.ranks
        self.rank, self.config, self.device, self.dataset = rank, trace.config, trace.device, trace.dataset
        self.plan, self.model, self.initial = trace.plan, trace.model, trace.initial
        self.stalled = getattr(trace, "stalled", None)
        self._plan = rt.plan.rank_plan(rank)
        self.manual = dict(trace.manual, **{f: rt.manual[f][:, rank] for f in rt.manual})
        self.torch = dict(trace.torch, **{f: rt.torch[f][:, rank] for f in rt.torch})
        self.divergence = dict(trace.divergence)
        for f, d in rt.divergence.items():
            self.divergence[f] = type(d)(*(getattr(d, name)[:, rank] for name in d.__dataclass_fields__))

    def indices(self, step: int) -> np.ndarray:
        return self._plan.indices(step)


@dataclass
class DistributedExplanation:
    """One step of a DDP run: each rank's Equations 1-3 and 6-11 on its batch, DDP's average of
    the ranks' gradients (the all-reduce), and the one update every rank makes with it."""

    ranks: list[Explanation]  # each rank's forward and backward (their update parts are not used)
    step: Explanation  # the step: the averaged gradients, the update, the run's torch values
    inv_n: float  # 1/N as the multiply used it (rounded to its compute type: float32 for 16 bits)
    matches_trace: bool


def explain_distributed(trace, batch: int, epoch: int = 1) -> DistributedExplanation:
    """Recompute one step of a DDP run with the hand engine's functions, rank by rank."""
    import dataclasses

    from sgdtrace.engines import ddp

    ranks = [explain_step(_RankView(trace, r), batch, epoch) for r in range(trace.ranks.world_size)]
    k = ranks[0].step
    backend = backend_for(trace)
    eng = manual.engine(trace.config, backend, trace.plan)
    hp = eng.hp_at(k) if eng.hp_at is not None else eng.hp  # under a schedule: this step's rate
    grads = {p: ddp.average([backend.scalar(getattr(ex, "grad_" + p)) for ex in ranks], backend) for p in ("w", "b")}
    first = ranks[0]
    states = {
        p: {
            key: backend.param(first.state0[state_field(key, p)])
            for key in eng.state_keys
            if first.state0[state_field(key, p)] is not None
        }
        for p in ("w", "b")
    }
    if k > 0:  # the optimizer's step count, as torch keeps it beside the state ("step")
        for st in states.values():
            st["step"] = k
    w1 = eng.update(backend.param(first.w0), grads["w"], states["w"], hp)
    b1 = eng.update(backend.param(first.b0), grads["b"], states["b"], hp)
    state1 = {state_field(key, p): _value(states[p][key]) for key in eng.state_keys for p in ("w", "b")}
    loss = float(np.mean([ex.loss for ex in ranks]))
    idx = trace.indices(k)
    step = dataclasses.replace(
        first,
        trace=trace,
        indices=idx,
        loss=loss,
        grad_w=_value(grads["w"]),
        grad_b=_value(grads["b"]),
        w1=_value(w1),
        b1=_value(b1),
        state1=state1,
    )
    man = trace.manual
    got = {"grad_w": step.grad_w, "grad_b": step.grad_b, "w": step.w1, "b": step.b1, **state1}
    dtype = man["w"].dtype
    matches = all(np.array(v, dtype=dtype).tobytes() == man[f][k : k + 1].tobytes() for f, v in got.items())
    matches &= all(
        np.array(ex.grad_w, dtype=dtype).tobytes() == trace.ranks.manual["grad_w"][k, r : r + 1].tobytes()
        for r, ex in enumerate(ranks)
    )
    inv_n = np.float32(1.0 / len(ranks)) if backend.reduced else backend.scalar(1.0 / len(ranks))
    return DistributedExplanation(ranks, step, float(inv_n), matches)


def _spacing(trace, k: int, params: dict, state1: dict) -> dict[str, dict[str, Any]] | None:
    """Per parameter: the gaps to the neighbouring values of the dtype (below, above), the update
    ``lr·d`` (float64), and whether the step stalled (as the trace recorded it)."""
    from sgdtrace import stall
    from sgdtrace.engines import optimizers

    cfg = trace.config
    if cfg.optimizer != "sgd":
        return None
    out = {}
    for p, (p0, g) in params.items():
        state = {key: state1[state_field(key, p)] for key in optimizers.get("sgd").state_keys(cfg)}
        below, above = stall.spacing(p0, cfg.dtype)
        step = step_rate(trace, k) * float(optimizers.get("sgd").direction(p0, g, state, cfg))
        out[p] = {
            "below": below,
            "above": above,
            "update": step,
            "stalled": bool(trace.stalled["manual"][f"stalled_{p}"][k]) if trace.stalled else False,
        }
    return out


# ------------------------------------------------------------------ the optimizer's lines, with numbers


@dataclass
class Line:
    """One line of the optimizer's algorithm at this step: ``lhs = formula`` with ``values`` put in
    (``template`` names them in braces), its ``value``, and the recorded field torch's value is in."""

    lhs: str
    formula: str
    template: str
    values: dict[str, float]
    value: float
    field: str | None = None


def step_rate(trace, k: int) -> float:
    """The learning rate step ``k`` used (the schedule's, else the config's)."""
    lr = trace.manual.get("lr")
    return float(lr[k]) if lr is not None else float(trace.config.lr)


def step_momentum(trace, k: int) -> float:
    """SGD's momentum at step ``k``: OneCycleLR's cycled value, else the config's."""
    from sgdtrace.engines.optimizers import schedules

    cfg = trace.config
    if not schedules.cycles_momentum(cfg):
        return float(cfg.momentum)
    table = getattr(trace, "schedule", None) or schedules.table(cfg, trace.plan)  # the run's, worked out once
    return float(table.rows[int(table.at[k])][schedules.momentum_key(cfg)])


def closed_form_rate(trace, k: int) -> float | None:
    """The closed form of the schedule's rate at step ``k`` (torch's ``_get_closed_form_lr``), where
    torch has one that sgdtrace shows (StepLR, ExponentialLR, CosineAnnealingLR)."""
    from sgdtrace.engines.optimizers import schedules

    sched = trace.config.scheduler
    if sched is None:
        return None
    table = getattr(trace, "schedule", None)
    t = int(table.at[k] if table is not None else schedules.index_of_step(trace.config, trace.plan)[k])
    a, base = dict(sched.args), trace.config.lr
    if sched.name == "CosineAnnealingLR":
        return schedules.cosine_closed_form(base, t, a["T_max"], a["eta_min"])
    if sched.name == "StepLR":
        return base * a["gamma"] ** (t // a["step_size"])
    if sched.name == "ExponentialLR":
        return base * a["gamma"] ** t
    return None


def optimizer_lines(ex: Explanation, param: str) -> list[Line]:
    """Adam, AdamW, RMSprop or Adagrad at this step, line by line, for one parameter, computed with
    the hand module's own functions in the run's dtype, with the coefficients as its update takes
    them (``hp``: kept in float32 where torch's 16-bit kernels keep them; SGD's lines are the
    view's Equations 4-5). A step that overflows shows its inf and nan, as the table does, with no
    NumPy warning."""
    with np.errstate(all="ignore"):
        return _optimizer_lines(ex, param)


def _optimizer_lines(ex: Explanation, param: str) -> list[Line]:
    from sgdtrace.engines.optimizers import get

    trace, k = ex.trace, ex.step
    cfg = trace.config
    opt = get(cfg.optimizer)
    backend = backend_for(trace)
    s = backend.scalar
    eng = manual.engine(cfg, backend, trace.plan, schedule=getattr(trace, "schedule", None))
    hp = eng.hp_at(k) if eng.hp_at is not None else eng.hp
    p0 = backend.param(ex.w0 if param == "w" else ex.b0)
    g = backend.param(ex.grad_w if param == "w" else ex.grad_b)
    st = {
        key: backend.param(ex.state0[state_field(key, param)])
        for key in eng.state_keys
        if ex.state0[state_field(key, param)] is not None
    }
    t = k + 1
    f = lambda v: _value(v)  # noqa: E731
    out: list[Line] = []
    if cfg.maximize:
        g = opt.maximized(g)
        out.append(Line("g", f"−dl/d{param}", "−{g0}", {"g0": -f(g)}, f(g)))
    name = cfg.optimizer
    if cfg.weight_decay != 0 and name == "adamw":
        p1 = opt.decoupled_decay(p0, hp.decay)
        out.append(
            Line(
                param,
                f"{param}·(1 − lr·weight_decay)",
                "{p}·(1 − {lr}·{wd})",
                {"p": f(p0), "lr": hp.lr, "wd": hp.weight_decay},
                f(p1),
            )
        )
        p0 = p1
    elif cfg.weight_decay != 0:
        g1 = opt.decayed(g, p0, s(hp.weight_decay))
        out.append(
            Line(
                "g",
                f"g + weight_decay·{param}",
                "{g} + {wd}·{p}",
                {"g": f(g), "wd": hp.weight_decay, "p": f(p0)},
                f(g1),
            )
        )
        g = g1
    zero = backend.param(0.0)
    if name in ("adam", "adamw"):
        m0, v0 = st.get("exp_avg", zero), st.get("exp_avg_sq", zero)
        m = opt.first_moment(m0, g, hp.one_minus_beta1)
        out.append(
            Line(
                "m",
                "lerp(m, g, 1 − β1) = m + (1 − β1)·(g − m)",
                "{m} + {c}·({g} − {m})",
                {"m": f(m0), "c": 1 - hp.beta1, "g": f(g)},
                f(m),
                state_field("exp_avg", param),
            )
        )
        v = opt.second_moment(v0, g, hp.beta2_s, hp.one_minus_beta2)
        out.append(
            Line(
                "v",
                "β2·v + (1 − β2)·g²",
                "{b2}·{v} + {c}·{g}²",
                {"b2": hp.beta2, "v": f(v0), "c": 1 - hp.beta2, "g": f(g)},
                f(v),
                state_field("exp_avg_sq", param),
            )
        )
        if hp.amsgrad:
            vm0 = st.get("max_exp_avg_sq", zero)
            v = opt.running_max(vm0, v)
            out.append(
                Line(
                    "vmax",
                    "max(vmax, v)",
                    "max({vm}, {v})",
                    {"vm": f(vm0), "v": out[-1].value},
                    f(v),
                    state_field("max_exp_avg_sq", param),
                )
            )
        bc1, bc2 = opt.bias_correction(hp.beta1, t), opt.bias_correction(hp.beta2, t)
        out.append(Line("bc1", "1 − β1^t", "1 − {b1}^{t}", {"b1": hp.beta1, "t": t}, bc1))
        out.append(Line("bc2", "1 − β2^t", "1 − {b2}^{t}", {"b2": hp.beta2, "t": t}, bc2))
        step_size = hp.lr / bc1
        out.append(Line("step_size", "lr / bc1", "{lr} / {bc1}", {"lr": hp.lr, "bc1": bc1}, step_size))
        denom = opt.denominator(v, hp.keep(bc2**0.5), hp.eps_s)
        out.append(
            Line(
                "denom",
                "sqrt(v)/sqrt(bc2) + eps (eps outside the root)",
                "sqrt({v})/sqrt({bc2}) + {eps}",
                {"v": f(v), "bc2": bc2, "eps": hp.eps},
                f(denom),
            )
        )
        p1 = opt.stepped(p0, m, denom, hp.keep(-step_size))
        out.append(
            Line(
                param,
                f"{param} − step_size·m/denom",
                "{p} − {ss}·{m}/{d}",
                {"p": f(p0), "ss": step_size, "m": f(m), "d": f(denom)},
                f(p1),
                param,
            )
        )
    elif name == "rmsprop":
        v0 = st.get("square_avg", zero)
        v = opt.square_average(v0, g, hp.mul(hp.alpha), hp.keep(1 - hp.alpha))
        out.append(
            Line(
                "v",
                "α·v + (1 − α)·g²",
                "{a}·{v} + {c}·{g}²",
                {"a": hp.alpha, "v": f(v0), "c": 1 - hp.alpha, "g": f(g)},
                f(v),
                state_field("square_avg", param),
            )
        )
        if hp.centered:
            ga0 = st.get("grad_avg", zero)
            ga = opt.grad_average(ga0, g, hp.keep(1 - hp.alpha))
            out.append(
                Line(
                    "g_avg",
                    "lerp(g_avg, g, 1 − α)",
                    "{ga} + {c}·({g} − {ga})",
                    {"ga": f(ga0), "c": 1 - hp.alpha, "g": f(g)},
                    f(ga),
                    state_field("grad_avg", param),
                )
            )
            root = opt.centered_root(v, ga)
            out.append(Line("avg", "sqrt(v − g_avg²)", "sqrt({v} − {ga}²)", {"v": f(v), "ga": f(ga)}, f(root)))
        else:
            root = opt.root(v)
            out.append(Line("avg", "sqrt(v)", "sqrt({v})", {"v": f(v)}, f(root)))
        avg = root + s(hp.eps)
        out.append(Line("avg", "avg + eps", "{a} + {eps}", {"a": f(root), "eps": hp.eps}, f(avg)))
        if hp.momentum > 0:
            b0 = st.get("momentum_buffer", zero)
            buf = opt.buffered(b0, g, avg, hp.mul(hp.momentum))
            out.append(
                Line(
                    "buf",
                    "momentum·buf + g/avg",
                    "{mu}·{b} + {g}/{a}",
                    {"mu": hp.momentum, "b": f(b0), "g": f(g), "a": f(avg)},
                    f(buf),
                    state_field("momentum_buffer", param),
                )
            )
            p1 = opt.descend(p0, buf, s(-hp.lr))
            out.append(
                Line(param, f"{param} − lr·buf", "{p} − {lr}·{b}", {"p": f(p0), "lr": hp.lr, "b": f(buf)}, f(p1), param)
            )
        else:
            p1 = opt.stepped(p0, g, avg, hp.keep(-hp.lr))
            out.append(
                Line(
                    param,
                    f"{param} − lr·g/avg",
                    "{p} − {lr}·{g}/{a}",
                    {"p": f(p0), "lr": hp.lr, "g": f(g), "a": f(avg)},
                    f(p1),
                    param,
                )
            )
    elif name == "adagrad":  # (an optimizer without lines here: explain shows none for its update)
        clr = opt.decayed_rate(hp.lr, hp.lr_decay, t)
        out.append(
            Line(
                "clr",
                "lr / (1 + (t − 1)·lr_decay)",
                "{lr} / (1 + ({t} − 1)·{d})",
                {"lr": hp.lr, "t": t, "d": hp.lr_decay},
                clr,
            )
        )
        s0 = st.get("sum", backend.param(s(hp.initial_accumulator_value)))
        total = opt.accumulated(s0, g)
        out.append(Line("sum", "sum + g²", "{s} + {g}²", {"s": f(s0), "g": f(g)}, f(total), state_field("sum", param)))
        std = opt.deviation(total, s(hp.eps))
        out.append(Line("std", "sqrt(sum) + eps", "sqrt({s}) + {eps}", {"s": f(total), "eps": hp.eps}, f(std)))
        if hp.foreach:  # torch's foreach step: the numerator g·(−clr) first
            neg = (s if cfg.weight_decay != 0 or cfg.maximize else hp.kept or s)(-clr)
            p1 = opt.stepped_foreach(p0, g, std, neg)
        else:
            p1 = opt.stepped(p0, g, std, (hp.kept or s)(-clr))
        out.append(
            Line(
                param,
                f"{param} − clr·g/std",
                "{p} − {c}·{g}/{sd}",
                {"p": f(p0), "c": clr, "g": f(g), "sd": f(std)},
                f(p1),
                param,
            )
        )
    return out
