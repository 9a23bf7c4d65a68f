"""The reference with N processes: the DistributedDataParallel loop a learner writes.

Each rank runs, on ``torch.distributed`` itself (gloo on the CPU, nccl on CUDA)::

    dist.init_process_group(backend, rank=rank, world_size=N)      # MASTER_ADDR/PORT: 127.0.0.1, a free port
    sampler = DistributedSampler(dataset, num_replicas=N, rank=rank, shuffle=..., seed=..., drop_last=...)
    loader = DataLoader(dataset, batch_size=B, sampler=sampler, drop_last=...)
    model = DistributedDataParallel(module)     # the model's module: LinearModel(w0, b0), nn.Linear(D, 1),
                                                # or the network's nn.Sequential (torch.manual_seed(seed))
    criterion = nn.MSELoss()                    # the model's loss: nn.BCEWithLogitsLoss(), BCELoss on sigmoid
    optimizer = optim.Adam(model.parameters(), ...)             # --optimizer: torch.optim's class, its options
    scheduler = lr_scheduler.StepLR(optimizer, ...)             # [scheduler], if any
    for epoch in range(epochs):
        sampler.set_epoch(epoch)                                    # unless --no-set-epoch
        for data, target in loader:
            loss = criterion(model(data), target)
            loss.backward()                                         # .grad: the ranks' average
            optimizer.step()
            scheduler.step()                                        # per step (interval = "step")
            optimizer.zero_grad()
        scheduler.step()                                            # or per epoch (the default)

sgdtrace only reads values: each rank's OWN gradient with ``Tensor.register_hook`` on the
parameters (it runs before the gradient is accumulated and averaged; a communication hook
would change what the reducer does: with one it skips its 1/N), the loss, ``.grad`` after
``backward()`` (the average), the parameters and the optimizer's state after ``step()``, and
the sampler's own indices per epoch (``list(sampler)``). Rank 0 gathers every rank's values
with ``dist.gather_object``; the other ranks write nothing. Every rank records its parameters
and optimizer state too: DDP keeps them identical on every rank, and the judge checks that it did.

Started by sgdtrace (:func:`run`): N processes from ``torch.multiprocessing`` (spawn); the
parent waits for rank 0's gathered values and watches the ranks: one that raises, exits or is
killed ends the run (every other rank is stopped, :class:`RankError`); one silent for
``rank_timeout`` seconds too. Under ``torchrun`` (:func:`under_torchrun`): this process is one
rank of torchrun's group (:func:`join`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import queue as queue_mod
import signal
import socket
import sys
import time
from typing import Any

import numpy as np

from sgdtrace.errors import SgdtraceError
from sgdtrace.output import terminate_cleanly

#: what each rank records of its own batch, per step (the article's model; others: grad_<p>, loss)
RANK_FIELDS = ("grad_w", "grad_b", "loss")
#: the prefix of a rank's own columns (its gradients before the average, its loss)
OWN = "rank_"
#: port attempts when the chosen free port is taken before rank 0 listens on it
PORT_TRIES = 3
#: seconds a spawned rank may take to import torch and join the group, beyond --rank-timeout
STARTUP_S = 120
#: testing aid: ``RANK:STEP:raise`` or ``RANK:STEP:kill`` makes that rank fail at that step (0-based);
#: ``RANK:STEP:state`` doubles that rank's optimizer state of its first parameter after that step
FAULT_ENV = "SGDTRACE_DDP_FAULT"
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RankError(SgdtraceError):
    """A rank failed, died or went silent: the run ends (exit 2) naming it."""


def under_torchrun() -> bool:
    """Is this process one rank of a group torchrun (or a launcher like it) started?"""
    return all(k in os.environ for k in _TORCHRUN_ENV)


def torchrun_world() -> tuple[int, int]:
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def backend_for(device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


# ------------------------------------------------------------------ the learner's loop, one rank


def train(rank: int, world: int, x: np.ndarray, y: np.ndarray, config, device, beat=None) -> dict[str, Any]:
    """The DDP loop of one rank, inside an initialised process group; its recorded values.

    ``beat()``, when given, is called every few steps: the parent's sign that the rank is alive."""
    import torch
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    from sgdtrace import models
    from sgdtrace.dtypes import np_dtype
    from sgdtrace.engines.protocol import LR, model_for, state_field
    from sgdtrace.engines.torch_ref import make_optimizer, make_scheduler

    fault = _fault(rank)
    dtype = getattr(torch, config.dtype)
    spec = model_for(config, x)  # the model's torch side: its module, fed as the learner feeds it
    side = models.torch_side(spec)
    dataset = TensorDataset(
        *side.tensors(spec, torch.as_tensor(x, dtype=dtype).to(device), torch.as_tensor(y, dtype=dtype).to(device))
    )
    sampler = DistributedSampler(
        dataset,
        num_replicas=world,
        rank=rank,
        shuffle=config.shuffle,
        seed=config.effective_seed,
        drop_last=config.drop_last,
    )
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, drop_last=config.drop_last)
    module = side.module(spec, spec.module.initial(config, spec), dtype, device)
    model = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = side.criterion(spec.loss)  # the model's own loss (--loss)
    optimizer = make_optimizer(model.parameters(), config)
    scheduler = make_scheduler(optimizer, config)
    per_step = scheduler is not None and config.scheduler.interval == "step"
    own: dict[str, Any] = {}
    params = side.bindings(spec, module)  # (name, torch Parameter), in the model's declared order
    shapes = spec.shapes
    for name, p in params:  # this rank's own gradient, before DDP averages it into .grad
        p.register_hook(lambda g, name=name: own.__setitem__("grad_" + name, g.detach().clone()))

    def value(t, name: str):
        """A recorded value in its parameter's shape: a Python float for a scalar."""
        if not shapes[name]:
            return t.item()
        t = t.detach().reshape(shapes[name]).cpu()
        return (t.float() if t.itemsize == 2 else t).numpy().copy()  # a copy: the step updates in place

    rows: dict[str, list[Any]] = {
        f: [] for f in (OWN + "loss", *(f"{k}{p}" for k in (OWN + "grad_", "grad_") for p in shapes))
    }
    rows.update({p: [] for p in shapes})
    if scheduler is not None:
        rows[LR] = []
    states: list[tuple[str, str, dict, str]] = []
    indices: list[list[int]] = []
    k = 0
    for epoch in range(config.epochs):
        if config.set_epoch:
            sampler.set_epoch(epoch)
        indices.append(list(sampler))  # the sampler's own order for this epoch, as the loader will draw it
        for data, target in loader:
            if fault is not None and fault[0] == k and fault[1] != "state":
                _fail_now(fault[1])
            output = model(data)
            loss = criterion(output, target)
            loss.backward()
            for name, p in params:
                rows[OWN + "grad_" + name].append(value(own["grad_" + name], name))
                rows["grad_" + name].append(value(p.grad, name))
            rows[OWN + "loss"].append(loss.item())
            if scheduler is not None:  # the rate this step uses
                rows[LR].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if per_step:
                scheduler.step()
            if fault is not None and fault[0] == k and fault[1] == "state":  # this rank's state drifts
                with torch.no_grad():
                    for t in optimizer.state[params[0][1]].values():
                        if isinstance(t, torch.Tensor) and t.is_floating_point():
                            t.mul_(2)
            for name, p in params:
                rows[name].append(value(p, name))
            if k == 0:
                states = [
                    (state_field(key, name), name, optimizer.state[p], key)
                    for name, p in params
                    for key, v in optimizer.state[p].items()
                    if key != "step" and isinstance(v, torch.Tensor)
                ]
                rows.update({col: [] for col, _, _, _ in states})
            for col, name, state, key in states:
                rows[col].append(value(state[key], name))
            optimizer.zero_grad()
            k += 1
            if beat is not None and k % 64 == 0:
                beat()
        if scheduler is not None and not per_step:
            scheduler.step()
    out_dtype = np_dtype(config.dtype)
    cols = {f: np.asarray(v, dtype=np.float64 if f == LR else out_dtype) for f, v in rows.items()}
    return {
        "rank": rank,
        "cols": cols,
        "indices": [np.asarray(i, dtype=np.int64) for i in indices],
    }


