"""torch.optim.SGD's options by hand: momentum, dampening, Nesterov, weight decay, maximize.

* ``sgd_update`` worked by hand on exact numbers, and held against ``torch.optim.SGD`` itself;
* the options' validation, as torch's;
* the momentum buffers in the JSON and in the table;
* property tests over the whole option space (with shuffling, drop_last, batch size, epochs,
  dtype): both engines agree within the tolerance model at every step;
* subtly wrong update rules, swapped in for ``sgd_update``: the gate catches each one, at the
  step where it first makes a difference.
"""

from __future__ import annotations

import io
import itertools
import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset
from update_rules import sgd_update, swap_update

from sgdtrace.cli import cli
from sgdtrace.config import Config
from sgdtrace.engines.optimizers.sgd import Hyper
from sgdtrace.engines.optimizers.sgd import hyper as make_hyper
from sgdtrace.errors import ConfigError
from sgdtrace.tracing import run_trace
from sgdtrace.views.table import run_view


def hyper(lr=0.5, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False) -> Hyper:
    cfg = Config(
        lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, maximize=maximize
    )
    return make_hyper(cfg, np.float64)


# ------------------------------------------------------------------ the rule, by hand
# Numbers chosen so every operation is exact in binary floating point: the expected values
# are the formulas' exact results.


def test_plain_sgd_is_equations_4_and_5():
    # w <- w - lr * dl/dw = 1 - 0.5 * 3 = -0.5; no buffer without momentum
    assert sgd_update(1.0, 3.0, None, hyper(), first=True) == (-0.5, None)


def test_momentum_first_step_sets_the_buffer_to_the_gradient():
    # buf = g = 4 (not momentum*0 + g, which is the same here, and not lr*g as in the textbook form)
    p, buf = sgd_update(1.0, 4.0, None, hyper(momentum=0.5), first=True)
    assert (p, buf) == (1.0 - 0.5 * 4.0, 4.0)
    # second step: buf = 0.5*4 + 2 = 4; p = -1 - 0.5*4 = -3
    assert sgd_update(p, 2.0, buf, hyper(momentum=0.5), first=False) == (-3.0, 4.0)


def test_dampening_is_skipped_on_the_first_step():
    h = hyper(momentum=0.5, dampening=0.75)
    p, buf = sgd_update(1.0, 4.0, None, h, first=True)
    assert buf == 4.0  # not (1 - 0.75) * 4 = 1
    # then buf = 0.5*4 + (1 - 0.75)*8 = 4; p = (1 - 0.5*4) - 0.5*4 = -3
    assert sgd_update(p, 8.0, buf, h, first=False) == (-3.0, 4.0)


def test_weight_decay_goes_into_the_buffer():
    h = hyper(momentum=0.5, weight_decay=0.25)
    # g = 4 + 0.25*2 = 4.5; buf = 4.5; p = 2 - 0.5*4.5 = -0.25
    p, buf = sgd_update(2.0, 4.0, None, h, first=True)
    assert (p, buf) == (-0.25, 4.5)
    # g = 1 + 0.25*(-0.25) = 0.9375; buf = 0.5*4.5 + 0.9375 = 3.1875; p = -0.25 - 0.5*3.1875 = -1.84375
    assert sgd_update(p, 1.0, buf, h, first=False) == (-1.84375, 3.1875)


def test_nesterov_steps_along_gradient_plus_momentum_times_buffer():
    h = hyper(momentum=0.5, nesterov=True)
    # buf = 4; step direction g + 0.5*buf = 6; p = 1 - 0.5*6 = -2
    p, buf = sgd_update(1.0, 4.0, None, h, first=True)
    assert (p, buf) == (-2.0, 4.0)
    # buf = 0.5*4 + 2 = 4; direction 2 + 0.5*4 = 4; p = -2 - 0.5*4 = -4
    assert sgd_update(p, 2.0, buf, h, first=False) == (-4.0, 4.0)


