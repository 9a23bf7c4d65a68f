"""Data-parallel runs of logistic regression and the network beside real DDP on gloo.

The torch side is the learner's DDP loop with the model's own module and loss (``nn.Linear`` with
``nn.BCEWithLogitsLoss`` or ``nn.BCELoss`` on ``torch.sigmoid``; ``nn.Sequential`` drawn under
``torch.manual_seed``); the hand side works each rank's gradients by the model's backward pass,
replays DDP's all-reduce over the model's bucket and makes the update. The jobs of one world size
run in ONE process group (``torch_ddp.run_many``), gathered once per session and judged by every
test below.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from click.testing import CliRunner

from sgdtrace import Config, data
from sgdtrace.cli import cli
from sgdtrace.engines import ddp, manual, torch_ddp
from sgdtrace.tracing import build_model, run_distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: a schedule once: Adam's rate annealed per step
COSINE = {"name": "CosineAnnealingLR", "T_max": 3, "interval": "step"}
#: per world size: (name, options) of each job; every model, loss and activation, SGD and Adam,
#: float32 and bfloat16, ragged data, --drop-last both ways
JOBS = {
    2: (
        ("logistic bce sgd", {"model": "logistic", "loss": "bce", "momentum": 0.9}),
        ("logistic bce-sigmoid adam bfloat16", {"model": "logistic", "loss": "bce-sigmoid", "optimizer": "adam"}),
        ("mlp relu sgd", {"model": "mlp", "activation": "relu"}),
        ("mlp tanh adam schedule", {"model": "mlp", "activation": "tanh", "optimizer": "adam", "scheduler": COSINE}),
    ),
    3: (
        ("logistic bce-sigmoid sgd", {"model": "logistic", "loss": "bce-sigmoid", "drop_last": True}),
        ("logistic bce adam", {"model": "logistic", "loss": "bce", "optimizer": "adam"}),
        ("mlp tanh sgd bfloat16", {"model": "mlp", "activation": "tanh", "momentum": 0.9}),
        ("mlp relu adam bce", {"model": "mlp", "activation": "relu", "loss": "bce", "optimizer": "adam"}),
    ),
}


def _config(world: int, name: str, options: dict) -> Config:
    from sgdtrace.config import build_config, make_schedule

    values = {
        "world_size": world,
        "synthetic": 19,  # ragged: 19 samples on 2-3 ranks, batches of 3
        "features": 3,
        "batch_size": 3,
        "epochs": 2,
        "lr": 0.05,
        "dtype": "bfloat16" if "bfloat16" in name else "float32",
        "shuffle": True,
        "seed": 5,
        **options,
    }
    if "scheduler" in values:
        values["scheduler"] = make_schedule(values["scheduler"], "test")
    if values["model"] == "logistic":
        values["true_b"] = -0.5
    return build_config(values, {}, None)


_GROUPS: dict[int, dict[str, tuple[Config, list]]] = {}


def _group(world: int) -> dict[str, tuple[Config, list]]:
    """Every job of one world size, run in one process group (once per session)."""
    if world not in _GROUPS:
        import torch

        jobs = [(name, _config(world, name, options)) for name, options in JOBS[world]]
        inputs = [(data.load(c).x, data.load(c).y, c) for _, c in jobs]
        out = torch_ddp.run_many(inputs, torch.device("cpu"))
        _GROUPS[world] = {name: (cfg, g) for (name, cfg), g in zip(jobs, out)}
    return _GROUPS[world]


@pytest.mark.parametrize("world", [2, 3])
def test_every_model_agrees_with_ddp(world):
    """Logistic regression with both losses and the network with each activation, SGD and Adam (with
    a schedule once), float32 and bfloat16: the hand side agrees with DDP, every rank's values too."""
    for name, (cfg, gathered) in _group(world).items():
        trace = run_distributed(cfg, gathered=gathered)
        assert trace.verdict.ok, (world, name, trace.verdict.first_divergent_step)
        assert trace.model.name == cfg.model and trace.ranks.world_size == world
        for p in trace.model.params:  # each rank's own gradient, in the parameter's shape
            assert trace.ranks.manual["grad_" + p.name].shape == (trace.n_steps, world, *p.shape)
        # DDP keeps one copy of the parameters and the optimizer's state, identical on every rank
        for f in (f for f in trace.torch if f != "loss"):
            assert all(np.array_equal(g["cols"][f], gathered[0]["cols"][f], equal_nan=True) for g in gathered), f
        if "scheduler" in name:
            assert np.array_equal(trace.manual["lr"], trace.torch["lr"]) and len(set(trace.torch["lr"])) > 1


