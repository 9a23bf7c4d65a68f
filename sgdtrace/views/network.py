"""The ``explain`` page of the network (``--model mlp``): one batch, layer by layer, in matrix form.

It renders a :class:`~sgdtrace.teaching.network.NetworkExplanation` and computes nothing of its
own: the forward nodes per sample (up to 8), the backward factors with their shapes, each gradient
and each update beside torch's value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from sgdtrace.models.mlp import TORCH_ACTIVATION, TORCH_LOSS
from sgdtrace.views.fmt import num
from sgdtrace.views.sections import MAX_SAMPLES, _per_sample, _Section, _sgd_rules, _shape, _update_title, closing_note

#: elements of a vector written out before the rest is counted
MAX_ELEMENTS = 4
#: rows of a matrix written out
MAX_ROWS = 4


def _vec(values, most: int = MAX_ELEMENTS) -> str:
    """``(1.5, -2, 0.25)``; past ``most`` elements, the first ones and a count."""
    items = [num(v) for v in np.asarray(values, dtype=np.float64).reshape(-1).tolist()]
    if len(items) > most:
        items = items[:most] + [f"… {len(items) - most} more"]
    return "(" + ", ".join(items) + ")"


def _mat(values) -> str:
    """A matrix row by row: ``[(1, 2), (3, 4)]``, at most :data:`MAX_ROWS` rows."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim < 2:
        return _vec(a)
    rows = [_vec(r) for r in a[:MAX_ROWS]]
    if a.shape[0] > MAX_ROWS:
        rows.append(f"… {a.shape[0] - MAX_ROWS} more rows")
    return "[" + ", ".join(rows) + "]"


def _torch(ex, field: str, label: str) -> Text:
    u = ex.ulp(field)
    value = ex.torch_value(field)
    t = Text("torch: ", style="dim")
    t.append(f"{label} = {num(float(value)) if np.ndim(value) == 0 else _mat(value)}")
    t.append(f"  ({u} ulp{' at most' if np.size(value) > 1 else ''})", style="green" if u == 0 else "yellow")
    return t


def _beside(grid, ex, field: str, label: str) -> None:
    """torch's value under the result and, with --engine, the file's own, as expected or not."""
    grid.add_row("", _torch(ex, field, label))
    if ex.user is None or field not in ex.user:
        return
    ok = ex.user_ok.get(field, True)
    value = ex.user[field]
    t = Text(f"{ex.user_name}: ", style="dim")
    t.append(f"{label} = {num(float(value)) if np.ndim(value) == 0 else _mat(value)}")
    t.append(
        "  ✓ as expected" if ok else "  ✗ beyond the step's rounding allowance of the value above",
        style="green" if ok else "bold red",
    )
    grid.add_row("", t)


def _samples_table(ex, columns: list[tuple[str, Any]]) -> Table:
    """One row per sample (up to :data:`MAX_SAMPLES`), a column per node."""
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False, pad_edge=False)
    table.add_column("i", justify="right")
    for head, _ in columns:
        table.add_column(head, justify="right")
    shown = min(ex.n, MAX_SAMPLES)
    for i in range(shown):
        cells = []
        for head, values in columns:
            v = values[i]
            cells.append(
                num(float(np.reshape(v, -1)[0]))
                if np.size(v) == 1 and np.ndim(v) <= 1 and not head.endswith(")")
                else _vec(v)
            )
        table.add_row(str(ex.indices[i]), *cells)
    if ex.n > shown:
        table.add_row("⋮", Text(f"{ex.n - shown} more samples", style="italic"), *([""] * (len(columns) - 1)))
    return table


