"""The ``explain`` view: one batch worked equation by equation, with the numbers substituted.

Every number comes from the manual engine's own functions (:func:`~sgdtrace.engines.engine.forward_backward`
and :func:`~sgdtrace.engines.engine.sgd_update`), run at the parameters the batch started from, in the
run's dtype, so the page shows exactly what the engine computed; :func:`explain_step` checks that they
equal the trace's columns bit for bit. Torch's values for the same batch come from the trace, i.e. from
the real autograd + optim.SGD loop.

Equation numbers are the article's; the derivative names are the correct ones (the article's text
has OCR-like slips such as "day/day" for de/dd and "CC/yes" for dc/da).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich import box

from sgdtrace.engines import manual as engine
from sgdtrace.errors import ConfigError
from sgdtrace.views.fmt import num

#: per-sample rows and sum terms written out before the rest is elided
MAX_SAMPLES = 8
MAX_TERMS = 4


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
    w0: float  # parameters (and buffers) the batch started from
    b0: float
    buf0: dict[str, float | None]
    nodes: dict[str, np.ndarray]  # a, c, d, e, dl_dd per sample (float64 copies of the dtype's values)
    loss: float
    grad_w: float
    grad_b: float
    w1: float
    b1: float
    buf1: dict[str, float | None]
    matches_trace: bool  # the recomputed values equal the manual trace's columns bit for bit

    @property
    def n(self) -> int:
        return int(self.indices.shape[0])

    def torch_value(self, field: str) -> float:
        return float(self.trace.torch[field][self.step])

    def ulp(self, field: str) -> int:
        return int(self.trace.divergence[field].ulp[self.step])


def _value(v: Any) -> float:
    return float(v.item()) if hasattr(v, "item") else float(v)


def _array(v: Any) -> np.ndarray:
    if hasattr(v, "cpu"):
        v = v.cpu().numpy()
    return np.asarray(v, dtype=np.float64)


def step_of(plan, batch: int, epoch: int = 1) -> int:
    """The 0-based step of (epoch, batch), both 1-based, in a batch plan; a clear error when out of range."""
    spe, epochs = plan.steps_per_epoch, plan.epochs
    if not 1 <= epoch <= epochs:
        raise ConfigError(f"--epoch {epoch}: this run has {epochs} epoch{'s' if epochs != 1 else ''}; "
                          f"allowed: 1..{epochs}")
    if not 1 <= batch <= spe:
        raise ConfigError(f"--batch {batch}: each epoch of this run has {spe} batch{'es' if spe != 1 else ''}; "
                          f"allowed: 1..{spe}")
    return (epoch - 1) * spe + (batch - 1)


def explain_step(trace, batch: int, epoch: int = 1) -> Explanation:
    """Recompute one step with the manual engine's functions, from the trace's state before it."""

    k = step_of(trace.plan, batch, epoch)
    cfg = trace.config
    if trace.device == "cpu":
        backend = engine.ArrayBackend("numpy", cfg.dtype)
    else:  # the engine ran with torch tensors on the device: recompute the same way
        import torch

        backend = engine.ArrayBackend("torch", cfg.dtype, torch.device(trace.device))
    man = trace.manual
    momentum = "buf_w" in man
    w0 = cfg.init_w if k == 0 else float(man["w"][k - 1])
    b0 = cfg.init_b if k == 0 else float(man["b"][k - 1])
    buf0 = {f: (None if k == 0 or not momentum else float(man[f][k - 1])) for f in ("buf_w", "buf_b")}

    idx = trace.indices(k)
    xb = backend.asarray(trace.dataset.x[idx])
    yb = backend.asarray(trace.dataset.y[idx])
    w, b = backend.param(w0), backend.param(b0)
    r = engine.forward_backward(w, b, xb, yb, len(idx), backend.scalar)
    h = engine.make_hyper(cfg, backend.scalar)
    bw = None if buf0["buf_w"] is None else backend.param(buf0["buf_w"])
    bb = None if buf0["buf_b"] is None else backend.param(buf0["buf_b"])
    w1, bw1 = engine.sgd_update(w, r.grad_w, bw, h, k == 0)
    b1, bb1 = engine.sgd_update(b, r.grad_b, bb, h, k == 0)
    buf1 = {"buf_w": None if bw1 is None else _value(bw1), "buf_b": None if bb1 is None else _value(bb1)}

    got = {"grad_w": r.grad_w, "grad_b": r.grad_b, "loss": r.loss, "w": w1, "b": b1}
    if momentum:
        got.update(buf_w=bw1, buf_b=bb1)
    dtype = man["w"].dtype
    matches = all(np.array(_value(v), dtype=dtype).tobytes() == man[f][k:k + 1].tobytes() for f, v in got.items())
    nodes = {name: _array(getattr(r, name)) for name in ("a", "c", "d", "e", "dl_dd")}
    return Explanation(trace, k, epoch, batch, idx, _array(xb), _array(yb), w0, b0, buf0, nodes,
                       _value(r.loss), _value(r.grad_w), _value(r.grad_b), _value(w1), _value(b1), buf1, matches)


# ------------------------------------------------------------------ rendering


def _p(v: float) -> str:
    """A number inside a formula: negative values in parentheses."""
    s = num(v)
    return f"({s})" if s.startswith("-") else s


def _terms(items: list[str]) -> str:
    if len(items) > MAX_TERMS:
        items = items[:MAX_TERMS - 1] + [f"… ({len(items) - MAX_TERMS + 1} more)", ]
    return " + ".join(items)


def _torch(ex: Explanation, field: str, label: str | None = None) -> Text:
    u = ex.ulp(field)
    t = Text("torch: ", style="dim")
    t.append(f"{label or field} = {num(ex.torch_value(field))}")
    t.append(f"  ({u} ulp)", style="green" if u == 0 else "yellow")
    return t


class _Section:
    """Rows of (equation label, formula) in a grid, so long formulas wrap under their own column."""

    def __init__(self, title: str):
        self.title = title
        self.grid = Table.grid(padding=(0, 1))
        self.grid.add_column(width=7, no_wrap=True, style="bold")
        self.grid.add_column()

    def row(self, eq: str, text: "str | Text", result: str | None = None) -> None:
        t = text if isinstance(text, Text) else Text(text)
        if result is not None:
            t.append(" = ")
            t.append(result, style="bold")
        self.grid.add_row(eq, t)

    def torch(self, ex: Explanation, field: str, label: str | None = None) -> None:
        self.grid.add_row("", _torch(ex, field, label))

    def render(self) -> Group:
        return Group(Text(self.title, style="bold"), self.grid)


def _per_sample(values: list[str]) -> str:
    if len(values) > MAX_SAMPLES:
        values = values[:MAX_SAMPLES] + ["…"]
    return ", ".join(values)


def _header(ex: Explanation) -> Text:
    tr = ex.trace
    cfg = tr.config
    spe = tr.plan.steps_per_epoch
    where = f"Epoch {ex.epoch} of {tr.plan.epochs}, batch {ex.batch} of {spe} (step {ex.step + 1})"
    t = Text(where, style="bold")
    t.append(f": samples {_per_sample([str(i) for i in ex.indices.tolist()])} (n = {ex.n}), "
             f"lr {cfg.lr:g}, {cfg.dtype} on {tr.device}\n")
    start = "the initial values" if ex.step == 0 else "the previous batch's update"
    t.append(f"Starting from w = {num(ex.w0)}, b = {num(ex.b0)} ({start})")
    return t


def _forward(ex: Explanation) -> list:
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False, pad_edge=False)
    for head in ("i", "x", "y", "a = w·x", "c = a + b (ypred)", "d = c − y", "e = d²"):
        table.add_column(head, justify="right")
    nd = ex.nodes
    shown = min(ex.n, MAX_SAMPLES)
    for i in range(shown):
        table.add_row(str(ex.indices[i]), num(ex.x[i]), num(ex.y[i]), num(nd["a"][i]), num(nd["c"][i]),
                      num(nd["d"][i]), num(nd["e"][i]))
    if ex.n > shown:
        table.add_row("⋮", "", "", "", Text(f"{ex.n - shown} more samples", style="italic"), "", "")
    sec = _Section("Forward pass (Equations 1-3): leaves w, x, b, y → a → c → d → e → l → z")
    es = [_p(v) for v in nd["e"].tolist()]
    sec.row("Eq. 2-3", f"l = (1/n)·Σ e = (1/{ex.n})·[{_terms(es)}]", num(ex.loss))
    sec.torch(ex, "loss", "l")
    sec.row("", "z = l", num(ex.loss))
    return [Text(sec.title, style="bold"), table, sec.grid]


def _backward(ex: Explanation) -> list:
    nd = ex.nodes
    d, x, y = nd["d"].tolist(), ex.x.tolist(), ex.y.tolist()
    chain = _Section("Backward pass: the chain rule, factor by factor, from z down to the leaves")
    chain.row("", "dz/dl = 1")
    chain.row("", f"dl/de = 1/n = 1/{ex.n}", num(1 / ex.n))
    chain.row("", f"de/dd = 2d, per sample: {_per_sample([num(2 * v) for v in d])}")
    chain.row("", f"dd/dc = {engine.DD_DC}")
    chain.row("", f"dc/da = {engine.DC_DA}")
    chain.row("", f"dc/db = {engine.DC_DB}")
    chain.row("", f"da/dw = x, per sample: {_per_sample([num(v) for v in x])}")

    wsec = _Section("Weight gradient")
    wsec.row("Eq. 6", "dl/dw = Σ (dl/de)(de/dd)(dd/dc)(dc/da)(da/dw)")
    t7 = [f"2·{_p(di)}·1·1·{_p(xi)}" for di, xi in zip(d, x)]
    wsec.row("Eq. 7", f"dl/dw = (1/n)·Σ 2d·1·1·x = (1/{ex.n})·[{_terms(t7)}]")
    t8 = [f"({_p(ex.w0)}·{_p(xi)} + {_p(ex.b0)} − {_p(yi)})·{_p(xi)}" for xi, yi in zip(x, y)]
    wsec.row("Eq. 8", f"dl/dw = (2/n)·Σ (w·x + b − y)·x = (2/{ex.n})·[{_terms(t8)}]", num(ex.grad_w))
    wsec.torch(ex, "grad_w", "dl/dw")

    bsec = _Section("Bias gradient")
    bsec.row("Eq. 9", "dl/db = Σ (dl/de)(de/dd)(dd/dc)(dc/db)")
    t10 = [f"2·{_p(di)}·1·1" for di in d]
    bsec.row("Eq. 10", f"dl/db = (1/n)·Σ 2d·1·1 = (1/{ex.n})·[{_terms(t10)}]")
    t11 = [f"({_p(ex.w0)}·{_p(xi)} + {_p(ex.b0)} − {_p(yi)})" for xi, yi in zip(x, y)]
    bsec.row("Eq. 11", f"dl/db = (2/n)·Σ (w·x + b − y) = (2/{ex.n})·[{_terms(t11)}]", num(ex.grad_b))
    bsec.torch(ex, "grad_b", "dl/db")
    return [chain.render(), wsec.render(), bsec.render()]


def _update_lines(ex: Explanation) -> list:
    cfg = ex.trace.config
    lr = f"{cfg.lr:g}"
    plain = cfg.momentum == 0 and cfg.weight_decay == 0 and not cfg.maximize
    sec = _Section("Update (Equations 4-5" + ("" if plain else ", as torch.optim.SGD grows them") + ")")
    params = (("w", "4", ex.w0, ex.grad_w, ex.w1, "buf_w"), ("b", "5", ex.b0, ex.grad_b, ex.b1, "buf_b"))
    for p, eq, p0, g, p1, buf in params:
        gname, gv = f"dl/d{p}", g
        if cfg.maximize:
            gv = -gv
            sec.row("", f"g = −{gname} (maximize: ascend the loss)", num(gv))
            gname = "g"
        if cfg.weight_decay:
            sec.row("", f"g = {gname} + weight_decay·{p} = {_p(gv)} + {cfg.weight_decay:g}·{_p(p0)}",
                    num(gv + cfg.weight_decay * p0))
            gv, gname = gv + cfg.weight_decay * p0, "g"
        if cfg.momentum:
            b1 = ex.buf1[buf]
            if ex.step == 0:
                sec.row("", f"{buf} = {gname} (the first step starts the buffer)", num(b1))
            else:
                sec.row("", f"{buf} = momentum·{buf} + (1 − dampening)·{gname} = {cfg.momentum:g}·"
                            f"{_p(ex.buf0[buf])} + {1 - cfg.dampening:g}·{_p(gv)}", num(b1))
            sec.torch(ex, buf)
            if cfg.nesterov:
                sec.row(f"Eq. {eq}", f"{p} ← {p} − lr·({gname} + momentum·{buf}) = {num(p0)} − {lr}·"
                                     f"({_p(gv)} + {cfg.momentum:g}·{_p(b1)})", num(p1))
            else:
                sec.row(f"Eq. {eq}", f"{p} ← {p} − lr·{buf} = {num(p0)} − {lr}·{_p(b1)}", num(p1))
        else:
            sec.row(f"Eq. {eq}", f"{p} ← {p} − lr·{gname} = {num(p0)} − {lr}·{_p(gv)}", num(p1))
        sec.torch(ex, p)
    return [sec.render()]


def explain_view(ex: Explanation) -> Group:
    """The page: header, forward pass, backward pass, update, and whether it matches the run."""
    parts: list = [_header(ex), Text("")]
    parts += _forward(ex) + [Text("")]
    for sec in _backward(ex) + _update_lines(ex):
        parts += [sec, Text("")]
    if ex.matches_trace:
        parts.append(Text("These are the manual engine's own values for this step (bit for bit as in the run); "
                          "'ulp' counts the floats between them and torch's.", style="dim"))
    else:  # pragma: no cover - would mean explain recomputes differently from the run
        parts.append(Text("Warning: the recomputed values differ from the run's manual trace.", style="bold red"))
    return Group(*parts)


def explain_json(ex: Explanation) -> dict[str, Any]:
    """The same page as data: nodes per sample, the factors, the results beside torch's."""
    from sgdtrace.divergence import json_number

    def nums(a) -> list:
        return [json_number(v) for v in np.asarray(a).tolist()]

    fields = ["loss", "grad_w", "grad_b", "w", "b"] + (["buf_w", "buf_b"] if "buf_w" in ex.trace.manual else [])
    manual = {"loss": ex.loss, "grad_w": ex.grad_w, "grad_b": ex.grad_b, "w": ex.w1, "b": ex.b1, **ex.buf1}
    return {
        "epoch": ex.epoch, "batch": ex.batch, "step": ex.step + 1, "n": ex.n, "indices": ex.indices.tolist(),
        "start": {"w": json_number(ex.w0), "b": json_number(ex.b0)},
        "forward": {"x": nums(ex.x), "y": nums(ex.y), "a": nums(ex.nodes["a"]), "c": nums(ex.nodes["c"]),
                    "d": nums(ex.nodes["d"]), "e": nums(ex.nodes["e"]), "l": json_number(ex.loss),
                    "z": json_number(ex.loss)},
        "backward": {"dz/dl": 1, "dl/de": json_number(1 / ex.n), "de/dd": nums(2 * ex.nodes["d"]), "dd/dc": engine.DD_DC,
                     "dc/da": engine.DC_DA, "dc/db": engine.DC_DB, "da/dw": nums(ex.x), "dl/dd": nums(ex.nodes["dl_dd"])},
        "manual": {f: json_number(manual[f]) for f in fields},
        "torch": {f: json_number(ex.torch_value(f)) for f in fields},
        "ulp": {f: ex.ulp(f) for f in fields},
        "matches_trace": ex.matches_trace,
    }