def _fault(rank: int) -> tuple[int, str] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    r, step, how = spec.split(":")
    return (int(step), how) if int(r) == rank else None


def _fail_now(how: str) -> None:
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected fault ({FAULT_ENV})")


def _gather(rank: int, world: int, result: dict[str, Any]) -> list[dict[str, Any]] | None:
    import torch.distributed as dist

    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(result, out, dst=0)
    return out


# ------------------------------------------------------------------ under torchrun


def join(x: np.ndarray, y: np.ndarray, config, device) -> list[dict[str, Any]] | None:
    """This process is one rank of torchrun's group: train; rank 0 returns every rank's values."""
    import torch.distributed as dist

    rank, world = torchrun_world()
    if device.type == "cuda":
        import torch

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend_for(device), rank=rank, world_size=world, timeout=datetime.timedelta(seconds=config.rank_timeout)
    )
    try:
        return _gather(rank, world, train(rank, world, x, y, config, device))
    except SgdtraceError:
        raise
    except Exception as exc:  # noqa: BLE001 - a peer died or went silent: one line, exit 2 (torchrun: 1)
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise RankError(
            f"--world-size {world} under torchrun, rank {rank}: the process group failed ({text}); "
            f"another rank died or was silent past --rank-timeout {config.rank_timeout:g} s"
        ) from None
    finally:
        with contextlib.suppress(Exception):  # a broken group: nothing left to tear down
            dist.destroy_process_group()


# ------------------------------------------------------------------ started by sgdtrace


