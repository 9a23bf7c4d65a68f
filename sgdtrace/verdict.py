"""The verdict: each field's worst case, the first divergent step, any blow-up, as typed records.

The records carry numbers (non-finite values as floats); their ``to_json`` gives the JSON
contract (docs/json.md), non-finite numbers as the strings "inf", "-inf", "nan". The sentences
that tell them (agree, diverge, blew up) are built once, in :mod:`sgdtrace.views.verdict`.

Importing this module imports no numpy (the views' number formatting uses :func:`json_number`).

Reading a record like a dict (``record["step"]``, ``record.get("abs")``) is the 0.1 access and
keeps working: it reads the record's JSON value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def json_number(v: Any) -> float | str:
    """A float as a JSON number; non-finite values as the strings "inf", "-inf", "nan"."""
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def json_safe(value: Any) -> Any:
    """A document as every JSON sgdtrace writes it: each float through :func:`json_number` (non-finite
    values as the strings "inf", "-inf", "nan"), NumPy scalars and arrays as Python values, tuples
    as lists; the one rule of ``--format json`` in every command (``views.export.to_json_text``)."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # a NumPy scalar or array
        return json_safe(value.tolist())
    return value


def _number_or_none(v: float | None) -> float | str | None:
    return None if v is None else json_number(v)


class _Record:
    """Dict-style read access to a record's JSON values (the 0.1 access: records were dicts)."""

    def to_json(self) -> dict[str, Any]:  # pragma: no cover - every record defines its own
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)


@dataclass
class FieldDivergence:
    """Per step, for one field: the distances, the tolerance and whether they agree."""

    abs: np.ndarray  # |manual - torch|
    rel: np.ndarray  # abs / max(|manual|, |torch|)
    ulp: np.ndarray  # uint64; meaningful where both values are finite
    tol: np.ndarray  # the step's own rounding allowance, atol + rtol * E
    ok: np.ndarray  # bool
    finite: np.ndarray  # bool: both values finite
    carried: np.ndarray  # C: the part of manual - torch carried in from the step's inputs (signed)
    ratio: np.ndarray  # |Δ - C| / tol: the share of the allowance used (< 1 passes); 0 where not judged


@dataclass(frozen=True)
class FieldSummary:
    """One field over a run, over all its elements: the largest distances, the largest share of the
    allowance used, and the first step (0-based) that fails, if any, with the first failing
    element of that step (row-major; ``()`` for a scalar field)."""

    max_abs: float
    max_rel: float
    max_ulp: int
    max_tol_ratio: float
    first_bad: int | None
    first_index: tuple[int, ...] = ()

    @classmethod
    def of(cls, d: FieldDivergence) -> FieldSummary:
        import numpy as np

        fin = d.finite
        bad = np.flatnonzero(~d.ok)  # row-major: the first step, then its first element
        first, index = None, ()
        if bad.size:
            k, *index = np.unravel_index(int(bad[0]), d.ok.shape)
            first, index = int(k), tuple(int(i) for i in index)
        if not fin.any():
            return cls(0.0, 0.0, 0, 0.0, first, index)
        return cls(
            float(d.abs[fin].max()), float(d.rel[fin].max()), int(d.ulp[fin].max()), float(d.ratio.max()), first, index
        )


@dataclass(frozen=True)
class FirstDivergence(_Record):
    """The first step (1-based ``step``) where a field's own part exceeds its rounding allowance;
    ``index`` the element of that field (row-major, the first that fails; ``()`` for a scalar),
    whose values ``manual``, ``torch``, ... are given."""

    epoch: int
    batch: int
    step: int
    field: str
    manual: float
    torch: float
    abs: float | None  # None where either value is non-finite: no distance
    carried: float
    tol: float
    #: the likely mistake, ``{"kind", "factor", "text"}`` (sgdtrace.diagnosis), or None: no guess
    diagnosis: dict[str, Any] | None = None
    #: which side is nearer the exact step from its own start ("hand", "torch"; None: a tie or not
    #: decided) and each side's distance from it (sgdtrace.reference.closer)
    closer: str | None = None
    exact_error: dict[str, float] | None = None
    index: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "field": self.field,
            "manual": json_number(self.manual),
            "torch": json_number(self.torch),
            "abs": _number_or_none(self.abs),
            "carried": json_number(self.carried),
            "tol": json_number(self.tol),
            "diagnosis": self.diagnosis,
            "closer": self.closer,
            "exact_error": None
            if self.exact_error is None
            else {side: json_number(e) for side, e in self.exact_error.items()},
            "index": list(self.index),
        }


