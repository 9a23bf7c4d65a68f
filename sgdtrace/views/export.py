"""Exports of a Trace: JSON (the contract in docs/json.md), CSV (one flat row per step), Markdown."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np

from sgdtrace._version import __version__
from sgdtrace.divergence import json_number, tolerances
from sgdtrace.verdict import json_safe
from sgdtrace.views.elements import columns
from sgdtrace.views.fmt import LABELS, describe_data, model_title, num  # noqa: F401  (LABELS: re-exported)
from sgdtrace.views.verdict import plain


def _numbers(values) -> list:
    """A column as JSON: numbers per step, or per step a nested list of the parameter's shape
    (non-finite values as "inf", "-inf", "nan")."""
    return [_nested(v) for v in values.tolist()]


def _nested(v):
    return [_nested(x) for x in v] if isinstance(v, list) else json_number(v)


def _masked(v, finite):
    """``v`` where ``finite``, else None (element by element in nested lists)."""
    if isinstance(v, list):
        return [_masked(x, f) for x, f in zip(v, finite)]
    return v if finite else None


def _config_json(trace) -> dict[str, Any]:
    rtol, atol = tolerances(trace.config)
    config = trace.config.to_json()
    initial = getattr(trace, "initial", None)
    if initial is not None:  # the parameters' initial values: numbers for the article's, else lists
        config["init"] = {p: _nested(np.asarray(v).tolist()) for p, v in initial.items()}
    config.update(rtol=rtol, atol=atol, data=dict(trace.dataset.info))
    config["engine"] = trace.engine.to_json() if getattr(trace, "engine", None) is not None else None
    return config


def trace_to_json(trace, environment: bool = True) -> dict[str, Any]:
    """The JSON contract: ``{"sgdtrace", "config", "steps", "verdict"}``; fields are only ever added
    (``environment``: the machine, :mod:`sgdtrace.probe`; a compare document has one for all its runs)."""
    config = _config_json(trace)
    fields = trace.fields
    man = {f: _numbers(trace.manual[f]) for f in fields}
    ref = {f: _numbers(trace.torch[f]) for f in fields}
    div = {}
    for f in fields:
        d = trace.divergence[f]
        div[f] = (
            d.abs.tolist(),
            d.rel.tolist(),
            d.ulp.tolist(),
            _numbers(d.carried),
            _numbers(d.tol),
            d.ok.tolist(),
            d.finite.tolist(),
        )
    epochs, batches, ns = trace.epoch.tolist(), trace.batch.tolist(), trace.n.tolist()
    stalls = _stall_keys(trace)  # booleans beside the values: the update lost to rounding
    man.update({f: trace.stalled["manual"][f].tolist() for f in stalls})
    ref.update({f: trace.stalled["torch"][f].tolist() for f in stalls})
    steps = []
    for k in range(trace.n_steps):
        divergence = {}
        for f in fields:
            a, r, u, c, t, ok, fin = (col[k] for col in div[f])
            divergence[f] = {
                "abs": _masked(a, fin),
                "rel": _masked(r, fin),
                "ulp": _masked(u, fin),
                "carried": c,
                "tol": t,
                "ok": ok,
            }
        steps.append(
            {
                "epoch": epochs[k],
                "batch": batches[k],
                "n": ns[k],
                "indices": trace.indices(k).tolist(),
                "manual": {f: man[f][k] for f in fields + stalls},
                "torch": {f: ref[f][k] for f in fields + stalls},
                "divergence": divergence,
            }
        )
    doc = {"sgdtrace": __version__, "config": config, "steps": steps, "verdict": trace.verdict.to_json()}
    if environment:
        doc["environment"] = trace.environment
    _add_witnesses(trace, doc)
    _add_ranks(trace, doc)
    return doc


def _add_ranks(trace, doc: dict[str, Any]) -> None:
    """``--world-size N``: each step's ``ranks`` (each rank's own n, indices, gradients and loss,
    judged) and the top-level ``epochs`` (the samples DistributedSampler repeated as padding)."""
    rt = getattr(trace, "ranks", None)
    if rt is None:
        return
    fields = tuple(rt.manual)
    world = rt.world_size
    plans = [rt.plan.rank_plan(r) for r in range(world)]
    man = {f: [_numbers(rt.manual[f][:, r]) for r in range(world)] for f in fields}
    ref = {f: [_numbers(rt.torch[f][:, r]) for r in range(world)] for f in fields}
    for k, step in enumerate(doc["steps"]):
        step["ranks"] = [
            {
                "rank": r,
                "n": int(rt.n[k, r]),
                "indices": plans[r].indices(k).tolist(),
                "manual": {f: man[f][r][k] for f in fields},
                "torch": {f: ref[f][r][k] for f in fields},
                "divergence": {
                    f: {
                        "abs": _masked(
                            _nested(rt.divergence[f].abs[k, r].tolist()), rt.divergence[f].finite[k, r].tolist()
                        ),
                        "tol": _nested(rt.divergence[f].tol[k, r].tolist()),
                        "ok": rt.divergence[f].ok[k, r].tolist(),
                    }
                    for f in fields
                },
            }
            for r in range(world)
        ]
    doc["epochs"] = [{"epoch": e + 1, "padded": rt.plan.padded[e].tolist()} for e in range(rt.plan.epochs)]


def _stall_keys(trace) -> tuple[str, ...]:
    """``stalled_w``, ``stalled_b``: recorded on both sides by the judge (:mod:`sgdtrace.stall`)."""
    return tuple(trace.stalled["torch"]) if getattr(trace, "stalled", None) else ()


def compare_to_json(result) -> dict[str, Any]:
    """``compare --format json``: ``{"runs": [one trace document per device/dtype], "cross": [...],
    "environment"}``."""
    return {
        "runs": [trace_to_json(t, environment=False) for t in result.runs],
        "cross": [c.to_json() for c in result.cross] + [d.to_json() for d in getattr(result, "drift", ())],
        "environment": result.environment,
    }


def _add_witnesses(trace, doc: dict[str, Any]) -> None:
    """When present: the exact reference per step (``reference``, ``reference_error``), the gradcheck."""
    ref, gc = trace.reference, trace.gradcheck
    if ref is not None:
        doc["reference"] = ref.to_json()
        errs = {"manual": ref.errors(trace.manual), "torch": ref.errors(trace.torch)}
        for k, step in enumerate(doc["steps"]):
            step["reference"] = {f: json_number(ref.floats[f][k]) for f in ref.fields}
            step["reference_error"] = {
                eng: {f: {"abs": json_number(e[f][0][k]), "rel": json_number(e[f][1][k])} for f in ref.fields}
                for eng, e in errs.items()
            }
    if gc is not None:
        doc["gradcheck"] = {"eps": gc.eps, "atol": gc.atol, "rtol": gc.rtol, "ok": gc.all_ok}
        for k, step in enumerate(doc["steps"]):
            step["gradcheck"] = {
                f: {
                    "numeric": json_number(gc.numeric[f][k]),
                    "analytic": json_number(gc.analytic[f][k]),
                    "abs": json_number(gc.abs[f][k]),
                    "tol": json_number(gc.tol[f][k]),
                }
                for f in gc.numeric
            }
            step["gradcheck"]["ok"] = bool(gc.ok[k]) if gc.finite[k] else None


def to_json_text(doc: dict[str, Any]) -> str:
    """The text of every JSON document sgdtrace writes: non-finite numbers as the strings "inf",
    "-inf", "nan" (:func:`sgdtrace.verdict.json_safe`, the one rule), never JSON's invalid Infinity."""
    return json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n"


