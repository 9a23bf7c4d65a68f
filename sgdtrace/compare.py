"""``sgdtrace compare``: the same run on several devices and dtypes, and torch on one device against another."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sgdtrace import divergence
from sgdtrace.config import Config
from sgdtrace.notebook import CompareNotebook
from sgdtrace.verdict import FieldSummary  # its home, beside the verdict; importable from here as before


@dataclass
class Cross:
    """Torch on device ``a`` against torch on device ``b``, same dtype, judged by the tolerance model."""

    dtype: str
    a: str
    b: str
    divergence: dict[str, divergence.FieldDivergence]
    verdict: divergence.Verdict

    def to_json(self) -> dict[str, Any]:
        fields = {}
        for f, d in self.divergence.items():
            w = FieldSummary.of(d)
            fields[f] = {
                "max_abs": divergence.json_number(w.max_abs),
                "max_rel": divergence.json_number(w.max_rel),
                "max_ulp": w.max_ulp,
                "ok": w.first_bad is None,
            }
        return {"dtype": self.dtype, "a": self.a, "b": self.b, "fields": fields, "verdict": self.verdict.to_json()}


@dataclass
class Drift:
    """Torch in one dtype against torch in another, same device: how far the runs drift apart, per field
    and step. Not judged (a bfloat16 run is not expected to agree with a float32 one), so outside the
    exit code. ``ulp`` counts in the narrower type, both values rounded to it. A field of many
    elements (D features) is summarised per step by its largest element distance."""

    a: dict[str, str]  # {"device", "dtype"}
    b: dict[str, str]
    abs: dict[str, Any]  # per field, per step: |a - b| (nan where either is not finite)
    rel: dict[str, Any]
    ulp: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        import numpy as np

        fields = {}
        for f, a in self.abs.items():
            fin = np.isfinite(a)

            def top(v):
                return divergence.json_number(v[fin].max()) if fin.any() else None

            fields[f] = {
                "max_abs": top(a),
                "max_rel": top(self.rel[f]),
                "max_ulp": int(self.ulp[f][fin].max()) if fin.any() else None,
                "abs": [divergence.json_number(v) if ok else None for v, ok in zip(a.tolist(), fin.tolist())],
            }
        return {"a": self.a, "b": self.b, "judged": False, "fields": fields}


def drift(base, other) -> Drift:
    """Torch's columns of ``other`` (another dtype) against ``base``'s, step by step."""
    import numpy as np

    from sgdtrace import dtypes

    narrow = max((base.config.dtype, other.config.dtype), key=dtypes.unit_roundoff)
    out: dict[str, dict] = {"abs": {}, "rel": {}, "ulp": {}}
    for f in base.fields:
        if f not in other.torch:
            continue
        a, b = base.torch[f].astype(np.float64), other.torch[f].astype(np.float64)
        with np.errstate(all="ignore"):
            fin = np.isfinite(a) & np.isfinite(b)
            diff = np.where(fin, np.abs(a - b), np.nan)
            scale = np.maximum(np.abs(a), np.abs(b))
            out["abs"][f] = diff
            out["rel"][f] = np.where(fin, np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), 0.0), np.nan)
            # a blown-up run's values overflow the narrower type: inf, a result (no warning)
            out["ulp"][f] = divergence.ulp_distance(divergence._cast(a, narrow), divergence._cast(b, narrow))
        if a.ndim > 1:  # per step, the largest over the elements (nan where any is not finite)
            for part in out.values():
                part[f] = part[f].reshape(a.shape[0], -1).max(axis=1)

    def side(t):
        return {"device": t.device, "dtype": t.config.dtype}

    return Drift(side(base), side(other), out["abs"], out["rel"], out["ulp"])


@dataclass
class CompareResult(CompareNotebook):
    runs: list  # of Trace
    cross: list[Cross]
    drift: list[Drift] = field(default_factory=list)  # across dtypes: reported, not judged

    @property
    def ok(self) -> bool:
        return all(t.verdict.ok for t in self.runs) and all(c.verdict.ok for c in self.cross)

    @property
    def environment(self) -> dict[str, Any]:
        """The machine the runs ran on (:func:`sgdtrace.probe.environment`)."""
        from sgdtrace.probe import environment

        return environment()


def compare_runs(config: Config, devices: tuple[str, ...], dtypes: tuple[str, ...]) -> CompareResult:
    from sgdtrace.tracing import resolve_device, run_trace

    for name in devices:  # refuse a malformed or missing device before running anything
        resolve_device(config.replace(device=name, origin=config.origin).device)
    runs = []
    for dtype in dtypes:
        for name in devices:
            runs.append(run_trace(config.replace(device=name, dtype=dtype, origin=config.origin)))
    cross = []
    for dtype in dtypes:
        same = [t for t in runs if t.config.dtype == dtype]
        cross += [cross_compare(same[0], other) for other in same[1:] if other.device != same[0].device]
    # across dtypes, on each device: the first dtype given against each other one
    drifts = [
        drift(t, other)
        for t in runs
        if t.config.dtype == dtypes[0]
        for other in runs
        if other.device == t.device and other.config.dtype != dtypes[0]
    ]
    return CompareResult(runs, cross, drifts)


def cross_compare(base, other) -> Cross:
    """Torch's columns in ``other`` judged against torch's in ``base`` (same config, another device)."""
    # judged as two devices (the 16-bit update's exact rule holds for the CPU's kernels only)
    cfg = base.config.replace(device=other.device, origin=base.config.origin)
    div = divergence.compare_columns(
        base.torch, other.torch, base.dataset.x, base.dataset.y, base.plan, cfg, base.model, base.initial
    )
    verdict = divergence.verdict(div, base.torch, other.torch, base.epoch, base.batch, None)
    return Cross(base.config.dtype, base.device, other.device, div, verdict)
