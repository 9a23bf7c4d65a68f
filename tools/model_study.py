"""The judge's study over every model and both judge modes (docs/tolerance.md, "The study").

Honest runs (both sides as shipped) of each model under ``--judge carry`` and ``--judge step``:
every optimizer, schedules a quarter of the time, float32, float64, bfloat16 (and float16 for the
losses that take it), batch sizes 1 to 64, converged runs (long, on separable or noise-free data)
and saturated ones (logistic regression started far out, where σ rounds to 0 or 1), inputs near
1e-3 and near 1e4. For each run: the verdict and ``max_tol_ratio``, the largest share of a step's
allowance used (the model predicts at most 0.5). Then the planted mistakes (``planted()``): each
caught at the first step where its effect exceeds the allowance, with its diagnosis.

    .venv/bin/python tools/model_study.py                  # 300 runs per model and mode
    .venv/bin/python tools/model_study.py --runs 20 --seed 3
    .venv/bin/python tools/model_study.py --planted        # the planted mistakes only

Exits 1 if an honest run fails, or its worst share exceeds 0.5, or a planted mistake is missed
or misnamed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from sgdtrace import data, models
from sgdtrace.config import Config
from sgdtrace.engines import manual
from sgdtrace.models import logistic
from sgdtrace.models.ops import HandOps
from sgdtrace.tracing import run_trace

MODELS = ("linear", "logistic")
JUDGES = ("carry", "step")
SCHEDULES = (
    {"name": "StepLR", "step_size": 3, "gamma": 0.5},
    {"name": "ExponentialLR", "gamma": 0.9},
    {"name": "CosineAnnealingLR", "T_max": 10},
)


def _optimizer(rng, scale: float) -> tuple[str, dict, float]:
    name = str(rng.choice(["sgd", "sgd", "adam", "adamw", "rmsprop", "adagrad"]))
    if name == "sgd":
        nesterov = bool(rng.random() < 0.2)
        momentum = float(rng.uniform(0.1, 0.95)) if nesterov or rng.random() < 0.5 else 0.0
        return name, {"momentum": momentum, "nesterov": nesterov}, float(10 ** rng.uniform(-3, -0.5)) / scale**2
    if name in ("adam", "adamw"):
        return name, {"amsgrad": bool(rng.random() < 0.3)}, float(10 ** rng.uniform(-3, -1))
    if name == "rmsprop":
        return name, {"centered": bool(rng.random() < 0.3)}, float(10 ** rng.uniform(-3.5, -2))
    return name, {}, float(10 ** rng.uniform(-3, -0.7))


def study_case(rng: np.random.Generator, model: str, judge: str):
    """A random honest run: ``(config, dataset)`` (the data drawn here, inputs scaled near 1e-3,
    1 or 1e4; logistic labels from σ of the true line; some runs saturated, some converged)."""
    D = int(rng.choice([1, 2, 3, 5, 8]))
    n = int(rng.choice([16, 40, 64, 100, 160]))
    scale = float(rng.choice([1e-3, 1.0, 1.0, 1e4]))
    kind = str(rng.choice(["plain", "plain", "converged", "saturated"]))
    x = rng.uniform(-1.0, 1.0, (n, D)) * scale
    true_w = rng.normal(size=D) * 3 / scale
    true_b = float(rng.normal())
    z = x @ true_w + true_b
    if model == "logistic":
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-z))).astype(np.float64)
        loss = str(rng.choice(["bce", "bce-sigmoid"]))
    else:
        y = z + (0.0 if kind == "converged" else float(rng.choice([0.0, 0.3]))) * rng.normal(size=n)
        loss = "mse"
    init = rng.normal(size=D) / scale * (12.0 if kind == "saturated" and model == "logistic" else 1.0)
    name, opts, lr = _optimizer(rng, scale if model == "linear" else 1.0)
    if model == "logistic" and name == "sgd":
        opts, lr = opts, float(10 ** rng.uniform(-2, 0.5)) / scale**2
    dtypes_ = ["float32", "float64", "bfloat16"] + (["float16"] if loss == "bce" and scale == 1.0 else [])
    dtype = str(rng.choice(dtypes_))
    batch_size = int(rng.choice([1, 2, 3, 8, 16, 33, 64]))
    epochs = int(rng.integers(20, 60)) if kind == "converged" else int(rng.integers(1, 6))
    if kind == "converged":
        batch_size = min(batch_size, 8)
    sched = SCHEDULES[int(rng.integers(len(SCHEDULES)))] if rng.random() < 0.25 else None
    extra = {}
    if sched is not None:
        from sgdtrace.config import make_schedule

        extra["scheduler"] = make_schedule(dict(sched, interval=str(rng.choice(["epoch", "step"]))), "study")
    cfg = Config(
        model=model,
        loss=loss,
        features=D,
        init_w=tuple(float(v) for v in init),
        init_b=float(rng.normal()),
        optimizer=name,
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=bool(rng.random() < 0.5),
        seed=int(rng.integers(0, 2**31)),
        dtype=dtype,
        judge=judge,
        **opts,
        **extra,
    )
    info = {"source": "study", "n": n, "scale": scale, "kind": kind}
    return cfg, data.Dataset(x, y, info, None, None, D)


def honest(runs: int, seed: int, models_=MODELS, judges=JUDGES, out=sys.stdout, only=None) -> dict:
    """``runs`` honest runs per model and judge mode; the worst share of each, and the failures.
    ``only``: the run numbers to run (the others are drawn, not run: each keeps its number and config)."""
    result = {}
    for model in models_:
        for judge in judges:
            rng = np.random.default_rng([seed, MODELS.index(model), JUDGES.index(judge)])
            worst, failed, t0, done = 0.0, [], time.time(), 0
            kinds: dict[str, float] = {}
            for i in range(runs):
                cfg, ds = study_case(rng, model, judge)
                if only is not None and i not in only:
                    continue
                try:
                    trace = run_trace(cfg, dataset=ds)
                except Exception as e:  # noqa: BLE001 - a study reports, it does not stop
                    failed.append((i, f"error {e!r}", cfg))
                    continue
                done += 1
                r = float(trace.verdict.max_tol_ratio)
                key = f"{ds.info['kind']} x~{ds.info['scale']:g} {cfg.dtype}"
                kinds[key] = max(kinds.get(key, 0.0), r)
                worst = max(worst, r)
                if not trace.verdict.ok or r > 0.5:
                    first = trace.verdict.first_divergent_step
                    where = "" if first is None else f" first {first.field}{list(first.index)} at step {first.step}"
                    failed.append((i, f"ok={trace.verdict.ok} share={r:.3f}{where} ({ds.info['kind']})", cfg))
            result[(model, judge)] = {"runs": done, "worst": worst, "failed": failed, "seconds": time.time() - t0}
            print(
                f"{model:9s} {judge:5s} {done:4d} runs  worst share {worst:.3f}  failed {len(failed)}  "
                f"({time.time() - t0:.0f} s)",
                file=out,
            )
            for i, why, cfg in failed[:10]:
                print(f"    run {i}: {why}: {cfg}", file=out)
    return result


# ------------------------------------------------------------------ planted mistakes


def planted_engine(kind: str):
    """sgdtrace's own hand engine with one classic mistake in the logistic model's gradients."""

    def factory(config, backend):
        model = models.build(config, config.features)
        base = manual.engine(config, backend, None, model)
        ops = HandOps(config.dtype)
        kept: dict = {}

        def gradients(params, x, y):
            loss, g = base.gradients(params, x, y)
            n = x.shape[0]
            if kind == "missing_1/n":
                g = {k: ops.scale(v, float(n)) for k, v in g.items()}
            elif kind == "sign":
                g = {k: -v for k, v in g.items()}
            elif kind in ("mse_gradient", "textbook_p_minus_y"):
                z = logistic.node_z(ops, x, params["w"], params["b"])
                p = ops.sigmoid(z)
                r = ops.sub(p, y)
                if kind == "mse_gradient":
                    r = ops.scale(ops.sigmoid_backward(r, p), 2.0)
                dz = ops.div_n(r, n)
                g = {"w": ops.vecmat(dz, x), "b": ops.sum(dz, keep=True)}
            elif kind == "stale":
                old = kept.get("g", {k: np.zeros_like(v) for k, v in g.items()})
                kept["g"] = g
                g = old
            return loss, g

        return dataclasses.replace(base, gradients=gradients)

    return factory


#: each planted mistake: its config, and the diagnoses that name it (None: no guess, allowed)
PLANTED = {
    "missing_1/n": (dict(), ("factor",)),
    "sign": (dict(), ("sign",)),
    "mse_gradient": (dict(), ("mse_gradient",)),
    "stale": (dict(), ("zero_gradient", "previous_gradient")),
    "textbook_p_minus_y": (
        dict(loss="bce-sigmoid", features=1, true_w=1.5, true_b=-7.5, init_w=4.0, synthetic=60, batch_size=10),
        ("textbook_bce_sigmoid",),
    ),
}
PLANTED_BASE = dict(
    model="logistic", synthetic=64, features=2, true_w=(1.5, -1.0), true_b=-2.0, batch_size=8, epochs=2, lr=0.1
)


def planted(dtypes_=("float32", "float64", "bfloat16"), judges=JUDGES, out=sys.stdout) -> list[dict]:
    """Each planted mistake in each dtype and judge mode: the first step where its effect exceeds the
    allowance (from the same run's starts: |planted - honest| > tol, step mode), the step the
    verdict names, and its diagnosis."""
    rows = []
    for kind, (extra, names) in PLANTED.items():
        for dtype in dtypes_:
            for judge in judges:
                cfg = Config(**{**PLANTED_BASE, **extra}, dtype=dtype, judge=judge)
                bad = run_trace(cfg, engine=planted_engine(kind))
                ref = run_trace(cfg.replace(judge="step"))
                step_bad = bad if judge == "step" else run_trace(cfg.replace(judge="step"), engine=planted_engine(kind))
                # the effect at each step from the same (torch's) start: planted minus honest hand value
                first_effect = None
                for k in range(cfg.epochs * bad.plan.steps_per_epoch):
                    for f in ("grad_w", "grad_b"):
                        effect = np.abs(step_bad.manual[f][k].astype(np.float64) - ref.manual[f][k].astype(np.float64))
                        if np.any(effect > step_bad.divergence[f].tol[k]):
                            first_effect = k + 1
                            break
                    if first_effect is not None:
                        break
                f = bad.verdict.first_divergent_step
                got = None if f is None else f.step
                diag = None if f is None or f.diagnosis is None else f.diagnosis["kind"]
                ok = got == first_effect and (diag is None or diag in names)
                rows.append(
                    {
                        "kind": kind,
                        "dtype": dtype,
                        "judge": judge,
                        "effect": first_effect,
                        "caught": got,
                        "diagnosis": diag,
                        "ok": ok,
                    }
                )
                print(
                    f"{kind:20s} {dtype:9s} {judge:5s} effect exceeds the allowance at step {first_effect}, "
                    f"caught at {got}, diagnosis {diag} {'ok' if ok else 'WRONG'}",
                    file=out,
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--planted", action="store_true", help="the planted mistakes only")
    ap.add_argument("--model", choices=MODELS, action="append", help="this model only (repeatable)")
    ap.add_argument("--judge", choices=JUDGES, action="append", help="this judge mode only (repeatable)")
    ap.add_argument(
        "--only", type=int, action="append", help="run number N only (repeatable; the others drawn, not run)"
    )
    ap.add_argument("--no-planted", action="store_true", help="the honest runs only")
    args = ap.parse_args(argv)
    bad = 0
    if not args.planted:
        result = honest(
            args.runs,
            args.seed,
            tuple(args.model or MODELS),
            tuple(args.judge or JUDGES),
            only=None if args.only is None else set(args.only),
        )
        bad += sum(len(r["failed"]) for r in result.values())
    if not args.no_planted:
        rows = planted()
        bad += sum(not r["ok"] for r in rows)
    print("ok" if not bad else f"{bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