def network_view(ex) -> Group:
    """One batch of the network: the shapes, the forward pass per sample, the backward pass layer
    by layer in matrix form, the update, torch's values beside."""
    tr, model = ex.trace, ex.model
    cfg = tr.config
    H, D = model.param("w1").shape
    n = ex.n
    act = model.activation
    out = "ypred" if model.loss == "mse" else "z"
    spe = tr.plan.steps_per_epoch
    head = Text(f"Epoch {ex.epoch} of {tr.plan.epochs}, batch {ex.batch} of {spe} (step {ex.step + 1})", style="bold")
    head.append(
        f": samples {_per_sample([str(i) for i in ex.indices.tolist()])} (n = {n}), lr {ex.rate:g}, "
        f"{cfg.dtype} on {tr.device}\n"
        f"The network: z1 = X·W1ᵀ + b1, h = {act}(z1), {out} = z2 = h·W2ᵀ + b2, with X ({n}, {D}), W1 ({H}, {D}), "
        f"b1 ({H},), W2 (1, {H}), b2 (1,) (torch: nn.Sequential(nn.Linear({D}, {H}), {TORCH_ACTIVATION[act]}, "
        f"nn.Linear({H}, 1)), {TORCH_LOSS[model.loss]})\n"
    )
    where = "torch's default initialisation under the seed" if ex.step == 0 else "the previous batch's update"
    head.append(
        "Starting from " + ", ".join(f"{p.label} = {_mat(ex.start[p.name])}" for p in model.params) + f" ({where})"
    )
    parts: list = [head, Text("")]

    nd = ex.nodes
    fwd = _Section(
        f"Forward pass, per sample i: z1_i = W1·x_i + b1 (a dot product of {D} terms per unit), "
        f"h_i = {act}(z1_i), z2_i = W2·h_i + b2 (a dot product of {H} terms)"
    )
    cols = [(f"x_i ({D})", ex.x), ("y_i", ex.y), (f"z1_i ({H})", nd["z1"]), (f"h_i ({H})", nd["h"]), ("z2_i", nd["z2"])]
    z = nd["z2"][:, 0]
    if model.loss == "mse":
        terms = (z - ex.y) ** 2
        fwd.row("loss", f"l = (1/n)·Σ (z2_i − y_i)² over {n} samples", num(ex.loss))
    else:
        terms = (1 - ex.y) * z + np.logaddexp(0.0, -z)
        fwd.row("loss", f"l = (1/n)·Σ [(1 − y_i)·z2_i − log σ(z2_i)] over {n} samples", num(ex.loss))
    cols.append(("loss term", terms))
    _beside(fwd.grid, ex, "loss", "l")
    parts += [Text(fwd.title, style="bold"), _samples_table(ex, cols), fwd.grid, Text("")]

    back = _Section("Backward pass, layer by layer from the loss (matrix form; the chain rule per element)")
    rule = "(2/n)·(z2 − y)" if model.loss == "mse" else "(σ(z2) − y)/n"
    back.row("δ2", f"dl/dz2 = {rule}: ({n}, 1), per sample: {_per_sample([num(v) for v in nd['delta2'].tolist()])}")
    back.row("W2", f"dl/dW2 = δ2ᵀ·h: (1, {H}) = (1, {n})·({n}, {H}), a sum over the samples", _mat(ex.grads["w2"]))
    _beside(back.grid, ex, "grad_w2", "dl/dW2")
    back.row("b2", "dl/db2 = Σ_i δ2_i: (1,)", _vec(ex.grads["b2"]))
    _beside(back.grid, ex, "grad_b2", "dl/db2")
    prime = {
        "relu": "relu'(z1) = 1 where z1 > 0, else 0",
        "tanh": "tanh'(z1) = 1 − h²",
        "sigmoid": "σ'(z1) = h·(1 − h)",
    }[act]
    back.row(
        "δ1",
        f"dl/dh = δ2·W2: ({n}, {H}) = ({n}, 1)·(1, {H}) (W2 as the step began); {prime}; "
        f"δ1 = dl/dh ⊙ {act}'(z1): ({n}, {H}), per sample:",
    )
    parts += [back.render()]
    parts.append(
        _samples_table(
            ex, [(f"dl/dh_i ({H})", nd["dl_dh"]), (f"{act}'(z1_i)", nd["act_prime"]), ("δ1_i", nd["delta1"])]
        )
    )
    back2 = _Section("")
    back2.row("W1", f"dl/dW1 = δ1ᵀ·X: ({H}, {D}) = ({H}, {n})·({n}, {D}), a sum over the samples", _mat(ex.grads["w1"]))
    _beside(back2.grid, ex, "grad_w1", "dl/dW1")
    back2.row("b1", f"dl/db1 = Σ_i δ1_i: ({H},)", _vec(ex.grads["b1"]))
    _beside(back2.grid, ex, "grad_b1", "dl/db1")
    parts += [back2.grid, Text("")]

    upd = _Section(_update_title(cfg))
    lr = ex.rate
    for p in model.params:
        name = p.name
        rules = _sgd_rules(cfg, name, ex.step) if cfg.optimizer == "sgd" else {}
        for f, state in ex.state1.items():
            if f.endswith("_" + name):
                upd.row("", f"{f} ← {rules.get('state', 'its line of the algorithm')} {_shape(state)}", _mat(state))
                _beside(upd.grid, ex, f, f)
        rule = rules.get("param", "its line of the algorithm").replace(f"dl/d{name}", f"dl/d{p.label}")
        upd.row(
            "", f"{p.label} ← {rule.replace(name, p.label)}, lr {lr:g} {_shape(ex.start[name])}", _mat(ex.new[name])
        )
        _beside(upd.grid, ex, name, p.label)
    parts += [upd.render(), Text("")]
    if ex.user is not None:
        parts.append(
            Text(
                f"The values worked out above are sgdtrace's own, from the parameters {ex.user_name} started "
                f"this step from; '{ex.user_name}:' lines are your file's loss and gradients (the run's table "
                "judges its update).",
                style="dim",
            )
        )
    else:
        parts.append(closing_note(ex.matches_trace, elements=True))
    return Group(*parts)


def network_json(ex) -> dict[str, Any]:
    """The page as data: the shapes, every node per sample, the results beside torch's."""
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
            **{k: nums(ex.nodes[k]) for k in ("z1", "h", "z2")},
            "l": json_number(ex.loss),
        },
        "backward": {
            "dl/dz2": nums(ex.nodes["delta2"]),
            "dl/dh": nums(ex.nodes["dl_dh"]),
            "act'(z1)": nums(ex.nodes["act_prime"]),
            "delta1": nums(ex.nodes["delta1"]),
        },
        "manual": {f: nums(manual[f]) for f in fields},
        "torch": {f: nums(ex.torch_value(f)) for f in fields},
        "ulp": {f: ex.ulp(f) for f in fields},
        "matches_trace": ex.matches_trace,
    }
