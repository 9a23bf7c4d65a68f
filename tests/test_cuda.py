"""On a CUDA device: no host synchronisation in the per-step loop, and the same verdicts as on the CPU.

Skipped where torch sees no CUDA device; benchmarks/gpu_check.sh runs these on a GPU machine.
The same code paths run on the CPU in tests/test_performance.py (manual_backend="torch",
sync_free=True).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

from sgdtrace import data  # noqa: E402
from sgdtrace.config import Config  # noqa: E402
from sgdtrace.engines import manual, torch_ref  # noqa: E402
from sgdtrace.tracing import run_trace  # noqa: E402


@contextlib.contextmanager
def no_sync():
    """Any host synchronisation inside raises (torch.cuda.set_sync_debug_mode("error"))."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


CONFIGS = [
    Config(device="cuda"),
    Config(device="cuda", synthetic=2000, batch_size=64, shuffle=True, seed=2),
    Config(device="cuda", synthetic=500, batch_size=1, lr=0.001, momentum=0.9, nesterov=True, weight_decay=0.01),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["article", "shuffled-b64", "momentum-b1"])
def test_the_per_step_loops_never_sync_with_the_host(cfg):
    ds = data.load(cfg)
    plan = data.plan(len(ds), cfg)
    device = torch.device("cuda")
    seen = []
    backend = manual.ArrayBackend("torch", cfg.dtype, device)
    man = manual.run(ds.x, ds.y, plan, cfg, backend, progress=seen.append, loop_context=no_sync)
    ref = torch_ref.run(
        ds.x, ds.y, cfg, device, plan.n_steps, progress=seen.append, sync_free=True, loop_context=no_sync
    )
    assert man["w"].shape == ref["w"].shape == (plan.n_steps,)
    assert seen[-1] == plan.n_steps


@pytest.mark.parametrize("cfg", CONFIGS, ids=["article", "shuffled-b64", "momentum-b1"])
def test_cuda_runs_agree_like_cpu_runs(cfg):
    gpu = run_trace(cfg)
    assert gpu.device.startswith("cuda")
    assert gpu.verdict.ok, gpu.verdict.first_divergent_step
    cpu = run_trace(cfg.replace(device="cpu"))
    assert cpu.verdict.ok
    np.testing.assert_array_equal(gpu.n, cpu.n)  # the same batches on both devices


def test_compare_cpu_against_cuda():
    from sgdtrace.compare import compare_runs

    result = compare_runs(Config(synthetic=1000, batch_size=10), ("cpu", "cuda"), ("float32", "float64"))
    assert result.ok