def test_the_network_starts_from_torchs_default_draw():
    """Under DDP the network holds torch's own default initialisation under --seed, the values the
    single-process run starts from (every rank the same: DDP broadcasts rank 0's)."""
    from sgdtrace.models import mlp

    cfg, gathered = _group(2)["mlp relu sgd"]
    model = build_model(cfg, data.load(cfg))
    initial = mlp.initial(cfg, model)
    trace = run_distributed(cfg, gathered=gathered)
    for p in model.params:
        assert np.array_equal(trace.initial[p.name], initial[p.name]), p.name
    # step 1 from those values: the update of the averaged gradient, as plain SGD with momentum starts
    lr = np.float32(cfg.lr)
    for p in model.params:
        start = initial[p.name].astype(np.float32)
        expected = start - lr * trace.torch["grad_" + p.name][0]
        assert np.allclose(trace.torch[p.name][0], expected, rtol=1e-6, atol=1e-7), p.name


@pytest.mark.parametrize("world", [2, 3])
def test_the_networks_allreduce_is_replayed_bit_for_bit(world):
    """DDP's .grad of the network's four parameters (w1, b1, w2, b2: one bucket) equals, bit for bit,
    the ranks' own gradients times 1/N summed in gloo's ring order at each element's position in the
    bucket, as built and then rebuilt in reverse parameter order after step 1."""
    for name, (cfg, gathered) in _group(world).items():
        trace = run_distributed(cfg, gathered=gathered)
        shapes = {p.name: p.shape for p in trace.model.params}
        layouts = (ddp.bucket_layout(shapes, world), ddp.bucket_layout(shapes, world, rebuilt=True))
        backend = manual.ArrayBackend("numpy", cfg.dtype)
        for p in shapes:
            own = [g["cols"]["rank_grad_" + p] for g in gathered]
            avg = gathered[0]["cols"]["grad_" + p]
            for k in range(avg.shape[0]):
                mine = ddp.average([o[k] for o in own], backend, layouts[k > 0][p])
                assert np.array_equal(np.asarray(mine), np.asarray(avg[k]), equal_nan=True), (name, p, k)


