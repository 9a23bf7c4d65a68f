"""Adam, AdamW, RMSprop and Adagrad by hand, and the learning-rate schedules, against torch.

* torch's CPU kernels' rounding, pinned bit for bit over thousands of random cases (the rules
  the hand engine reproduces and the tolerance model is built on);
* every float-valued option combination torch's own optimizer tests use on the CPU
  (``torch/testing/_internal/common_optimizers.py``: ``optim_inputs_func_adam`` and friends;
  tensor lr/betas and CUDA's ``capturable`` aside) runs through ``sgdtrace run`` and agrees, in
  float32 and float64; foreach and fused too;
* property tests over the option space;
* the textbook variants: each caught at its first step, or within rounding (measured);
* validation: torch's ranges, options that do not belong to the optimizer, exit 2.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgdtrace import probe
from sgdtrace.cli import cli
from sgdtrace.config import Config, make_schedule
from sgdtrace.engines import manual
from sgdtrace.engines.optimizers import _kernels as k
from sgdtrace.engines.optimizers import adam, adamw, get, schedules
from sgdtrace.engines.optimizers._track import SQRT_ULPS
from sgdtrace.engines.protocol import state_fields
from sgdtrace.probe import correct_sqrt, exact_fma
from sgdtrace.tracing import run_trace

DTYPES = ("float32", "float64")


# ------------------------------------------------------------------ torch's kernels, bit for bit


def _cases(dtype, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    vals = rng.standard_normal((n, 3)) * np.exp(rng.uniform(-4, 4, (n, 3)))
    return vals.astype(dtype)


def _t(v, dtype):
    return torch.tensor([v], dtype=getattr(torch, np.dtype(dtype).name))


def _kernel_cases(dtype, seed=0):
    """Per kernel (the names :mod:`sgdtrace.probe` gives them): torch's result on one-element
    tensors, the result of its fused rule (one rounding, what the hand engine reproduces) and of the
    textbook's (a rounding per operation), over 2,000 random cases."""
    rng = random.Random(seed + 1)
    out = {}

    def add(name, got, fused, textbook):
        out.setdefault(name, []).append((dtype(got), dtype(fused), dtype(textbook)))

    name = np.dtype(dtype).name
    for a, b, c in _cases(dtype, seed=seed):
        w_small, w_big, v = dtype(rng.uniform(0, 0.5)), dtype(rng.uniform(0.5, 1)), dtype(rng.uniform(-1, 1))
        diff = dtype(b - a)
        add(
            "lerp_ (w < 0.5)",
            _t(a, dtype).lerp_(_t(b, dtype), float(w_small)).item(),
            exact_fma(w_small, diff, a, name),
            a + dtype(w_small * diff),
        )
        add(
            "lerp_ (w >= 0.5)",
            _t(a, dtype).lerp_(_t(b, dtype), float(w_big)).item(),
            exact_fma(-diff, dtype(1) - w_big, b, name),
            b - dtype(diff * (dtype(1) - w_big)),
        )
        add(
            "addcmul_",
            _t(a, dtype).addcmul_(_t(b, dtype), _t(c, dtype), value=float(v)).item(),
            exact_fma(dtype(v * b), c, a, name),
            a + dtype(dtype(v * b) * c),
        )
        q = a + dtype(v * b) / abs(c)
        add("addcdiv_", _t(a, dtype).addcdiv_(_t(b, dtype), _t(abs(c), dtype), value=float(v)).item(), q, q)
        add(
            "add(alpha=)",
            _t(a, dtype).add(_t(b, dtype), alpha=float(v)).item(),
            exact_fma(v, b, a, name),
            a + dtype(v * b),
        )
        s = rng.uniform(0.5, 2.0)
        add("mul_(scalar)", _t(a, dtype).mul_(s).item(), a * dtype(s), dtype(float(a) * s))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_cpu_kernels_round_as_the_probe_measured(dtype, machine_rules):
    """lerp_ (both branches), addcmul_, addcdiv_, add(alpha=), mul_(scalar) on one-element tensors.

    Every case rounds by the fused rule or the textbook's: the two orders the tolerance model counts
    (it counts the textbook's roundings, an upper bound for both). Which one a kernel uses depends on
    the machine (an FMA instruction, the vector path: ``ATEN_CPU_CAPABILITY=default`` rounds as the
    textbook): where the probe measured one rule, every case here follows it, bit for bit."""
    rules = machine_rules["kernels"][np.dtype(dtype).name]
    for name, cases in _kernel_cases(dtype).items():
        fused = sum(got != f for got, f, _ in cases)
        textbook = sum(got != t for got, _, t in cases)
        neither = sum(got != f and got != t for got, f, t in cases)
        assert neither == 0, (name, neither)
        rule = rules[name]["rule"]
        if rule in ("fma", "scalar rounded first"):
            assert fused == 0, (name, rule, fused)
        elif rule in ("textbook", "in double"):
            assert textbook == 0, (name, rule, textbook)


