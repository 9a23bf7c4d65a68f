"""The ``explain`` view: one batch worked equation by equation, with the numbers substituted.

It renders an :class:`~sgdtrace.teaching.explain.Explanation` (the numbers, computed by
:func:`~sgdtrace.teaching.explain.explain_step`: the step's rate, the optimizer's lines, the chain
rule's factors too) and computes nothing of its own.

Equation numbers are the article's; the derivative names are the correct ones (the article's text
has OCR-like slips such as "day/day" for de/dd and "CC/yes" for dc/da).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from sgdtrace.views.fmt import num

if TYPE_CHECKING:  # the records this view renders (it imports no computation)
    from sgdtrace.teaching.explain import Explanation, FeatureExplanation

#: per-sample rows and sum terms written out before the rest is elided
MAX_SAMPLES = 8
MAX_TERMS = 4


# ------------------------------------------------------------------ rendering


def _p(v: float) -> str:
    """A number inside a formula: negative values in parentheses."""
    s = num(v)
    return f"({s})" if s.startswith("-") else s


def _terms(items: list[str]) -> str:
    if len(items) > MAX_TERMS:
        items = items[: MAX_TERMS - 1] + [
            f"… ({len(items) - MAX_TERMS + 1} more)",
        ]
    return " + ".join(items)


def _torch(ex: Explanation, field: str, label: str | None = None) -> Text:
    u = ex.ulp(field)
    t = Text("torch: ", style="dim")
    t.append(f"{label or field} = {num(ex.torch_value(field))}")
    t.append(f"  ({u} ulp)", style="green" if u == 0 else "yellow")
    return t


def _yours(ex: Explanation, field: str, label: str | None = None) -> Text:
    """The user's value for ``field`` beside the expected one, within the step's rounding allowance or not."""
    ok = ex.user_ok(field)
    t = Text(f"{ex.user_name}: ", style="dim")
    t.append(f"{label or field} = {num(ex.user[field])}")
    t.append(
        "  ✓ as expected" if ok else f"  ✗ expected {num(ex.expected[field])}", style="green" if ok else "bold red"
    )
    return t


#: the per-sample nodes a user's forward returns, as the table heads them
NODE_HEADS = {"a": "a = w·x", "c": "c = a + b", "d": "d = c − y", "e": "e = d²", "dl_dd": "dl/dd = (2/n)·d"}


def _user_forward(ex: Explanation) -> list:
    """--engine with forward: the user's nodes per sample, each marked against the expected node
    (``ex.user_nodes_bad``: judged by :func:`sgdtrace.teaching.explain.judge_nodes`)."""
    nodes = ex.user_nodes or {}
    names = [n for n in NODE_HEADS if n in nodes]
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
        pad_edge=False,
        title=f"Your forward ({ex.user_name}), node by node: ✗ where it differs from the expected node beyond rounding",
        title_justify="left",
        title_style="bold",
    )
    table.add_column("i", justify="right")
    for n in names:
        table.add_column(NODE_HEADS[n], justify="right")
    bad = ex.user_nodes_bad
    for i in range(min(ex.n, MAX_SAMPLES)):
        cells = [str(ex.indices[i])]
        for n in names:
            cells.append(
                Text(
                    num(nodes[n][i]) + (f" ✗ ({num(ex.nodes[n][i])})" if bad[n][i] else ""),
                    style="bold red" if bad[n][i] else "",
                )
            )
        table.add_row(*cells)
    wrong = [n for n in names if bad[n].any()]
    note = (
        Text(
            f"First node that differs: {wrong[0]} ({NODE_HEADS[wrong[0]]}); the expected value in parentheses",
            style="bold red",
        )
        if wrong
        else Text("Every node agrees with the expected one.", style="green")
    )
    return [table, note]


class _Section:
    """Rows of (equation label, formula) in a grid, so long formulas wrap under their own column."""

    def __init__(self, title: str):
        self.title = title
        self.grid = Table.grid(padding=(0, 1))
        self.grid.add_column(width=7, no_wrap=True, style="bold")
        self.grid.add_column()

    def row(self, eq: str, text: str | Text, result: str | None = None) -> None:
        t = text if isinstance(text, Text) else Text(text)
        if result is not None:
            t.append(" = ")
            t.append(result, style="bold")
        self.grid.add_row(eq, t)

    def torch(self, ex: Explanation, field: str, label: str | None = None) -> None:
        self.grid.add_row("", _torch(ex, field, label))
        if ex.user is not None and field in ex.user:  # --engine: the user's value beside the expected one
            self.grid.add_row("", _yours(ex, field, label))

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
    t.append(
        f": samples {_per_sample([str(i) for i in ex.indices.tolist()])} (n = {ex.n}), "
        f"lr {cfg.lr:g}, {cfg.dtype} on {tr.device}\n"
    )
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
        table.add_row(
            str(ex.indices[i]),
            num(ex.x[i]),
            num(ex.y[i]),
            num(nd["a"][i]),
            num(nd["c"][i]),
            num(nd["d"][i]),
            num(nd["e"][i]),
        )
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
    chain.row("", f"dd/dc = {ex.chain['dd/dc']}")
    chain.row("", f"dc/da = {ex.chain['dc/da']}")
    chain.row("", f"dc/db = {ex.chain['dc/db']}")
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


def _optimizer_update(ex: Explanation) -> list:
    """Adam, AdamW, RMSprop, Adagrad: torch's algorithm line by line, with this step's numbers."""
    from sgdtrace.config import OPTIMIZER_CLASSES

    cfg = ex.trace.config
    sec = _Section(f"Update: torch.optim.{OPTIMIZER_CLASSES[cfg.optimizer]}'s algorithm, step t = {ex.step + 1}")
    for param in ("w", "b"):
        for line in ex.lines[param]:
            shown = line.template.format(
                **{k: (str(v) if isinstance(v, int) else _p(v)) for k, v in line.values.items()}
            )
            sec.row("", f"{line.lhs} = {line.formula} = {shown}", num(line.value))
            if line.field is not None:
                sec.torch(ex, line.field)
    return [sec.render()]


def _rate(ex: Explanation) -> list:
    """Under a schedule: the step's rate (torch's recursion) and, where torch has one, its closed form."""
    tr = ex.trace
    if tr.config.scheduler is None:
        return []
    sec = _Section(f"Learning rate: {tr.config.scheduler.name} (torch's chainable recursion, get_lr)")
    sec.row("", "lr", num(ex.rate))
    sec.torch(ex, "lr")
    closed = ex.closed_rate
    if closed is not None:
        sec.row(
            "",
            f"closed form (_get_closed_form_lr) = {closed!r}; recursion − closed form",
            f"{ex.rate - closed:.3g}",
        )
    return [sec.render()]


def _update_lines(ex: Explanation) -> list:
    cfg = ex.trace.config
    if cfg.optimizer != "sgd":
        return _rate(ex) + _optimizer_update(ex)
    lr = f"{ex.rate:g}"
    momentum = ex.momentum
    plain = momentum == 0 and cfg.weight_decay == 0 and not cfg.maximize
    sec = _Section("Update (Equations 4-5" + ("" if plain else ", as torch.optim.SGD grows them") + ")")
    params = (("w", "4", ex.w0, ex.grad_w, ex.w1, "buf_w"), ("b", "5", ex.b0, ex.grad_b, ex.b1, "buf_b"))
    for p, eq, p0, g, p1, buf in params:
        gname, gv = f"dl/d{p}", g
        if cfg.maximize:
            gv = -gv
            sec.row("", f"g = −{gname} (maximize: ascend the loss)", num(gv))
            gname = "g"
        if cfg.weight_decay:
            sec.row(
                "",
                f"g = {gname} + weight_decay·{p} = {_p(gv)} + {cfg.weight_decay:g}·{_p(p0)}",
                num(gv + cfg.weight_decay * p0),
            )
            gv, gname = gv + cfg.weight_decay * p0, "g"
        if buf in ex.state1:
            b1 = ex.state1[buf]
            if ex.step == 0:
                sec.row("", f"{buf} = {gname} (the first step starts the buffer)", num(b1))
            else:
                sec.row(
                    "",
                    f"{buf} = momentum·{buf} + (1 − dampening)·{gname} = {momentum:g}·"
                    f"{_p(ex.state0[buf])} + {1 - cfg.dampening:g}·{_p(gv)}",
                    num(b1),
                )
            sec.torch(ex, buf)
            if cfg.nesterov:
                sec.row(
                    f"Eq. {eq}",
                    f"{p} ← {p} − lr·({gname} + momentum·{buf}) = {num(p0)} − {lr}·({_p(gv)} + {momentum:g}·{_p(b1)})",
                    num(p1),
                )
            else:
                sec.row(f"Eq. {eq}", f"{p} ← {p} − lr·{buf} = {num(p0)} − {lr}·{_p(b1)}", num(p1))
        else:
            sec.row(f"Eq. {eq}", f"{p} ← {p} − lr·{gname} = {num(p0)} − {lr}·{_p(gv)}", num(p1))
        sec.torch(ex, p)
        _spacing_row(sec, ex, p, p0)
    return _rate(ex) + [sec.render()]


def _spacing_row(sec, ex: Explanation, p: str, p0: float) -> None:
    """The spacing of the dtype's values around the parameter, beside the update (the stall)."""
    s = (ex.spacing or {}).get(p)
    if s is None or not (s["stalled"] or ex.trace.config.dtype in ("bfloat16", "float16")):
        return  # shown in the 16-bit types, and wherever a step stalled
    gap = s["above"] if s["update"] < 0 else s["below"]  # p - lr·d moves up when lr·d < 0
    verdict = (
        f"under half of it: lost to rounding, {p} stays {num(p0)} (stalled)"
        if s["stalled"]
        else "at least half of it: the update moves " + p
    )
    sec.row(
        "",
        f"spacing of {ex.trace.config.dtype} values next to {p} = {num(p0)}: {num(gap)} "
        f"(half {num(gap / 2)}); the update |lr·g| = {num(abs(s['update']))}, {verdict}",
    )