def _probe_rebuild(rank: int, world: int, port: int, out) -> None:
    """Three steps of DDP on the network (D = 3, H = 4) in a process of its own; DDP's logging data out."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from sgdtrace import models

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = Config(model="mlp", hidden=4, seed=1)
        model = models.build(cfg, 3)
        side = models.torch_side(model)
        net = side.module(model, model.module.initial(cfg, model), torch.float32, torch.device("cpu"))
        names = [n for n, _ in net.named_parameters()]
        ddp_net = DistributedDataParallel(net)
        criterion = side.criterion("mse")
        for _ in range(3):
            criterion(ddp_net(torch.randn(5, 3)), torch.randn(5, 1)).backward()
        info = ddp_net._get_ddp_logging_data()
        if rank == 0:
            out.put((names, str(info["rebuilt_per_bucket_param_indices"]), [p.torch_name for p in model.params]))
    finally:
        dist.destroy_process_group()


def test_ddp_rebuilds_the_networks_bucket_in_reverse_parameter_order():
    """bucket_layout's rule for the network, read from DDP's own logging data: after the first step
    the bucket holds b2, w2, b1, w1 (``rebuilt_per_bucket_param_indices`` = 3 2 1 0)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = torch_ddp.free_port()
    procs = [ctx.Process(target=_probe_rebuild, args=(r, 2, port, queue), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        names, indices, torch_names = queue.get(timeout=120)
    finally:
        for p in procs:
            p.join(20)
            if p.is_alive():
                p.kill()
    rebuilt = [int(i) for i in indices.split()]
    assert [names[i] for i in rebuilt] == torch_names[::-1] == ["2.bias", "2.weight", "0.bias", "0.weight"]


def _slipping(world: int, step: int, rank: int, param: str, factor: float):
    """sgdtrace's own engine, with one planted mistake: rank ``rank``'s gradient of ``param`` at
    ``step`` (0-based) scaled by ``factor``, every other rank and step as the model's backward gives it."""

    def make(cfg, backend):
        dataset = data.load(cfg)
        gplan = data.distributed_plan(len(dataset), cfg).global_plan()
        hand = manual.engine(cfg, backend, gplan, build_model(cfg, dataset))
        calls = [0]

        def gradients(params, x, y):
            k, r = divmod(calls[0], world)  # ddp.run asks rank 0, 1, ..., N-1 in turn at each step
            calls[0] += 1
            loss, grads = hand.gradients(params, x, y)
            if (k, r) == (step, rank):
                grads = dict(grads, **{param: grads[param] * backend.scalar(factor)})
            return loss, grads

        return dataclasses.replace(hand, gradients=gradients)

    return make


@pytest.mark.parametrize(
    "world, name, param",
    [(2, "mlp tanh adam schedule", "w1"), (3, "logistic bce-sigmoid sgd", "b"), (3, "mlp tanh sgd bfloat16", "b2")],
)
def test_a_mistake_in_one_ranks_gradients_is_caught(world, name, param):
    """A slip in the last rank's gradient of one parameter at step 2 (1%; 25% in bfloat16, whose
    rounding is 0.4%): the verdict names that step, and that rank's own gradient is where it
    diverges (the other ranks' agree)."""
    cfg, gathered = _group(world)[name]
    factor = 1.25 if cfg.dtype == "bfloat16" else 1.01
    trace = run_distributed(cfg, gathered=gathered, engine=_slipping(world, 1, world - 1, param, factor))
    first = trace.verdict.first_divergent_step
    assert not trace.verdict.ok and first["step"] == 2, first
    assert "grad_" + param in first["field"], first
    rank_div = trace.ranks.divergence["grad_" + param]
    bad = ~rank_div.ok.reshape(trace.n_steps, world, -1).all(axis=2)
    assert bad[1, world - 1] and not bad[1, : world - 1].any() and not bad[0].any()


def test_a_users_engine_for_each_model_gives_each_ranks_gradients(tmp_path):
    """--engine FILE.py under DDP: the docs' logistic and network files agree on every rank's batch;
    the network's file with a slip in relu's derivative is caught at step 1, on the ranks' own
    gradients (not in the all-reduce)."""
    for name, example in (("logistic bce sgd", "engine_logistic.py"), ("mlp relu sgd", "engine_mlp.py")):
        cfg, gathered = _group(2)[name]
        good = run_distributed(cfg.replace(engine=os.path.join(ROOT, "docs", "examples", example)), gathered=gathered)
        assert good.verdict.ok and good.engine.name == example, good.verdict.first_divergent_step
    with open(os.path.join(ROOT, "docs", "examples", "engine_mlp.py"), encoding="utf-8") as fh:
        source = fh.read()
    assert "(z1 > 0)" in source
    slip = tmp_path / "engine_mlp_slip.py"
    slip.write_text(source.replace("(z1 > 0)", "(z1 >= 0) + 0.01"), encoding="utf-8")
    bad = run_distributed(cfg.replace(engine=str(slip)), gathered=gathered)
    first = bad.verdict.first_divergent_step
    assert not bad.verdict.ok and first["step"] == 1 and "grad_w1" in first["field"], first
    assert not np.allclose(bad.ranks.manual["grad_w1"][0], bad.ranks.torch["grad_w1"][0])


@pytest.mark.parametrize("model", ["logistic", "mlp"])
def test_explain_with_a_world_size_is_refused_for_the_model(model):
    """explain's ranks show the linear model's equations: another model is one line, exit 2."""
    r = CliRunner().invoke(cli, ["explain", "--batch", "1", "--world-size", "2", "--model", model, "--synthetic", "9"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"explain --world-size 2 with --model {model}: " in lines[0], r.stderr