def test_maximize_negates_the_gradient_before_weight_decay():
    h = hyper(weight_decay=0.25, maximize=True)
    # g = -4 + 0.25*2 = -3.5; p = 2 - 0.5*(-3.5) = 3.75 (decay still pulls toward 0)
    assert sgd_update(2.0, 4.0, None, h, first=True) == (3.75, None)


def test_one_minus_dampening_is_rounded_once_as_torch_rounds_alpha():
    h = make_hyper(Config(momentum=0.9, dampening=0.999), np.float32)
    assert h.one_minus_dampening == np.float32(1 - 0.999)
    # worked out in float32 from a rounded dampening it would be 500 ulp off
    assert np.float32(1) - np.float32(0.999) != np.float32(1 - 0.999)


# ------------------------------------------------------------------ the rule against torch.optim.SGD


OPTION_GRID = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
    for m, d, n, wd, mx in itertools.product([0.0, 0.5], [0.0, 0.5], [False, True], [0.0, 0.25], [False, True])
    if not (n and (m == 0 or d != 0))
]


def exact_reference(grads, p, lr, momentum, dampening, nesterov, weight_decay, maximize):
    """torch.optim.SGD's documented algorithm in exact rational arithmetic: ``[(p, buf)]`` per step."""
    lr, momentum, dampening, weight_decay = (Fraction(v) for v in (lr, momentum, dampening, weight_decay))
    buf, out = None, []
    for g in grads:
        g = -g if maximize else g
        if weight_decay != 0:
            g = g + weight_decay * p
        if momentum != 0:
            buf = g if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
        out.append((p, buf))
    return out


