"""Benchmark: the learner's plain torch loop against ``sgdtrace run`` on the same workload.

For each workload, measured in the same run, repetitions alternating (a, b, manual; then the
reverse order), each a fresh subprocess:

  (a)     ``learner_loop.py``: the article's loop (DataLoader, nn.Module, MSELoss, optim.SGD),
          no tracing;
  (b)     ``sgdtrace run ... --quiet --output /dev/null``: both engines, the comparison and
          the verdict, the (summarised) table rendered;
  manual  ``manual_only.py``: the manual engine alone.

Printed, each target beside its figure: medians of the whole process's wall time for (a) and
(b) and their ratio (target at most 1.10), and the ratio of their medians of CPU time (user +
system, from ``wait4``: what the process itself spent, which a busy shared machine disturbs less
than the wall clock); the median training-loop time of (a) against the manual engine's (imports
and data excluded from both; in parentheses the speed-up from their CPU time; target at least 10
on D = 16, at least 5 elsewhere); the peak
resident memory of each process (``wait4``'s ru_maxrss) and the ratio (b)/(a) (target at most
1.3); the bytes a traced step holds (``Trace.nbytes`` per step, measured in this process on the
same kind of run) against its limit: twice the bytes of the values recorded (both sides' fields
in the run's dtype) plus the per-step columns of the judge (the step's epoch, batch, n and stable
rate, 32 bytes, and per judged element 50: six 8-byte distances and bounds and two flags). The
load average before and after, since the machine may be shared.

Before timing, sgdtrace's modules are byte-compiled (``compileall``), as an installed package's
are: where ``PYTHONDONTWRITEBYTECODE`` is set and the package is an editable checkout, every (b)
would otherwise compile sgdtrace's source again (about 0.2 s), a cost (a) never pays for torch.

The CSV workloads (``200k-csv-b64``, ``200k-csv-d16-b64``, ``200k-csv-d8-mlp16-b64``) write 200,000
synthetic points to a CSV file once, and (a), (b) and the manual engine each read that file (``--data``): (a) with
``np.loadtxt``, as a learner would, (b) and manual with sgdtrace's reader, so reading the file is
part of the times. ``200k-csv-d16-b64`` is linear regression on D = 16 features (columns
x1..x16, y = 2·(x1 + ... + x16) + 10, made as ``--synthetic 200000 --features 16`` makes them),
``nn.Linear(16, 1)`` in (a), at ``--lr 0.001`` (the batches' Hessians allow up to about 0.002).
``200k-csv-d8-mlp16-b64`` is the network ``--model mlp --hidden 16`` on 200,000 rows of D = 8
features (made the same way, y = 2·(x1 + ... + x8) + 10) at the default ``--lr 0.01``: in (a)
``torch.manual_seed(0)`` then ``nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))``, the
same initial values sgdtrace's torch side draws. Its targets: (b)/(a) at most 1.2; a traced step
at most 64 bytes per parameter element (161 of them) plus what a step holds beside its parameters
(the step's 32 bytes of columns and the loss: its two values and its 50 bytes of judge columns);
and ``--judge step`` at most 1.5 times ``--judge carry``: a fourth command, (b) with ``--judge
step``, timed in the same alternation and printed in its own table.

Then the HTML report (``--format html``): the time :func:`sgdtrace.teaching.report.run_html` takes to
build the page from a finished trace (the run itself excluded), in this process, the first build
(imports included) and the median of the next ones, with the page's size; target under 1 s.

The world-size-4 workloads (``--ddp-workloads ddp4,ddp4-adam``; ``ddp4-adam``: Adam with
ExponentialLR stepped after every step, on both sides): ``ddp_loop.py`` (the DDP loop a learner
writes: 4 spawned processes, gloo, DistributedSampler, DistributedDataParallel) against
``sgdtrace run --world-size 4`` (the same 4 processes, recording, then the hand side and the
judge); medians of whole-process wall time and their ratio (target at most 1.2).

Usage: ``python benchmarks/bench.py [--reps N]
[--workloads article,1m-b64,100k-b1,200k-csv-b64,200k-csv-d16-b64,200k-csv-d8-mlp16-b64]
[--format table] [--html-workloads article,100k-b64] [--optimizer adam]``
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

#: name -> (synthetic N or None for the article's data, batch size, epochs, default repetitions)
WORKLOADS = {
    "article": (None, 3, 1, 5),
    "1m-b64": (1_000_000, 64, 1, 5),
    "100k-b1": (100_000, 1, 1, 3),
    "100k-b64": (100_000, 64, 1, 3),  # the quick one, for benchmarks/gpu_check.sh
    "200k-csv-b64": (200_000, 64, 1, 5),  # the same kind of points, read from a CSV file
    "200k-csv-d16-b64": (200_000, 64, 1, 5),  # D = 16 features, read from a CSV file
    "200k-csv-d8-mlp16-b64": (200_000, 64, 1, 5),  # the network, H = 16 on D = 8, from a CSV file
}
#: workloads whose data are read from a CSV file (written once by :func:`csv_file`)
CSV_WORKLOADS = {"200k-csv-b64", "200k-csv-d16-b64", "200k-csv-d8-mlp16-b64"}
#: workloads on D features (their CSV file's x1..xD)
FEATURES = {"200k-csv-d16-b64": 16, "200k-csv-d8-mlp16-b64": 8}
#: options the three commands of a workload share beyond the data, batch size and epochs
OPTIONS = {"200k-csv-d16-b64": ["--lr", "0.001"], "200k-csv-d8-mlp16-b64": ["--model", "mlp", "--hidden", "16"]}
#: the same options as ``sgdtrace.trace`` takes them (:func:`step_bytes`)
TRACE_OPTIONS = {"200k-csv-d16-b64": {"lr": 0.001}, "200k-csv-d8-mlp16-b64": {"model": "mlp", "hidden": 16}}
#: workloads also timed with ``--judge step`` (against (b), which judges with the default carry)
JUDGE_STEP = {"200k-csv-d8-mlp16-b64"}
DEFAULT = ("article", "1m-b64", "100k-b1", "200k-csv-b64", "200k-csv-d16-b64", "200k-csv-d8-mlp16-b64")

#: the targets, printed beside the figures: (b)/(a) in wall and CPU time at most, the manual
#: engine's speed-up at least, the peak memory ratio at most
TARGET_RATIO = 1.10
TARGET_RATIOS = {"200k-csv-d8-mlp16-b64": 1.2}  # the network's; elsewhere TARGET_RATIO
TARGET_SPEEDUP = {"200k-csv-d16-b64": 10.0}  # on D = 16; elsewhere DEFAULT_SPEEDUP
DEFAULT_SPEEDUP = 5.0
TARGET_MEM = 1.3
#: workloads whose traced step is held to bytes per parameter element (plus the step's columns and
#: the loss's) instead of twice the values plus the judge's columns
TARGET_PARAM_BYTES = {"200k-csv-d8-mlp16-b64": 64}
#: --judge step's time at most this times --judge carry's (wall and CPU)
TARGET_JUDGE_STEP = 1.5


def csv_file(n: int, seed: int = 0, features: int | None = None) -> str:
    """A CSV file of ``n`` points made as ``--synthetic n --seed seed [--features D]`` makes them.

    x is uniform in [0, 10), y = 2x + 10; on D features x is (n, D), each entry uniform in
    [0, 10) (drawn row by row), y = 2·(x1 + ... + xD) + 10, the columns x1..xD, y."""
    import numpy as np

    tag = "" if features is None else f"-d{features}"
    path = os.path.join(tempfile.gettempdir(), f"sgdtrace-bench-{n}-{seed}{tag}.csv")
    if not os.path.exists(path):
        rng = np.random.default_rng(seed)
        if features is None:
            x = rng.uniform(0.0, 10.0, n)
            table, header = np.column_stack([x, 2.0 * x + 10.0]), "x,y"
        else:
            x = rng.uniform(0.0, 10.0, (n, features))
            table = np.column_stack([x, x @ np.full(features, 2.0) + 10.0])
            header = ",".join([f"x{j + 1}" for j in range(features)] + ["y"])
        tmp = path + f".{os.getpid()}"
        np.savetxt(tmp, table, delimiter=",", header=header, comments="", fmt="%.17g")
        os.replace(tmp, path)
    return path


def compile_package() -> None:
    """Byte-compile sgdtrace's modules where they are imported from (an installed package's are)."""
    spec = importlib.util.find_spec("sgdtrace")
    if spec is not None and spec.submodule_search_locations:
        compileall.compile_dir(list(spec.submodule_search_locations)[0], quiet=1)


#: name -> (synthetic N, world size, batch size per rank, epochs, default repetitions)
DDP_WORKLOADS = {"ddp4": (40_000, 4, 10, 1, 3), "ddp4-adam": (40_000, 4, 10, 1, 3)}
#: a workload's optimizer and schedule: (ddp_loop.py's flags, sgdtrace run's flags)
DDP_OPTIONS = {
    "ddp4-adam": (
        ["--optimizer", "adam", "--gamma", "0.9999"],
        ["--optimizer", "adam", "--scheduler", "ExponentialLR"]
        + ["--scheduler-arg", "gamma=0.9999", "--scheduler-arg", "interval=step"],
    )
}


def bench_ddp(name: str, reps: int | None = None) -> dict:
    """The DDP loop with no tracing (a) against ``sgdtrace run --world-size N`` (b), alternating."""
    n, world, batch, epochs, default_reps = DDP_WORKLOADS[name]
    common = ["--synthetic", str(n), "--world-size", str(world), "--batch-size", str(batch), "--epochs", str(epochs)]
    py = sys.executable
    loop_opts, run_opts = DDP_OPTIONS.get(name, ([], []))
    cmds = {
        "a": [py, os.path.join(HERE, "ddp_loop.py")] + common + loop_opts,
        "b": [py, "-m", "sgdtrace", "run"] + common + run_opts + ["--quiet", "--output", os.devnull],
    }
    wall: dict[str, list[float]] = {"a": [], "b": []}
    steps = None
    for rep in range(reps or default_reps):
        for key in ("a", "b") if rep % 2 == 0 else ("b", "a"):
            t, _, _, out = timed_rss(cmds[key])
            wall[key].append(t)
            if key == "a":
                steps = json.loads(out.strip().splitlines()[-1])["steps"]
        print(
            f"  {name} rep {rep + 1}: (a) {wall['a'][-1]:.2f}s  (b) {wall['b'][-1]:.2f}s", file=sys.stderr, flush=True
        )
    med = {k: statistics.median(v) for k, v in wall.items()}
    return {
        "workload": name,
        "world_size": world,
        "steps": steps,
        "reps": len(wall["a"]),
        "a_s": med["a"],
        "b_s": med["b"],
        "ratio": med["b"] / med["a"],
    }


def timed_rss(cmd: list[str]) -> tuple[float, float, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS in MiB from wait4, CPU seconds (user + system), stdout)."""
    r, w = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: stdout into the pipe, stderr discarded
        os.close(r)
        os.dup2(w, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.execv(cmd[0], cmd)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {code}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, b"".join(chunks).decode()


def commands(name: str, fmt: str, device: str, optimizer: str = "sgd") -> dict[str, list[str]]:
    n, batch, epochs, _ = WORKLOADS[name]
    if n is None:
        data = []
    elif name in CSV_WORKLOADS:
        data = ["--data", csv_file(n, features=FEATURES.get(name))]
    else:
        data = ["--synthetic", str(n)]
    common = data + ["--batch-size", str(batch), "--epochs", str(epochs), "--device", device, "--optimizer", optimizer]
    common += OPTIONS.get(name, [])
    py = sys.executable
    run = [py, "-m", "sgdtrace", "run"] + common + ["--quiet", "--format", fmt, "--output", os.devnull]
    cmds = {
        "a": [py, os.path.join(HERE, "learner_loop.py")] + common,
        "b": run,
        "manual": [py, os.path.join(HERE, "manual_only.py")] + common,
    }
    if name in JUDGE_STEP:
        cmds["step"] = run + ["--judge", "step"]
    return cmds


def bench(name: str, reps: int, fmt: str, device: str, optimizer: str = "sgd") -> dict:
    cmds = commands(name, fmt, device, optimizer)
    wall = {k: [] for k in cmds}
    cpu = {k: [] for k in cmds}
    rss = {k: [] for k in cmds}
    loop = {"a": [], "manual": []}
    loop_cpu = {"a": [], "manual": []}
    steps = None
    for rep in range(reps):
        order = list(cmds) if rep % 2 == 0 else list(reversed(cmds))
        for key in order:
            t, m, c, out = timed_rss(cmds[key])
            wall[key].append(t)
            cpu[key].append(c)
            rss[key].append(m)
            if key in loop:
                info = json.loads(out.strip().splitlines()[-1])
                loop[key].append(info["loop_s"])
                loop_cpu[key].append(info["loop_cpu_s"])
                steps = info["steps"]
        step = f"  --judge step {wall['step'][-1]:.2f}s" if "step" in wall else ""
        print(
            f"  {name} rep {rep + 1}/{reps}: (a) {wall['a'][-1]:.2f}s  (b) {wall['b'][-1]:.2f}s  "
            f"manual loop {loop['manual'][-1]:.3f}s{step}",
            file=sys.stderr,
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in wall.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    peak = {k: max(v) for k, v in rss.items()}
    loop_med = {k: statistics.median(v) for k, v in loop.items()}
    loop_cpu_med = {k: statistics.median(v) for k, v in loop_cpu.items()}
    judge_step = {}
    if "step" in med:  # --judge step against (b), which judges with carry
        judge_step = {
            "step_s": med["step"],
            "step_cpu_s": cpu_med["step"],
            "step_ratio": med["step"] / med["b"],
            "step_cpu_ratio": cpu_med["step"] / cpu_med["b"],
            "step_mib": peak["step"],
        }
    return {
        "workload": name,
        "steps": steps,
        "reps": reps,
        "a_s": med["a"],
        "b_s": med["b"],
        "ratio": med["b"] / med["a"],
        "a_cpu_s": cpu_med["a"],
        "b_cpu_s": cpu_med["b"],
        "cpu_ratio": cpu_med["b"] / cpu_med["a"],
        "a_loop_s": loop_med["a"],
        "manual_loop_s": loop_med["manual"],
        "manual_speedup": loop_med["a"] / loop_med["manual"],
        "manual_cpu_speedup": loop_cpu_med["a"] / loop_cpu_med["manual"],
        "a_us_step": 1e6 * loop_med["a"] / steps,
        "manual_us_step": 1e6 * loop_med["manual"] / steps,
        "a_mib": peak["a"],
        "b_mib": peak["b"],
        "mem_ratio": peak["b"] / peak["a"],
        **judge_step,
        **step_bytes(name, optimizer),
    }


def step_bytes(name: str, optimizer: str = "sgd") -> dict:
    """The bytes one traced step holds (``Trace.nbytes`` per step) and its limit, on a short run
    of the workload's kind (the same batch size, features, model, dtype and optimizer; a step's
    columns do not depend on how many steps there are). The limit: twice the values' bytes plus the
    judge's per-step columns; on a workload of :data:`TARGET_PARAM_BYTES`, that many bytes per
    parameter element plus the step's 32 bytes of columns and the loss's (its two values and its 50
    bytes of judge columns)."""
    sys.path.insert(0, os.path.dirname(HERE))
    import sgdtrace

    n, batch, _, _ = WORKLOADS[name]
    kw = {} if n is None else {"synthetic": 50 * batch}
    if name in FEATURES:
        kw.update(features=FEATURES[name])
    kw.update(TRACE_OPTIONS.get(name, {}))
    trace = sgdtrace.trace(batch_size=batch, optimizer=optimizer, **kw)
    steps = trace.n_steps
    values = sum(int(c.nbytes) for side in (trace.manual, trace.torch) for f, c in side.items() if f != "lr")
    elements = sum(int(c.size) for c in trace.manual.values()) // steps  # judged elements per step
    per_step = trace.nbytes / steps
    limit = 2 * values / steps + 32 + 50 * elements
    if name in TARGET_PARAM_BYTES:
        param_elements = sum(int(trace.manual[p][0].size) for p in trace.model.names)
        loss = 2 * trace.manual["loss"].itemsize + 50
        limit = TARGET_PARAM_BYTES[name] * param_elements + 32 + loss
    return {
        "step_bytes": per_step,
        "value_bytes": values / steps,
        "step_limit": limit,
    }


def html_page(name: str, reps: int = 5) -> dict:
    """Build the HTML report of a finished run: the first build and the median of ``reps`` more."""
    sys.path.insert(0, os.path.dirname(HERE))
    import sgdtrace
    from sgdtrace.teaching.report import run_html as run_page

    n, batch, epochs, _ = WORKLOADS[name]
    trace = sgdtrace.trace(batch_size=batch, epochs=epochs, **({} if n is None else {"synthetic": n}))
    start = time.perf_counter()
    page = run_page(trace)
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run_page(trace)
        times.append(time.perf_counter() - start)
    return {
        "workload": name,
        "steps": trace.n_steps,
        "first_s": first,
        "median_s": statistics.median(times),
        "reps": reps,
        "bytes": len(page.encode()),
    }


def html_table(rows: list[dict]) -> str:
    lines = [
        "| workload | steps | first build, ms | median of next, ms | reps | page size, KB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['steps']:,} | {1000 * r['first_s']:.0f} | {1000 * r['median_s']:.0f} | "
            f"{r['reps']} | {r['bytes'] / 1000:.0f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.system()}{gpu}"
    )


def met(ok: bool) -> str:
    return "✓" if ok else "✗"


def table(rows: list[dict]) -> str:
    head = (
        "| workload | steps | reps | (a) torch loop, s | (b) sgdtrace run, s | "
        f"(b)/(a) ≤ {TARGET_RATIO:.2f} | (b)/(a) CPU ≤ {TARGET_RATIO:.2f} | "
        "(a) loop µs/step | manual µs/step | manual speed-up (CPU) ≥ target | "
        f"peak (a) MiB | peak (b) MiB | (b)/(a) mem ≤ {TARGET_MEM} | bytes/step ≤ limit |"
    )
    lines = [head, "|" + "|".join(["---:"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        speedup = TARGET_SPEEDUP.get(r["workload"], DEFAULT_SPEEDUP)
        target = TARGET_RATIOS.get(r["workload"], TARGET_RATIO)
        own = "" if target == TARGET_RATIO else f" ≤ {target:.2f}"  # a workload's own target, beside its figure
        lines.append(
            f"| {r['workload']} | {r['steps']:,} | {r['reps']} | {r['a_s']:.2f} | {r['b_s']:.2f} | "
            f"{r['ratio']:.3f}{own} {met(r['ratio'] <= target)} | "
            f"{r['cpu_ratio']:.3f}{own} {met(r['cpu_ratio'] <= target)} | "
            f"{r['a_us_step']:.1f} | {r['manual_us_step']:.1f} | "
            f"{r['manual_speedup']:.1f}× ({r['manual_cpu_speedup']:.1f}×) ≥ {speedup:.0f}× "
            f"{met(min(r['manual_speedup'], r['manual_cpu_speedup']) >= speedup)} | "
            f"{r['a_mib']:.0f} | {r['b_mib']:.0f} | {r['mem_ratio']:.2f} {met(r['mem_ratio'] <= TARGET_MEM)} | "
            f"{r['step_bytes']:.0f} ≤ {r['step_limit']:.0f} {met(r['step_bytes'] <= r['step_limit'])} |"
        )
    return "\n".join(lines)


def judge_step_table(rows: list[dict]) -> str:
    """``--judge step`` against ``--judge carry`` ((b)) on the workloads of :data:`JUDGE_STEP`."""
    t = TARGET_JUDGE_STEP
    lines = [
        "| workload | steps | reps | --judge carry, s | --judge step, s | "
        f"step/carry ≤ {t} | step/carry CPU ≤ {t} | peak step MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['steps']:,} | {r['reps']} | {r['b_s']:.2f} | {r['step_s']:.2f} | "
            f"{r['step_ratio']:.3f} {met(r['step_ratio'] <= t)} | "
            f"{r['step_cpu_ratio']:.3f} {met(r['step_cpu_ratio'] <= t)} | {r['step_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=None, help="repetitions per workload (default 5; 3 for 100k-b1)")
    parser.add_argument("--workloads", default=",".join(DEFAULT), help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument(
        "--format",
        default="table",
        choices=["table", "json", "csv", "markdown"],
        help="sgdtrace run's output format in (b) (written to /dev/null)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where (a), (b) and the manual engine run")
    parser.add_argument(
        "--optimizer",
        default="sgd",
        choices=["sgd", "adam", "adamw", "rmsprop", "adagrad"],
        help="the optimizer of all three (torch.optim's class in (a))",
    )
    parser.add_argument("--json", dest="json_out", default=None, help="also write the results as JSON here")
    parser.add_argument(
        "--ddp-workloads", default="ddp4", help="world-size workloads (empty: none): " + ", ".join(DDP_WORKLOADS)
    )
    parser.add_argument(
        "--html-workloads", default="article,100k-b64", help="workloads whose HTML report build is timed (empty: none)"
    )
    args = parser.parse_args()
    compile_package()
    load_before = os.getloadavg()
    rows = []
    for name in filter(None, args.workloads.split(",")):
        if name not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}: choose from {', '.join(WORKLOADS)}")
        rows.append(bench(name, args.reps or WORKLOADS[name][3], args.format, args.device, args.optimizer))
    load_after = os.getloadavg()
    print(
        f"Machine: {machine()}; --device {args.device}; --optimizer {args.optimizer}; "
        f"(b) writes --format {args.format}; "
        "medians of wall time per process; "
        f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after.\n"
    )
    print(table(rows))
    step_rows = [r for r in rows if "step_s" in r]
    if step_rows:
        print("\n--judge step against --judge carry ((b)), the same workload in the same run.\n")
        print(judge_step_table(step_rows))
    ddp_rows = [bench_ddp(name, args.reps) for name in args.ddp_workloads.split(",") if name]
    if ddp_rows:
        print(
            "\nData-parallel: the DDP loop with no tracing (a) against sgdtrace run --world-size N (b), "
            "the same processes (target (b)/(a) <= 1.2).\n"
        )
        print("| workload | world size | steps | reps | (a) DDP loop, s | (b) sgdtrace run, s | (b)/(a) |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in ddp_rows:
            print(
                f"| {r['workload']} | {r['world_size']} | {r['steps']:,} | {r['reps']} | {r['a_s']:.2f} | "
                f"{r['b_s']:.2f} | {r['ratio']:.3f} |"
            )
    pages = [html_page(name) for name in args.html_workloads.split(",") if name]
    if pages:
        print("\nThe HTML report (--format html): building the page from the finished run (target < 1 s).\n")
        print(html_table(pages))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(
                {
                    "machine": machine(),
                    "device": args.device,
                    "format": args.format,
                    "rows": rows,
                    "html": pages,
                    "ddp": ddp_rows,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