# ------------------------------------------------------------------ JSON, fast and streamed

#: steps per chunk yielded by :func:`trace_json_chunks`
JSON_CHUNK_STEPS = 4096
_STEPS_MARK = "\u0000steps\u0000"


def _json_floats(values, finite=None) -> list[str]:
    """A float column as ``json.dumps`` writes it (repr; non-finite values as "inf"/"nan" strings,
    or ``null`` where ``finite`` is given and false)."""
    arr = np.asarray(values)
    ok = np.isfinite(arr)
    if finite is not None:
        ok &= finite
    text = list(map(repr, arr.astype(np.float64).tolist()))
    if not ok.all():
        for k in np.flatnonzero(~ok).tolist():
            text[k] = "null" if finite is not None and not finite[k] else json.dumps(json_number(arr[k]))
    return text


def json_pieces(trace):
    """The JSON text of a trace, in pieces: streamed from the columns, or (with an exact
    reference or a gradcheck attached, which add per-step objects) from :func:`trace_to_json`."""
    shaped = any(np.ndim(v) > 1 for v in trace.manual.values())  # fields of parameters with a shape
    if trace.reference is None and trace.gradcheck is None and getattr(trace, "ranks", None) is None and not shaped:
        return trace_json_chunks(trace)
    return iter([to_json_text(trace_to_json(trace))])


