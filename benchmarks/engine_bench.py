"""Benchmark: judging a user's engine against judging sgdtrace's own hand engine on the same run.

Whole-process wall time of ``sgdtrace run ... --quiet --output /dev/null`` (medians over
alternating repetitions, each a fresh process), for: sgdtrace's own hand engine; ``--engine
FILE.py`` (docs/examples/engine_correct.py: both parts in NumPy, in a child process); and
``--engine-cmd`` (docs/examples/engine_cmd.py: both parts in plain Python over JSON lines). The
targets: a Python file at most 2x the hand engine, a command at most 3x.

Usage: ``python benchmarks/engine_bench.py [--reps N] [--synthetic N] [--batch-size B]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SGDTRACE = os.path.join(os.path.dirname(sys.executable), "sgdtrace")


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([SGDTRACE, "run", *args, "--quiet", "--output", os.devnull], check=False, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--synthetic", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--momentum", type=float, default=0.9)
    opts = parser.parse_args()
    run = ["--synthetic", str(opts.synthetic), "--batch-size", str(opts.batch_size), "--momentum", str(opts.momentum)]
    sides = {
        "hand engine": [],
        "--engine FILE.py": ["--engine", os.path.join(ROOT, "docs", "examples", "engine_correct.py")],
        "--engine-cmd": ["--engine-cmd", f"{sys.executable} {os.path.join(ROOT, 'docs', 'examples', 'engine_cmd.py')}"],
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(opts.reps):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for k in order:
            times[k].append(timed(run + sides[k]))
    steps = -(-opts.synthetic // opts.batch_size)
    hand = statistics.median(times["hand engine"])
    print(f"{steps} steps (synthetic {opts.synthetic}, batch size {opts.batch_size}), medians of {opts.reps}:")
    for k, t in times.items():
        m = statistics.median(t)
        target = {"--engine FILE.py": " (target <= 2x)", "--engine-cmd": " (target <= 3x)"}.get(k, "")
        print(f"  {k:18s} {m:6.2f} s   {m / hand:4.2f}x the hand engine{target}")


if __name__ == "__main__":
    main()
