"""The optimizer registry (sgdtrace.engines.optimizers.registry) says what torch says: each
declared class exists and takes the declared keywords with the declared defaults, the state the
hand-worked module keeps is the declared state, and everything that lists optimizers reads it."""

from __future__ import annotations

import inspect

import pytest
import torch

from sgdtrace import config
from sgdtrace.config import Config
from sgdtrace.engines import optimizers
from sgdtrace.engines.optimizers import _fused, registry, schedules
from sgdtrace.engines.torch_ref import make_optimizer

NAMES = registry.NAMES
#: torch's keywords every optimizer takes (the registry's COMMON capabilities, and lr)
EVERY = {"lr", "weight_decay", "maximize", "foreach"}


def _torch_keywords(spec) -> dict:
    cls = getattr(torch.optim, spec.torch_class)
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k not in ("self", "params")}


@pytest.mark.parametrize("name", NAMES)
def test_the_declared_class_takes_the_declared_options_with_their_defaults(name):
    spec = registry.spec(name)
    torch_kw = _torch_keywords(spec)
    assert set(torch_kw) >= EVERY
    assert set(spec.options) <= set(torch_kw)
    for key in spec.options:
        default = spec.defaults.get(key, registry.OPTIONS[key].default)
        assert torch_kw[key] == default, key
    assert torch_kw["weight_decay"] == spec.defaults["weight_decay"]
    if spec.defaults["eps"] is not None:
        assert torch_kw["eps"] == spec.defaults["eps"]
    # every keyword torch's class has among sgdtrace's options is declared (none is left out)
    assert {k for k in torch_kw if k in registry.OPTIONS} == set(spec.options)
    assert ("fused" in spec.capabilities) == ("fused" in spec.options) == ("fused" in torch_kw)


@pytest.mark.parametrize("name", NAMES)
def test_the_module_keeps_the_declared_state(name):
    """With every option that adds state on, the hand-worked module keeps the declared state, in order."""
    spec = registry.spec(name)
    on = {"amsgrad": True, "centered": True, "momentum": 0.9}
    cfg = Config(optimizer=name, **{k: v for k, v in on.items() if k in spec.options})
    module = optimizers.get(name)
    assert module.state_keys(cfg) == spec.state
    assert module.__name__ == spec.module
    for part in ("hyper", "update", "update_bound", "state_keys", "initial_state"):
        assert callable(getattr(module, part)), part


@pytest.mark.parametrize("name", NAMES)
def test_torch_side_builds_the_declared_class_with_the_configs_options(name):
    spec = registry.spec(name)
    cfg = Config(optimizer=name)
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)
    assert type(opt).__name__ == spec.torch_class
    group = opt.param_groups[0]
    for key in spec.options:
        if key != "fused":
            want = tuple(cfg.betas) if key == "betas" else getattr(cfg, key)
            assert group[key] == want, key


def test_everything_that_lists_optimizers_reads_the_registry():
    assert config.OPTIMIZERS == NAMES
    assert {n: s.torch_class for n, s in registry.SPECS.items()} == config.OPTIMIZER_CLASSES
    assert tuple(n for n in NAMES if registry.spec(n).cycles == "beta1") == schedules.USE_BETA1
    assert registry.with_capability("fused") == _fused.KERNELS


def test_a_negative_value_of_a_non_negative_option_is_refused():
    """The registry's ranges are the ones validation applies."""
    for key, option in registry.OPTIONS.items():
        if option.range != ">= 0":
            continue
        name = next(n for n in NAMES if key in registry.spec(n).options)
        with pytest.raises(config.ConfigError, match=key):
            Config(optimizer=name, **{key: -1.0})
