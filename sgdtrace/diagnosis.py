"""The likely mistake behind a divergence: hypotheses tested against the numbers.

When the hand side (usually a user's engine, ``--engine``) first leaves torch at step k in field
f, each classic mistake is turned into the value it would have produced at that step, computed
from the hand side's OWN inputs (the parameters and state it started the step from, its
gradients of the step), in float64 on the same batch with sgdtrace's own equations:

* gradients and loss: a constant factor (2, 1/2, n, 1/n, n/(n-1), (n-1)/n), a flipped sign,
  one sample left out of the sum or counted twice (divided by n, or by the count it summed),
  the previous step's value, the value at the parameters after the step's update instead of
  before;
* the update (w, b and momentum's buffer): the step scaled by a constant factor or with its sign
  flipped, the previous step's gradient, momentum's buffer damped on its first step (torch copies
  the gradient there) or never damped, weight decay added after momentum instead of before.

A hypothesis names the mistake when the hand side's value lies within the step's rounding
allowance (the judge's ``tol``, times the factor where one scales the value) of the
hypothesis' value, that value is itself clearly away from the right one (more than twice the
allowance), and the hand side's value is less than half as far from it as from the right one.
The first hypothesis in the order above that matches is named; none matching gives ``None``: the
numbers support no guess.

On a model with parameters of a shape (linear on D features) the hypotheses are tested on the
element the verdict names (``index``), and one more is tried for a weight's gradient: the value
of another feature's element (the columns of X mixed up, or X transposed).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sgdtrace.dtypes import unit_roundoff
from sgdtrace.engines.protocol import state_field
from sgdtrace.labels import LABELS

GRADIENT_FIELDS = ("grad_w", "grad_b", "loss")


def _factors(n: int) -> list[tuple[float, str, str]]:
    """(factor, as printed, what usually causes it) for a batch of n samples."""
    out = [
        (2.0, "2", "the 2 of de/dd = 2d counted twice, or a sum of squares without the 1/2 you meant"),
        (0.5, "1/2", "the 2 of de/dd = 2d left out (or a loss written as 1/2 of the mean square)"),
    ]
    if n > 1:
        out += [
            (float(n), f"n = {n}", "a sum where the mean was meant: the 1/n of dl/de = 1/n left out"),
            (1 / n, f"1/n = 1/{n}", "divided by n twice: the mean of terms that already carry 1/n"),
            (n / (n - 1), f"n/(n-1) = {n}/{n - 1}", "divided by n - 1 instead of n"),
            ((n - 1) / n, f"(n-1)/n = {n - 1}/{n}", "divided by n where n - 1 was used, or a sum over n - 1 terms"),
        ]
    seen: set[float] = set()
    unique = []
    for c, label, why in out:
        if c != 1 and c not in seen:
            seen.add(c)
            unique.append((c, label, why))
    return unique


class _Judge:
    """Does a candidate value explain the hand side's value? Within the allowance, and clearly wrong.

    The allowance is the step's rounding allowance (times the factor, where one scales the value),
    plus the one rounding of the hand side's value to its dtype (``u * |candidate|``: the candidate
    is worked out in float64 from the hand side's own inputs, which carries no rounding of its own
    to speak of).
    """

    def __init__(self, value: float, right: float, tol: float, u: float):
        self.value, self.right, self.tol, self.u = value, right, tol, u

    def allow(self, candidate: float, scale: float = 1.0) -> float:
        return self.tol * max(1.0, abs(scale)) + self.u * abs(candidate)

    def right_already(self) -> bool:
        return abs(self.value - self.right) <= self.allow(self.right)

    def explains(self, candidate: float, scale: float = 1.0) -> bool:
        if not math.isfinite(candidate):
            return False
        allow = self.allow(candidate, scale)
        near = abs(self.value - candidate)
        # and the value is markedly nearer the candidate than the right value: where the allowance
        # is as large as the values (16 bits), a candidate barely inside it is no evidence
        return near <= allow and abs(candidate - self.right) > 2 * allow and 2 * near < abs(self.value - self.right)


def _batch(trace, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The step's samples as the hand side saw them (float64 values of the run's dtype): x 1-D in
    the article's form, (n, D) on D features."""
    dtype = np.dtype(trace.config.dtype)
    idx = trace.indices(k)
    x = trace.dataset.x[idx]
    x = (x[:, 0] if _scalar(trace) else x).astype(dtype).astype(np.float64)
    y = trace.dataset.y[idx].astype(dtype).astype(np.float64)
    return idx, x, y