def _worker(rank: int, world: int, port: int, jobs, device_str: str, results) -> None:
    """One spawned rank: join the group on 127.0.0.1:port, train each job (x, y, config), gather
    to rank 0, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops every rank
    _die_with_parent()
    try:
        import torch
        import torch.distributed as dist

        device = torch.device(device_str)
        if device.type == "cuda":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group(
            backend_for(device),
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=jobs[0][2].rank_timeout),
        )
        results.put(("beat", rank, None))  # in the group: from here on, silence is bounded by rank_timeout
        try:
            out = []
            last = [time.monotonic()]

            def beat() -> None:  # at most one message a second
                if time.monotonic() - last[0] > 1.0:
                    last[0] = time.monotonic()
                    results.put(("beat", rank, None))

            for x, y, config in jobs:
                out.append(_gather(rank, world, train(rank, world, x, y, config, device, beat)))
                results.put(("beat", rank, None))
            if rank == 0:
                results.put(("done", 0, out))
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which names the rank
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        results.put(("error", rank, text[:400]))
        sys.exit(1)


def _die_with_parent() -> None:
    """Linux: this rank gets SIGKILL when the process that started it dies, however it dies, so no
    rank outlives a parent that was killed (its cleanup could not run)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - another libc
            pass


def free_port() -> int:
    """A port of 127.0.0.1 free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_taken(message: str) -> bool:
    m = message.lower()
    return "address already in use" in m or "errno: 98" in m or "eaddrinuse" in m


def run(x: np.ndarray, y: np.ndarray, config, device, ports=None) -> list[dict[str, Any]]:
    """Start ``config.world_size`` ranks, wait for rank 0's gathered values; stop every rank after.

    ``ports``: the ports to try in turn (default: a fresh free port per try, :data:`PORT_TRIES` tries).
    """
    return run_many([(x, y, config)], device, ports)[0]


def run_many(jobs, device, ports=None) -> list[list[dict[str, Any]]]:
    """Several runs ``(x, y, config)`` of one world size in ONE process group, one after another
    (starting a group costs seconds; the tests run a matrix of options in few groups)."""
    import torch.multiprocessing as mp

    config = jobs[0][2]
    if any(c.world_size != config.world_size for _, _, c in jobs):  # pragma: no cover - internal misuse
        raise ValueError("run_many: one world size per group")
    ctx = mp.get_context("spawn")
    tries = list(ports) if ports is not None else [None] * PORT_TRIES
    last = ""
    for port in tries:
        port = free_port() if port is None else port
        results = ctx.Queue()
        procs = [
            ctx.Process(
                target=_worker,
                args=(r, config.world_size, port, jobs, str(device), results),
                daemon=True,
                name=f"sgdtrace-rank-{r}",
            )
            for r in range(config.world_size)
        ]
        try:
            with terminate_cleanly():  # SIGTERM, like Ctrl-C and errors, stops every rank below
                for p in procs:
                    p.start()
                status, value = _wait(procs, results, config.rank_timeout)
        finally:
            _stop(procs)
            results.close()
            results.join_thread()
        if status == "done":
            return value
        if status == "port":
            last = value
            continue
        raise RankError(f"--world-size {config.world_size}: {value}")
    raise RankError(
        f"--world-size {config.world_size}: no free port for the process group after {len(tries)} tries ({last})"
    )


def _wait(procs, results, timeout: float) -> tuple[str, Any]:
    """Wait for ``("done", values)``; or the first failure: ``("port", why)`` or ``("error", why)``."""
    silent_since = time.monotonic()
    started = False  # until a rank has joined the group, importing torch may take a while
    errors: dict[int, str] = {}
    first_failure: float | None = None
    while True:
        try:
            kind, rank, value = results.get(timeout=0.1)
            silent_since = time.monotonic()
            if kind == "done":
                return "done", value
            if kind == "beat":
                started = True
                continue
            errors.setdefault(rank, value)
            if first_failure is None:
                first_failure = time.monotonic()
        except queue_mod.Empty:
            pass
        dead = {r: p.exitcode for r, p in enumerate(procs) if p.exitcode not in (None, 0)}
        if dead and first_failure is None:
            first_failure = time.monotonic()
        # after the first failure, a moment for the failing rank's own message to arrive: the others
        # then fail too (their collectives lose a peer), and the first cause is the one to name
        if first_failure is not None and time.monotonic() - first_failure > 0.5:
            return _blame(errors, dead)
        limit = timeout if started else timeout + STARTUP_S
        if time.monotonic() - silent_since > limit and first_failure is None:
            alive = [r for r, p in enumerate(procs) if p.is_alive()]
            return "error", (
                f"no result from the ranks within --rank-timeout {timeout:g} s "
                f"(still running: rank {', '.join(map(str, alive))}); every rank was stopped"
            )


def _blame(errors: dict[int, str], dead: dict[int, int]) -> tuple[str, str]:
    if any(_port_taken(m) for m in errors.values()):
        return "port", next(m for m in errors.values() if _port_taken(m))
    killed = {r: c for r, c in dead.items() if r not in errors}
    if killed:
        r, code = min(killed.items())
        how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return "error", f"rank {r} {how}; every rank was stopped"
    lost = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout")
    own = {r: m for r, m in errors.items() if not any(s in m.lower() for s in lost)}
    r = min(own) if own else min(errors)
    return "error", f"rank {r} failed: {errors[r]}; every rank was stopped"


def _stop(procs) -> None:
    """Stop every rank still running (SIGTERM, then SIGKILL) and reap it: no process is left behind."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 2.0
    for p in procs:
        if p.pid is None:
            continue
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
