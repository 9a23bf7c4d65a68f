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

# the pieces this view and the network's (sgdtrace.views.network) both write with
from sgdtrace.views.sections import (
    MAX_SAMPLES,
    MAX_TERMS,
    _per_sample,
    _Section,
    _sgd_rules,
    _shape,
    _update_title,
    closing_note,
)

if TYPE_CHECKING:  # the records this view renders (it imports no computation)
    from sgdtrace.teaching.explain import Explanation, FeatureExplanation


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
    if ex.form == "network":  # a network: layer by layer (sgdtrace.views.network)
        from sgdtrace.views.network import network_view

        return network_view(ex)
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
    else:
        parts.append(closing_note(ex.matches_trace))
    return Group(*parts)


def explain_json(ex: Explanation) -> dict[str, Any]:
    """The same page as data: nodes per sample, the factors, the results beside torch's."""
    from sgdtrace.divergence import json_number

    if ex.form == "network":
        from sgdtrace.views.network import network_json

        return network_json(ex)
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


def _torch_vec(ex: FeatureExplanation, field: str, label: str) -> Text:
    u = ex.ulp(field)
    t = Text("torch: ", style="dim")
    value = ex.torch_value(field)
    t.append(f"{label} = {num(float(value)) if np.ndim(value) == 0 else _vec(value)}")
    t.append(f"  ({u} ulp{' at most' if np.size(value) > 1 else ''})", style="green" if u == 0 else "yellow")
    return t


def logistic_view(ex: FeatureExplanation) -> Group:
    """One batch of logistic regression, in vector form: z, p, the loss terms and dl/dz per sample
    (up to 8), torch's rules where they bite (BCELoss's clamp of each log at -100 and its
    backward's floor), the gradients ``Xᵀ·dl/dz`` and the update, torch's values beside."""
    tr = ex.trace
    cfg = tr.config
    D = ex.x.shape[1]
    nd = ex.nodes
    spe = tr.plan.steps_per_epoch
    sigmoid_form = cfg.loss == "bce-sigmoid"
    head = Text(f"Epoch {ex.epoch} of {tr.plan.epochs}, batch {ex.batch} of {spe} (step {ex.step + 1})", style="bold")
    loss_name = "nn.BCELoss() on torch.sigmoid(z)" if sigmoid_form else "nn.BCEWithLogitsLoss() on z"
    head.append(
        f": samples {_per_sample([str(i) for i in ex.indices.tolist()])} (n = {ex.n}), "
        f"lr {cfg.lr:g}, {cfg.dtype} on {tr.device}\n"
        f"The model: z = X·w + b, p = σ(z) with X of shape ({ex.n}, {D}), w {_shape(ex.start['w'])}, "
        f"b {_shape(ex.start['b'])}, labels y in {{0, 1}} (torch: nn.Linear({D}, 1) and {loss_name})\n"
    )
    start = "the initial values" if ex.step == 0 else "the previous batch's update"
    head.append(f"Starting from w = {_vec(ex.start['w'])}, b = {_vec(ex.start['b'])} ({start})")
    parts: list = [head, Text("")]
    term = "l_i = (y − 1)·max(log(1 − p), −100) − y·max(log p, −100)" if sigmoid_form else "l_i = (1 − y)·z − log σ(z)"
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False, pad_edge=False)
    for h in ("i", f"x_i ({D})", "y_i", "z = x_i·w + b", "p = σ(z)", "l_i", "dl/dz_i"):
        table.add_column(h, justify="right")
    shown = min(ex.n, MAX_SAMPLES)
    for i in range(shown):
        table.add_row(
            str(ex.indices[i]),
            _vec(ex.x[i]),
            num(ex.y[i]),
            num(nd["z"][i]),
            num(nd["p"][i]),
            num(nd["terms"][i]),
            num(nd["dl_dz"][i]),
        )
    if ex.n > shown:
        table.add_row("⋮", "", "", "", Text(f"{ex.n - shown} more samples", style="italic"), "", "")
    fwd = _Section(
        f"Forward pass, per sample i: z = x_i·w + b (a dot product of D terms and the bias), p = σ(z), {term}"
    )
    fwd.row("", f"l = (1/n)·Σ l_i = (1/{ex.n})·[{_terms([_p(v) for v in nd['terms'].tolist()])}]", num(ex.loss))
    fwd.grid.add_row("", _torch_vec(ex, "loss", "l"))
    parts += [Text(fwd.title, style="bold"), table, fwd.grid, Text("")]
    if sigmoid_form:
        with np.errstate(divide="ignore"):
            clamped = int(np.sum((np.log(nd["p"]) <= -100) | (np.log1p(-nd["p"]) <= -100)))
        q = (1 - nd["p"]) * nd["p"]
        floor = int(np.sum(q < 1e-12))
        rules = _Section("torch's BCELoss rules, by hand")
        rules.row("", f"each log is clamped at −100 in the forward pass only: {clamped} of {ex.n} samples clamped here")
        rules.row(
            "",
            "backward: dl/dp = (p − y)/max((1 − p)·p, 1e-12)/n, then dl/dz = dl/dp·(1 − p)·p: where σ saturates "
            f"((1 − p)·p below 1e-12: {floor} of {ex.n} samples here) torch's dl/dz is smaller than the textbook "
            "(p − y)/n, and 0 where p rounds to 1",
        )
        parts += [rules.render(), Text("")]
    back = _Section("Backward pass, in vector form (the chain rule per element)")
    rule = "dl/dz = dl/dp·(1 − p)·p (= (p − y)/n where σ is not saturated)" if sigmoid_form else "dl/dz = (p − y)/n"
    back.row("", f"{rule}, per sample: {_per_sample([num(v) for v in nd['dl_dz'].tolist()])}")
    back.row("", f"dz_i/dw_j = x_ij, so dl/dw = Xᵀ·dl/dz: ({D},) = ({D}, {ex.n})·({ex.n},)")
    for j in range(min(D, MAX_TERMS)):
        terms = [f"{_p(g)}·{_p(xi)}" for g, xi in zip(nd["dl_dz"].tolist(), ex.x[:, j].tolist())]
        back.row("", f"dl/dw[{j}] = Σ_i dl/dz_i·x_i{j} = {_terms(terms)}", num(ex.grads["w"][j]))
    if D > MAX_TERMS:
        back.row("", f"… and {D - MAX_TERMS} more features, the same sum with their column of X")
    back.row("", "dl/dw", _vec(ex.grads["w"]))
    back.grid.add_row("", _torch_vec(ex, "grad_w", "dl/dw"))
    back.row("", f"dl/db = Σ_i dl/dz_i = {_terms([_p(v) for v in nd['dl_dz'].tolist()])}", _vec(ex.grads["b"]))
    back.grid.add_row("", _torch_vec(ex, "grad_b", "dl/db"))
    parts += [back.render(), Text("")]
    parts += _update_part(ex)
    return Group(*parts)