def _scalar(trace) -> bool:
    return getattr(trace, "model", None) is None or trace.model.scalar


def _terms(field: str, w, b, x: np.ndarray, y: np.ndarray, trace=None) -> np.ndarray:
    """Per sample, what the field sums before dividing by n: 2 d x, 2 d, d^2 (on D features
    ``(n, D)`` for the weight's gradient, ``(n, 1)`` for the bias's); a model that declares its
    own (``sample_terms``: logistic regression's (p - y) x, ...) gives them."""
    own = getattr(getattr(getattr(trace, "model", None), "module", None), "sample_terms", None)
    if own is not None:
        return own(field, w, b, x, y, trace.config)
    if np.ndim(w) == 0:
        d = w * x + b - y
        return {"grad_w": 2 * d * x, "grad_b": 2 * d, "loss": d * d}[field]
    d = x @ w + b[0] - y
    return {"grad_w": 2 * d[:, None] * x, "grad_b": 2 * d[:, None], "loss": d * d}[field]


def _start(trace, col: str, k: int, init, index: tuple = ()):
    """The value ``col`` (its element ``index``) had when step ``k`` started (``--judge step``: torch's)."""
    cols = trace.manual if col in trace.manual and not _step_mode(trace) else trace.torch
    if k == 0:
        return init if init is None or not index else float(np.asarray(init)[index])
    return float(cols[col][(k - 1, *index)])


def _step_mode(trace) -> bool:
    """``--judge step``: each step of the hand side started from torch's values."""
    return getattr(trace.config, "judge", "carry") == "step"


def _init(trace, param: str):
    """A parameter's initial value: the config's number (the article's), or the model's array."""
    initial = getattr(trace, "initial", None)
    if initial is None or _scalar(trace):
        return {"w": trace.config.init_w, "b": trace.config.init_b}[param]
    return initial[param]


def _label(field: str, index: tuple) -> str:
    return LABELS.get(field, field) + ("" if not index else "[" + ",".join(map(str, index)) + "]")


def _sgd(
    cfg,
    p: float,
    g: float,
    buf: float | None,
    *,
    factor: float = 1.0,
    damp_first: bool = False,
    no_damp: bool = False,
    decay_after: bool = False,
) -> tuple[float, float | None]:
    """torch.optim.SGD's step in float64, or one of the classic mistakes in it."""
    if cfg.maximize:
        g = -g
    if cfg.weight_decay and not decay_after:
        g = g + cfg.weight_decay * p
    new_buf = None
    if cfg.momentum:
        damp = 1.0 if no_damp else 1 - cfg.dampening
        new_buf = (damp * g if damp_first else g) if buf is None else cfg.momentum * buf + damp * g
        g = g + cfg.momentum * new_buf if cfg.nesterov else new_buf
    if decay_after:
        g = g + cfg.weight_decay * p
    return p - factor * cfg.lr * g, new_buf