def test_the_hand_kernels_round_once(machine_rules):
    """The hand engine's lerp, addcmul, addcdiv, add(alpha=) on float32 NumPy scalars are the fused
    rules, exactly (IEEE 754 fixes them: no machine in it); where the probe measured torch's kernels
    fused too, they are torch's, bit for bit."""
    rules = machine_rules["kernels"]["float32"]
    rng = random.Random(2)
    bad: dict[str, list[int]] = {}
    for a, b, c in _cases(np.float32, seed=3):
        w = np.float32(rng.choice([rng.uniform(0, 0.5), rng.uniform(0.5, 1)]))
        v = np.float32(rng.uniform(-1, 1))
        diff = np.float32(b - a)
        lerp = "lerp_ (w < 0.5)" if w < 0.5 else "lerp_ (w >= 0.5)"
        rows = {
            lerp: (
                k.lerp(a, b, w),
                exact_fma(w, diff, a, "float32") if w < 0.5 else exact_fma(-diff, 1 - w, b, "float32"),
                _t(a, np.float32).lerp_(_t(b, np.float32), float(w)).item(),
            ),
            "addcmul_": (
                k.addcmul(a, b, c, v),
                exact_fma(np.float32(v * b), c, a, "float32"),
                _t(a, np.float32).addcmul_(_t(b, np.float32), _t(c, np.float32), value=float(v)).item(),
            ),
            "addcdiv_": (
                k.addcdiv(a, b, abs(c), v),
                a + np.float32(v * b) / abs(c),
                _t(a, np.float32).addcdiv_(_t(b, np.float32), _t(abs(c), np.float32), value=float(v)).item(),
            ),
            "add(alpha=)": (
                k.add_scaled(a, b, v),
                exact_fma(v, b, a, "float32"),
                _t(a, np.float32).add(_t(b, np.float32), alpha=float(v)).item(),
            ),
        }
        for name, (hand, rule, torch_value) in rows.items():
            tally = bad.setdefault(name, [0, 0])
            tally[0] += hand != np.float32(rule)
            if rules[name]["rule"] == ("textbook" if name == "addcdiv_" else "fma"):  # torch rounds as the hand side
                tally[1] += hand != np.float32(torch_value)
    assert bad == {name: [0, 0] for name in bad}, bad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_cpu_sqrt_is_within_the_models_bound(dtype, machine_rules):
    """The tolerance model's sqrt term assumes torch's root within N = SQRT_ULPS ulp of the correctly
    rounded one (1: MKL's documented bound; docs/optimizers.md). How many roots are off is the
    machine's (0.6% of float32 one-element roots on an Intel Xeon, 18% on an AMD EPYC, none where
    torch uses the processor's instruction): measured here on 3,000 more inputs of the probe's
    distribution, it is the probe's share (within sampling), and bit for bit where the probe found
    every root correctly rounded."""
    rng = np.random.default_rng(4)
    a = (rng.uniform(0, 1, 3000) * np.exp(rng.uniform(-20, 20, 3000))).astype(dtype)
    got = np.array([_t(v, dtype).sqrt().item() for v in a], dtype=dtype)  # one-element tensors, as the engines
    p = 24 if dtype == np.float32 else 53
    exact = np.array([correct_sqrt(float(v), p) for v in a], dtype=dtype)  # exactly, in integers
    ints = np.int32 if dtype == np.float32 else np.int64
    ulps = np.abs(got.view(ints).astype(np.int64) - exact.view(ints).astype(np.int64))
    assert ulps.max() <= SQRT_ULPS
    probed = machine_rules["sqrt"][np.dtype(dtype).name]["one"]
    assert probed["max_ulp"] <= SQRT_ULPS
    if probed["off_share"] == 0:
        assert ulps.max() == 0
    assert (ulps > 0).mean() == pytest.approx(probed["off_share"], abs=0.05)


