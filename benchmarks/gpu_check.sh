#!/usr/bin/env bash
# The CUDA checks in one go, under 300 s on one GPU, so that two runs fit in a 15-minute lease:
#   0. sgdtrace doctor, measured afresh: torch's sqrt, exp, log, tanh, sigmoid on the GPU;
#   1. the CUDA-marked tests (no host sync per step, verdicts on the device, the 16-bit rules);
#   2. torch on the CPU against torch on CUDA (compare), on the article and on a long run;
#   3. the CI gate on every config with --device cuda: SGD and its options, Adam, AdamW, RMSprop,
#      Adagrad, every schedule, bfloat16 and float16;
#   4. compare across dtypes on CUDA, an HTML report of a CUDA run, --engine beside CUDA torch;
#   5. DDP: a world size above the GPU count must be refused (exit 2) before any process starts;
#      with two GPUs or more, DDP on nccl (Adam with a schedule; the network under --judge step);
#   6. the models on CUDA: linear regression on D features (bfloat16 too), logistic regression
#      (both losses), the network (relu, tanh, sigmoid; Adam with a schedule), each judged;
#      --judge step; a user's engine for Adam, for logistic regression and for the network's
#      backward pass; sgdtrace grade (the sample assignment, a correct submission);
#   7. the GPU benchmark (target: sgdtrace run at most 1.2 times the plain torch loop).
# Every command's output lands in $OUT (or ./gpu_check_out), one file each, for the docs.
# Usage: benchmarks/gpu_check.sh [python]   (default: .venv/bin/python, else python3)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEST=${OUT:-gpu_check_out}
mkdir -p "$DEST"
status=0
step() {  # step NAME EXPECTED_RC LIMIT_S COMMAND...
    local name=$1 want=$2 limit=$3; shift 3
    echo "== $name: $*"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$DEST/$name.txt" 2>&1
    local rc=$?
    tail -n 25 "$DEST/$name.txt"
    if [ "$rc" != "$want" ]; then echo "!! $name: exit $rc, expected $want"; status=1; fi
    echo "   ($((SECONDS - t0)) s, exit $rc)"
}
"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if ok else 'NO CUDA DEVICE'); sys.exit(0 if ok else 3)" \
    | tee "$DEST/device.txt" || { echo "no CUDA device: nothing to check"; exit 3; }
step doctor-cuda 0 60 "$PY" -m sgdtrace doctor --refresh
step cuda-tests 0 100 "$PY" -m pytest -q -m cuda tests -rs -p no:cacheprovider
step compare-article 0 30 "$PY" -m sgdtrace compare --device cpu --device cuda
step compare-long 0 40 "$PY" -m sgdtrace compare --device cpu --device cuda --synthetic 10000 --batch-size 64 --epochs 3
step compare-dtypes 0 30 "$PY" -m sgdtrace compare --device cuda --dtype float32 --dtype bfloat16 --epochs 30
step check-cuda 0 70 "$PY" -m sgdtrace check --device cuda
step html-cuda 0 20 "$PY" -m sgdtrace run --device cuda --epochs 30 --format html --output "$DEST/report-cuda.html"
step engine-cuda 0 20 "$PY" -m sgdtrace run --device cuda --engine docs/examples/engine_correct.py --momentum 0.9
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
step ddp-refused 2 20 "$PY" -m sgdtrace run --device cuda --world-size "$((GPUS + 1))"
if [ "$GPUS" -ge 2 ]; then  # DDP on nccl, one process per GPU: every model, and --judge step
    step ddp-cuda 0 60 "$PY" -m sgdtrace run --device cuda --world-size 2 --optimizer adam --scheduler StepLR --scheduler-arg step_size=2 --epochs 3 -q
    step ddp-mlp-step-cuda 0 60 "$PY" -m sgdtrace run --device cuda --world-size 2 --model mlp --synthetic 64 --features 3 --judge step -q
fi
step features-cuda 0 20 "$PY" -m sgdtrace run --device cuda --synthetic 64 --features 16 --batch-size 8 --epochs 3 --optimizer adamw -q
step features-bf16-cuda 0 20 "$PY" -m sgdtrace run --device cuda --synthetic 64 --features 4 --dtype bfloat16 --epochs 3 -q
step logistic-cuda 0 20 "$PY" -m sgdtrace run --device cuda --model logistic --loss bce --synthetic 64 --features 3 --true-b -1 --epochs 3 -q
step logistic-sigmoid-cuda 0 20 "$PY" -m sgdtrace run --device cuda --model logistic --loss bce-sigmoid --synthetic 64 --features 3 --true-b -1 --epochs 3 -q
step mlp-relu-cuda 0 25 "$PY" -m sgdtrace run --device cuda --model mlp --synthetic 64 --features 3 --batch-size 8 --epochs 3 -q
step mlp-tanh-adam-cuda 0 25 "$PY" -m sgdtrace run --device cuda --model mlp --activation tanh --hidden 16 --synthetic 64 --features 3 --batch-size 8 --epochs 3 --optimizer adam --scheduler StepLR --scheduler-arg step_size=4 -q
step mlp-sigmoid-bce-cuda 0 25 "$PY" -m sgdtrace run --device cuda --model mlp --activation sigmoid --loss bce --synthetic 64 --features 3 --true-b -1 --epochs 3 -q
step judge-step-cuda 0 20 "$PY" -m sgdtrace run --device cuda --judge step --optimizer rmsprop --momentum 0.9 --epochs 5 -q
step engine-adam-cuda 0 25 "$PY" -m sgdtrace run --device cuda --engine docs/examples/engine_adam.py --optimizer adam --judge step -q
step engine-logistic-cuda 0 25 "$PY" -m sgdtrace run --device cuda --engine docs/examples/engine_logistic.py --model logistic --synthetic 32 --features 2 --true-b -1 -q
step engine-mlp-cuda 0 25 "$PY" -m sgdtrace run --device cuda --engine docs/examples/engine_mlp.py --model mlp --synthetic 32 --features 2 -q
step grade 0 60 "$PY" -m sgdtrace grade docs/examples/engine_adam.py --format json --output "$DEST/grade.json"
step bench-cuda 0 100 "$PY" benchmarks/bench.py --device cuda --workloads 100k-b64 --reps 3 --html-workloads ""
exit $status
