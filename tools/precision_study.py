"""The random-run study in bfloat16 and float16: how much of the tolerance honest runs use.

Random data sets (the article's, or synthetic with random size, slope, intercept and noise),
rates, batch sizes, epochs, initial values and every SGD option, on both array back ends of
the hand side; each run judged against torch. Prints, per dtype, the runs, the failures and the
largest ``max_tol_ratio`` (the share of a step's allowance used; the model predicts at most 0.5).

    .venv/bin/python tools/precision_study.py [RUNS_PER_DTYPE] [SEED]
"""

from __future__ import annotations

import sys

import numpy as np

from sgdtrace.config import Config
from sgdtrace.tracing import run_trace


def random_config(rng: np.random.Generator, dtype: str) -> Config:
    nesterov = rng.random() < 0.25
    momentum = float(rng.uniform(0.01, 0.99)) if nesterov or rng.random() < 0.5 else 0.0
    dampening = 0.0 if nesterov else float(rng.choice([0.0, 0.0, 0.5, 0.999, rng.uniform(0, 1)]))
    n = int(rng.choice([0, 1, 2, 5, 9, 16, 23, 64, 200, 1000, 4096]))
    batch_size = int(rng.integers(1, 13)) if n < 64 or rng.random() < 0.5 else int(rng.integers(13, n + 1))
    data = (
        {}
        if n == 0
        else dict(
            synthetic=n,
            true_w=float(rng.uniform(-4, 4)),
            true_b=float(rng.uniform(-20, 20)),
            noise=float(rng.choice([0.0, 0.5, 3.0])),
        )
    )
    return Config(
        lr=float(np.exp(rng.uniform(np.log(1e-4), np.log(0.05)))),
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=float(rng.choice([0.0, rng.uniform(0, 2)])),
        maximize=bool(rng.random() < 0.2),
        shuffle=bool(rng.random() < 0.5),
        seed=int(rng.integers(0, 2**32)),
        drop_last=bool(rng.random() < 0.3) and batch_size <= (9 if n == 0 else n),
        batch_size=batch_size,
        epochs=int(rng.integers(1, 13 if n < 1000 else 3)),
        init_w=float(rng.uniform(-5, 5)),
        init_b=float(rng.uniform(-5, 5)),
        dtype=dtype,
        **data,
    )


def main(runs: int = 200, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    bad = 0
    for dtype in ("bfloat16", "float16"):
        worst, worst_cfg, fails, stalled, identical = 0.0, None, 0, 0, 0
        with np.errstate(all="ignore"):
            for i in range(runs):
                cfg = random_config(rng, dtype)
                t = run_trace(cfg, manual_backend="torch" if i % 4 == 3 else None)
                v = t.verdict
                fails += not v.ok
                stalled += v.stalled is not None
                identical += v.max_ulp == 0
                if v.max_tol_ratio > worst:
                    worst, worst_cfg = v.max_tol_ratio, cfg
        bad += fails
        print(
            f"{dtype}: {runs} runs, {fails} failed, {stalled} with a stall, {identical} bit-identical; "
            f"worst share of the allowance {worst:.3f}"
        )
        if worst_cfg is not None:
            print(f"  worst: {worst_cfg.to_json()}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:3])))
