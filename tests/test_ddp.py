"""Data-parallel SGD (--world-size N): DistributedSampler replayed, DDP's all-reduce by hand, beside
a real DistributedDataParallel run on gloo; faults end the run and leave no process behind.

Starting a process group costs seconds, so the matrix of options runs in ONE group per world size
(torch_ddp.run_many) and every test of that world size reads its values.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgdtrace import Config, data, divergence
from sgdtrace.config import build_config, load_toml
from sgdtrace.engines import ddp, manual, torch_ddp
from sgdtrace.tracing import judge_distributed, run_distributed, run_trace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SGDTRACE = [sys.executable, "-m", "sgdtrace"]

#: every option of torch.optim.SGD, and the sampler's
OPTIONS = (
    {},
    {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
    {"momentum": 0.9, "nesterov": True},
    {"maximize": True, "lr": 0.001},
    {"shuffle": True, "seed": 3, "drop_last": True, "momentum": 0.5},
)


def _config_file(name: str) -> Config:
    path = os.path.join(ROOT, "sgdtrace", "configs", name)
    return build_config(load_toml(path), {}, path)


def _jobs(world: int) -> list[tuple[str, Config]]:
    jobs = [
        (
            f"{dtype} {opts}",
            Config(world_size=world, synthetic=23, noise=1.0, batch_size=3, epochs=2, dtype=dtype, **opts),
        )
        for dtype in ("float32", "float64")
        for opts in OPTIONS
    ]
    if world == 2:
        jobs.append(
            ("no-set-epoch", Config(world_size=2, batch_size=2, epochs=3, shuffle=True, seed=5, set_epoch=False))
        )
    if world == 3:
        jobs.append(("ddp.toml", _config_file("ddp.toml")))
    if world == 4:
        jobs.append(("ddp-padding.toml", _config_file("ddp-padding.toml")))
    return jobs


_GROUPS: dict[int, dict[str, tuple[Config, list]]] = {}


def _group(world: int) -> dict[str, tuple[Config, list]]:
    """Every job of one world size, run in one process group (once per session)."""
    if world not in _GROUPS:
        import torch

        jobs = _jobs(world)
        inputs = [(data.load(cfg).x, data.load(cfg).y, cfg) for _, cfg in jobs]
        ports = None
        if world == 2:  # the first port is taken: the run retries on another
            busy = socket.socket()
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            ports = [busy.getsockname()[1], None]
        try:
            out = torch_ddp.run_many(inputs, torch.device("cpu"), ports)
        finally:
            if ports:
                busy.close()
        _GROUPS[world] = {name: (cfg, gathered) for (name, cfg), gathered in zip(jobs, out)}
    return _GROUPS[world]


def _trace(world: int, name: str):
    cfg, gathered = _group(world)[name]
    return run_distributed(cfg, gathered=gathered)


# ------------------------------------------------------------------ the sampler, no process group


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 40),
    world=st.integers(1, 9),
    rank_frac=st.floats(0, 0.999),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 6),
    drop_last=st.booleans(),
)
def test_sampler_replay_equals_distributed_sampler(n, world, rank_frac, shuffle, seed, epoch, drop_last):
    from torch.utils.data.distributed import DistributedSampler

    if drop_last and world > n:
        world = n
    rank = int(rank_frac * world)
    sampler = DistributedSampler(
        range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    sampler.set_epoch(epoch)
    assert data.sampler_indices(n, world, rank, shuffle, seed, epoch, drop_last) == list(sampler)


def test_padding_and_the_global_batch():
    """Nine samples on four ranks: 0, 1, 2 repeated; the step's batch is the ranks' in rank order."""
    dp = data.distributed_plan(9, Config(world_size=4, batch_size=3, epochs=2))
    assert [p.tolist() for p in dp.padded] == [[0, 1, 2], [0, 1, 2]]
    assert [o.tolist() for o in dp.rank_orders[0]] == [[0, 4, 8], [1, 5, 0], [2, 6, 1], [3, 7, 2]]
    assert dp.global_plan().indices(0).tolist() == [0, 4, 8, 1, 5, 0, 2, 6, 1, 3, 7, 2]
    dl = data.distributed_plan(9, Config(world_size=4, batch_size=2, drop_last=True))
    assert dl.per_rank == 2 and dl.dropped[0].tolist() == [8] and dl.padded[0].size == 0


def test_no_set_epoch_repeats_the_first_order():
    cfg = Config(world_size=2, batch_size=2, epochs=3, shuffle=True, seed=5)
    on = data.distributed_plan(9, cfg)
    off = data.distributed_plan(9, cfg.replace(set_epoch=False))
    assert all(np.array_equal(off.rank_orders[e][0], off.rank_orders[0][0]) for e in range(3))
    assert not np.array_equal(on.rank_orders[1][0], on.rank_orders[0][0])


# ------------------------------------------------------------------ hand side against the real DDP run


@pytest.mark.parametrize("world", [2, 3, 4])
def test_hand_agrees_with_ddp_on_every_option(world):
    for name in _group(world):
        trace = _trace(world, name)
        assert trace.verdict.ok, (world, name, trace.verdict.first_divergent_step)
        assert trace.ranks.manual["grad_w"].shape == (trace.n_steps, world)
        # the rank axis fills what one process fills: n sums, the loss is the ranks' mean
        assert (trace.n == trace.ranks.n.sum(axis=1)).all()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_allreduce_replayed_bit_for_bit(world):
    """DDP's .grad equals, bit for bit, the ranks' own gradients (read by Tensor.register_hook)
    times fl(1/N), summed in gloo's order; the plain sum divided by N does not always."""
    misses = 0
    for name, (cfg, gathered) in _group(world).items():
        backend = manual.ArrayBackend("numpy", cfg.dtype)
        for f in ("grad_w", "grad_b"):
            own = np.stack([g["cols"]["rank_" + f] for g in gathered], axis=1)
            avg = gathered[0]["cols"][f]
            for g in gathered:  # every rank holds the same average
                assert np.array_equal(g["cols"][f], avg)
            assert np.array_equal(ddp.average(list(own.T), backend), avg), (name, f)
            naive = own.sum(axis=1, dtype=own.dtype) / own.dtype.type(world)
            misses += int((naive != avg).sum())
    if world == 3:
        assert misses > 0  # 1/3 is rounded before the multiply: the order of operations shows


