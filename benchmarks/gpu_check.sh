#!/usr/bin/env bash
# The CUDA checks in one go (a few minutes on one GPU): the CUDA tests (no host sync per step,
# verdicts on the device), compare CPU against CUDA, the CI gate on every device, and the GPU
# benchmark (target: sgdtrace run at most 1.2 times the plain torch loop).
# Usage: benchmarks/gpu_check.sh [python]   (default: .venv/bin/python, else python3)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
status=0
step() {
    echo "== $*"
    local t0=$SECONDS
    "$@" || { echo "!! failed: $*"; status=1; }
    echo "   ($((SECONDS - t0)) s)"
}
"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if ok else 'NO CUDA DEVICE'); sys.exit(0 if ok else 3)" \
    || { echo "no CUDA device: nothing to check"; exit 3; }
step timeout 150 "$PY" -m pytest -q -m cuda tests -rs
step timeout 60 "$PY" -m sgdtrace compare --device cpu --device cuda --synthetic 10000 --batch-size 64
step timeout 90 "$PY" -m sgdtrace check
step timeout 200 "$PY" benchmarks/bench.py --device cuda --workloads 100k-b64 --reps 3
exit $status
