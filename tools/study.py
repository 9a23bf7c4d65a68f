"""The random-run study behind the README's "worst share of the allowance" figure.

Honest runs (both engines as shipped) over random data, rates, batch sizes (1 and 2 always
among them), every option of torch.optim.SGD, both dtypes and both array back ends, plus long
runs that converge on noise-free data (where the residuals round to zero). For each run it
records the verdict and ``max_tol_ratio``, the largest share of a step's rounding allowance
used (the model predicts at most 0.5). Prints one line per failure and a summary; exits 1 if
any run fails its gate.

    .venv/bin/python tools/study.py               # 400 random + 60 converged runs, ~5 minutes
    .venv/bin/python tools/study.py --runs 2000 --seed 7
    .venv/bin/python tools/study.py --features 4  # the linear model on D = 4 features: every
                                                  # optimizer, float32, float64 and bfloat16
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from sgdtrace.config import Config
from sgdtrace.tracing import run_trace


def random_config(rng: np.random.Generator) -> Config:
    """Every option, as the property test in tests/test_options.py draws them."""
    nesterov = bool(rng.random() < 0.25)
    if nesterov:
        momentum, dampening = float(rng.uniform(0.01, 0.99)), 0.0
    else:
        momentum = 0.0 if rng.random() < 0.4 else float(rng.uniform(0.0, 0.99))
        dampening = float(rng.choice([0.0, 1.0, 0.999, rng.uniform(0.0, 1.0)]))
    n = rng.choice([None, 1, 2, 5, 9, 16, 23, 60])
    batch_size = int(rng.choice([1, 2, 1, 2, *range(3, 13)]))
    drop_last = bool(rng.random() < 0.5) and batch_size <= (9 if n is None else n)
    data = (
        {}
        if n is None
        else dict(
            synthetic=int(n),
            true_w=float(rng.uniform(-4, 4)),
            true_b=float(rng.uniform(-20, 20)),
            noise=float(rng.choice([0.0, 0.5, 3.0])),
        )
    )
    return Config(
        lr=float(rng.uniform(1e-4, 0.05)),
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=0.0 if rng.random() < 0.5 else float(rng.uniform(0.0, 2.0)),
        maximize=bool(rng.random() < 0.3),
        shuffle=bool(rng.random() < 0.5),
        seed=int(rng.integers(0, 2**32)),
        drop_last=drop_last,
        batch_size=batch_size,
        epochs=int(rng.integers(1, 13)),
        init_w=float(rng.uniform(-5, 5)),
        init_b=float(rng.uniform(-5, 5)),
        dtype=str(rng.choice(["float32", "float64"])),
        **data,
    )


def features_config(rng: np.random.Generator, features: int, converged: bool = False) -> Config:
    """The linear model on D features: random data, every optimizer and its options, float32,
    float64 and bfloat16; ``converged``: a long run on noise-free data at batch size 1 or 2."""
    optimizer = str(rng.choice(["sgd", "sgd", "adam", "adamw", "rmsprop", "adagrad"]))
    opts: dict = {}
    if optimizer == "sgd":
        nesterov = bool(rng.random() < 0.25)
        momentum = float(rng.uniform(0.01, 0.99)) if nesterov or rng.random() < 0.6 else 0.0
        opts = dict(momentum=momentum, nesterov=nesterov, maximize=bool(rng.random() < 0.2))
        opts["dampening"] = 0.0 if nesterov else float(rng.choice([0.0, rng.uniform(0.0, 1.0)]))
        opts["weight_decay"] = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.0, 0.5))
        lr = float(rng.uniform(1e-4, 0.01)) / features
    elif optimizer in ("adam", "adamw"):
        opts = dict(amsgrad=bool(rng.random() < 0.3))
        lr = float(rng.uniform(1e-3, 0.1))
    elif optimizer == "rmsprop":
        opts = dict(centered=bool(rng.random() < 0.3), momentum=float(rng.choice([0.0, 0.5])))
        lr = float(rng.uniform(1e-3, 0.02))
    else:
        lr = float(rng.uniform(1e-3, 0.2))
    n = int(rng.choice([9, 20, 50] if converged else [5, 16, 23, 60]))
    batch_size = int(rng.choice([1, 2])) if converged else int(rng.choice([1, 2, *range(3, 13)]))
    steps = int(rng.integers(1500, 3000)) if converged else 0
    return Config(
        synthetic=n,
        features=features,
        true_w=tuple(float(v) for v in rng.uniform(-4, 4, features)),
        true_b=float(rng.uniform(-10, 10)),
        noise=0.0 if converged else float(rng.choice([0.0, 0.5, 3.0])),
        init_w=tuple(float(v) for v in rng.uniform(-2, 2, features)),
        init_b=float(rng.uniform(-2, 2)),
        optimizer=optimizer,
        lr=lr,
        batch_size=batch_size,
        epochs=max(1, steps * batch_size // n) if converged else int(rng.integers(1, 9)),
        shuffle=bool(rng.random() < 0.5),
        seed=int(rng.integers(0, 2**32)),
        dtype=str(rng.choice(["float32", "float64", "bfloat16"])),
        **opts,
    )


def converged_config(rng: np.random.Generator) -> Config:
    """A long run to convergence on noise-free data, batch size 1 or 2, optionally with momentum."""
    n = int(rng.choice([9, 20, 50, 100]))
    batch_size = int(rng.choice([1, 2]))
    momentum = 0.0 if rng.random() < 0.5 else float(rng.choice([0.5, 0.9]))
    steps = int(rng.integers(2000, 6000))
    return Config(
        synthetic=n,
        batch_size=batch_size,
        epochs=max(1, steps * batch_size // n),
        lr=float(rng.choice([0.005, 0.01, 0.02])),
        momentum=momentum,
        nesterov=bool(momentum and rng.random() < 0.5),
        weight_decay=float(rng.choice([0.0, 0.0, 0.001])),
        shuffle=bool(rng.random() < 0.5),
        seed=int(rng.integers(0, 2**32)),
        dtype=str(rng.choice(["float32", "float64"])),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=400, help="random runs over every option")
    ap.add_argument("--converged", type=int, default=60, help="long runs to convergence")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features", type=int, default=None, help="the linear model on D features (every optimizer)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    if args.features is None:
        jobs = [("random", random_config(rng)) for _ in range(args.runs)]
        jobs += [("converged", converged_config(rng)) for _ in range(args.converged)]
    else:
        jobs = [("random", features_config(rng, args.features)) for _ in range(args.runs)]
        jobs += [("converged", features_config(rng, args.features, True)) for _ in range(args.converged)]
    worst = {}
    failures = 0
    t0 = time.perf_counter()
    for i, (kind, cfg) in enumerate(jobs):
        backend = "torch" if i % 4 == 3 else None  # a quarter on the torch-tensor (CUDA) code path
        t = run_trace(cfg, manual_backend=backend)
        v = t.verdict
        key = (kind, cfg.dtype, "bs<=2" if cfg.batch_size <= 2 else "bs>2", cfg.optimizer)
        if v.max_tol_ratio > worst.get(key, (-1.0,))[0]:
            worst[key] = (v.max_tol_ratio, cfg, backend)
        if not v.ok:
            failures += 1
            print(f"FAIL {kind} {cfg!r} backend={backend}: {v.first_divergent_step}", flush=True)
    print(f"{len(jobs)} runs in {time.perf_counter() - t0:.0f} s, {failures} failing")
    for key in sorted(worst):
        ratio, cfg, backend = worst[key]
        print(f"worst share {ratio:.4f}  {' '.join(key)}  ({cfg!r}, backend={backend or 'numpy'})")
    print(f"overall worst share of the allowance: {max(r for r, _, _ in worst.values()):.4f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
