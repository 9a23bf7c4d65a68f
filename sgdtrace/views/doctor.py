"""The ``doctor`` view: this machine (versions, CPU, CUDA's settings), its measured kernel rules (on
the CPU, and sqrt and the functions on the CUDA device where there is one) and which of sgdtrace's
bit-for-bit claims hold here. Renders :func:`sgdtrace.probe.environment`'s dict."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from sgdtrace.views.export import to_json_text

DTYPES = ("float32", "float64", "bfloat16", "float16")
FUNCTIONS = ("exp", "log", "tanh", "sigmoid")


def _pct(share: float | None) -> str:
    if share is None:
        return "–"
    text = f"{100 * share:.1f}%"
    return text.replace(".0%", "%")


def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False)


def _section(title: str, body, inputs: str | None = None) -> Group:
    """A titled block: the title in bold, the table, the inputs it was measured on."""
    parts = [Text(title, style="bold"), body]
    if inputs:
        parts.append(Text(f"inputs: {inputs}", style="dim"))
    return Group(*parts)


def _machine(env: dict[str, Any]) -> Table:
    cpu = env["cpu"]
    t = Table(box=None, show_header=False, padding=(0, 1, 0, 0))
    t.add_column(style="bold")
    t.add_column()
    versions = f"sgdtrace {env['sgdtrace']} · torch {env['torch']} · NumPy {env['numpy']} · Python {env['python']}"
    t.add_row("versions", versions)
    threads = f"{cpu['threads']} thread{'s' if cpu['threads'] != 1 else ''}"
    t.add_row(
        "cpu",
        f"{cpu['model']} ({cpu['machine']}) · capability {cpu['capability']} · {threads}"
        + (" · MKL" if cpu["mkl"] else ""),
    )
    t.add_row(
        "",
        f"float32 matmul precision {env['float32_matmul_precision']} · deterministic algorithms "
        + ("on" if env["deterministic_algorithms"] else "off"),
    )
    cuda = env["cuda"]
    if cuda is None:
        t.add_row("cuda", "no CUDA device")
    else:
        t.add_row("cuda", f"{', '.join(cuda['devices'])} · CUDA {cuda['version']}")
        t.add_row(
            "",
            f"TF32 matmul {'on' if cuda['tf32_matmul'] else 'off'} · "
            f"TF32 cuDNN {'on' if cuda['tf32_cudnn'] else 'off'}",
        )
    return t


def _sqrt(rules: dict[str, Any]) -> Group:
    sq = rules["sqrt"]
    t = _table()
    t.add_column("dtype")
    for head in ("one-element: off", "max ulp", "vector: off", "max ulp"):
        t.add_column(head, justify="right")
    for d in DTYPES:
        one, vec = sq[d]["one"], sq[d]["vector"]
        t.add_row(d, _pct(one["off_share"]), str(one["max_ulp"]), _pct(vec["off_share"]), str(vec["max_ulp"]))
    return _section("torch's sqrt: results not correctly rounded, and the largest distance", t, sq["inputs"])


def _functions(rules: dict[str, Any]) -> Group:
    fn = rules["functions"]
    inputs = "; ".join(f"{f}: {fn[f]['inputs']}" for f in FUNCTIONS)
    t = _table()
    t.add_column("dtype")
    for f in FUNCTIONS:
        t.add_column(f, justify="right")
    for d in DTYPES:
        t.add_row(d, *(f"{fn[f][d]['one']['max_ulp']} / {fn[f][d]['vector']['max_ulp']}" for f in FUNCTIONS))
    return _section("exp, log, tanh, sigmoid: max ulp from the correctly rounded value (one / vector)", t, inputs)


def _ulp(value: int | None) -> str:
    return "–" if value is None else str(value)


def _cuda(rules: dict[str, Any]) -> Group | Text:
    """sqrt and the functions with the kernels run on the CUDA device, on the CPU's inputs."""
    cuda = rules.get("cuda")
    if cuda is None:
        return Text("sqrt, exp, log, tanh, sigmoid on CUDA: no CUDA device", style="bold")
    t = _table()
    t.add_column("kernel")
    t.add_column("dtype")
    for head in ("one-element: off", "max ulp", "vector: off", "max ulp"):
        t.add_column(head, justify="right")
    kernels = {"sqrt": cuda["sqrt"], **{f: cuda["functions"][f] for f in FUNCTIONS}}
    for name, rule in kernels.items():
        for i, d in enumerate(DTYPES):
            one, vec = rule[d]["one"], rule[d]["vector"]
            t.add_row(
                name if i == 0 else "",
                d,
                _pct(one["off_share"]),
                _ulp(one["max_ulp"]),
                _pct(vec["off_share"]),
                _ulp(vec["max_ulp"]),
            )
    return _section(
        f"on CUDA ({cuda['device']}): results not correctly rounded, and the largest distance",
        t,
        "the CPU's above, the same values",
    )