# ------------------------------------------------------------------ torch's own option combinations

#: optim_inputs_func_<name>(device="cpu") in torch/testing/_internal/common_optimizers.py (torch
#: 2.13), float-valued ones; "lr" absent means torch's default lr for the class
TORCH_DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-2, "adagrad": 1e-2}
_ADAM = [
    {},
    {"lr": 0.01},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "maximize": True},
    {"weight_decay": 0.1, "amsgrad": True},
]
TORCH_COMBOS = {
    "adam": _ADAM,
    "adamw": _ADAM,
    "rmsprop": [
        {},
        {"lr": 1e-3},
        {"weight_decay": 0.1},
        {"maximize": True},
        {"weight_decay": 0.1, "centered": True},
        {"maximize": True, "weight_decay": 0.1},
        {"weight_decay": 0.1, "centered": True, "momentum": 0.1},
        {"weight_decay": 0.1, "centered": True, "momentum": 0.1, "maximize": True},
    ],
    "adagrad": [
        {},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "maximize": True},
        {"lr": 0.1},
        {"initial_accumulator_value": 0.1, "weight_decay": 0.1},
        {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1},
    ],
}


def _flags(opts: dict) -> list[str]:
    out = []
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, str(value)]
    return out


def _run_json(args: list[str]) -> dict:
    result = CliRunner().invoke(cli, ["run", "--format", "json", *args])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.output)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "name,opts",
    [(n, o) for n, combos in TORCH_COMBOS.items() for o in combos],
    ids=lambda v: v if isinstance(v, str) else ",".join(f"{a}={b}" for a, b in v.items()) or "default",
)
def test_torch_option_combinations_agree(name, opts, dtype):
    opts = {"lr": TORCH_DEFAULT_LR[name], **opts}
    doc = _run_json(
        ["--optimizer", name, "--dtype", dtype, "--epochs", "15", "--init-w", "1.5", "--shuffle", *_flags(opts)]
    )
    assert doc["verdict"]["ok"], doc["verdict"]
    opt = get(name)
    cfg = Config(optimizer=name, **opts)
    expected = {"grad_w", "grad_b", "loss", "w", "b", *state_fields(opt.state_keys(cfg)), "stalled_w", "stalled_b"}
    assert set(doc["steps"][0]["torch"]) == expected == set(doc["steps"][-1]["manual"])
    assert doc["config"]["optimizer"] == name
    for key, value in opts.items():
        assert doc["config"][key] == value


@pytest.mark.parametrize("impl", ["foreach", "fused"])
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_foreach_and_fused_agree(name, impl):
    if impl == "fused" and name == "rmsprop":
        pytest.skip("torch.optim.RMSprop has no fused implementation (exit 2: tested below)")
    extra = {
        "sgd": ["--momentum", "0.9"],
        "adam": ["--amsgrad"],
        "adamw": [],
        "rmsprop": ["--centered", "--momentum", "0.5"],
        "adagrad": ["--lr-decay", "0.01"],
    }[name]
    for dtype in DTYPES:
        doc = _run_json(
            [
                "--optimizer",
                name,
                f"--{impl}",
                "--dtype",
                dtype,
                "--epochs",
                "10",
                "--lr",
                "0.05",
                "--weight-decay",
                "0.1",
                *extra,
            ]
        )
        assert doc["verdict"]["ok"], (dtype, doc["verdict"])
        assert doc["config"][impl] is True


def _torch_sqrt(x):
    """torch's own root of a NumPy scalar (a one-element tensor, as torch.optim takes it)."""
    return type(x)(torch.tensor([x]).sqrt().item()) if isinstance(x, np.generic) else x.sqrt()


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "adagrad"])
def test_hand_update_is_torchs_bit_for_bit_on_the_article_but_for_the_sqrt(name, machine_rules, monkeypatch):
    """The hand update rounds as torch's kernels, all but the last bit of torch's sqrt (not a
    documented algorithm: MKL's on x86). With torch's own sqrt on the hand side the article's run is
    bit-identical wherever the probe measured the kernels fused (the rule the hand side reproduces);
    as shipped it is bit-identical where torch's float32 sqrt is correctly rounded, and otherwise
    within the model, at most half the allowance (measured here: 1 ulp, 14% of the allowance)."""
    cfg = Config(optimizer=name, epochs=3)
    t = run_trace(cfg)
    assert t.verdict.ok and t.verdict.max_tol_ratio <= 0.5, t.verdict
    fused = probe.fused(machine_rules, "float32")
    if fused and machine_rules["sqrt"]["float32"]["one"]["off_share"] == 0:
        assert t.verdict.max_ulp == 0
    monkeypatch.setattr(k, "sqrt", _torch_sqrt)
    same = run_trace(cfg)
    if fused:
        assert same.verdict.max_ulp == 0
    assert same.verdict.ok