@pytest.mark.parametrize("opts", OPTION_GRID, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("dtype,steps", [("float32", 5), ("float64", 8)])
def test_sgd_update_and_torch_optim_sgd_are_exact_on_exact_numbers(opts, dtype, steps):
    """The same gradients fed to sgd_update, to optim.SGD (p.grad set by hand) and to exact arithmetic.

    With lr = momentum = dampening = 1/2, weight decay 1/4, integer gradients and p0 = 3/2, every
    value stays a binary fraction of at most 24 significant bits for 5 steps (53 bits for 8): no
    operation rounds, so all three must agree bit for bit, whatever the order of operations.
    """
    grads = [3, -5, 2, 7, -1, 4, -6, 1][:steps]
    lr = 0.5
    exact = exact_reference([Fraction(g) for g in grads], Fraction(3, 2), lr, **opts)
    for p_exact, buf_exact in exact:  # the premise: every value representable in the dtype
        for v in (p_exact, buf_exact):
            assert v is None or Fraction(float(np.dtype(dtype).type(v))) == v
    tdtype = getattr(torch, dtype)
    param = nn.Parameter(torch.tensor([1.5], dtype=tdtype))
    opt = optim.SGD([param], lr=lr, **opts)
    h = make_hyper(Config(lr=lr, dtype=dtype, **opts), np.dtype(dtype).type)
    p, buf = np.dtype(dtype).type(1.5), None
    for k, g in enumerate(grads):
        param.grad = torch.tensor([float(g)], dtype=tdtype)
        opt.step()
        p, buf = sgd_update(p, np.dtype(dtype).type(g), buf, h, first=k == 0)
        p_exact, buf_exact = exact[k]
        assert Fraction(float(param.item())) == p_exact, (k, "torch")
        assert Fraction(float(p)) == p_exact, (k, "sgd_update")
        if opts["momentum"]:
            assert Fraction(float(opt.state[param]["momentum_buffer"].item())) == buf_exact
            assert Fraction(float(buf)) == buf_exact
        else:
            assert buf is None


# ------------------------------------------------------------------ validation, as torch's


@pytest.mark.parametrize("momentum,dampening", [(0.0, 0.0), (0.9, 0.1), (0.0, 0.5)])
def test_nesterov_needs_momentum_and_zero_dampening_like_torch(momentum, dampening):
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero dampening"):
        optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01, momentum=momentum, dampening=dampening, nesterov=True)
    with pytest.raises(ConfigError, match="Nesterov momentum requires a momentum > 0 and zero dampening"):
        Config(momentum=momentum, dampening=dampening, nesterov=True)
    result = CliRunner().invoke(cli, ["run", "--nesterov", "--momentum", str(momentum), "--dampening", str(dampening)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgdtrace: error: --nesterov: Nesterov momentum requires")
    assert f"momentum {momentum:g}, dampening {dampening:g}" in lines[0]


def test_nesterov_from_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "n.toml"
    path.write_text("nesterov = true\n")
    result = CliRunner().invoke(cli, ["run", "--config", str(path)])
    assert result.exit_code == 2
    assert "'nesterov' in n.toml: Nesterov momentum requires a momentum > 0" in result.output


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--momentum", "-0.1"], "--momentum -0.1: momentum must be a finite number >= 0"),
        (["--weight-decay", "-1"], "--weight-decay -1.0: weight decay must be a finite number >= 0"),
        (["--dampening", "1.5"], "--dampening 1.5: dampening must be in [0, 1]"),
        (["--momentum", "nan"], "--momentum nan"),
    ],
)
def test_bad_option_values_are_one_line_errors(args, fragment):
    result = CliRunner().invoke(cli, ["run", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]


def test_torch_rejects_the_same_negative_values():
    p = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD(p, lr=0.01, momentum=-0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        optim.SGD(p, lr=0.01, weight_decay=-1.0)


# ------------------------------------------------------------------ the buffers in the trace


def learner_buffers(cfg: Config):
    """The loop a learner writes, reading optim.SGD's momentum buffers after each step."""
    x = torch.arange(9, dtype=torch.float32)
    loader = DataLoader(TensorDataset(x, 2 * x + 10), batch_size=cfg.batch_size)
    weight = nn.Parameter(torch.zeros(1))
    bias = nn.Parameter(torch.zeros(1))
    opt = optim.SGD(
        [weight, bias],
        lr=cfg.lr,
        momentum=cfg.momentum,
        dampening=cfg.dampening,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )
    out = []
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            loss = nn.MSELoss()(xb * weight + bias, yb)
            loss.backward()
            opt.step()
            out.append((opt.state[weight]["momentum_buffer"].item(), opt.state[bias]["momentum_buffer"].item()))
            opt.zero_grad()
    return out


def test_torch_buffers_are_read_from_the_optimizers_state():
    cfg = Config(momentum=0.9, dampening=0.2, weight_decay=0.05, epochs=3)
    t = run_trace(cfg)
    assert list(zip(t.torch["buf_w"].tolist(), t.torch["buf_b"].tolist())) == learner_buffers(cfg)


def test_buffers_in_json_only_with_momentum():
    result = CliRunner().invoke(cli, ["run", "--momentum", "0.9", "--format", "json"])
    assert result.exit_code == 0, result.output
    steps = json.loads(result.output)["steps"]
    for s in steps:
        for side in ("manual", "torch", "divergence"):
            assert {"buf_w", "buf_b"} <= set(s[side])
    # the first step's buffer is the gradient itself (from w = b = 0: dl/dw = -80/3, dl/db = -24)
    assert steps[0]["manual"]["buf_w"] == steps[0]["manual"]["grad_w"] == pytest.approx(-80 / 3, rel=1e-6)
    assert steps[0]["torch"]["buf_b"] == -24.0
    # then buf = 0.9*buf + grad
    assert steps[1]["manual"]["buf_b"] == pytest.approx(0.9 * -24.0 + steps[1]["manual"]["grad_b"], rel=1e-6)
    plain = json.loads(CliRunner().invoke(cli, ["run", "--format", "json"]).output)["steps"]
    assert all("buf_w" not in s["manual"] and "buf_w" not in s["torch"] for s in plain)


def render(trace, width=80) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, soft_wrap=False).print(run_view(trace))
    return buf.getvalue()


def test_table_shows_buffer_columns_with_momentum_within_80_columns():
    t = run_trace(Config(momentum=0.9, dampening=0.1, weight_decay=0.1))
    text = render(t)
    lines = text.splitlines()
    header = next(line for line in lines if "dl/dw" in line)
    assert header.split() == ["batch", "n", "dl/dw", "dl/db", "w", "b", "loss", "buf_w", "buf_b", "ulp"]
    assert all(len(line) <= 80 for line in lines)
    assert "…" not in text  # nothing cut short
    hand = [line.split() for line in lines if " hand " in line]
    # step 1 by hand: dl/dw = -80/3, dl/db = -24, loss = 440/3, w = 0.26667, b = 0.24, buffers = gradients
    assert hand[0] == ["1", "3", "hand", "-26.667", "-24", "0.26667", "0.24", "146.67", "-26.667", "-24", "0"]


def test_table_without_momentum_keeps_the_articles_columns():
    lines = render(run_trace(Config())).splitlines()
    header = next(line for line in lines if "dl/dw" in line)
    assert header.split() == ["batch", "n", "dl/dw", "dl/db", "lr", "w", "b", "loss", "ulp"]  # the article's order


def test_table_fits_small_and_large_values():
    t = run_trace(
        Config(momentum=0.99, lr=0.001, epochs=4, synthetic=20, true_w=0.001, true_b=1e-4, init_w=1e-5, init_b=-3e-6)
    )
    text = render(t)
    assert all(len(line) <= 80 for line in text.splitlines()) and "…" not in text
    t = run_trace(Config(momentum=0.5, maximize=True, epochs=6))
    text = render(t)
    assert all(len(line) <= 80 for line in text.splitlines()) and "…" not in text


def test_table_of_a_failing_momentum_run_fits_80_columns(monkeypatch):
    swap_update(monkeypatch, sutskever_momentum)
    t = run_trace(Config(momentum=0.9))
    text = render(t)
    assert all(len(line) <= 80 for line in text.splitlines()) and "…" not in text
    hand = [line.split() for line in text.splitlines() if line.split()[2:3] == ["hand"]]
    assert len(hand) == 3 and all(row[-2] == "✗" for row in hand)  # one line per step, the mark intact


# ------------------------------------------------------------------ properties: the whole option space


@st.composite
def configs(draw):
    nesterov = draw(st.booleans())
    if nesterov:
        momentum = draw(st.floats(0.01, 0.99))
        dampening = 0.0
    else:
        momentum = draw(st.one_of(st.just(0.0), st.floats(0.0, 0.99)))
        dampening = draw(st.one_of(st.just(0.0), st.just(1.0), st.just(0.999), st.floats(0.0, 1.0)))
    n = draw(st.sampled_from([None, 1, 2, 5, 9, 16, 23]))
    batch_size = draw(st.integers(1, 12))
    drop_last = draw(st.booleans()) and batch_size <= (9 if n is None else n)
    data = (
        {}
        if n is None
        else dict(
            synthetic=n,
            true_w=draw(st.floats(-4, 4)),
            true_b=draw(st.floats(-20, 20)),
            noise=draw(st.sampled_from([0.0, 0.5, 3.0])),
        )
    )
    return Config(
        lr=draw(st.floats(1e-4, 0.05)),
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=draw(st.one_of(st.just(0.0), st.floats(0.0, 2.0))),
        maximize=draw(st.booleans()),
        shuffle=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32)),
        drop_last=drop_last,
        batch_size=batch_size,
        epochs=draw(st.integers(1, 12)),
        init_w=draw(st.floats(-5, 5)),
        init_b=draw(st.floats(-5, 5)),
        dtype=draw(st.sampled_from(["float32", "float64"])),
        **data,
    )