def explain_view(ex: Explanation) -> Group:
    """The page: header, forward pass, backward pass, update, and whether it matches the run."""
    if ex.form == "vector":
        return features_view(ex)
    parts: list = [_header(ex), Text("")]
    parts += _forward(ex) + [Text("")]
    for sec in _backward(ex) + _update_lines(ex):
        parts += [sec, Text("")]
    if ex.user_nodes is not None:
        parts += _user_forward(ex) + [Text("")]
    if ex.user is not None:
        parts.append(
            Text(
                f"The values worked out above are sgdtrace's own, from the parameters {ex.user_name} "
                f"started this step from; '{ex.user_name}:' lines are your file's values.",
                style="dim",
            )
        )
    elif ex.matches_trace:
        parts.append(
            Text(
                "These are the manual engine's own values for this step (bit for bit as in the run); "
                "'ulp' counts the floats between them and torch's.",
                style="dim",
            )
        )
    else:  # pragma: no cover - would mean explain recomputes differently from the run
        parts.append(Text("Warning: the recomputed values differ from the run's manual trace.", style="bold red"))
    return Group(*parts)


def explain_json(ex: Explanation) -> dict[str, Any]:
    """The same page as data: nodes per sample, the factors, the results beside torch's."""
    from sgdtrace.divergence import json_number

    if ex.form == "vector":
        return features_json(ex)

    def nums(a) -> list:
        return [json_number(v) for v in np.asarray(a).tolist()]

    fields, manual = ex.fields, ex.values
    return {
        "epoch": ex.epoch,
        "batch": ex.batch,
        "step": ex.step + 1,
        "n": ex.n,
        "indices": ex.indices.tolist(),
        "start": {"w": json_number(ex.w0), "b": json_number(ex.b0)},
        "forward": {
            "x": nums(ex.x),
            "y": nums(ex.y),
            "a": nums(ex.nodes["a"]),
            "c": nums(ex.nodes["c"]),
            "d": nums(ex.nodes["d"]),
            "e": nums(ex.nodes["e"]),
            "l": json_number(ex.loss),
            "z": json_number(ex.loss),
        },
        "backward": {
            "dz/dl": 1,
            "dl/de": json_number(1 / ex.n),
            "de/dd": nums(2 * ex.nodes["d"]),
            "dd/dc": ex.chain["dd/dc"],
            "dc/da": ex.chain["dc/da"],
            "dc/db": ex.chain["dc/db"],
            "da/dw": nums(ex.x),
            "dl/dd": nums(ex.nodes["dl_dd"]),
        },
        "manual": {f: json_number(manual[f]) for f in fields},
        "torch": {f: json_number(ex.torch_value(f)) for f in fields},
        "ulp": {f: ex.ulp(f) for f in fields},
        "matches_trace": ex.matches_trace,
        **(
            {}
            if ex.user is None
            else {
                "engine": {
                    "name": ex.user_name,
                    "values": {f: json_number(v) for f, v in ex.user.items()},
                    "ok": {f: ex.user_ok(f) for f in ex.user},
                    "nodes": None if ex.user_nodes is None else {n: nums(v) for n, v in ex.user_nodes.items()},
                }
            }
        ),
        "spacing": ex.spacing,
    }