# ------------------------------------------------------------------ property tests

SCHEDULES = [
    {"name": "StepLR", "step_size": 2, "gamma": 0.5},
    {"name": "MultiStepLR", "milestones": [1, 3, 3], "gamma": 0.5},
    {"name": "ExponentialLR", "gamma": 0.9},
    {"name": "CosineAnnealingLR", "T_max": 3, "eta_min": 0.001},
    {"name": "LinearLR", "start_factor": 0.25, "total_iters": 4},
    {"name": "OneCycleLR", "max_lr": 0.05, "total_steps": 60},
    {"name": "OneCycleLR", "max_lr": 0.05, "total_steps": 60, "three_phase": True, "anneal_strategy": "linear"},
]


@st.composite
def optimizer_configs(draw):
    name = draw(st.sampled_from(["adam", "adamw", "rmsprop", "adagrad"]))
    opts: dict = {"weight_decay": draw(st.sampled_from([0.0, 0.01, 0.5])), "maximize": draw(st.booleans())}
    if name in ("adam", "adamw"):
        opts.update(
            betas=(draw(st.floats(0.0, 0.99)), draw(st.floats(0.0, 0.9999))),
            amsgrad=draw(st.booleans()),
            eps=draw(st.sampled_from([1e-8, 1e-6, 1e-3, 0.1])),
        )
    elif name == "rmsprop":
        opts.update(
            alpha=draw(st.floats(0.0, 0.999)),
            centered=draw(st.booleans()),
            momentum=draw(st.sampled_from([0.0, 0.5, 0.9])),
            eps=draw(st.sampled_from([1e-8, 1e-3, 0.1])),
        )
    else:
        opts.update(
            lr_decay=draw(st.sampled_from([0.0, 0.01, 1.0])),
            initial_accumulator_value=draw(st.sampled_from([0.0, 0.1, 2.0])),
            eps=draw(st.sampled_from([1e-10, 1e-3])),
        )
    n = draw(st.sampled_from([None, 5, 17]))
    data = {} if n is None else dict(synthetic=n, noise=draw(st.sampled_from([0.0, 1.0])))
    if draw(st.integers(0, 3)) == 0:  # a schedule, a quarter of the time
        sched = dict(draw(st.sampled_from(SCHEDULES)), interval=draw(st.sampled_from(["epoch", "step"])))
        if sched["name"] == "OneCycleLR":
            sched.update(total_steps=10_000, cycle_momentum=name != "adagrad")
        opts["scheduler"] = make_schedule(sched, "test")
    return Config(
        optimizer=name,
        lr=draw(st.floats(1e-4, 0.3)),
        batch_size=draw(st.integers(1, 9)),
        epochs=draw(st.integers(1, 12)),
        shuffle=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31)),
        init_w=draw(st.floats(-4, 4)),
        init_b=draw(st.floats(-4, 4)),
        dtype=draw(st.sampled_from(DTYPES)),
        **opts,
        **data,
    )


def _assert_agree(t):
    for f, d in t.divergence.items():
        bad = np.flatnonzero(~d.ok)
        assert bad.size == 0, (
            f"{f} at step {bad[0] + 1}: manual {t.manual[f][bad[0]]!r}, torch "
            f"{t.torch[f][bad[0]]!r}, |diff| {d.abs[bad[0]]!r} > tol {d.tol[bad[0]]!r}"
        )
    assert t.verdict.ok


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(optimizer_configs())
def test_engines_agree_over_the_optimizers_option_space(cfg):
    _assert_agree(run_trace(cfg))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(optimizer_configs())
def test_engines_agree_on_the_cuda_code_paths(cfg):
    """The hand optimizers on torch tensors (as on CUDA), run on the CPU."""
    _assert_agree(run_trace(cfg, manual_backend="torch", sync_free=True))


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(optimizer_configs())
def test_engines_agree_over_the_option_space_wide(cfg):
    _assert_agree(run_trace(cfg))


