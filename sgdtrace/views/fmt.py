"""Number formatting shared by the views: stable, compact, honest about non-finite values."""

from __future__ import annotations

import math

from sgdtrace.labels import LABELS, label  # noqa: F401  (re-exported: the views' labels)
from sgdtrace.verdict import json_number


def num(value: float, digits: int = 6) -> str:
    """A value to ``digits`` significant digits (``%g``); inf, -inf and nan spelled out."""
    v = float(value)
    if not math.isfinite(v):
        return json_number(v)  # one spelling of inf, -inf, nan: the JSON's
    if v == 0:
        return "0"
    return f"{v:.{digits}g}"


def fit(value: float, width: int = 9, digits: int = 6) -> str:
    """:func:`num` in at most ``width`` characters (tables): ``digits`` significant digits, fewer
    where the value needs more room; exponents written short (``1.5e-5``, ``-2.25e5``)."""
    for d in range(digits, 1, -1):
        text = num(value, d)
        if "e" in text:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e{int(exponent)}"
        if len(text) <= width:
            return text
    return text


def sci(value: float) -> str:
    """A small diagnostic number (a tolerance, a difference) in short scientific form."""
    v = float(value)
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return num(v)
    return f"{v:.2g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.1e}"


def percent(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "inf %"
    return f"{100 * ratio:.0f}%" if ratio >= 0.01 or ratio == 0 else f"{100 * ratio:.1g}%"


def vector_text(values, most: int = 8) -> str:
    """``(1, -2, 0.5)``: a short list of numbers; past ``most``, the first ones and an ellipsis."""
    items = [num(v) for v in values]
    if len(items) > most:
        items = items[: most - 1] + ["…"]
    return "(" + ", ".join(items) + ")"


def describe_data(info: dict) -> str:
    src = info.get("source")
    if src == "article":
        return "the article's data (x = 0..8, y = 2x + 10)"
    if src == "csv":
        return f"{info.get('path')} ({info.get('n')} samples)"
    if src == "synthetic" and info.get("labels"):  # 0/1 labels drawn from σ(x·w + b)
        w = info.get("true_w")
        shown = vector_text(w) if isinstance(w, (list, tuple)) else f"{w:g}"
        b = float(info.get("true_b"))
        return f"synthetic: {info.get('n')} samples, y ~ Bernoulli(σ(x·{shown} {'-' if b < 0 else '+'} {abs(b):g}))"
    if src == "synthetic" and info.get("features") is not None:
        w = info.get("true_w")
        w = w if isinstance(w, (list, tuple)) else [w] * int(info["features"])
        return f"synthetic: {info.get('n')} samples of y = x·{vector_text(w)} + {info.get('true_b'):g}" + (
            f" + {info.get('noise'):g}·N(0,1)" if info.get("noise") else ""
        )
    if src == "synthetic":
        return f"synthetic: {info.get('n')} samples of y = {info.get('true_w'):g}x + {info.get('true_b'):g}" + (
            f" + {info.get('noise'):g}·N(0,1)" if info.get("noise") else ""
        )
    return f"{info.get('n')} samples"


def model_title(trace) -> str:
    """The model as titles name it: the article's ``ypred = w·x + b``, or its form on D features."""
    model = getattr(trace, "model", None)
    own = getattr(getattr(model, "module", None), "title", None)
    if own is not None:  # a model that names itself (logistic regression and its loss)
        return own(model, trace.config)
    if model is None or model.scalar:
        return "ypred = w·x + b"
    d = model.param("w").shape[0]
    return f"ypred = w·x + b on {d} feature{'s' if d != 1 else ''} (nn.Linear({d}, 1))"


def field_label(field: str) -> str:
    """A field's label; a rank's own field (``rank1.grad_w``, --world-size) as ``rank 1 dl/dw``."""
    if field.startswith("rank") and "." in field:
        r, f = field.split(".", 1)
        return f"rank {r[4:]} {LABELS.get(f, f)}"
    return LABELS.get(field, field)


def strip_trailing(text: str) -> str:
    """``text`` without spaces at the ends of its lines (rich pads every line of a table to its width)."""
    return "\n".join(line.rstrip(" ") for line in text.split("\n"))