def _update_part(ex: FeatureExplanation) -> list:
    """The update section and the closing line of a vector-form explanation."""
    cfg = ex.trace.config
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
    out: list = [upd.render(), Text("")]
    out.append(closing_note(ex.matches_trace, elements=True))
    return out


def features_view(ex: FeatureExplanation) -> Group:
    """One batch of the linear model on D features, in vector form: the shapes, the nodes per
    sample (up to 8), the gradients ``Xᵀ·dl/dd`` and the update, torch's values beside."""
    if "z" in ex.nodes:  # logistic regression's nodes
        return logistic_view(ex)
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
    parts.append(closing_note(ex.matches_trace, elements=True))
    return Group(*parts)


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
        **(
            {  # logistic regression's nodes
                "forward": {
                    "x": nums(ex.x),
                    "y": nums(ex.y),
                    "z": nums(ex.nodes["z"]),
                    "p": nums(ex.nodes["p"]),
                    "terms": nums(ex.nodes["terms"]),
                    "l": json_number(ex.loss),
                },
                "backward": {
                    "dl/dz": nums(ex.nodes["dl_dz"]),
                    **({"dl/dp": nums(ex.nodes["dl_dp"])} if "dl_dp" in ex.nodes else {}),
                    "dz/dw": nums(ex.x),
                },
            }
            if "z" in ex.nodes
            else {
                "forward": {
                    "x": nums(ex.x),
                    "y": nums(ex.y),
                    **{k: nums(ex.nodes[k]) for k in ("a", "c", "d", "e")},
                    "l": json_number(ex.loss),
                    "z": json_number(ex.loss),
                },
                "backward": {"dl/dd": nums(ex.nodes["dl_dd"]), "da/dw": nums(ex.x)},
            }
        ),
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
    parts.append(closing_note(dx.matches_trace))
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