def _gradient_hypotheses(trace, k: int, field: str, judge: _Judge, w0, b0, index: tuple = ()):
    _, x, y = _batch(trace, k)
    n = x.shape[0]
    label = _label(field, index)
    module = getattr(getattr(trace, "model", None), "module", None)
    # a model's own classic mistakes first: more specific than a constant factor, which they can
    # equal at a step (the mean squared error's gradient is half the cross-entropy's where p = 1/2)
    mistakes = getattr(module, "gradient_mistakes", None)
    for kind, candidate, text in mistakes(field, w0, b0, x, y, trace.config, index) if mistakes else ():
        if judge.explains(candidate):
            return {"kind": kind, "factor": None, "text": f"{label} {text}"}
    why_of = getattr(module, "FACTOR_WHY", {})
    for c, printed, why in _factors(n):
        why = why_of.get(printed, why)
        if judge.explains(c * judge.right, c):
            return {"kind": "factor", "factor": c, "text": f"{label} is {printed} times the right value: {why}"}
    if judge.explains(-judge.right):
        return {
            "kind": "sign",
            "factor": -1.0,
            "text": f"{label} has its sign flipped: "
            + getattr(
                module,
                "SIGN_TEXT",
                "the residual taken as y - ypred without the chain rule's -1 (dd/dc = 1 for d = ypred - y)",
            ),
        }
    if not index and field in ("grad_w", "grad_b"):  # the article's model: the other parameter's gradient
        other = "grad_b" if field == "grad_w" else "grad_w"
        if judge.explains(float(_terms(other, w0, b0, x, y, trace).sum() / n)):
            return {
                "kind": "other_gradient",
                "factor": None,
                "text": f"{label} is {_label(other, ())}: the two gradients swapped (w's gradient where b's "
                "belongs, or b's where w's belongs)",
            }
    every = _terms(field, w0, b0, x, y, trace)
    if index and field == "grad_w":  # D features: another feature's element
        right = every.sum(axis=0) / n
        for j in range(right.shape[0]):
            if j != index[0] and judge.explains(float(right[j])):
                return {
                    "kind": "wrong_feature",
                    "factor": None,
                    "text": f"{label} is the gradient of w[{j}]: the columns of X mixed up (a transposed X, "
                    f"or feature {j + 1}'s column where feature {index[0] + 1}'s belongs)",
                }
    terms = every[(slice(None), *index)] if index else every
    total = terms.sum()
    if n > 1:
        for kind, cands, how in (
            ("sample_left_out", (total - terms) / n, "left out of the sum (still divided by n)"),
            ("sample_left_out", (total - terms) / (n - 1), "left out (the mean of the other n - 1)"),
            ("sample_twice", (total + terms) / n, "counted twice (divided by n)"),
            ("sample_twice", (total + terms) / (n + 1), "counted twice (divided by n + 1)"),
        ):
            i = int(np.argmin(np.abs(cands - judge.value)))
            if judge.explains(float(cands[i])):
                row = int(trace.indices(k)[i])
                return {
                    "kind": kind,
                    "factor": None,
                    "text": f"{label}: sample {i + 1} of the batch (data row {row + 1}) {how}: "
                    "check the loop's range or the slice",
                }
    if k > 0 and judge.explains(float(trace.torch[field][(k - 1, *index)])):
        return {
            "kind": "previous_gradient",
            "factor": None,
            "text": f"{label} is the previous step's value: computed before the batch changed, or kept "
            "from the step before",
        }
    w1, b1 = trace.manual["w"][k].astype(np.float64), trace.manual["b"][k].astype(np.float64)
    after = _terms(field, w1, b1, x, y, trace).sum(axis=0) / n
    if judge.explains(float(after[index] if index else after)):
        return {
            "kind": "after_update",
            "factor": None,
            "text": f"{label} is taken at the parameters after the update instead of before: the table's "
            "loss and gradients belong to the parameters the step started from",
        }
    return None


def _update_hypotheses(trace, k: int, field: str, judge: _Judge, index: tuple = ()):
    cfg = trace.config
    param = field if field in ("w", "b") else field.rsplit("_", 1)[1]
    is_buf = field not in ("w", "b")
    label = _label(field, index)
    p0 = _start(trace, param, k, _init(trace, param), index)
    g = float(trace.manual["grad_" + param][(k, *index)])
    buf0 = _start(trace, state_field("momentum_buffer", param), k, None, index) if cfg.momentum else None

    def explains(**mistake) -> bool:
        new, buf = _sgd(cfg, p0, g, buf0, **mistake)
        cand = buf if is_buf else new
        return cand is not None and judge.explains(cand)

    if not is_buf:
        for c, printed, _ in _factors(int(trace.n[k])):
            if explains(factor=c):
                return {
                    "kind": "factor",
                    "factor": c,
                    "text": f"{label}: the update's step is {printed} times torch's (lr times the step "
                    "direction scaled by a constant)",
                }
        if explains(factor=-1.0):
            return {
                "kind": "sign",
                "factor": -1.0,
                "text": f"{label}: the update went the wrong way: p + lr*g instead of p - lr*g",
            }
    if cfg.momentum and cfg.dampening and explains(damp_first=True):
        return {
            "kind": "dampening_first_step",
            "factor": 1 - cfg.dampening,
            "text": f"{label}: momentum's buffer was damped on its first step; torch starts it as a copy of "
            "the gradient (buf = g), and damps from the second step on",
        }
    if cfg.momentum and cfg.dampening and buf0 is not None and explains(no_damp=True):
        return {
            "kind": "no_dampening",
            "factor": None,
            "text": f"{label}: momentum's buffer without dampening: buf = mu*buf + g instead of "
            "mu*buf + (1 - dampening)*g",
        }
    if cfg.momentum and cfg.weight_decay and explains(decay_after=True):
        return {
            "kind": "weight_decay_after_momentum",
            "factor": None,
            "text": f"{label}: weight decay added after momentum; torch adds weight_decay * p to the "
            "gradient before the buffer",
        }
    if k > 0:
        new, buf = _sgd(cfg, p0, float(trace.manual["grad_" + param][(k - 1, *index)]), buf0)
    else:
        new, buf = _sgd(cfg, p0, 0.0, buf0)
    cand = buf if is_buf else new
    if cand is not None and judge.explains(cand):
        return {
            "kind": "previous_gradient",
            "factor": None,
            "text": f"{label}: the update used the previous step's gradient (none on the first step), not this step's",
        }
    return None