def assert_agree_at_every_step(t, cfg: Config) -> None:
    expected = {"grad_w", "grad_b", "loss", "w", "b"} | ({"buf_w", "buf_b"} if cfg.momentum != 0 else set())
    assert set(t.fields) == expected
    for f in t.fields:
        d = t.divergence[f]
        bad = np.flatnonzero(~d.ok)
        assert bad.size == 0, (
            f"{f} at step {bad[0] + 1}: manual {t.manual[f][bad[0]]!r}, "
            f"torch {t.torch[f][bad[0]]!r}, |diff| {d.abs[bad[0]]!r} > tol {d.tol[bad[0]]!r}"
        )
    assert t.verdict.ok


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_engines_agree_over_the_option_space(cfg):
    assert_agree_at_every_step(run_trace(cfg), cfg)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_engines_agree_over_the_option_space_on_the_cuda_code_paths(cfg):
    """The manual engine on torch tensors and torch's device-resident recorder, as on CUDA, run on the CPU."""
    assert_agree_at_every_step(run_trace(cfg, manual_backend="torch", sync_free=True), cfg)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_engines_agree_over_the_option_space_on_cuda(cfg):
    """On the GPU: the manual engine on CUDA tensors, torch's optim.SGD with its multi-tensor (foreach) path."""
    cfg = cfg.replace(device="cuda")
    t = run_trace(cfg)
    assert t.device.startswith("cuda")
    assert_agree_at_every_step(t, cfg)