def test_sum_without_one_over_n_is_caught(monkeypatch):
    monkeypatch.setattr(ddp, "average", lambda grads, backend, chunks=None: ddp.allreduce_sum(list(grads), chunks))
    trace = _trace(3, "ddp.toml")
    first = trace.verdict.first_divergent_step
    assert not trace.verdict.ok and first["step"] == 1 and first["field"] == "grad_w"


def test_mean_over_distinct_samples_is_caught():
    """On ddp-padding.toml the repeated samples count twice: averaging over the nine distinct
    samples of the global batch instead of the ranks' means is a different gradient."""
    cfg, gathered = _group(4)["ddp-padding.toml"]
    good = run_distributed(cfg, gathered=gathered)
    ds = data.load(cfg)
    one = cfg.replace(world_size=1, batch_size=len(ds))  # each step's distinct samples: all nine
    wrong = manual.run(ds.x, ds.y, data.plan(len(ds), one), one, manual.ArrayBackend("numpy", cfg.dtype))
    trace = judge_distributed(cfg, ds, good.ranks.plan, "cpu", wrong, good.torch, good.ranks.manual, good.ranks.torch)
    assert good.verdict.ok and not trace.verdict.ok
    assert trace.verdict.first_divergent_step["step"] == 1


def test_no_set_epoch_replayed_against_torch():
    trace = _trace(2, "no-set-epoch")
    assert trace.verdict.ok
    per_epoch = trace.plan.steps_per_epoch
    assert trace.plan.indices(0).tolist() == trace.plan.indices(per_epoch).tolist()


def test_ddp_equals_one_process_within_rounding():
    """ddp.toml (3 ranks x 1 sample, no padding) against the article's run (1 process, batch 3):
    the same batches, so the same values up to rounding, judged by the tolerance model."""
    ddp_trace = _trace(3, "ddp.toml")
    single = run_trace(Config())
    assert ddp_trace.plan.indices(0).tolist() == single.plan.indices(0).tolist()
    div = divergence.compare_columns(
        single.manual, ddp_trace.manual, single.dataset.x, single.dataset.y, single.plan, single.config
    )
    assert all(d.ok.all() for d in div.values())
    assert np.abs(ddp_trace.manual["w"] - single.manual["w"]).max() < 1e-5


def test_json_has_the_rank_axis():
    from sgdtrace.views.export import trace_to_json

    doc = trace_to_json(_trace(4, "ddp-padding.toml"))
    step = doc["steps"][0]
    assert doc["config"]["world_size"] == 4
    assert [r["rank"] for r in step["ranks"]] == [0, 1, 2, 3]
    assert step["n"] == sum(r["n"] for r in step["ranks"])
    assert step["indices"] == [i for r in step["ranks"] for i in r["indices"]]
    losses = [r["manual"]["loss"] for r in step["ranks"]]
    assert step["manual"]["loss"] == pytest.approx(sum(losses) / 4, rel=1e-6)
    assert doc["epochs"][0] == {"epoch": 1, "padded": [0, 1, 2]}


# ------------------------------------------------------------------ limits and faults