def diagnose_step(trace, first=None) -> dict[str, Any] | None:
    """``{"kind", "factor", "text"}`` for the verdict's first divergent step (or ``first``: a step of
    ``--judge step``'s list, ``{"step", "field", "index"}``), or None (no guess)."""
    if first is None:
        first = trace.verdict.first_divergent_step
    if first is None:
        return None
    k, field = first["step"] - 1, first["field"]
    index = tuple(first.get("index", ()) or ())  # the element, on a parameter with a shape
    at = (k, *index)
    value = float(trace.manual[field][at])
    tol = float(trace.divergence[field].tol[at])
    cfg = trace.config
    u = unit_roundoff(cfg.dtype)
    own = getattr(getattr(getattr(trace, "model", None), "module", None), "diagnose", None)
    if own is not None and (field == "loss" or field.startswith("grad_")):
        if not (math.isfinite(value) and math.isfinite(tol)):
            return None
        with np.errstate(all="ignore"):  # a model that names its own mistakes (a network's backward pass)
            return own(trace, k, field, index, value, tol)
    if field not in GRADIENT_FIELDS and (cfg.optimizer != "sgd" or not math.isfinite(value)):
        try:
            with np.errstate(all="ignore"):
                return _catalogue(trace, k, field, index, value, tol, u)
        except (KeyError, IndexError, ValueError):
            return None
    if not (math.isfinite(value) and math.isfinite(tol)):
        return None
    try:
        with np.errstate(all="ignore"):
            if field in GRADIENT_FIELDS:
                if _scalar(trace):
                    w0 = _start(trace, "w", k, cfg.init_w)
                    b0 = _start(trace, "b", k, cfg.init_b)
                else:
                    starts = trace.torch if _step_mode(trace) else trace.manual
                    w0, b0 = (
                        np.asarray(_init(trace, p) if k == 0 else starts[p][k - 1], dtype=np.float64)
                        for p in ("w", "b")
                    )
                _, x, y = _batch(trace, k)
                total = _terms(field, w0, b0, x, y, trace).sum(axis=0) / x.shape[0]
                right = float(total[index] if index else total)
                exact_rule = getattr(trace.model.module, "right_value", None) if not _scalar(trace) else None
                if exact_rule is not None:  # the model's own rules in the run's dtype (torch's clamps)
                    right = exact_rule(field, w0, b0, x, y, cfg, index)
                return _gradient_hypotheses(trace, k, field, _Judge(value, right, tol, u), w0, b0, index)
            if field not in ("w", "b") and not field.startswith("buf_"):
                return None
            param = field if field in ("w", "b") else field.rsplit("_", 1)[1]
            p0 = _start(trace, param, k, _init(trace, param), index)
            buf0 = _start(trace, state_field("momentum_buffer", param), k, None, index) if cfg.momentum else None
            new, buf = _sgd(cfg, p0, float(trace.manual["grad_" + param][at]), buf0)
            right = new if field in ("w", "b") else buf
            if right is None:
                return None
            judge = _Judge(value, right, tol, u)
            buf_field = state_field("momentum_buffer", param)
            if field in ("w", "b") and judge.right_already() and buf is not None and buf_field in trace.manual:
                # the parameter is right and the buffer recorded beside it is not: the mistake is the buffer's
                field, judge = (
                    buf_field,
                    _Judge(float(trace.manual[buf_field][at]), buf, float(trace.divergence[buf_field].tol[at]), u),
                )
            found = _update_hypotheses(trace, k, field, judge, index)
            if found is None:  # SGD's own slips do not explain it: the catalogue of every optimizer
                found = _catalogue(trace, k, field, index, value, tol, u)
            return found
    except (KeyError, IndexError, ValueError):  # a column the hand side does not record
        return None


