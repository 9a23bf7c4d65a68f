"""The manual engine alone (NumPy on the CPU, torch tensors on CUDA), over the same data and
batches as the learner's loop.

Prints one JSON line: the engine's seconds (imports, data and batch plan excluded), the steps,
the final w and b (``--model mlp``: the output layer's W2 and b2).
"""

import argparse
import json
import time

from sgdtrace import data
from sgdtrace.config import Config
from sgdtrace.engines import manual

parser = argparse.ArgumentParser()
parser.add_argument("--synthetic", type=int, default=None)
parser.add_argument("--data", default=None)
parser.add_argument("--batch-size", type=int, default=3)
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--device", default="cpu")
parser.add_argument("--optimizer", default="sgd")
parser.add_argument("--model", default="linear")
parser.add_argument("--hidden", type=int, default=None)
args = parser.parse_args()

cfg = Config(
    data=args.data,
    synthetic=args.synthetic,
    batch_size=args.batch_size,
    epochs=args.epochs,
    lr=args.lr,
    optimizer=args.optimizer,
    model=args.model,
    hidden=args.hidden,
)
dataset = data.load(cfg)
plan = data.plan(len(dataset), cfg)
if args.device == "cpu":
    backend = manual.ArrayBackend("numpy", cfg.dtype)
else:  # torch tensors on the device, as sgdtrace runs it there (the copy to the host is timed)
    import torch

    backend = manual.ArrayBackend("torch", cfg.dtype, torch.device(args.device))
start, start_cpu = time.perf_counter(), time.process_time()
cols = manual.run(dataset.x, dataset.y, plan, cfg, backend)
w, b = ("w2", "b2") if args.model == "mlp" else ("w", "b")
loop_s, loop_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
print(
    json.dumps(
        {
            "loop_s": loop_s,
            "loop_cpu_s": loop_cpu_s,
            "steps": plan.n_steps,
            "w": cols[w][-1].tolist(),
            "b": cols[b][-1].tolist(),
        }
    )
)
