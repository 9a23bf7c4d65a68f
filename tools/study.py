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
    .venv/bin/python tools/study.py --mlp --runs 300 --converged 30   # the network (--model mlp)

``--every N`` adds N random runs over every optimizer (SGD, Adam, AdamW, RMSprop, Adagrad), every
dtype (float32, float64, bfloat16, float16), torch's three implementations (the default
single-tensor loop, ``foreach``, ``fused`` where torch has it) and, a quarter of the time, a
learning-rate schedule; its summary is per optimizer, dtype and implementation:

    .venv/bin/python tools/study.py --runs 0 --converged 0 --every 600

    .venv/bin/python tools/study.py --optimizers 450   # Adam, AdamW, RMSprop, Adagrad only

``--optimizers N``: N honest runs of the other optimizers over their options, schedules, both
dtypes and torch's three implementations (for-loop, foreach, fused), where the judge's sqrt term
meets the machine's sqrt (``sgdtrace doctor``); the worst share per optimizer.
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


def mlp_config(rng: np.random.Generator, converged: bool = False) -> Config:
    """The network (--model mlp): random width, features, activation, loss, optimizer (a schedule a
    quarter of the time), dtype and batch size 1-64; ``converged``: a long run at a small rate."""
    loss = str(rng.choice(["mse", "bce"]))
    optimizer = str(rng.choice(["sgd", "sgd", "adam", "adamw", "rmsprop", "adagrad"]))
    opts: dict = {}
    if optimizer == "sgd":
        opts = dict(momentum=float(rng.choice([0.0, 0.9])), weight_decay=float(rng.choice([0.0, 0.01])))
        lr = float(rng.uniform(1e-3, 0.02 if loss == "bce" else 0.005))
    elif optimizer == "rmsprop":
        lr = float(rng.uniform(1e-4, 0.005))
    else:
        lr = float(rng.uniform(1e-3, 0.03))
    features = int(rng.integers(1, 7))
    n = int(rng.choice([30, 64, 100, 200]))
    epochs = int(rng.integers(30, 60)) if converged else int(rng.integers(1, 6))
    if rng.random() < 0.25 and not converged:
        from sgdtrace.config import make_schedule

        opts["scheduler"] = make_schedule({"name": "StepLR", "step_size": 1, "gamma": 0.7}, "study")
    return Config(
        model="mlp",
        hidden=int(rng.integers(1, 17)),
        activation=str(rng.choice(["relu", "tanh", "sigmoid"])),
        loss=loss,
        synthetic=n,
        features=features,
        true_w=tuple(float(v) for v in rng.uniform(-2, 2, features)),
        true_b=float(rng.uniform(-2, 2)),
        noise=float(rng.choice([0.0, 0.5])),
        optimizer=optimizer,
        lr=lr,
        batch_size=int(rng.choice([1, 2, 8, 16, 32, 64])) if not converged else int(rng.choice([8, 16, 32])),
        epochs=epochs,
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


#: the schedules the wide runs draw from (torch's keyword arguments; OneCycleLR sized to the run)
SCHEDULES = (
    {"name": "StepLR", "step_size": 2, "gamma": 0.5},
    {"name": "ExponentialLR", "gamma": 0.9},
    {"name": "CosineAnnealingLR", "T_max": 3, "eta_min": 0.001},
    {"name": "LinearLR", "start_factor": 0.25, "total_iters": 4},
    {"name": "OneCycleLR", "max_lr": 0.05, "total_steps": 10_000},
)


def optimizer_config(rng: np.random.Generator) -> Config:
    """Adam, AdamW, RMSprop or Adagrad, every option drawn, as tests/test_optimizers.py's property
    test draws them; a schedule a quarter of the time; torch's implementation drawn too."""
    from sgdtrace.config import make_schedule

    name = str(rng.choice(["adam", "adamw", "rmsprop", "adagrad"]))
    opts: dict = {"weight_decay": float(rng.choice([0.0, 0.01, 0.5])), "maximize": bool(rng.random() < 0.3)}
    if name in ("adam", "adamw"):
        opts.update(
            betas=(float(rng.uniform(0, 0.99)), float(rng.uniform(0, 0.9999))),
            amsgrad=bool(rng.random() < 0.5),
            eps=float(rng.choice([1e-8, 1e-6, 1e-3, 0.1])),
        )
    elif name == "rmsprop":
        opts.update(
            alpha=float(rng.uniform(0, 0.999)),
            centered=bool(rng.random() < 0.5),
            momentum=float(rng.choice([0.0, 0.5, 0.9])),
            eps=float(rng.choice([1e-8, 1e-3, 0.1])),
        )
    else:
        opts.update(
            lr_decay=float(rng.choice([0.0, 0.01, 1.0])),
            initial_accumulator_value=float(rng.choice([0.0, 0.1, 2.0])),
            eps=float(rng.choice([1e-10, 1e-3])),
        )
    impl = str(rng.choice(["for-loop", "foreach", "fused"] if name != "rmsprop" else ["for-loop", "foreach"]))
    if impl != "for-loop":
        opts[impl] = True
    if rng.random() < 0.25:
        sched = dict(SCHEDULES[int(rng.integers(len(SCHEDULES) - 1))], interval=str(rng.choice(["epoch", "step"])))
        opts["scheduler"] = make_schedule(sched, "study")
    n = rng.choice([None, 5, 17, 40])
    data = {} if n is None else dict(synthetic=int(n), noise=float(rng.choice([0.0, 1.0])))
    return Config(
        optimizer=name,
        lr=float(rng.uniform(1e-4, 0.3)),
        batch_size=int(rng.integers(1, 10)),
        epochs=int(rng.integers(1, 30)),
        shuffle=bool(rng.random() < 0.5),
        seed=int(rng.integers(0, 2**31)),
        init_w=float(rng.uniform(-4, 4)),
        init_b=float(rng.uniform(-4, 4)),
        dtype=str(rng.choice(["float32", "float64"])),
        **opts,
        **data,
    )


def optimizers_study(runs: int, seed: int) -> int:
    """``--optimizers N``: the worst share of the allowance per optimizer, implementation and dtype."""
    rng = np.random.default_rng(seed)
    worst: dict[tuple[str, str, str], tuple[float, Config]] = {}
    failures = 0
    t0 = time.perf_counter()
    for _ in range(runs):
        cfg = optimizer_config(rng)
        v = run_trace(cfg).verdict
        impl = "fused" if cfg.fused else "foreach" if cfg.foreach else "for-loop"
        key = (cfg.optimizer, impl, cfg.dtype)
        if v.max_tol_ratio > worst.get(key, (-1.0,))[0]:
            worst[key] = (v.max_tol_ratio, cfg)
        if not v.ok:
            failures += 1
            print(f"FAIL {cfg!r}: {v.first_divergent_step}", flush=True)
    print(f"{runs} optimizer runs in {time.perf_counter() - t0:.0f} s, {failures} failing")
    for key in sorted(worst):
        ratio, cfg = worst[key]
        print(f"worst share {ratio:.4f}  {' '.join(key)}  ({cfg!r})")
    print(f"overall worst share of the allowance: {max(r for r, _ in worst.values()):.4f}")
    return 1 if failures else 0


def wide_config(rng: np.random.Generator) -> Config:
    """Every optimizer, dtype and implementation of torch's (tests/test_optimizers.py's options)."""
    from sgdtrace.config import make_schedule

    name = str(rng.choice(["sgd", "adam", "adamw", "rmsprop", "adagrad"]))
    dtype = str(rng.choice(["float32", "float64", "bfloat16", "float16"]))
    impl = str(rng.choice(["default", "foreach"] + ([] if name == "rmsprop" else ["fused", "fused"])))
    opts: dict = {"weight_decay": float(rng.choice([0.0, 0.01, 0.5])), "maximize": bool(rng.random() < 0.2)}
    if name == "sgd":
        nesterov = bool(rng.random() < 0.25)
        opts.update(
            momentum=float(rng.uniform(0.01, 0.99)) if nesterov or rng.random() < 0.5 else 0.0,
            dampening=0.0 if nesterov else float(rng.choice([0.0, 0.5, rng.uniform(0, 1)])),
            nesterov=nesterov,
        )
    elif name in ("adam", "adamw"):
        opts.update(
            betas=(float(rng.uniform(0.0, 0.99)), float(rng.uniform(0.0, 0.9999))),
            amsgrad=bool(rng.random() < 0.5),
            eps=float(rng.choice([1e-8, 1e-6, 1e-3, 0.1])),
        )
    elif name == "rmsprop":
        opts.update(
            alpha=float(rng.uniform(0.0, 0.999)),
            centered=bool(rng.random() < 0.5),
            momentum=float(rng.choice([0.0, 0.5, 0.9])),
            eps=float(rng.choice([1e-8, 1e-3, 0.1])),
        )
    else:
        opts.update(
            lr_decay=float(rng.choice([0.0, 0.01, 1.0])),
            initial_accumulator_value=float(rng.choice([0.0, 0.1, 2.0])),
            eps=float(rng.choice([1e-10, 1e-3])),
        )
    if impl != "default":
        opts[impl] = True
    if rng.random() < 0.25:
        sched = dict(SCHEDULES[int(rng.integers(len(SCHEDULES)))], interval=str(rng.choice(["epoch", "step"])))
        if sched["name"] == "OneCycleLR":
            sched["cycle_momentum"] = name != "adagrad"
        opts["scheduler"] = make_schedule(sched, "study")
    n = rng.choice([None, 5, 17, 60])
    data = {} if n is None else dict(synthetic=int(n), noise=float(rng.choice([0.0, 1.0])))
    batch_size = int(rng.choice([1, 2, *range(3, 10)]))
    return Config(
        optimizer=name,
        lr=float(np.exp(rng.uniform(np.log(1e-4), np.log(0.05 if name == "sgd" else 0.3)))),
        batch_size=batch_size,
        epochs=int(rng.integers(1, 13)),
        shuffle=bool(rng.random() < 0.5),
        drop_last=bool(rng.random() < 0.3) and batch_size <= (9 if n is None else n),
        seed=int(rng.integers(0, 2**31)),
        init_w=float(rng.uniform(-4, 4)),
        init_b=float(rng.uniform(-4, 4)),
        dtype=dtype,
        **opts,
        **data,
    )


def _impl(cfg: Config) -> str:
    return "fused" if cfg.fused else ("foreach" if cfg.foreach else "default")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=400, help="random runs over every option")
    ap.add_argument("--converged", type=int, default=60, help="long runs to convergence")
    ap.add_argument("--every", type=int, default=0, help="random runs over every optimizer, dtype and kernel")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features", type=int, default=None, help="the linear model on D features (every optimizer)")
    ap.add_argument("--optimizers", type=int, default=0, metavar="N", help="N runs of Adam, AdamW, RMSprop, Adagrad")
    ap.add_argument("--mlp", action="store_true", help="the network (--model mlp) instead of the linear model")
    args = ap.parse_args(argv)
    if args.optimizers:
        return optimizers_study(args.optimizers, args.seed)
    rng = np.random.default_rng(args.seed)
    if args.mlp:
        jobs = [("random", mlp_config(rng)) for _ in range(args.runs)]
        jobs += [("converged", mlp_config(rng, True)) for _ in range(args.converged)]
    elif args.features is None:
        jobs = [("random", random_config(rng)) for _ in range(args.runs)]
        jobs += [("converged", converged_config(rng)) for _ in range(args.converged)]
    else:
        jobs = [("random", features_config(rng, args.features)) for _ in range(args.runs)]
        jobs += [("converged", features_config(rng, args.features, True)) for _ in range(args.converged)]
    jobs += [("every", wide_config(rng)) for _ in range(args.every)]
    worst = {}
    failures = 0
    reduced = identical = 0  # 16-bit runs, and those bit-identical to torch
    t0 = time.perf_counter()
    for i, (kind, cfg) in enumerate(jobs):
        backend = "torch" if i % 4 == 3 else None  # a quarter on the torch-tensor (CUDA) code path
        with np.errstate(all="ignore"):
            t = run_trace(cfg, manual_backend=backend)
        v = t.verdict
        if kind == "every":
            key = (kind, cfg.optimizer, cfg.dtype, _impl(cfg))
        else:
            key = (kind, cfg.dtype, "bs<=2" if cfg.batch_size <= 2 else "bs>2")
            if args.features is not None or args.mlp:  # every optimizer
                key += (cfg.optimizer,)
        if v.max_tol_ratio > worst.get(key, (-1.0,))[0]:
            worst[key] = (v.max_tol_ratio, cfg, backend)
        if cfg.dtype in ("bfloat16", "float16"):
            reduced += 1
            identical += v.max_ulp == 0
        if not v.ok:
            failures += 1
            print(f"FAIL {kind} {cfg!r} backend={backend}: {v.first_divergent_step}", flush=True)
    print(f"{len(jobs)} runs in {time.perf_counter() - t0:.0f} s, {failures} failing")
    for key in sorted(worst):
        ratio, cfg, backend = worst[key]
        print(f"worst share {ratio:.4f}  {' '.join(key)}  ({cfg!r}, backend={backend or 'numpy'})")
    if reduced:
        print(f"{reduced} runs in bfloat16 or float16, {identical} of them bit-identical to torch")
    print(f"overall worst share of the allowance: {max(r for r, _, _ in worst.values()):.4f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
