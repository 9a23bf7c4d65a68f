"""``sgdtrace check``: every config on every available device; the CI gate.

The gate's configs ship inside the package (:data:`CONFIGS`, ``sgdtrace/configs/``), so
``sgdtrace check`` runs them from any folder.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from sgdtrace.config import build_config, load_toml
from sgdtrace.notebook import CheckNotebook

#: the folder of the gate's configs, shipped as package data
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def config_name(path: str) -> str:
    """A config as the reports name it: a shipped one relative to the package (``configs/article.toml``,
    wherever sgdtrace runs), another relative to the working folder when inside it, else in full."""
    path = os.path.abspath(path)
    for base in (os.path.dirname(CONFIGS), os.getcwd()):
        rel = os.path.relpath(path, base)
        inside = rel != os.pardir and not rel.startswith(os.pardir + os.sep)
        if inside and (base == os.getcwd() or rel.startswith("configs" + os.sep)):
            return rel
    return path


@dataclass
class CheckRow:
    config: str
    trace: Any  # Trace
    seconds: float = 0.0  # the run's real time (the JUnit report's ``time``)

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
class Skipped:
    """A config left out: a user's engine cannot serve it (``reason`` says why)."""

    config: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "reason": self.reason}


@dataclass
class CheckResult(CheckNotebook):
    rows: list[CheckRow]
    skipped: list[Skipped] = field(default_factory=list)
    devices: tuple[str, ...] = ("cpu",)

    @property
    def ok(self) -> bool:
        return all(r.trace.verdict.ok for r in self.rows)

    @property
    def environment(self) -> dict[str, Any]:
        """The machine the gate ran on (:func:`sgdtrace.probe.environment`)."""
        from sgdtrace.probe import environment

        return environment()

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [r.to_json() for r in self.rows],
            "skipped": [s.to_json() for s in self.skipped],
            "environment": self.environment,
        }


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


def unserved(cfg, engine: str | None = None) -> str | None:
    """Why a user's engine (--engine FILE.py) cannot run this config, or None when it can (in one
    process or data-parallel: its gradients on every rank): what the file says (its ``SGDTRACE``
    declaration, :mod:`sgdtrace.engines.declared`); without one, a file with ``update`` serves SGD."""
    from sgdtrace.engines import declared

    found = declared.read(engine) if engine else declared.Declared()
    return declared.unserved(found, cfg)


def serves(cfg, engine: str | None = None) -> bool:
    """Can a user's engine (--engine) run this config (:func:`unserved`)."""
    return unserved(cfg, engine) is None


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
    skipped = []
    for path in paths:  # likewise every file
        values = load_toml(path)
        cfg = build_config(values, {}, path)
        if engine:
            why = unserved(cfg, engine.get("engine")) if engine.get("engine") and not named else None
            if why is not None:
                skipped.append(Skipped(config_name(path), why))
                continue
            cfg = build_config(values, engine, path)  # a named config it cannot serve is refused
        configs.append((path, cfg))
    rows = []
    for path, cfg in configs:
        for device in devices:
            start = time.perf_counter()
            trace = run_trace(cfg.replace(device=device, origin=cfg.origin))
            rows.append(CheckRow(config_name(path), trace, time.perf_counter() - start))
    return CheckResult(rows, skipped, tuple(devices))