@pytest.mark.parametrize("manual_backend", [None, "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_long_run_with_every_option_is_silent(dtype, manual_backend):
    """3,000 epochs near convergence: the gradients cancel, the buffers carry it, and no false alarm."""
    cfg = Config(
        epochs=3000 if manual_backend is None else 300,
        momentum=0.9,
        dampening=0.1,
        weight_decay=0.001,
        shuffle=True,
        seed=3,
        batch_size=4,
        dtype=dtype,
    )
    t = run_trace(cfg, manual_backend=manual_backend)
    assert_agree_at_every_step(t, cfg)


@pytest.mark.parametrize("dampening", [0.999, 0.99, 0.9999])
def test_dampening_near_one_in_float32_is_silent(dampening):
    """(1 - dampening) must be the coefficient torch uses: float32(1 - d), not 1 - float32(d).

    The second is off by up to u*d/(1 - d) relative (500 ulp at d = 0.999): it made the buffers
    differ by up to 11 times their tolerance in such runs.
    """
    cfg = Config(momentum=0.9, dampening=dampening, epochs=20, batch_size=2, init_w=3.0, init_b=4.0, weight_decay=0.01)
    assert_agree_at_every_step(run_trace(cfg), cfg)


# ------------------------------------------------------------------ wrong rules are caught


def dampening_on_first_step(p, g, buf, h, first):
    """The textbook heavy ball started from a zero buffer: dampening applies on step 1 too."""
    if h.maximize:
        g = -g
    if h.use_weight_decay:
        g = g + h.weight_decay * p
    if h.use_momentum:
        buf = (h.one_minus_dampening * g) if first else h.momentum * buf + h.one_minus_dampening * g
        g = g + h.momentum * buf if h.nesterov else buf
    return p - h.lr * g, buf


def weight_decay_after_momentum(p, g, buf, h, first):
    """Decay added to the step, not to the gradient: it never enters the buffer."""
    if h.maximize:
        g = -g
    if h.use_momentum:
        buf = g if first else h.momentum * buf + h.one_minus_dampening * g
        g = g + h.momentum * buf if h.nesterov else buf
    if h.use_weight_decay:
        g = g + h.weight_decay * p
    return p - h.lr * g, buf


def nesterov_with_the_old_buffer(p, g, buf, h, first):
    """The look-ahead taken with the buffer before this step's update (zero on step 1)."""
    if h.maximize:
        g = -g
    if h.use_weight_decay:
        g = g + h.weight_decay * p
    if h.use_momentum:
        old = 0 * g if first else buf
        buf = g if first else h.momentum * buf + h.one_minus_dampening * g
        g = g + h.momentum * old if h.nesterov else buf
    return p - h.lr * g, buf


def maximize_after_weight_decay(p, g, buf, h, first):
    """The whole decayed gradient negated: ascent on the loss AND away from zero."""
    if h.use_weight_decay:
        g = g + h.weight_decay * p
    if h.maximize:
        g = -g
    if h.use_momentum:
        buf = g if first else h.momentum * buf + h.one_minus_dampening * g
        g = g + h.momentum * buf if h.nesterov else buf
    return p - h.lr * g, buf


def sutskever_momentum(p, g, buf, h, first):
    """The textbook form v <- momentum*v + lr*g, p <- p - v: lr inside the buffer."""
    if h.maximize:
        g = -g
    if h.use_weight_decay:
        g = g + h.weight_decay * p
    if not h.use_momentum:
        return p - h.lr * g, buf
    buf = h.lr * g if first else h.momentum * buf + h.lr * g
    return p - buf, buf


def ema_momentum(p, g, buf, h, first):
    """Momentum as an average, buf <- momentum*buf + (1 - momentum)*g (as Adam's first moment)."""
    if h.maximize:
        g = -g
    if h.use_weight_decay:
        g = g + h.weight_decay * p
    if h.use_momentum:
        buf = g if first else h.momentum * buf + (1 - h.momentum) * g
        g = g + h.momentum * buf if h.nesterov else buf
    return p - h.lr * g, buf


# (wrong rule, the flags that expose it, the step it first shows at, the flags that leave it harmless)
# The article's run starts from w = b = 0, so anything proportional to p (weight decay) first shows
# on step 2; a buffer that is wrong on step 1 shows on step 1.
WRONG_RULES = [
    (dampening_on_first_step, ["--momentum", "0.9", "--dampening", "0.5"], 1, ["--momentum", "0.9"]),
    (weight_decay_after_momentum, ["--momentum", "0.9", "--weight-decay", "0.1"], 2, ["--weight-decay", "0.1"]),
    (nesterov_with_the_old_buffer, ["--momentum", "0.9", "--nesterov"], 1, ["--momentum", "0.9"]),
    (maximize_after_weight_decay, ["--maximize", "--weight-decay", "0.1"], 2, ["--maximize"]),
    (sutskever_momentum, ["--momentum", "0.9"], 1, ["--weight-decay", "0.1"]),
    (ema_momentum, ["--momentum", "0.9"], 2, ["--weight-decay", "0.1", "--dampening", "0.3"]),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rule,flags,step,harmless", WRONG_RULES, ids=lambda v: getattr(v, "__name__", None))
def test_a_wrong_rule_fails_the_gate_at_its_first_step(monkeypatch, rule, flags, step, harmless, dtype):
    args = ["run", "--epochs", "3", "--dtype", dtype]
    correct = CliRunner().invoke(cli, [*args, *flags])
    assert correct.exit_code == 0, correct.output

    swap_update(monkeypatch, rule)
    result = CliRunner().invoke(cli, [*args, *flags])
    assert result.exit_code == 1, result.output
    assert f"diverge first at epoch 1 batch {step} (step {step})" in " ".join(result.output.split())

    t = run_trace(Config(epochs=3, dtype=dtype, **_flags_to_config(flags)))
    assert not t.verdict.ok and t.verdict.first_divergent_step["step"] == step

    # without the option the rule is about, the wrong rule is the right one: the gate stays silent
    silent = CliRunner().invoke(cli, [*args, *harmless])
    assert silent.exit_code == 0, silent.output


def _flags_to_config(flags):
    out, it = {}, iter(flags)
    for flag in it:
        key = flag[2:].replace("-", "_")
        out[key] = True if key in ("nesterov", "maximize") else float(next(it))
    return out


def test_a_wrong_rule_fails_sgdtrace_check(monkeypatch, tmp_path):
    from sgdtrace.check import run_checks

    path = tmp_path / "dampening.toml"
    path.write_text("momentum = 0.9\ndampening = 0.5\nepochs = 5\n")
    assert run_checks([str(path)], ["cpu"]).ok
    swap_update(monkeypatch, dampening_on_first_step)
    result = run_checks([str(path)], ["cpu"])
    assert not result.ok
    assert result.rows[0].trace.verdict.first_divergent_step["step"] == 1
