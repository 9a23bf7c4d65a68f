"""Manual engine vs torch over many random data sets, learning rates, batch sizes and epochs."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgdtrace import data as data_mod
from sgdtrace.config import Config
from sgdtrace.data import Dataset
from sgdtrace.engines import manual, torch_ref
from sgdtrace.tracing import judge, resolve_device

finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def runs(draw):
    n = draw(st.integers(1, 24))
    x = draw(st.lists(finite, min_size=n, max_size=n))
    y = draw(st.lists(finite, min_size=n, max_size=n))
    cfg = Config(
        lr=draw(st.floats(1e-5, 0.05)),
        batch_size=draw(st.integers(1, n + 2)),
        epochs=draw(st.integers(1, 4)),
        init_w=draw(st.floats(-3, 3)),
        init_b=draw(st.floats(-3, 3)),
        dtype=draw(st.sampled_from(["float32", "float64"])),
    )
    return Dataset.from_arrays(x, y), cfg


def run_pair(ds, cfg, backend="numpy"):
    plan = data_mod.plan(len(ds), cfg)
    man = manual.run(ds.x, ds.y, plan, cfg, manual.ArrayBackend(backend, cfg.dtype))
    ref = torch_ref.run(ds.x, ds.y, cfg, resolve_device("cpu"), plan.n_steps)
    return judge(cfg, ds, plan, "cpu", man, ref)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_engines_agree_on_random_runs(run):
    ds, cfg = run
    t = run_pair(ds, cfg)
    assert t.verdict.ok, (t.verdict.first_divergent_step, cfg)
    assert t.verdict.max_tol_ratio <= 1.0


@settings(max_examples=25, deadline=None)
@given(runs())
def test_torch_array_backend_agrees_too(run):
    """The manual engine's torch-tensor path (the one CUDA uses) checked on the CPU."""
    ds, cfg = run
    assert run_pair(ds, cfg, backend="torch").verdict.ok


def test_multi_tensor_sgd_path_records_true_gradients(monkeypatch):
    """On CUDA optim.SGD defaults to its multi-tensor (foreach) path, which with Nesterov adds
    momentum*buf into p.grad in place during step(). Forced on the CPU here: the recorded
    gradients must still be dl/dw and dl/db of the batch, so the engines agree."""
    import functools

    import torch

    from sgdtrace.config import Config
    from sgdtrace.engines import torch_ref
    from sgdtrace.tracing import run_trace

    monkeypatch.setattr(torch_ref.optim, "SGD", functools.partial(torch.optim.SGD, foreach=True))
    t = run_trace(Config(momentum=0.9, nesterov=True, epochs=3), sync_free=True)
    assert t.verdict.ok, t.verdict.first_divergent_step