# ------------------------------------------------------------------ D features: the vector form


def _vec(values, most: int = MAX_TERMS + 2) -> str:
    """A short vector: ``(1.5, -2, 0.25)``; past ``most`` elements, the first ones and a count."""
    items = [num(v) for v in np.asarray(values, dtype=np.float64).reshape(-1).tolist()]
    if len(items) > most:
        items = items[: most - 1] + [f"… ({len(items) - most + 1} more)"]
    return "(" + ", ".join(items) + ")"


def _shape(v) -> str:
    return "(" + ", ".join(map(str, np.shape(v))) + ("," if np.ndim(v) == 1 else "") + ")"


def _torch_vec(ex: FeatureExplanation, field: str, label: str) -> Text:
    u = ex.ulp(field)
    t = Text("torch: ", style="dim")
    value = ex.torch_value(field)
    t.append(f"{label} = {num(float(value)) if np.ndim(value) == 0 else _vec(value)}")
    t.append(f"  ({u} ulp{' at most' if np.size(value) > 1 else ''})", style="green" if u == 0 else "yellow")
    return t


def features_view(ex: FeatureExplanation) -> Group:
    """One batch of the linear model on D features, in vector form: the shapes, the nodes per
    sample (up to 8), the gradients ``Xᵀ·dl/dd`` and the update, torch's values beside."""
    tr = ex.trace
    cfg = tr.config
    D = ex.x.shape[1]
    spe = tr.plan.steps_per_epoch
    head = Text(f"Epoch {ex.epoch} of {tr.plan.epochs}, batch {ex.batch} of {spe} (step {ex.step + 1})", style="bold")
    head.append(
        f": samples {_per_sample([str(i) for i in ex.indices.tolist()])} (n = {ex.n}), "
        f"lr {cfg.lr:g}, {cfg.dtype} on {tr.device}\n"
        f"The model: ypred = X·w + b with X of shape ({ex.n}, {D}), w {_shape(ex.start['w'])}, "
        f"b {_shape(ex.start['b'])} (torch: nn.Linear({D}, 1), weight (1, {D}) = wᵀ, bias (1,))\n"
    )
    start = "the initial values" if ex.step == 0 else "the previous batch's update"
    head.append(f"Starting from w = {_vec(ex.start['w'])}, b = {_vec(ex.start['b'])} ({start})")
    parts: list = [head, Text("")]

    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False, pad_edge=False)
    for h in ("i", f"x_i ({D})", "y_i", "a = x_i·w", "c = a + b", "d = c − y", "e = d²"):
        table.add_column(h, justify="right")
    nd = ex.nodes
    shown = min(ex.n, MAX_SAMPLES)
    for i in range(shown):
        table.add_row(
            str(ex.indices[i]),
            _vec(ex.x[i]),
            num(ex.y[i]),
            num(nd["a"][i]),
            num(nd["c"][i]),
            num(nd["d"][i]),
            num(nd["e"][i]),
        )
    if ex.n > shown:
        table.add_row("⋮", "", "", "", Text(f"{ex.n - shown} more samples", style="italic"), "", "")
    fwd = _Section("Forward pass, per sample i: a = x_i·w (a dot product of D terms), c = a + b, d = c − y, e = d²")
    es = [_p(v) for v in nd["e"].tolist()]
    fwd.row("Eq. 2-3", f"l = (1/n)·Σ e = (1/{ex.n})·[{_terms(es)}]", num(ex.loss))
    fwd.grid.add_row("", _torch_vec(ex, "loss", "l"))
    parts += [Text(fwd.title, style="bold"), table, fwd.grid, Text("")]

    back = _Section("Backward pass, in vector form (the chain rule per element)")
    back.row("", f"dl/dd = (1/n)·2d, per sample: {_per_sample([num(v) for v in nd['dl_dd'].tolist()])}")
    back.row("", f"da_i/dw_j = x_ij, so dl/dw = Xᵀ·dl/dd: ({D},) = ({D}, {ex.n})·({ex.n},)")
    for j in range(min(D, MAX_TERMS)):
        terms = [f"{_p(g)}·{_p(xi)}" for g, xi in zip(nd["dl_dd"].tolist(), ex.x[:, j].tolist())]
        back.row("", f"dl/dw[{j}] = Σ_i dl/dd_i·x_i{j} = {_terms(terms)}", num(ex.grads["w"][j]))
    if D > MAX_TERMS:
        back.row("", f"… and {D - MAX_TERMS} more features, the same sum with their column of X")
    back.row("", "dl/dw", _vec(ex.grads["w"]))
    back.grid.add_row("", _torch_vec(ex, "grad_w", "dl/dw"))
    back.row("Eq. 11", f"dl/db = Σ_i dl/dd_i = {_terms([_p(v) for v in nd['dl_dd'].tolist()])}", _vec(ex.grads["b"]))
    back.grid.add_row("", _torch_vec(ex, "grad_b", "dl/db"))
    parts += [back.render(), Text("")]

    upd = _Section(_update_title(cfg))
    lr = ex.rate
    for p in ex.start:
        rules = _sgd_rules(cfg, p, ex.step) if cfg.optimizer == "sgd" else {}
        for f, state in ex.state1.items():
            if f.endswith("_" + p):
                upd.row("", f"{f} ← {rules.get('state', 'its line of the algorithm')} {_shape(state)}", _vec(state))
                upd.grid.add_row("", _torch_vec(ex, f, f))
        rule = rules.get("param", "its line of the algorithm")
        upd.row("", f"{p} ← {rule}, lr {lr:g}, from {p} = {_vec(ex.start[p])}", _vec(ex.new[p]))
        upd.grid.add_row("", _torch_vec(ex, p, p))
    parts += [upd.render(), Text("")]
    if ex.matches_trace:
        parts.append(
            Text(
                "These are the manual engine's own values for this step (bit for bit as in the run); "
                "'ulp' counts the floats between them and torch's (the largest over the elements).",
                style="dim",
            )
        )
    else:  # pragma: no cover - would mean explain recomputes differently from the run
        parts.append(Text("Warning: the recomputed values differ from the run's manual trace.", style="bold red"))
    return Group(*parts)