@dataclass(frozen=True)
class BlowUp(_Record):
    """Where training blew up (:func:`sgdtrace.blowup.diagnose`), why, and the rates behind the hint.

    ``stable_lr``: the smallest single-batch limit of the run; ``stable_lr_batch``: this step's
    batch's; ``stable_lr_epoch``: the largest rate at which one epoch's update product is stable
    (None where unbounded); ``radius``: that product's spectral radius at the run's rate;
    ``lr_hint``: the rate the hint proposes. All None with --maximize.
    """

    epoch: int
    batch: int
    step: int
    reason: str
    hint: str
    stable_lr: float | None
    stable_lr_batch: float | None
    stable_lr_epoch: float | None
    radius: float | None
    lr_hint: float | None
    loss_start: float
    loss_end: float

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "reason": self.reason,
            "hint": self.hint,
            "stable_lr": _number_or_none(self.stable_lr),
            "stable_lr_batch": _number_or_none(self.stable_lr_batch),
            "stable_lr_epoch": _number_or_none(self.stable_lr_epoch),
            "radius": _number_or_none(self.radius),
            "lr_hint": _number_or_none(self.lr_hint),
            "loss_start": json_number(self.loss_start),
            "loss_end": json_number(self.loss_end),
        }


@dataclass(frozen=True)
class OneSidedBlowUp(_Record):
    """A value that became inf or nan on one side only (:func:`sgdtrace.blowup.one_sided`): the
    first such step (1-based), which side (``"hand"``: the hand side or a user's engine;
    ``"torch"``), what went (``values``: "w = nan, b = nan"), the cause where one is known
    (``reason``, else None), and whether the judge allowed it (``allowed``: within rounding of the
    type's largest value, where the two sides may overflow one step apart). Not a blow-up of the
    training: the other side's training goes on; a divergence between the two sides."""

    epoch: int
    batch: int
    step: int
    side: str
    values: str
    reason: str | None
    allowed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "side": self.side,
            "values": self.values,
            "reason": self.reason,
            "allowed": self.allowed,
        }


@dataclass(frozen=True)
class Stall(_Record):
    """A parameter whose update torch lost to rounding (:mod:`sgdtrace.stall`): the first such step
    (1-based) and how many steps stalled."""

    field: str
    first_step: int
    steps: int

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "first_step": self.first_step, "steps": self.steps}


def _json(record: Any) -> Any:
    """A record's JSON; None stays None (a plain dict, as 0.1 passed, is copied as it is)."""
    if record is None or isinstance(record, dict):
        return record
    return record.to_json()


@dataclass
class Verdict:
    ok: bool
    max_abs: float
    max_rel: float
    max_ulp: int
    max_tol_ratio: float  # max |Δ - carried| / tolerance over all judged values: < 1 passes
    first_divergent_step: FirstDivergence | None
    diverged_training: BlowUp | None
    stalled: list[Stall] | None = None  # per parameter whose update torch lost to rounding
    one_sided: OneSidedBlowUp | None = None  # inf or nan on one side only: a divergence, not a blow-up
    #: ``--judge step``: every divergent step, ``{"count", "elements", "steps": [the first 20
    #: {epoch, batch, step, field, index, diagnosis}]}``; None under ``--judge carry``
    divergent_steps: dict[str, Any] | None = None
    #: a network with relu: how many elements of z1 lay within their rounding bound of relu's kink
    #: (both sides may honestly take different branches there: counted and allowed, not failed);
    #: None for a model without relu
    ambiguous: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "max_abs": json_number(self.max_abs),
            "max_rel": json_number(self.max_rel),
            "max_ulp": self.max_ulp,
            "max_tol_ratio": json_number(self.max_tol_ratio),
            "first_divergent_step": _json(self.first_divergent_step),
            "diverged_training": _json(self.diverged_training),
            "stalled": None if self.stalled is None else [_json(st) for st in self.stalled],
            "one_sided_blowup": _json(self.one_sided),
            "divergent_steps": self.divergent_steps,
            "ambiguous": self.ambiguous,
        }


