"""(a) in the benchmark: the training loop a learner writes, as in the article, with no tracing.

The data are made the way ``sgdtrace run --synthetic N`` makes them (x uniform in [0, 10) from
``numpy.random.default_rng(seed)``, y = 2x + 10), read from a CSV file with columns x, y
(``--data``, with ``np.loadtxt``), or the article's nine points. A CSV file with columns
x1..xD, y (D features) is the D-feature linear regression a learner writes: ``nn.Linear(D, 1)``
with its weight and bias set to zero under ``torch.no_grad()``, fed ``(n, D)`` inputs and
``(n, 1)`` targets. ``--model mlp --hidden H`` on such a file: the network a learner writes,
``torch.manual_seed(seed)`` then ``nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, 1))``
with torch's own initialisation, the same inputs and targets. Prints one JSON line: the loop's
seconds (imports and data excluded; wall and CPU time), the steps, the final w and b (w a list for D
features; the network's: its output layer's).
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
parser.add_argument("--model", default="linear", choices=["linear", "mlp"])
parser.add_argument("--hidden", type=int, default=8)
args = parser.parse_args()
device = torch.device(args.device)

# 1. Data
features = None
if args.data is not None:
    with open(args.data) as fh:
        header = fh.readline().strip().split(",")
    if len(header) > 2:  # x1..xD, y: D features
        features = len(header) - 1
        table = np.loadtxt(args.data, delimiter=",", skiprows=1)
        x, y = table[:, :-1], table[:, -1:]
    else:
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


if args.model == "mlp":  # 2''. A network with one hidden layer: torch's own initialisation
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(features or 1, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 1)).to(device)
elif features is None:
    model = Simple_model().to(device)
else:  # 2'. Model on D features: ypred = x @ w + b
    model = nn.Linear(features, 1).to(device)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
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
start, start_cpu = time.perf_counter(), time.process_time()
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
loop_s, loop_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
if args.model == "mlp":  # the output layer's weights and bias
    w, b = model[2].weight[0].tolist(), model[2].bias.item()
else:
    w = model.weight.item() if features is None else model.weight[0].tolist()
    b = model.bias.item()
print(json.dumps({"loop_s": loop_s, "loop_cpu_s": loop_cpu_s, "steps": steps, "w": w, "b": b}))