def _kernels(rules: dict[str, Any]) -> Group:
    kern = rules["kernels"]
    t = _table()
    t.add_column("kernel")
    t.add_column("float32")
    t.add_column("float64")
    for op in kern["float32"]:
        t.add_row(op, kern["float32"][op]["rule"], kern["float64"][op]["rule"])
    add16 = rules["add_16bit"]
    chunks = "; ".join(f"{d}: {add16[d]['rule']}" for d in ("bfloat16", "float16"))
    return Group(
        _section("one-element kernels: how each rounds (fma: once; textbook: each operation)", t, kern["inputs"]),
        Text(f"16-bit add_(alpha=) on vectors: {chunks}"),
    )


def _updated(rows: list[dict[str, Any]]) -> str:
    stuck = [r["dtype"] for r in rows if r.get("vector_updated_share") is not None and r["vector_updated_share"] < 0.5]
    return "not in " + ", ".join(stuck) if stuck else "updated"


def _optimizers(rules: dict[str, Any]) -> Group:
    opt = rules["optimizers"]
    rows, n = opt["results"], opt["cases"]
    t = _table()
    t.add_column("optimizer")
    t.add_column("impl")
    for d in DTYPES:
        t.add_column(d, justify="right")
    t.add_column("64-element")
    seen = set()
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["optimizer"], r["impl"]), []).append(r)
    for (name, impl), group in groups.items():
        by = {r["dtype"]: r for r in group}
        cells = [_pct(by[d]["match_share"]) if by.get(d, {}).get("available") else "–" for d in DTYPES]
        t.add_row("" if name in seen else name, impl, *cells, _updated([r for r in group if r.get("available")]))
        seen.add(name)
    return _section(
        f"torch.optim vs the hand update: share of {n} one-element cases bit-identical",
        t,
        opt["inputs"]
        + "; "
        + "; ".join(f"{k}: {_options(v)}" for k, v in opt["options"].items())
        + "; 64-element: whether one step stores a 64-element parameter",
    )


def _options(opts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in opts.items())


def _claims(env: dict[str, Any]) -> Group:
    t = Table(box=None, show_header=False, padding=(0, 1, 0, 0))
    t.add_column(no_wrap=True)
    t.add_column()
    for c in env["claims"]:
        mark = Text("✓", style="bold green") if c["holds"] else Text("✗", style="bold red")
        t.add_row(mark, Text(c["claim"]))
        t.add_row("", Text(c["why"], style="dim"))
    held = sum(c["holds"] for c in env["claims"])
    return _section(f"sgdtrace's claims on this machine: {held} of {len(env['claims'])} hold", t)


def _home(path: str) -> str:
    """A path under the home folder written from ``~``."""
    home = str(Path.home())
    return "~" + path[len(home) :] if home not in ("", "/") and path.startswith(home + os.sep) else path


def _cache(env: dict[str, Any]) -> Text:
    cache = env["cache"]
    probe = env.get("probe")
    how = ""
    if probe is not None:
        how = "read from the cache" if probe["from_cache"] else f"measured now in {probe['seconds']:.1f} s"
    where = _home(cache["path"])
    text = f"rules cached in {where}" if cache["written"] else f"rules not cached in {where}: {cache['error']}"
    if how:
        text += f" ({how}; --refresh measures again)"
    return Text(text)


def doctor_view(env: dict[str, Any]) -> Group:
    """The whole report: the machine, each measured rule, the claims, the cache."""
    rules = env["rules"]
    blank = Text("")
    return Group(
        Text("sgdtrace doctor: this machine's kernel rules, and which claims hold here", style="bold"),
        _machine(env),
        blank,
        _sqrt(rules),
        blank,
        _functions(rules),
        blank,
        _cuda(rules),
        blank,
        _kernels(rules),
        blank,
        _optimizers(rules),
        blank,
        _claims(env),
        blank,
        _cache(env),
    )


def doctor_json(env: dict[str, Any]) -> str:
    """``doctor --format json``: the environment as every JSON output carries it (and how it was read)."""
    return to_json_text(env)