def _sgd_rules(cfg, p: str, step: int) -> dict[str, str]:
    """torch.optim.SGD's lines for parameter ``p``, as formulas (element by element)."""
    g = f"dl/d{p}"
    if cfg.maximize:
        g = f"−{g}"
    if cfg.weight_decay:
        g = f"({g} + {cfg.weight_decay:g}·{p})"
    if not cfg.momentum:
        return {"param": f"{p} − lr·{g}"}
    buf = f"buf_{p}"
    state = g if step == 0 else f"{cfg.momentum:g}·{buf} + {1 - cfg.dampening:g}·{g}"
    param = f"{p} − lr·({g} + {cfg.momentum:g}·{buf})" if cfg.nesterov else f"{p} − lr·{buf}"
    return {"state": state + (" (the first step starts the buffer)" if step == 0 else ""), "param": param}


def _update_title(cfg) -> str:
    from sgdtrace.config import OPTIMIZER_CLASSES

    if cfg.optimizer == "sgd":
        plain = not cfg.momentum and not cfg.weight_decay and not cfg.maximize
        return "Update (Equations 4-5" + ("" if plain else ", as torch.optim.SGD grows them") + "), element by element"
    return (
        f"Update: torch.optim.{OPTIMIZER_CLASSES[cfg.optimizer]}'s algorithm (sgdtrace explain on the "
        "article's data shows it line by line), element by element"
    )


