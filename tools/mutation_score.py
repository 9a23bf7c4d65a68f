"""Print the mutation score of the last `mutmut run` (killed / all mutants) and list the survivors."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter


def main() -> int:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True, text=True, check=False
    ).stdout
    status = Counter()
    survivors = []
    for line in out.splitlines():
        name, _, state = line.strip().rpartition(": ")
        if not name:
            continue
        status[state] += 1
        if state in ("survived", "no tests"):
            survivors.append(name)
    total = sum(status.values())
    killed = status["killed"] + status["timeout"]
    print(", ".join(f"{k}: {v}" for k, v in sorted(status.items())))
    if total:
        print(f"mutation score: {killed}/{total} killed = {100 * killed / total:.1f}%")
    for name in survivors:
        print("  survived:", name)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        sys.stderr.close()
        raise SystemExit(0) from None