def trace_json_chunks(trace):
    """The text of ``to_json_text(trace_to_json(trace))``, character for character, in pieces.

    ``json.dumps(..., indent=2)`` runs the json module's pure-Python encoder and needs the whole
    document (a dict per step) in memory first. This writes each step from the columns with
    string templates, ``JSON_CHUNK_STEPS`` steps per piece, so a million-step run streams to its
    file without holding it (about 1.4 kB of text per step) all at once; tests hold the two equal.
    """
    head = {
        "sgdtrace": __version__,
        "config": _config_json(trace),
        "steps": [_STEPS_MARK],
        "verdict": trace.verdict.to_json(),
        "environment": trace.environment,
    }
    text = to_json_text(head)
    mark = "\n    " + json.dumps(_STEPS_MARK) + "\n"
    before, after = text.split(mark)
    yield before + "\n"

    fields = trace.fields
    stalls = _stall_keys(trace)
    keys = {f: json.dumps(f) for f in fields + stalls}
    i8, i6, i10 = " " * 8, " " * 6, " " * 10
    last = trace.n_steps - 1
    for lo in range(0, trace.n_steps, JSON_CHUNK_STEPS):
        hi = min(lo + JSON_CHUNK_STEPS, trace.n_steps)
        man = {f: _json_floats(trace.manual[f][lo:hi]) for f in fields}
        ref = {f: _json_floats(trace.torch[f][lo:hi]) for f in fields}
        for f in stalls:
            man[f] = ["true" if v else "false" for v in trace.stalled["manual"][f][lo:hi].tolist()]
            ref[f] = ["true" if v else "false" for v in trace.stalled["torch"][f][lo:hi].tolist()]
        div = {}
        for f in fields:
            d = trace.divergence[f]
            fin = d.finite[lo:hi]
            ulp = list(map(str, d.ulp[lo:hi].tolist()))
            for j in np.flatnonzero(~fin).tolist():
                ulp[j] = "null"
            div[f] = [
                _json_floats(d.abs[lo:hi], fin),
                _json_floats(d.rel[lo:hi], fin),
                ulp,
                _json_floats(d.carried[lo:hi]),
                _json_floats(d.tol[lo:hi]),
                ["true" if v else "false" for v in d.ok[lo:hi].tolist()],
            ]
        epochs, batches, ns = (c[lo:hi].tolist() for c in (trace.epoch, trace.batch, trace.n))
        parts: list[str] = []
        for j in range(hi - lo):
            idx = (",\n" + i8).join(map(str, trace.plan.indices(lo + j).tolist()))
            manual = (",\n" + i8).join(f"{keys[f]}: {man[f][j]}" for f in fields + stalls)
            torch = (",\n" + i8).join(f"{keys[f]}: {ref[f][j]}" for f in fields + stalls)
            dv = (",\n" + i8).join(
                f'{keys[f]}: {{\n{i10}"abs": {div[f][0][j]},\n{i10}"rel": {div[f][1][j]},\n'
                f'{i10}"ulp": {div[f][2][j]},\n{i10}"carried": {div[f][3][j]},\n'
                f'{i10}"tol": {div[f][4][j]},\n{i10}"ok": {div[f][5][j]}\n{i8}}}'
                for f in fields
            )
            parts.append(
                f'    {{\n{i6}"epoch": {epochs[j]},\n{i6}"batch": {batches[j]},\n{i6}"n": {ns[j]},\n'
                f'{i6}"indices": [\n{i8}{idx}\n{i6}],\n'
                f'{i6}"manual": {{\n{i8}{manual}\n{i6}}},\n'
                f'{i6}"torch": {{\n{i8}{torch}\n{i6}}},\n'
                f'{i6}"divergence": {{\n{i8}{dv}\n{i6}}}\n    }}' + (",\n" if lo + j != last else "\n")
            )
        yield "".join(parts)
    yield after


def trace_to_json_text(trace) -> str:
    """``to_json_text(trace_to_json(trace))``, about four times faster: see :func:`trace_json_chunks`."""
    return "".join(trace_json_chunks(trace))


def _elements(shape: tuple[int, ...]) -> list[tuple[str, tuple]]:
    """A field's CSV columns: ``("", ())`` for a scalar, else ``("[0,1]", (0, 1))`` per element, row-major."""
    if not shape:
        return [("", ())]
    return [("[" + ",".join(map(str, i)) + "]", tuple(i)) for i in np.ndindex(*shape)]


def csv_header(fields, shapes: dict[str, tuple[int, ...]] | None = None) -> list[str]:
    """The CSV's columns; a field of a parameter with a shape has one per element (``manual_w[0]``)."""
    shapes = shapes or {}
    el = {f: [suffix for suffix, _ in _elements(shapes.get(f, ()))] for f in fields}
    cols = ["epoch", "batch", "n"]
    cols += [f"manual_{f}{s}" for f in fields for s in el[f]] + [f"torch_{f}{s}" for f in fields for s in el[f]]
    cols += [f"{kind}_{f}{s}" for f in fields for s in el[f] for kind in ("abs", "ulp", "carried", "tol")]
    return cols + ["ok"]