def features_json(ex: FeatureExplanation) -> dict[str, Any]:
    """The vector-form page as data: the shapes, every node per sample, the results beside torch's."""
    from sgdtrace.divergence import json_number

    def nums(a):
        a = np.asarray(a, dtype=np.float64)
        return json_number(float(a)) if a.ndim == 0 else [nums(v) for v in a]

    fields, manual = ex.fields, ex.values
    return {
        "epoch": ex.epoch,
        "batch": ex.batch,
        "step": ex.step + 1,
        "n": ex.n,
        "indices": ex.indices.tolist(),
        "shapes": {"x": list(ex.x.shape), **{p: list(np.shape(v)) for p, v in ex.start.items()}},
        "start": {p: nums(v) for p, v in ex.start.items()},
        "forward": {
            "x": nums(ex.x),
            "y": nums(ex.y),
            **{k: nums(ex.nodes[k]) for k in ("a", "c", "d", "e")},
            "l": json_number(ex.loss),
            "z": json_number(ex.loss),
        },
        "backward": {"dl/dd": nums(ex.nodes["dl_dd"]), "da/dw": nums(ex.x)},
        "manual": {f: nums(manual[f]) for f in fields},
        "torch": {f: nums(ex.torch_value(f)) for f in fields},
        "ulp": {f: ex.ulp(f) for f in fields},
        "matches_trace": ex.matches_trace,
    }


