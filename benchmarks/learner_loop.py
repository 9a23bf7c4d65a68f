"""(a) in the benchmark: the training loop a learner writes, as in the article, with no tracing.

The data are made the way ``sgdtrace run --synthetic N`` makes them (x uniform in [0, 10) from
``numpy.random.default_rng(seed)``, y = 2x + 10), read from a CSV file with columns x, y
(``--data``, with ``np.loadtxt``), or the article's nine points. Prints one JSON line: the loop's
seconds (imports and data excluded), the steps, the final w and b.
"""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
from torch import optim
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--synthetic", type=int, default=None)
parser.add_argument("--data", default=None)
parser.add_argument("--batch-size", type=int, default=3)
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--device", default="cpu")
parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw", "rmsprop", "adagrad"])
args = parser.parse_args()
device = torch.device(args.device)

# 1. Data
if args.data is not None:
    x, y = np.loadtxt(args.data, delimiter=",", skiprows=1, unpack=True)
elif args.synthetic is None:
    x = np.arange(9.0)
    y = 2 * x + 10
else:
    x = np.random.default_rng(args.seed).uniform(0.0, 10.0, args.synthetic)
    y = 2.0 * x + 10.0
tensor_x = torch.tensor(x, dtype=torch.float32).to(device)
tensor_y = torch.tensor(y, dtype=torch.float32).to(device)
dataset = TensorDataset(tensor_x, tensor_y)
dataloader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False)


# 2. Model: y = wx + b
class Simple_model(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, xb):
        return xb * self.weight + self.bias


model = Simple_model().to(device)
criterion = nn.MSELoss()
OPTIMIZERS = {
    "sgd": optim.SGD,
    "adam": optim.Adam,
    "adamw": optim.AdamW,
    "rmsprop": optim.RMSprop,
    "adagrad": optim.Adagrad,
}
optimizer = OPTIMIZERS[args.optimizer](model.parameters(), lr=args.lr)

# 3. Training loop
start = time.perf_counter()
steps = 0
for _epoch in range(args.epochs):
    for _batch_idx, (data, target) in enumerate(dataloader):
        output = model(data)
        loss = criterion(output, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
if device.type == "cuda":
    torch.cuda.synchronize()
loop_s = time.perf_counter() - start
print(json.dumps({"loop_s": loop_s, "steps": steps, "w": model.weight.item(), "b": model.bias.item()}))
