import os

import pytest

# keep the suite deterministic and quiet regardless of the caller's terminal
os.environ.setdefault("NO_COLOR", "1")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def machine_rules(tmp_path_factory):
    """This machine's kernel rules (:mod:`sgdtrace.probe`), measured once per session into a cache
    of the session's own (unless SGDTRACE_CACHE_DIR names one), before any test patches the hand
    side: tests that pin a kernel property assert the rule measured here, never an assumed one."""
    if not os.environ.get("SGDTRACE_CACHE_DIR"):
        os.environ["SGDTRACE_CACHE_DIR"] = str(tmp_path_factory.mktemp("sgdtrace-cache"))
    from sgdtrace import probe

    return probe.rules()


@pytest.fixture
def hand_step_unlike_torch(monkeypatch, machine_rules):
    """The hand SGD step rounding otherwise than torch's on this machine, so that the two engines
    differ by honest rounding wherever the suite runs. torch's ``p.add_(g, alpha=-lr)`` rounds once
    where the probe measured it fused (an FMA instruction) and the hand side's ``p - lr*g`` twice;
    where torch's rounds twice (``ATEN_CPU_CAPABILITY=default``), the hand step here rounds once."""
    rule = machine_rules["kernels"]["float32"]["add(alpha=)"]["rule"]
    if rule != "fma":
        from sgdtrace.engines.optimizers import _kernels, sgd

        monkeypatch.setattr(sgd, "descend", lambda p, g, lr: _kernels.add_scaled(p, g, -lr))
    return rule
