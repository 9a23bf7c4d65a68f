"""The planted-mistake study: of N planted mistakes (tests/planted.py), how many the judge catches at
the first step where their effect exceeds the allowance, how many it names, how many it names wrongly.

    .venv/bin/python tools/mistake_study.py            # the table and the totals (docs/own-engine.md)

Each planted engine runs beside the same engine without its mistake; the mistake's effect first
exceeds the allowance at the first step where the two engines' values part by more than that
step's allowance (the honest engine's ``tol``). It is caught there when the verdict's first
divergent step is that step; named when the diagnosis's kind is the planted one; named wrongly
when the diagnosis names another kind (or any kind, for a mistake outside the catalogue).
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sgdtrace.tracing import run_trace  # noqa: E402
from tests.planted import PLANTED, config, source  # noqa: E402
from tests.test_engine_user import InProcess  # noqa: E402


def effect_step(planted, honest) -> int | None:
    """The first step (1-based) where the planted engine's values part from the honest one's by more
    than the honest run's allowance, in any field."""
    first = None
    for f, d in honest.divergence.items():
        if f not in planted.manual:
            continue
        a, b = planted.manual[f].astype(np.float64), honest.manual[f].astype(np.float64)
        apart = ~((np.abs(a - b) <= d.tol) | (np.isnan(a) & np.isnan(b)))
        apart = apart.reshape(apart.shape[0], -1).any(axis=1)
        if apart.any():
            k = int(np.argmax(apart)) + 1
            first = k if first is None else min(first, k)
    return first


def study(rows=PLANTED):
    out = []
    with tempfile.TemporaryDirectory() as d:
        for i, (mistake, kind, options) in enumerate(rows):
            cfg = config(options)
            paths = []
            for m in (mistake, "none"):
                path = os.path.join(d, f"e{i}_{m}.py")
                with open(path, "w") as f:
                    f.write(source(m, options))
                paths.append(path)
            planted = run_trace(cfg, engine=InProcess(paths[0]))
            honest = run_trace(cfg, engine=InProcess(paths[1]))
            first = planted.verdict.first_divergent_step
            named = first.diagnosis["kind"] if first is not None and first.diagnosis else None
            out.append(
                {
                    "mistake": mistake,
                    "options": options,
                    "expected": kind,
                    "effect_step": effect_step(planted, honest),
                    "caught_step": first.step if first is not None else None,
                    "field": first.field if first is not None else None,
                    "named": named,
                    "honest_ok": honest.verdict.ok,
                }
            )
    return out


def totals(rows) -> dict[str, int]:
    return {
        "planted": len(rows),
        "caught_at_first_step": sum(
            r["caught_step"] is not None and r["caught_step"] == r["effect_step"] for r in rows
        ),
        "named": sum(r["expected"] is not None and r["named"] == r["expected"] for r in rows),
        "nameable": sum(r["expected"] is not None for r in rows),
        "named_wrongly": sum(r["named"] is not None and r["named"] != r["expected"] for r in rows),
    }


def main() -> None:
    rows = study()
    print("| mistake | run | effect shows at | caught at | field | named |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        opts = " ".join(f"{k}={v}" for k, v in r["options"].items() if k != "scheduler")
        if "scheduler" in r["options"]:
            opts += " StepLR(step_size=1, gamma=0.7) per step"
        print(
            f"| {r['mistake']} | {opts or 'the article (SGD)'} | {r['effect_step']} | {r['caught_step']} | "
            f"{r['field']} | {r['named'] or '(none)'} |"
        )
    t = totals(rows)
    print()
    print(
        f"{t['planted']} planted mistakes: {t['caught_at_first_step']} caught at the first step where their effect "
        f"exceeds the allowance; {t['named']} of the {t['nameable']} in the catalogue named; "
        f"{t['named_wrongly']} named wrongly."
    )


if __name__ == "__main__":
    main()
