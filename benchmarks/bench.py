"""Benchmark: the learner's plain torch loop against ``sgdtrace run`` on the same workload.

For each workload, measured in the same run, repetitions alternating (a, b, manual; then the
reverse order), each a fresh subprocess:

  (a)     ``learner_loop.py``: the article's loop (DataLoader, nn.Module, MSELoss, optim.SGD),
          no tracing;
  (b)     ``sgdtrace run ... --quiet --output /dev/null``: both engines, the comparison and
          the verdict, the (summarised) table rendered;
  manual  ``manual_only.py``: the manual engine alone.

Printed: medians of the whole process's wall time for (a) and (b) and their ratio; the median
training-loop time of (a) against the manual engine's (imports and data excluded from both);
the peak resident memory of each process (``wait4``'s ru_maxrss) and the ratio (b)/(a).

Usage: ``python benchmarks/bench.py [--reps N] [--workloads article,1m-b64,100k-b1] [--format table]
[--optimizer adam]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

#: name -> (synthetic N or None for the article's data, batch size, epochs, default repetitions)
WORKLOADS = {
    "article": (None, 3, 1, 5),
    "1m-b64": (1_000_000, 64, 1, 5),
    "100k-b1": (100_000, 1, 1, 3),
    "100k-b64": (100_000, 64, 1, 3),  # the quick one, for benchmarks/gpu_check.sh
}
DEFAULT = ("article", "1m-b64", "100k-b1")


def timed_rss(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS in MiB from wait4, stdout)."""
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
    return wall, usage.ru_maxrss / 1024, b"".join(chunks).decode()


def commands(name: str, fmt: str, device: str, optimizer: str = "sgd") -> dict[str, list[str]]:
    n, batch, epochs, _ = WORKLOADS[name]
    data = [] if n is None else ["--synthetic", str(n)]
    common = data + ["--batch-size", str(batch), "--epochs", str(epochs), "--device", device,
                     "--optimizer", optimizer]
    py = sys.executable
    return {
        "a": [py, os.path.join(HERE, "learner_loop.py")] + common,
        "b": [py, "-m", "sgdtrace", "run"] + common + ["--quiet", "--format", fmt, "--output", os.devnull],
        "manual": [py, os.path.join(HERE, "manual_only.py")] + common,
    }


def bench(name: str, reps: int, fmt: str, device: str, optimizer: str = "sgd") -> dict:
    cmds = commands(name, fmt, device, optimizer)
    wall = {k: [] for k in cmds}
    rss = {k: [] for k in cmds}
    loop = {"a": [], "manual": []}
    steps = None
    for rep in range(reps):
        order = list(cmds) if rep % 2 == 0 else list(reversed(cmds))
        for key in order:
            t, m, out = timed_rss(cmds[key])
            wall[key].append(t)
            rss[key].append(m)
            if key in loop:
                info = json.loads(out.strip().splitlines()[-1])
                loop[key].append(info["loop_s"])
                steps = info["steps"]
        print(f"  {name} rep {rep + 1}/{reps}: (a) {wall['a'][-1]:.2f}s  (b) {wall['b'][-1]:.2f}s  "
              f"manual loop {loop['manual'][-1]:.3f}s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in wall.items()}
    peak = {k: max(v) for k, v in rss.items()}
    loop_med = {k: statistics.median(v) for k, v in loop.items()}
    return {
        "workload": name, "steps": steps, "reps": reps,
        "a_s": med["a"], "b_s": med["b"], "ratio": med["b"] / med["a"],
        "a_loop_s": loop_med["a"], "manual_loop_s": loop_med["manual"],
        "manual_speedup": loop_med["a"] / loop_med["manual"],
        "a_us_step": 1e6 * loop_med["a"] / steps, "manual_us_step": 1e6 * loop_med["manual"] / steps,
        "a_mib": peak["a"], "b_mib": peak["b"], "mem_ratio": peak["b"] / peak["a"],
    }


def machine() -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()}{gpu}")


def table(rows: list[dict]) -> str:
    head = ("| workload | steps | reps | (a) torch loop, s | (b) sgdtrace run, s | (b)/(a) | "
            "(a) loop µs/step | manual µs/step | manual speed-up | peak (a) MiB | peak (b) MiB | (b)/(a) mem |")
    lines = [head, "|" + "|".join(["---:"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['steps']:,} | {r['reps']} | {r['a_s']:.2f} | {r['b_s']:.2f} | "
                     f"{r['ratio']:.3f} | {r['a_us_step']:.1f} | {r['manual_us_step']:.1f} | "
                     f"{r['manual_speedup']:.1f}× | {r['a_mib']:.0f} | {r['b_mib']:.0f} | {r['mem_ratio']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=None, help="repetitions per workload (default 5; 3 for 100k-b1)")
    parser.add_argument("--workloads", default=",".join(DEFAULT), help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--format", default="table", choices=["table", "json", "csv", "markdown"],
                        help="sgdtrace run's output format in (b) (written to /dev/null)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where (a), (b) and the manual engine run")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw", "rmsprop", "adagrad"],
                        help="the optimizer of all three (torch.optim's class in (a))")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    rows = []
    for name in args.workloads.split(","):
        if name not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}: choose from {', '.join(WORKLOADS)}")
        rows.append(bench(name, args.reps or WORKLOADS[name][3], args.format, args.device, args.optimizer))
    print(f"Machine: {machine()}; --device {args.device}; --optimizer {args.optimizer}; (b) writes --format {args.format}; "
          "medians of wall time per process.\n")
    print(table(rows))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"machine": machine(), "device": args.device, "format": args.format, "rows": rows},
                      fh, indent=2)


if __name__ == "__main__":
    main()