# ------------------------------------------------------------------ textbook variants


def _first(t):
    v = t.verdict.first_divergent_step
    return None if v is None else (v["step"], v["field"])


@pytest.mark.parametrize("dtype,eps", [("float64", 1e-8), ("float32", 1e-3)])
def test_eps_inside_the_square_root_is_caught_at_step_1(monkeypatch, dtype, eps):
    monkeypatch.setattr(adam, "denominator", lambda v, bc2_sqrt, eps: k.sqrt(v / (bc2_sqrt * bc2_sqrt) + eps))
    assert _first(run_trace(Config(optimizer="adam", epochs=2, dtype=dtype, eps=eps))) == (1, "w")


def test_eps_inside_the_square_root_is_below_float32_rounding_with_eps_1e_8(monkeypatch):
    """With the article's gradients (v ~ 1..1e5) eps = 1e-8 moves sqrt(v) by less than its float32
    rounding: within rounding (docs/optimizers.md: at most 43% of the allowance over 300 epochs)."""
    monkeypatch.setattr(adam, "denominator", lambda v, bc2_sqrt, eps: k.sqrt(v / (bc2_sqrt * bc2_sqrt) + eps))
    assert run_trace(Config(optimizer="adam", epochs=20)).verdict.ok


def test_no_bias_correction_is_caught_at_step_1(monkeypatch):
    monkeypatch.setattr(adam, "bias_correction", lambda beta, t: 1.0)
    assert _first(run_trace(Config(optimizer="adam", epochs=2))) == (1, "w")


def test_l2_decay_in_adamw_is_caught_at_step_1(monkeypatch):
    monkeypatch.setattr(
        adamw, "hyper", lambda config, scalar=float, group=None, **kw: adam.hyper(config, scalar, group, **kw)
    )
    monkeypatch.setitem(__import__("sgdtrace.engines.optimizers", fromlist=["x"]).OPTIMIZERS, "adamw", adamw)
    assert _first(run_trace(Config(optimizer="adamw", weight_decay=0.1, init_w=2.0, epochs=2))) == (
        1,
        "exp_avg_w",
    )  # the decay went into the moment, computed before w


def test_closed_form_cosine_is_caught_on_the_rate(monkeypatch):
    """The closed form differs from torch's recursion in the last bits of the double: caught on ``lr``."""

    def closed(group, last_epoch, initial, a, base):
        return schedules.cosine_closed_form(base, last_epoch, a["T_max"], a["eta_min"])

    monkeypatch.setitem(schedules.GET_LR, "CosineAnnealingLR", closed)
    sched = make_schedule({"name": "CosineAnnealingLR", "T_max": 10, "interval": "step"}, "test")
    t = run_trace(Config(optimizer="adam", epochs=4, scheduler=sched))
    step, field = _first(t)
    assert field == "lr"  # at step 12 here: the first rate whose last bit differs
    assert np.abs(t.manual["lr"] - t.torch["lr"]).max() < 1e-16


def test_textbook_first_moment_is_within_rounding(monkeypatch):
    """``beta1*m + (1-beta1)*g`` instead of lerp_: off by rounding only (docs/optimizers.md: the distance)."""
    monkeypatch.setattr(adam, "first_moment", lambda m, g, w: (1 - w) * m + w * g)
    t = run_trace(Config(optimizer="adam", epochs=30, shuffle=True))
    assert t.verdict.ok
    assert t.verdict.max_ulp > 0  # it does round differently


# ------------------------------------------------------------------ schedules


@pytest.mark.parametrize("interval", ["epoch", "step"])
@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop"])
@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: s["name"] + ("-3" if s.get("three_phase") else ""))
def test_schedules_agree_and_record_the_rate(sched, name, interval):
    t = run_trace(Config(optimizer=name, epochs=8, scheduler=make_schedule({**sched, "interval": interval}, "t")))
    _assert_agree(t)
    assert np.array_equal(t.manual["lr"], t.torch["lr"])  # the same recursion in Python floats
    assert "lr" in t.fields


def test_one_cycle_gives_plain_sgd_a_momentum_buffer():
    sched = make_schedule({"name": "OneCycleLR", "max_lr": 0.05, "total_steps": 30}, "t")
    t = run_trace(Config(epochs=3, scheduler=sched))
    assert {"buf_w", "buf_b"} <= set(t.fields)
    _assert_agree(t)


