"""(a) of the world-size-4 workload: the DDP loop a learner writes, with no tracing.

N processes from torch.multiprocessing (spawn), gloo on 127.0.0.1, DistributedSampler with
set_epoch, DataLoader, DistributedDataParallel, nn.MSELoss, optim.SGD or optim.Adam (``--optimizer``),
with ``ExponentialLR`` stepped after every step when ``--gamma`` is given: the same processes
``sgdtrace run --world-size N`` starts. Data as ``--synthetic N`` makes them. Prints one JSON
line: rank 0's loop seconds, the steps, the final w and b.
"""

import argparse
import json
import os
import socket
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn, optim
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


class Simple_model(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, xb):
        return xb * self.weight + self.bias


def worker(rank, args, port, results):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=args.world_size)
    x = np.random.default_rng(args.seed).uniform(0.0, 10.0, args.synthetic)
    y = 2.0 * x + 10.0
    dataset = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    sampler = DistributedSampler(dataset, num_replicas=args.world_size, rank=rank, shuffle=False)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
    model = DistributedDataParallel(Simple_model())
    criterion = nn.MSELoss()
    if args.optimizer == "adam":
        optimizer = optim.Adam(model.parameters(), lr=args.lr)
    else:
        optimizer = optim.SGD(model.parameters(), lr=args.lr)
    scheduler = optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.gamma) if args.gamma else None
    start, steps = time.perf_counter(), 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for data, target in loader:
            loss = criterion(model(data), target)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad()
            steps += 1
    if rank == 0:
        results.put(
            {
                "loop_s": time.perf_counter() - start,
                "steps": steps,
                "w": model.module.weight.item(),
                "b": model.module.bias.item(),
            }
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--synthetic", type=int, required=True)
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    parser.add_argument("--gamma", type=float, default=None, help="ExponentialLR's gamma, stepped per step")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args, port, results)) for r in range(args.world_size)]
    for p in procs:
        p.start()
    print(json.dumps(results.get()))
    for p in procs:
        p.join()
