"""``sgdtrace compare``: the same run on several devices and dtypes, and torch on one device against another."""

from __future__ import annotations

from dataclasses import dataclass
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
            fields[f] = {"max_abs": w.max_abs, "max_rel": w.max_rel, "max_ulp": w.max_ulp,
                         "ok": w.first_bad is None}
        return {"dtype": self.dtype, "a": self.a, "b": self.b, "fields": fields, "verdict": self.verdict.to_json()}


@dataclass
class CompareResult(CompareNotebook):
    runs: list  # of Trace
    cross: list[Cross]

    @property
    def ok(self) -> bool:
        return all(t.verdict.ok for t in self.runs) and all(c.verdict.ok for c in self.cross)


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
    return CompareResult(runs, cross)


def cross_compare(base, other) -> Cross:
    """Torch's columns in ``other`` judged against torch's in ``base`` (same config, another device)."""
    div = divergence.compare_columns(base.torch, other.torch, base.dataset.x, base.dataset.y,
                                     base.plan, base.config)
    verdict = divergence.verdict(div, base.torch, other.torch, base.epoch, base.batch, None)
    return Cross(base.config.dtype, base.device, other.device, div, verdict)