# ------------------------------------------------------------------ data-parallel SGD (--world-size N)


def explain_distributed_view(dx) -> Group:
    """A DDP step: the header, each rank's forward and backward pass, the all-reduce, the update."""
    step = dx.step
    world = len(dx.ranks)
    parts: list = [_header(step), Text("")]
    for r, ex in enumerate(dx.ranks):
        parts.append(
            Text(
                f"Rank {r}: samples {_per_sample([str(i) for i in ex.indices.tolist()])} (n = {ex.n})",
                style="bold reverse",
            )
        )
        parts += _forward(ex) + [Text("")]
        for sec in _backward(ex):
            parts += [sec, Text("")]
    sec = _Section(
        f"All-reduce (DistributedDataParallel's average over {world} ranks: each rank's gradient "
        f"times 1/{world}, rounded, then summed)"
    )
    inv = num(dx.inv_n)
    for p in ("w", "b"):
        gs = [_p(getattr(ex, "grad_" + p)) for ex in dx.ranks]
        terms = [f"{inv}·{g}" for g in gs]
        text = terms[-1]
        for t in reversed(terms[:-1]):  # gloo's order: from the last rank down
            text = f"{t} + {text}" if text == terms[-1] else f"{t} + ({text})"
        sec.row(f"dl/d{p}", text, num(getattr(step, "grad_" + p)))
        sec.torch(step, "grad_" + p, f"dl/d{p} (.grad after backward)")
    losses = " + ".join(_p(ex.loss) for ex in dx.ranks)
    sec.row("loss", f"(1/{world})·[{losses}] (the ranks' mean, for the table)", num(step.loss))
    parts += [sec.render(), Text("")]
    for s in _update_lines(step):
        parts += [s, Text("")]
    if dx.matches_trace:
        parts.append(
            Text(
                "These are the manual engine's own values for this step (bit for bit as in the run); "
                "'ulp' counts the floats between them and torch's.",
                style="dim",
            )
        )
    else:  # pragma: no cover - would mean explain recomputes differently from the run
        parts.append(Text("Warning: the recomputed values differ from the run's manual trace.", style="bold red"))
    return Group(*parts)


def explain_distributed_json(dx) -> dict[str, Any]:
    """The DDP page as data: each rank's page (forward, backward, its own gradients beside torch's),
    the all-reduce, and the step's values."""
    from sgdtrace.divergence import json_number

    doc = explain_json(dx.step)
    doc["ranks"] = []
    for r, ex in enumerate(dx.ranks):
        page = explain_json(ex)
        keep = ("loss", "grad_w", "grad_b")
        for part in ("manual", "torch", "ulp"):
            page[part] = {f: page[part][f] for f in keep}
        page.pop("matches_trace", None)
        doc["ranks"].append({"rank": r, **page})
    doc["allreduce"] = {
        "inv_n": json_number(dx.inv_n),
        "grad_w": json_number(dx.step.grad_w),
        "grad_b": json_number(dx.step.grad_b),
    }
    doc["matches_trace"] = dx.matches_trace
    return doc