def _param_and_key(trace, field: str) -> tuple[str, str | None]:
    """The parameter a field is of, and its torch state key (None for the parameter itself)."""
    from sgdtrace.engines import optimizers

    names = trace.model.names if getattr(trace, "model", None) is not None else ("w", "b")
    if field in names:
        return field, None
    for key in optimizers.get(trace.config.optimizer).state_keys(trace.config):
        for p in names:
            if state_field(key, p) == field:
                return p, key
    raise KeyError(field)


def _catalogue(trace, k: int, field: str, index: tuple, value: float, tol: float, u: float):
    """Every optimizer's usual mistakes (:mod:`sgdtrace.mistakes`), replayed over the hand side's own
    inputs: the one mistake that explains the value, or None (none, or more than one)."""
    from sgdtrace import mistakes
    from sgdtrace.engines.user import step_hyper_parameters

    cfg = trace.config
    param, key = _param_and_key(trace, field)
    names = trace.model.names if getattr(trace, "model", None) is not None else ("w", "b")
    init = _init(trace, param)
    p_start = [_start(trace, param, j, init, index) for j in range(k + 1)]
    if not index:
        p_start[0] = float(np.asarray(init, dtype=np.float64))
    grad = trace.manual["grad_" + param][: k + 1].reshape(k + 1, -1)[:, _flat(trace, param, index)].astype(float)
    other = None
    if _scalar(trace) and len(names) == 2:
        other = trace.manual["grad_" + next(n for n in names if n != param)][: k + 1].astype(float).tolist()
    rows, where = step_hyper_parameters(cfg, trace.plan)
    hps = [rows[0 if where is None else int(where[j])] for j in range(min(k + 2, trace.n_steps))]
    not_kept = set(trace.engine.not_kept) if getattr(trace, "engine", None) is not None else set()
    from sgdtrace.engines import optimizers

    recorded = {}
    for sk in optimizers.get(cfg.optimizer).state_keys(cfg):
        f = state_field(sk, param)
        # --judge step: each step started from torch's state; else the hand side's own, where it keeps it
        cols = trace.torch if _step_mode(trace) and f not in not_kept else trace.manual
        if f in cols and f not in not_kept:
            col = cols[f][: k + 1].reshape(k + 1, -1)[:, _flat(trace, param, index)]
            recorded[sk] = col.astype(float)
    replay = mistakes.Replay(cfg.optimizer, p_start, grad.tolist(), other, hps, recorded, {})
    right, cands = mistakes.candidates(replay, k, key, cfg.scheduler is not None, other is not None)
    if field in names and math.isfinite(right):  # the step scaled or turned round
        p0 = p_start[k]
        for c in (2.0, 0.5, -1.0):
            cands.append(("step_sign" if c < 0 else "step_factor", p0 + c * (right - p0), c))
    judge = _Judge(value, right, tol, u)
    label = _label(field, index)
    if not math.isfinite(value):  # a non-finite value: the one mistake that makes the same non-finite one
        if not math.isfinite(right) or not math.isfinite(tol):
            return None
        same = [c for c in cands if not math.isfinite(c[1]) and (math.isnan(c[1]) == math.isnan(value))]
        found = same
    else:
        if not math.isfinite(tol) or judge.right_already():
            return None
        found = [c for c in cands if judge.explains(c[1])]
    if len({c[0] for c in found}) != 1:
        return None
    kind, _, *factor = found[0]
    other_name = next((n for n in names if n != param), "")
    if kind == "step_factor":
        text = f"{label}: the update's step is {'2' if factor[0] == 2 else '1/2'} times torch's"
    elif kind == "step_sign":
        text = f"{label}: the update went the wrong way (its step's sign flipped)"
    else:
        text = f"{label}: " + mistakes.TEXT[kind].format(other=other_name, param=param)
    return {"kind": kind, "factor": factor[0] if factor else None, "text": text}


def _flat(trace, param: str, index: tuple) -> int:
    """The row-major position of element ``index`` of ``param``."""
    if not index:
        return 0
    shape = trace.model.param(param).shape
    return int(np.ravel_multi_index(index, shape))
