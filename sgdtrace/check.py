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
        return {"config": self.config, "device": t.device, "dtype": t.config.dtype, "steps": t.n_steps,
                "ok": t.verdict.ok, "verdict": t.verdict.to_json()}


@dataclass
class CheckResult(CheckNotebook):
    rows: list[CheckRow]

    @property
    def ok(self) -> bool:
        return all(r.trace.verdict.ok for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [r.to_json() for r in self.rows]}


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


def run_checks(paths: list[str], devices: list[str] | tuple[str, ...] | None = None) -> CheckResult:
    from sgdtrace.config import Config
    from sgdtrace.tracing import resolve_device, run_trace

    devices = list(devices or available_devices())
    for name in devices:  # a malformed or missing device is refused before anything runs
        resolve_device(Config(device=name).device)
    configs = []
    for path in paths:  # likewise every file
        values = load_toml(path)
        configs.append((path, build_config(values, {}, path)))
    rows = []
    for path, cfg in configs:
        for device in devices:
            trace = run_trace(cfg.replace(device=device, origin=cfg.origin))
            rows.append(CheckRow(os.path.relpath(path), trace))
    return CheckResult(rows)
