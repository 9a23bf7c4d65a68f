"""The batches sgdtrace's plan derives for --shuffle --seed 7 --batch-size 4 --drop-last, beside a
real DataLoader's, over three epochs."""

import json
import subprocess
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

cmd = [
    "sgdtrace",
    "run",
    "--shuffle",
    "--seed",
    "7",
    "--batch-size",
    "4",
    "--drop-last",
    "--epochs",
    "3",
    "--format",
    "json",
]
steps = json.loads(subprocess.run(cmd, capture_output=True, text=True).stdout)["steps"]
print("sgdtrace:  ", [[s["indices"] for s in steps if s["epoch"] == e] for e in (1, 2, 3)])
loader = DataLoader(
    TensorDataset(torch.arange(9)),
    batch_size=4,
    shuffle=True,
    generator=torch.Generator().manual_seed(7),
    drop_last=True,
)
print("DataLoader:", [[batch.tolist() for (batch,) in loader] for _ in range(3)])
sys.exit(0)
