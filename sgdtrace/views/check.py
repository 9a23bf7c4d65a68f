"""The ``check`` view: one row per config and device, and the gate's verdict."""

from __future__ import annotations

import os

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from sgdtrace.views.fmt import field_label, percent


def _row(r) -> list[str]:
    t = r.trace
    v = t.verdict
    if v.ok:
        status = "ok"
    else:
        f = v.first_divergent_step
        status = f"DIVERGE at {f['epoch']}:{f['batch']} {field_label(f['field'])}"
    if v.diverged_training:
        status += " (blew up)"
    return [
        os.path.basename(r.config),
        t.device,
        t.config.dtype,
        str(t.n_steps),
        str(v.max_ulp),
        percent(v.max_tol_ratio),
        status,
    ]


HEAD = ["config", "device", "dtype", "steps", "max ulp", "of tol", "verdict"]


def check_view(result, width: int | None = None) -> Group:
    """The gate's table, fitted to ``width`` columns (the terminal's) where it can: the columns one
    space apart instead of two when the wider table would not fit, then the verdicts wrapped. A
    config's name is never cut."""
    table = _check_table(result, gap=1)
    if width is not None:
        from rich.console import Console
        from rich.measure import Measurement

        console = Console(width=10_000, color_system=None, force_jupyter=False)
        if Measurement.get(console, console.options, table).maximum > width:
            table = _check_table(result, gap=0)
    failed = sum(1 for r in result.rows if not r.trace.verdict.ok)
    n = len(result.rows)
    summary = (
        Text("✓ 1 run agrees" if n == 1 else f"✓ {n} runs agree", style="bold green")
        if result.ok
        else Text(f"✗ {failed} of {n} run{'s' if n != 1 else ''} diverge{'s' if failed == 1 else ''}", style="bold red")
    )
    parts = [table, Text(""), summary]
    if result.skipped:
        n = len(result.skipped)
        parts.append(Text(f"skipped {n} config{'s' if n != 1 else ''} the engine cannot serve:", style="dim"))
        groups: dict[str, list[str]] = {}
        for s in result.skipped:  # "optimizer adam: your engine's update runs plain SGD", grouped by the why
            why = s.reason.partition(": ")[2]
            groups.setdefault(why, []).append(os.path.basename(s.config))
        parts += [Text(f"  {why}: {', '.join(names)}", style="dim") for why, names in groups.items()]
    return Group(*parts)


def _check_table(result, gap: int) -> Table:
    side = result.rows[0].trace.hand if result.rows and result.rows[0].trace.engine is not None else "manual engine"
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, gap, 0, 0),
        show_edge=False,
        title=f"sgdtrace check: {side} vs torch on every config",
        title_justify="left",
        title_style="bold",
    )
    # a config's name is never cut: its column is as wide as the longest name; where the terminal
    # is narrower still, the other cells wrap (never with "…")
    longest = max((len(_row(r)[0]) for r in result.rows), default=len(HEAD[0]))
    for name in HEAD:
        table.add_column(
            name,
            justify="right" if name in ("steps", "max ulp", "of tol") else "left",
            no_wrap=name == "config",
            min_width=longest if name == "config" else None,
            overflow="fold",
        )
    for r in result.rows:
        cells = _row(r)
        style = "green" if r.trace.verdict.ok else "bold red"
        table.add_row(*cells[:-1], Text(cells[-1], style=style))
    return table


def check_markdown(result) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "|".join("---" for _ in HEAD) + "|"]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in result.rows]
    skipped = getattr(result, "skipped", ())
    if skipped:
        lines += ["", f"Skipped ({len(skipped)}):", ""] + [f"- `{s.config}`: {s.reason}" for s in skipped]
    return "\n".join(lines) + "\n"


def check_junit(result) -> str:
    """JUnit XML as pytest's ``--junitxml`` writes it (testsuites/testsuite/testcase/failure): one test
    case per config and device, the verdict's sentence as the failure's message. GitHub, GitLab and
    Jenkins show it as a test report."""
    import xml.etree.ElementTree as ET

    from sgdtrace.views.export import verdict_sentence

    rows = result.rows
    devices = getattr(result, "devices", ()) or ("cpu",)
    skipped = [(s, d) for s in getattr(result, "skipped", ()) for d in devices]  # one case per device, as run
    failures = sum(1 for r in rows if not r.trace.verdict.ok)
    tests, seconds = str(len(rows) + len(skipped)), f"{sum(r.seconds for r in rows):.3f}"
    root = ET.Element(
        "testsuites",
        name="sgdtrace check",
        tests=tests,
        failures=str(failures),
        errors="0",
        skipped=str(len(skipped)),
        time=seconds,
    )
    suite = ET.SubElement(
        root,
        "testsuite",
        name="sgdtrace check",
        tests=tests,
        failures=str(failures),
        errors="0",
        skipped=str(len(skipped)),
        time=seconds,
    )
    for r in rows:
        t = r.trace
        name = os.path.splitext(os.path.basename(r.config))[0]
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"sgdtrace.check.{name}",
            name=f"{name}[{t.device}-{t.config.dtype}]",
            file=r.config,
            time=f"{r.seconds:.3f}",
        )
        if t.engine is not None:
            ET.SubElement(ET.SubElement(case, "properties"), "property", name="engine", value=t.engine.path)
        sentence = verdict_sentence(t)
        if not t.verdict.ok:
            failure = ET.SubElement(case, "failure", message=sentence, type="divergence")
            failure.text = sentence
        else:
            ET.SubElement(case, "system-out").text = sentence
    for s, device in skipped:  # the configs the engine cannot serve: skipped, with the reason
        name = os.path.splitext(os.path.basename(s.config))[0]
        case = ET.SubElement(
            suite, "testcase", classname=f"sgdtrace.check.{name}", name=f"{name}[{device}]", file=s.config, time="0"
        )
        ET.SubElement(case, "skipped", message=s.reason, type="unserved")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