def test_the_schedule_is_worked_out_once_per_run(monkeypatch):
    """One schedule table per run, handed to the hand engine, the judge and explain (not recomputed
    by each): OneCycleLR cycling the momentum reads both columns of it."""
    calls = []
    real = schedules.values
    monkeypatch.setattr(schedules, "values", lambda *a: calls.append(a) or real(*a))
    sched = make_schedule({"name": "OneCycleLR", "max_lr": 0.05, "total_steps": 30}, "t")
    t = run_trace(Config(epochs=3, scheduler=sched))
    _assert_agree(t)
    assert len(calls) == 1
    assert np.array_equal(t.schedule.per_step("lr"), t.torch["lr"])
    from sgdtrace.teaching.explain import step_momentum

    assert step_momentum(t, 4) == t.schedule.rows[4]["momentum"] and len(calls) == 1


def test_cosine_recursion_is_torchs_and_drifts_from_the_closed_form():
    sched = make_schedule({"name": "CosineAnnealingLR", "T_max": 7, "interval": "step"}, "t")
    rows = schedules.values(Config(lr=0.1, scheduler=sched), 40)
    closed = [schedules.cosine_closed_form(0.1, i, 7, 0.0) for i in range(41)]
    assert any(r["lr"] != c for r, c in zip(rows, closed))
    assert max(abs(r["lr"] - c) for r, c in zip(rows, closed)) < 1e-15


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--optimizer", "adam", "--momentum", "0.9"], "--momentum 0.9 and --optimizer adam"),
        (["--optimizer", "sgd", "--betas", "0.8,0.9"], "--betas"),
        (["--optimizer", "adagrad", "--amsgrad"], "--amsgrad True and --optimizer adagrad"),
        (["--optimizer", "rmsprop", "--fused"], "--fused True and --optimizer rmsprop"),
        (["--optimizer", "adam", "--betas", "0.9,1.0"], "betas[1] = 1.0 must be in [0, 1)"),
        (["--optimizer", "adam", "--betas", "0.9"], "--betas '0.9': must be two numbers"),
        (["--optimizer", "adam", "--eps", "-1"], "--eps -1.0: eps must be a finite number >= 0"),
        (["--optimizer", "rmsprop", "--alpha", "-0.5"], "--alpha -0.5"),
        (["--optimizer", "adagrad", "--lr-decay", "-1"], "--lr-decay -1.0"),
        (["--optimizer", "adam", "--foreach", "--fused"], "--foreach and --fused"),
        (["--optimizer", "nadam"], "nadam"),
        (["--scheduler", "StepLR"], "StepLR needs step_size"),
        (["--scheduler", "StepLR", "--scheduler-arg", "step_size=0"], "step_size = 0: must be a whole number >= 1"),
        (
            ["--scheduler", "StepLR", "--scheduler-arg", "step_size=2", "--scheduler-arg", "gama=0.5"],
            "no argument 'gama'",
        ),
        (["--scheduler", "CosineLR"], "scheduler 'CosineLR'"),
        (["--scheduler", "LinearLR", "--scheduler-arg", "start_factor=0"], "start_factor = 0"),
        (["--scheduler", "StepLR", "--scheduler-arg", "step_size=1", "--scheduler-arg", "interval=batch"], "interval"),
        (["--scheduler-arg", "gamma=0.5"], "name the schedule with --scheduler"),
        (
            [
                "--optimizer",
                "adagrad",
                "--scheduler",
                "OneCycleLR",
                "--scheduler-arg",
                "max_lr=0.1",
                "--scheduler-arg",
                "total_steps=10",
            ],
            "OneCycleLR and --optimizer adagrad",
        ),
        (["--scheduler", "OneCycleLR", "--scheduler-arg", "max_lr=0.1"], "OneCycleLR needs total_steps"),
        (
            [
                "--epochs",
                "4",
                "--scheduler",
                "OneCycleLR",
                "--scheduler-arg",
                "max_lr=0.1",
                "--scheduler-arg",
                "total_steps=10",
            ],
            "set total_steps >= 12",
        ),
    ],
)
def test_bad_optimizer_options_are_exit_2(args, fragment):
    result = CliRunner().invoke(cli, ["run", *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_torch_rejects_what_sgdtrace_rejects():
    p = [torch.nn.Parameter(torch.zeros(1))]
    for cls, kw in (
        (torch.optim.Adam, {"betas": (0.9, 1.0)}),
        (torch.optim.Adam, {"eps": -1.0}),
        (torch.optim.RMSprop, {"alpha": -0.5}),
        (torch.optim.Adagrad, {"lr_decay": -1.0}),
        (torch.optim.Adagrad, {"initial_accumulator_value": -1.0}),
    ):
        with pytest.raises(ValueError):
            cls(p, **kw)
    with pytest.raises(TypeError):
        torch.optim.RMSprop(p, fused=True)
    with pytest.raises(ValueError, match="momentum or beta1"):
        torch.optim.lr_scheduler.OneCycleLR(torch.optim.Adagrad(p), max_lr=0.1, total_steps=10)


def test_scheduler_table_and_betas_array_from_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'optimizer = "adam"\nlr = 0.05\nbetas = [0.8, 0.99]\n\n[scheduler]\nname = "StepLR"\n'
        "step_size = 1\ngamma = 0.5\n"
    )
    doc = _run_json(["--config", str(path)])
    assert doc["config"]["betas"] == [0.8, 0.99]
    assert doc["config"]["scheduler"] == {"name": "StepLR", "interval": "epoch", "step_size": 1, "gamma": 0.5}
    assert doc["verdict"]["ok"]
    path.write_text('[scheduler]\nname = "StepLR"\nstep_size = "two"\n')
    result = CliRunner().invoke(cli, ["run", "--config", str(path)])
    assert result.exit_code == 2 and "'scheduler' in run.toml" in result.output


def test_adamw_takes_torchs_default_weight_decay():
    assert Config(optimizer="adamw").weight_decay == 0.01
    assert Config(optimizer="adam").weight_decay == 0.0
    assert Config(optimizer="adagrad").eps == 1e-10
    assert Config().eps is None
    assert Config().replace(optimizer="adamw").weight_decay == 0.01
    assert Config(weight_decay=0.5).replace(optimizer="adamw").weight_decay == 0.5
    assert Config(optimizer="adagrad").replace(optimizer="adam").eps == 1e-8


def test_explain_recomputes_an_adam_step_bit_for_bit():
    from sgdtrace.teaching.explain import explain_step

    t = run_trace(Config(optimizer="adam", amsgrad=True, epochs=2))
    ex = explain_step(t, batch=2, epoch=2)
    assert ex.matches_trace


def test_the_hand_engine_knows_each_optimizer():
    backend = manual.ArrayBackend("numpy", "float32")
    for name in ("sgd", "adam", "adamw", "rmsprop", "adagrad"):
        e = manual.engine(Config(optimizer=name), backend)
        assert e.update is get(name).update


# ------------------------------------------------------------------ views


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json"])
def test_every_format_shows_the_state_and_the_rate(fmt):
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--optimizer",
            "adam",
            "--amsgrad",
            "--format",
            fmt,
            "--scheduler",
            "StepLR",
            "--scheduler-arg",
            "step_size=1",
            "--scheduler-arg",
            "gamma=0.5",
            "--epochs",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "max_exp_avg_sq" in result.output and "lr" in result.output
    if fmt == "table":
        assert "adam's state" in result.output
        assert result.output.count("0.005") >= 6  # epoch 2's rate, on the hand and torch lines


def test_compare_and_explain_take_the_optimizers():
    result = CliRunner().invoke(
        cli, ["compare", "--optimizer", "rmsprop", "--centered", "--dtype", "float32", "--dtype", "float64"]
    )
    assert result.exit_code == 0, result.output
    assert "grad_avg_w" in result.output
    result = CliRunner().invoke(cli, ["explain", "--batch", "2", "--optimizer", "adagrad", "--lr-decay", "0.1"])
    assert result.exit_code == 0, result.output
    assert "clr = lr / (1 + (t − 1)·lr_decay)" in result.output and "torch: sum_w" in result.output
    result = CliRunner().invoke(
        cli,
        [
            "explain",
            "--batch",
            "2",
            "--optimizer",
            "adam",
            "--scheduler",
            "CosineAnnealingLR",
            "--scheduler-arg",
            "T_max=3",
            "--scheduler-arg",
            "interval=step",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "denom = sqrt(v)/sqrt(bc2) + eps" in result.output and "closed form" in result.output