def trace_to_csv(trace) -> str:
    """One row per step with flat column names: ``manual_grad_w``, ``torch_grad_w``, ``ulp_grad_w``...;
    a field with a shape has a column per element: ``manual_w[0]``, ``ulp_w[2]``, ..."""
    fields = trace.fields
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    shapes = {f: tuple(np.shape(trace.manual[f])[1:]) for f in fields}
    el = {f: [i for _, i in _elements(shapes[f])] for f in fields}

    def part(values, i):
        return values[(slice(None), *i)] if i else values

    cols = [trace.epoch.tolist(), trace.batch.tolist(), trace.n.tolist()]
    cols += [part(trace.manual[f], i).tolist() for f in fields for i in el[f]]
    cols += [part(trace.torch[f], i).tolist() for f in fields for i in el[f]]
    for f in fields:
        d = trace.divergence[f]
        for i in el[f]:
            finite = part(d.finite, i).tolist()
            cols += [
                [a if fin else "" for a, fin in zip(part(d.abs, i).tolist(), finite)],
                [u if fin else "" for u, fin in zip(part(d.ulp, i).tolist(), finite)],
                part(d.carried, i).tolist(),
                part(d.tol, i).tolist(),
            ]
    ok = None
    for f in fields:
        d_ok = trace.divergence[f].ok.reshape(trace.n_steps, -1).all(axis=1)
        ok = d_ok if ok is None else ok & d_ok
    cols.append(["true" if v else "false" for v in ok.tolist()])
    header = csv_header(fields, shapes)
    if trace.reference is not None:
        ref = trace.reference
        header += [f"exact_{f}" for f in ref.fields]
        cols += [ref.floats[f].tolist() for f in ref.fields]
        for eng, columns in (("manual", trace.manual), ("torch", trace.torch)):
            errs = ref.errors(columns)
            header += [f"relerr_{eng}_{f}" for f in ref.fields]
            cols += [errs[f][1].tolist() for f in ref.fields]
    if trace.gradcheck is not None:
        gc = trace.gradcheck
        for f in gc.numeric:
            header += [f"gradcheck_numeric_{f}", f"gradcheck_abs_{f}"]
            cols += [gc.numeric[f].tolist(), gc.abs[f].tolist()]
        header.append("gradcheck_ok")
        cols.append(["true" if o else ("false" if fin else "") for o, fin in zip(gc.ok.tolist(), gc.finite.tolist())])
    writer.writerow(header)
    for row in zip(*cols):
        writer.writerow([repr(v) if isinstance(v, float) else v for v in row])
    return out.getvalue()


def trace_to_markdown(trace) -> str:
    """A table to paste into slides or notes: hand and torch side by side, the verdict below."""
    cfg = trace.config
    fields = trace.fields
    from sgdtrace.config import OPTIMIZER_CLASSES

    equation = "y = w·x + b" if trace.model.scalar else model_title(trace)
    lines = [
        f"{OPTIMIZER_CLASSES[cfg.optimizer]} on {equation}, {describe_data(trace.dataset.info)}: "
        f"lr {cfg.lr:g}, batch size "
        f"{cfg.batch_size}, {cfg.dtype} on {trace.device}",
        "",
    ]
    head = ["epoch", "batch", "n"]
    ref = trace.reference
    cols = [c for f in fields for c in columns(trace, f)]  # a field of many elements: each, or its norm
    for c in cols:
        head += [f"{c.label} (hand)", f"{c.label} (torch)"] + ([f"{c.label} (exact)"] if ref else [])
    head.append("max ulp")
    if ref is not None:
        head += ["max rel err hand", "max rel err torch"]
        err_m, err_t = ref.errors(trace.manual), ref.errors(trace.torch)
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---:"] * len(head)) + "|")
    for k in range(trace.n_steps):
        row = [str(trace.epoch[k]), str(trace.batch[k]), str(trace.n[k])]
        for c in cols:
            row += [num(c.value(trace.manual, k)), num(c.value(trace.torch, k))]
            if ref is not None:
                row.append(num(ref.floats[c.field][k]))
        row.append(str(max(int(np.max(trace.divergence[f].ulp[k])) for f in fields)))
        if ref is not None:
            row += [f"{max(err[f][1][k] for f in fields):.2g}" for err in (err_m, err_t)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", verdict_sentence(trace)]
    if ref is not None:
        lines += ["", ref.describe() + "."]
    if trace.gradcheck is not None:
        lines += ["", trace.gradcheck.summary() + "."]
    return "\n".join(lines) + "\n"


def verdict_sentence(trace) -> str:
    """The verdict as plain text, as the table prints it (the sentences: :mod:`sgdtrace.views.verdict`);
    the markdown table marks no row."""
    return plain(trace, marked=False)