def verdict(
    div: dict[str, FieldDivergence],
    a: dict[str, np.ndarray],
    b: dict[str, np.ndarray],
    epoch: np.ndarray,
    batch: np.ndarray,
    diverged_training: BlowUp | None,
) -> Verdict:
    """The run's verdict from each field's :class:`FieldSummary`: the maxima across fields, and
    the earliest failing step. At a tie, the value computed first is named: the loss and the
    gradients, then the optimizer's state (a buffer), then the parameters updated from it (a
    wrong buffer makes w look wrong too), each group in ``div``'s order."""
    summaries = {f: FieldSummary.of(d) for f, d in div.items()}
    first: FirstDivergence | None = None
    params = tuple(f[len("grad_") :] for f in div if f.startswith("grad_"))
    bad = [
        (s.first_bad, _computed(f, params), i, f)
        for i, (f, s) in enumerate(summaries.items())
        if s.first_bad is not None
    ]
    if bad:
        k, _, _, f = min(bad)
        d = div[f]
        at = (k, *summaries[f].first_index)  # the step's first failing element
        first = FirstDivergence(
            int(epoch[k]),
            int(batch[k]),
            k + 1,
            f,
            float(a[f][at]),
            float(b[f][at]),
            float(d.abs[at]) if d.finite[at] else None,
            float(d.carried[at]),
            float(d.tol[at]),
            index=summaries[f].first_index,
        )
    return Verdict(
        first is None,
        _most(s.max_abs for s in summaries.values()),
        _most(s.max_rel for s in summaries.values()),
        int(_most(s.max_ulp for s in summaries.values())),
        _most(s.max_tol_ratio for s in summaries.values()),
        first,
        diverged_training,
    )


#: how many divergent steps ``divergent_steps`` lists (it counts them all)
LISTED_STEPS = 20


def divergent_steps(div: dict[str, FieldDivergence], epoch: np.ndarray, batch: np.ndarray) -> dict[str, Any]:
    """``--judge step``'s list: every step where any element of any field is outside its allowance
    (``count``), the failing elements over all of them (``elements``), and the first
    :data:`LISTED_STEPS` steps, each with the field and element it names (the first computed, as
    the verdict's first divergent step: the loss and gradients, then the state, then the
    parameters; the first failing element in row-major order) and ``diagnosis`` (filled in by the
    caller, or None)."""
    import numpy as np

    fields = [f for f in div if f != "lr"] + (["lr"] if "lr" in div else [])
    params = tuple(f[len("grad_") :] for f in div if f.startswith("grad_"))
    steps = next(iter(div.values())).ok.shape[0] if div else 0
    bad_any = np.zeros(steps, dtype=bool)
    elements = 0
    per_field = {}
    for f in fields:
        bad = ~div[f].ok.reshape(steps, -1)
        per_field[f] = bad
        bad_any |= bad.any(axis=1)
        elements += int(bad.sum())
    order = sorted(range(len(fields)), key=lambda i: (_computed(fields[i], params), i))
    listed = []
    for k in np.flatnonzero(bad_any)[:LISTED_STEPS]:
        for i in order:
            f = fields[i]
            row = per_field[f][k]
            if row.any():
                flat = int(np.flatnonzero(row)[0])
                shape = div[f].ok.shape[1:]
                index = [int(j) for j in np.unravel_index(flat, shape)] if shape else []
                listed.append(
                    {
                        "epoch": int(epoch[k]),
                        "batch": int(batch[k]),
                        "step": int(k) + 1,
                        "field": f,
                        "index": index,
                        "diagnosis": None,
                    }
                )
                break
    return {"count": int(bad_any.sum()), "elements": elements, "steps": listed}


def _computed(field: str, params: tuple[str, ...] = ("w", "b")) -> int:
    """When a step computes ``field``: 0 the loss and gradients, 1 the optimizer's state, 2 the
    parameters (``params``: their names)."""
    if field in params:
        return 2
    return 0 if field in ("loss", "lr") or field.startswith("grad_") else 1


def _most(values) -> float:
    """The largest of ``values``, from 0 (a field with no finite value summarises as zeros)."""
    out = 0.0
    for v in values:
        out = max(out, v)
    return out
