"""``sgdtrace check``: every config on every available device; the CI gate."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sgdtrace.config import build_config, load_toml
from sgdtrace.notebook import CheckNotebook


@dataclass
class CheckRow:
    config: str
    trace: Any  # Trace

    def to_json(self) -> dict[str, Any]:
        t = self.trace
        return {
            "config": self.config,
            "device": t.device,
            "dtype": t.config.dtype,
            "steps": t.n_steps,
            "ok": t.verdict.ok,
            "verdict": t.verdict.to_json(),
        }


@dataclass
class CheckResult(CheckNotebook):
    rows: list[CheckRow]

    @property
    def ok(self) -> bool:
        return all(r.trace.verdict.ok for r in self.rows)

    @property
    def environment(self) -> dict[str, Any]:
        """The machine the gate ran on (:func:`sgdtrace.probe.environment`)."""
        from sgdtrace.probe import environment

        return environment()

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [r.to_json() for r in self.rows], "environment": self.environment}


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


def serves(cfg) -> bool:
    """Can a user's engine (--engine) run this config: its optimizer (SGD) at a constant rate, one
    process, float32/float64."""
    return (
        getattr(cfg, "optimizer", "sgd") == "sgd"
        and getattr(cfg, "scheduler", None) is None
        and getattr(cfg, "world_size", 1) == 1
        and cfg.dtype in ("float32", "float64")
    )


def run_checks(
    paths: list[str],
    devices: list[str] | tuple[str, ...] | None = None,
    engine: dict[str, Any] | None = None,
    named: bool = True,
) -> CheckResult:
    """Every config on every device. ``engine``: ``{"engine": FILE.py, "engine_timeout": s}`` puts a
    user's engine on the hand side; then, unless the configs were ``named``, only those it can serve run."""
    from sgdtrace.config import Config
    from sgdtrace.tracing import resolve_device, run_trace

    devices = list(devices or available_devices())
    for name in devices:  # a malformed or missing device is refused before anything runs
        resolve_device(Config(device=name).device)
    configs = []
    for path in paths:  # likewise every file
        values = load_toml(path)
        cfg = build_config(values, {}, path)
        if engine:
            if engine.get("engine") and not named and not serves(cfg):
                continue
            cfg = build_config(values, engine, path)  # a named config it cannot serve is refused
        configs.append((path, cfg))
    rows = []
    for path, cfg in configs:
        for device in devices:
            trace = run_trace(cfg.replace(device=device, origin=cfg.origin))
            rows.append(CheckRow(os.path.relpath(path), trace))
    return CheckResult(rows)