@pytest.mark.parametrize(
    "args, says",
    [
        (["run", "--world-size", "10"], "more ranks than the 9 samples"),
        (["run", "--world-size", "65"], "[1, 64]"),
        (["run", "--no-set-epoch"], "world size >= 2"),
        (["run", "--world-size", "2", "--gradcheck"], "--gradcheck"),
        (["graph", "--world-size", "2"], "graph"),
        (
            ["run", "--world-size", "2", "--epochs", "2", "--scheduler", "OneCycleLR"]
            + ["--scheduler-arg", "max_lr=0.1", "--scheduler-arg", "total_steps=2", "--scheduler-arg", "interval=step"],
            "calls scheduler.step() 4 times",
        ),
    ],
)
def test_refused_before_any_process(args, says):
    out = subprocess.run(SGDTRACE + args, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def _marked(mark: str) -> list[int]:
    """Processes (other than this one) whose environment carries ``mark``."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if mark.encode() in fh.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize(
    "fault, says",
    [("1:1:kill", "rank 1 was killed by signal SIGKILL"), ("0:0:raise", "rank 0 failed: RuntimeError: injected fault")],
)
def test_failing_rank_ends_the_run(fault, says):
    mark = f"SGDTRACE_TEST_MARK={uuid.uuid4().hex}"
    env = dict(os.environ, **{torch_ddp.FAULT_ENV: fault, mark.split("=")[0]: mark.split("=")[1]})
    timeout = 20
    start = time.monotonic()
    out = subprocess.run(
        SGDTRACE + ["run", "--world-size", "3", "--batch-size", "1", "--rank-timeout", str(timeout)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=env,
    )
    elapsed = time.monotonic() - start
    assert out.returncode == 2, out.stderr
    assert says in out.stderr and "every rank was stopped" in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""
    # the failure itself is noticed at once: well within the start-up plus the rank timeout
    assert elapsed < 120 + timeout
    time.sleep(0.5)
    left = _marked(mark)
    for pid in left:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert left == []


def test_table_shows_ranks_and_padding():
    from rich.console import Console

    from sgdtrace.views.table import run_view

    console = Console(width=100, record=True, file=open(os.devnull, "w"))
    console.print(run_view(_trace(4, "ddp-padding.toml")))
    text = console.export_text()
    assert text.count("rank 0") == 2 and "rank 3" in text  # under each of the two steps
    assert "epoch 1: DistributedSampler repeats samples 0, 1, 2 so every rank gets 3" in text
    console = Console(width=100, record=True, file=open(os.devnull, "w"))
    console.print(run_view(_trace(2, "no-set-epoch")))
    assert "--no-set-epoch: sampler.set_epoch(e) was never called" in console.export_text()


def test_explain_shows_each_rank_and_the_allreduce():
    from rich.console import Console

    from sgdtrace.teaching.explain import explain_distributed
    from sgdtrace.views.explain import explain_distributed_json, explain_distributed_view

    trace = _trace(3, "ddp.toml")
    dx = explain_distributed(trace, 2)
    assert dx.matches_trace and len(dx.ranks) == 3
    assert [ex.indices.tolist() for ex in dx.ranks] == [[3], [4], [5]]
    doc = explain_distributed_json(dx)
    assert doc["allreduce"]["grad_w"] == float(trace.manual["grad_w"][1])
    assert [r["indices"] for r in doc["ranks"]] == [[3], [4], [5]]
    console = Console(width=120, record=True, file=open(os.devnull, "w"))
    console.print(explain_distributed_view(dx))
    text = console.export_text()
    assert "Rank 2: samples 5 (n = 1)" in text and "All-reduce" in text and "(.grad after backward)" in text


def _start_long_run(mark: str):
    env = dict(os.environ, SGDTRACE_TEST_MARK=mark)
    proc = subprocess.Popen(
        SGDTRACE
        + ["run", "--world-size", "2", "--synthetic", "200000", "--batch-size", "1", "--quiet", "--output", os.devnull],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 150
    while len(_marked(mark)) < 4 and time.monotonic() < deadline:  # the parent, the tracker, 2 ranks
        time.sleep(0.5)
    time.sleep(3)
    return proc


@pytest.mark.parametrize("how", ["ctrl-c", pytest.param("kill-parent", marks=pytest.mark.slow)])
def test_interrupt_stops_every_rank(how):
    """Ctrl-C (SIGINT to the foreground group) stops every rank; a parent killed outright takes its
    ranks with it (PR_SET_PDEATHSIG)."""
    mark = f"SGDTRACE_TEST_MARK={uuid.uuid4().hex}"
    proc = _start_long_run(mark.split("=")[1])
    assert proc.poll() is None and len(_marked(mark.split("=")[1])) >= 4
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    if how == "ctrl-c":
        assert proc.returncode == 130 and "aborted" in err
    time.sleep(1)
    left = _marked(mark.split("=")[1])
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []


def test_explain_command_with_a_world_size_prints_each_rank():
    """`sgdtrace explain --world-size 2` through the command line, in both of its formats."""
    from click.testing import CliRunner

    from sgdtrace.cli import cli

    r = CliRunner().invoke(cli, ["explain", "--world-size", "2", "--batch-size", "2", "--batch", "1"])
    assert r.exit_code == 0, r.output
    assert "rank 0" in r.output.lower() and "rank 1" in r.output.lower()
