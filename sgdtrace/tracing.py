"""Run both engines over the same data and batches; a columnar trace; the verdict.

Data flows one way: config -> data + batch plan -> engines -> Trace (one array per field)
-> divergence -> verdict -> views. Every view reads a :class:`Trace`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgdtrace import data as data_mod
from sgdtrace import divergence, stall
from sgdtrace.blowup import diagnose, full_loss, one_sided, stable_lr  # noqa: F401  (full_loss: kept importable here)
from sgdtrace.config import Config, label
from sgdtrace.errors import ConfigError


@dataclass
class Trace:
    """Everything one run produced. Columns are NumPy arrays, one value per step.

    A record: it computes and renders nothing. Its display in Jupyter and its views as methods
    (``explain``, ``graph``, ``plot``, ``to_pandas``, ``to_html``) are :class:`sgdtrace.notebook.TraceView`'s,
    reached through the methods at the end of this class (imported when called: the records import
    no view).
    """

    config: Config
    dataset: data_mod.Dataset
    plan: data_mod.BatchPlan
    device: str
    epoch: np.ndarray  # 1-based
    batch: np.ndarray  # 1-based, within the epoch
    n: np.ndarray  # samples in the batch
    manual: dict[str, np.ndarray]
    torch: dict[str, np.ndarray]
    divergence: dict[str, divergence.FieldDivergence]
    verdict: divergence.Verdict
    #: per step, the largest learning rate stable on that batch (:attr:`stable_lr`), or the function
    #: that computes it on first use (a batch Hessian's eigenvalues per step: none where unread)
    stable: Any
    reference: Any = None  # sgdtrace.reference.Reference when --reference exact was asked for
    gradcheck: Any = None  # sgdtrace.reference.GradCheck when --gradcheck was asked for
    ranks: Any = None  # RankTrace when --world-size N >= 2: each rank's own values (the rank axis)
    engine: Any = None  # sgdtrace.engines.user.EngineInfo when a user's file stood on the hand side
    model: Any = None  # sgdtrace.models.Model: the parameters (names, shapes) the columns are of
    initial: Any = None  # the parameters' initial values by name (float64 arrays of their shapes)
    schedule: Any = None  # the schedule table (sgdtrace.engines.optimizers.schedules.Table) under --scheduler

    @property
    def hand(self) -> str:
        """The hand side's label: "hand", or the user's engine file's name."""
        return "hand" if self.engine is None else self.engine.name

    @property
    def environment(self) -> dict[str, Any]:
        """The machine this ran on and its measured kernel rules (:func:`sgdtrace.probe.environment`:
        measured once per machine and torch version, then read from a cache)."""
        from sgdtrace.probe import environment

        return environment()

    #: per side ("manual", "torch"): {"stalled_w", "stalled_b"}, bool per step (sgdtrace.stall)
    stalled: dict[str, dict[str, np.ndarray]] | None = None

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.divergence)

    @property
    def stable_lr(self) -> np.ndarray:
        """Per step: the largest learning rate stable on that batch (:func:`sgdtrace.blowup.stable_lr`)."""
        if callable(self.stable):
            self.stable = self.stable()
        return self.stable

    @property
    def params(self) -> tuple:
        """The model's parameters (:class:`sgdtrace.models.Param`: name, shape, torch name, label)."""
        return self.model.params

    @property
    def n_steps(self) -> int:
        return int(self.epoch.shape[0])

    def columns(self) -> dict[str, np.ndarray]:
        """Every per-step array the trace holds, by name (one row per step each: a value, or an
        array of the parameter's shape)."""
        cols = {"epoch": self.epoch, "batch": self.batch, "n": self.n, "stable_lr": self.stable_lr}
        cols.update({f"manual.{f}": v for f, v in self.manual.items()})
        cols.update({f"torch.{f}": v for f, v in self.torch.items()})
        for f, d in self.divergence.items():
            cols.update({f"{part.name}.{f}": getattr(d, part.name) for part in dataclasses.fields(d)})
        return cols

    @property
    def nbytes(self) -> int:
        """Bytes the trace's per-step columns hold (the batch plan and data are not counted)."""
        return sum(int(c.nbytes) for c in self.columns().values())

    def indices(self, step: int) -> np.ndarray:
        """The sample indices of step ``step`` (0-based)."""
        return self.plan.indices(step)

    @functools.cached_property
    def report(self):
        """What the views show beyond the records (:class:`sgdtrace.report.Report`: the true
        parameters, the whole data's loss, the (w, b) plane, a batch explained), worked out by the
        report stage the first time a view asks, then kept."""
        from sgdtrace.report import report

        return report(self)

    # ---- the notebook's display and views: sgdtrace.notebook.TraceView over this record

    #: table rows shown before a long run is summarised (as the terminal: the first and last rows)
    display_rows = None

    def _view(self):
        from sgdtrace.notebook import TraceView

        return TraceView(self)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return self._view()._repr_mimebundle_(include, exclude)

    def _repr_html_(self) -> str:
        return self._view()._repr_html_()

    def _repr_pretty_(self, p, cycle: bool) -> None:
        self._view()._repr_pretty_(p, cycle)

    def __str__(self) -> str:
        return self._view()._plain_text()

    def to_html(self, batch: int | None = None, epoch: int = 1) -> str:
        """The whole self-contained page that ``sgdtrace run --format html`` writes."""
        return self._view().to_html(batch, epoch)

    def explain(self, batch: int = 1, epoch: int = 1):
        """One batch (both counted from 1) worked equation by equation, torch's values beside
        (a :class:`sgdtrace.notebook.ExplainView`)."""
        return self._view().explain(batch, epoch)

    def graph(self, batch: int = 1, epoch: int = 1, loss: str = "mse"):
        """The article's DAG beside torch's real ``grad_fn`` graph for one batch (a
        :class:`sgdtrace.notebook.GraphView`; no Graphviz needed)."""
        return self._view().graph(batch, epoch, loss)

    def plot(self, width: int = 1200, height: int = 380, dpi: int = 100):
        """The ``plot`` command's three panels as a matplotlib ``Figure`` (needs the ``plot`` extra)."""
        return self._view().plot(width, height, dpi)

    def to_pandas(self):
        """One row per step (:meth:`sgdtrace.notebook.TraceView.to_pandas`). Needs pandas."""
        return self._view().to_pandas()


def resolve_device(name: str):
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` to a torch.device; never a silent fallback."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name}: CUDA is not available on this machine "
                "(torch was built without CUDA or no GPU is visible); use --device cpu or auto"
            )
        index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"--device {name}: no such GPU; this machine has {count} (cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    return torch.device("cpu")


def device_label(device) -> str:
    return "cpu" if device.type == "cpu" else f"{device.type}:{device.index or 0}"


def run_trace(
    config: Config,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    manual_backend: str | None = None,
    sync_free: bool | None = None,
    torch_loss: str = "mse",
    dataset: data_mod.Dataset | None = None,
    engine: Callable[[Config, Any], Any] | None = None,
) -> Trace:
    """Run the manual engine and torch over the same batches and judge every value.

    ``manual_backend`` ("numpy" or "torch") and ``sync_free`` override the per-device defaults
    (NumPy and host reads on the CPU, torch tensors and device-resident columns on CUDA), so
    the tests can exercise the CUDA code paths on a CPU. ``torch_loss="explicit"`` has the torch
    side write its loss as ``((out - y) ** 2).mean()`` instead of ``nn.MSELoss()`` (for ``graph``).
    ``dataset``: the config's data set, when the caller has loaded it already. ``engine``: what
    stands on the hand side, ``engine(config, backend) -> sgdtrace.engines.protocol.Engine``
    (default: sgdtrace's own, :func:`sgdtrace.engines.manual.engine`).
    """
    from sgdtrace.engines import manual, protocol, torch_ddp, torch_ref

    if torch_ddp.under_torchrun():  # one rank of torchrun's group: its world size
        world = torch_ddp.torchrun_world()[1]
        if "world_size" in config.origin and config.world_size != world:
            raise ConfigError(
                f"{config.origin['world_size']} {config.world_size}: under torchrun the world size "
                f"is WORLD_SIZE = {world}; give the same or leave it out"
            )
        config = config.replace(world_size=world, origin=config.origin)
    if config.world_size > 1:
        trace = run_distributed(config, dataset=dataset, engine=engine)
        if trace is not None:
            judge_closer(trace)
        return trace
    device = resolve_device(config.device)
    label = device_label(device)
    cfg = config.replace(device=label, origin=config.origin)
    if dataset is None:
        dataset = data_mod.load(cfg)
    model = build_model(cfg, dataset)
    initial = model.module.initial(cfg, model)
    plan = data_mod.plan(len(dataset), cfg)
    steps = plan.n_steps
    # the schedule, worked out once for the hand engine, the judge and the views (exit 2 before
    # training where torch would raise: OneCycleLR stepped past total_steps, a division by zero)
    from sgdtrace.engines.optimizers import schedules

    schedule = schedules.table(cfg, plan)

    def stage(name: str) -> Callable[[int], None] | None:
        return None if progress is None else (lambda k: progress(name, k, steps))

    kind = manual_backend or ("numpy" if device.type == "cpu" else "torch")
    if model.name == "mlp":  # the network's hand side is NumPy with torch's rules (sgdtrace.models.ops), on any device
        kind = "numpy"
    backend = manual.ArrayBackend(kind, cfg.dtype, device)
    # a blow-up is a result, reported by diagnose(): no NumPy overflow warnings on stderr
    if hasattr(engine, "run_columns") and cfg.engine is None and cfg.engine_cmd is None:
        # a user's engine given as an object: judged as one
        from sgdtrace.engines.command import CommandEngine

        key = "engine_cmd" if isinstance(engine, CommandEngine) else "engine"
        cfg = cfg.replace(**{key: engine.path}, origin=cfg.origin)
    if engine is None and cfg.engine is not None:  # --engine FILE.py
        from sgdtrace.engines.user import UserEngine

        engine = UserEngine(cfg.engine, cfg.engine_timeout)
    if engine is None and cfg.engine_cmd is not None:  # --engine-cmd "COMMAND"
        from sgdtrace.engines.command import CommandEngine

        engine = CommandEngine(cfg.engine_cmd, cfg.engine_timeout)
    step_mode = cfg.judge == "step"
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):

        def torch_side():
            return torch_ref.run(
                dataset.x,
                dataset.y,
                cfg,
                device,
                steps,
                stage("torch"),
                sync_free=sync_free,
                loss_form=torch_loss,
                model=model,
                initial=initial,
            )

        # --judge step: torch runs first, and each step of the hand side starts from its values
        ref = torch_side() if step_mode else None
        if hasattr(engine, "run_columns"):  # a user's file, run in a child process (sgdtrace.engines.user)
            from sgdtrace.engines import optimizers

            keys = optimizers.get(cfg.optimizer).state_keys(cfg)
            man = engine.run_columns(cfg, dataset, plan, keys, model, **_reset(engine, ref, cfg))
        else:
            hand = engine(cfg, backend) if engine is not None else manual.engine(cfg, backend, plan, model, schedule)
            man = protocol.run(hand, dataset.x, dataset.y, plan, initial, backend, stage("manual"), reset=ref)
        if ref is None:
            ref = torch_side()
        info = getattr(engine, "info", None)
        trace = judge(
            cfg, dataset, plan, label, man, ref, info.not_kept if info else (), model=model, schedule=schedule
        )
        trace.engine = info
    if trace.verdict.first_divergent_step is not None:  # name the likely mistake where the numbers support one
        from sgdtrace.diagnosis import diagnose_step

        trace.verdict.first_divergent_step = dataclasses.replace(
            trace.verdict.first_divergent_step, diagnosis=diagnose_step(trace)
        )
    if trace.verdict.divergent_steps is not None:
        diagnose_divergent_steps(trace)
    judge_closer(trace)
    return trace


def _reset(engine, ref, cfg) -> dict:
    """The keyword a user's engine takes torch's columns by under ``--judge step`` (``reset``)."""
    return {} if ref is None else {"reset": ref}


def judge_closer(trace: Trace) -> None:
    """At the first divergent step, which side the ground truth is nearer (:func:`sgdtrace.reference.closer`,
    or the model's own ``closer``: logistic regression's loss and gradients at 50 digits).

    The exact step is the article's model's: on the linear model's D features ``closer`` stays None
    (not worked out)."""
    if trace.verdict.first_divergent_step is None:
        return
    own = getattr(trace.model.module, "closer", None)
    if own is not None:  # a model with its own high-precision witness (logistic regression)
        side, errors = own(trace)
        trace.verdict.first_divergent_step = dataclasses.replace(
            trace.verdict.first_divergent_step, closer=side, exact_error=errors
        )
        return
    if not trace.model.scalar:
        return
    from sgdtrace.reference import closer

    found = closer(trace)
    trace.verdict.first_divergent_step = dataclasses.replace(
        trace.verdict.first_divergent_step, closer=found.side, exact_error=found.errors
    )


def diagnose_divergent_steps(trace: Trace) -> None:
    """Under ``--judge step``: the likely mistake at each listed divergent step (each step started
    from torch's values, so each is diagnosed on its own); the first is the verdict's first
    divergent step's."""
    from sgdtrace.diagnosis import diagnose_step

    listed = trace.verdict.divergent_steps["steps"]
    first = trace.verdict.first_divergent_step
    for row in listed:
        if first is not None and row["step"] == first.step and row["field"] == first.field:
            row["diagnosis"] = first.diagnosis
        else:
            row["diagnosis"] = diagnose_step(trace, row)


def _stable_lr(x, plan, cfg: Config, model) -> Callable[[], np.ndarray]:
    """:func:`sgdtrace.blowup.stable_lr` of the run, computed on first use (a blow-up, Trace.columns)
    and kept."""
    return functools.cache(functools.partial(stable_lr, x, plan, cfg, model))


def build_model(cfg: Config, dataset: data_mod.Dataset):
    """The run's model (:class:`sgdtrace.models.Model`): ``cfg.model`` with the data's features."""
    from sgdtrace import models

    return models.build(cfg, dataset.features)


def judge(
    cfg: Config,
    dataset: data_mod.Dataset,
    plan: data_mod.BatchPlan,
    device: str,
    man: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    not_kept: tuple[str, ...] = (),
    model=None,
    schedule=None,
) -> Trace:
    """Build the Trace of two engines' columns: distances, tolerances, verdict, blow-up diagnosis.

    ``not_kept``: torch's state columns the hand side does not keep under torch's names (a user's
    update that keeps momentum's buffer under its own key, or none): the update is judged with
    torch's recorded state in their place, its unseen difference carried and bounded
    (:func:`sgdtrace.divergence.compare_columns`'s ``hidden``), and they are neither shown nor judged.
    ``model``: the run's model (default: the data's). ``schedule``: the run's schedule table
    (:func:`sgdtrace.engines.optimizers.schedules.table`; worked out here when not given).
    """
    model = model or build_model(cfg, dataset)
    initial = model.module.initial(cfg, model)
    man = {**man, **{f: ref[f] for f in not_kept}}
    spe = plan.steps_per_epoch
    steps = plan.n_steps
    epoch = np.repeat(np.arange(1, plan.epochs + 1, dtype=np.int64), spe)
    batch = np.tile(np.arange(1, spe + 1, dtype=np.int64), plan.epochs)
    n = np.tile(plan.batch_sizes(), plan.epochs)
    if schedule is None and cfg.scheduler is not None:
        from sgdtrace.engines.optimizers import schedules

        schedule = schedules.table(cfg, plan)
    extras: dict = {}
    div = divergence.compare_columns(
        man, ref, dataset.x, dataset.y, plan, cfg, model, initial, hidden=not_kept, extras=extras, schedule=schedule
    )
    for f in not_kept:
        del div[f], man[f]
    stable = _stable_lr(dataset.x, plan, cfg, model)
    blown = diagnose(cfg, dataset, man, ref, epoch, batch, stable, plan, model)
    verdict = divergence.verdict(div, man, ref, epoch, batch, blown)
    verdict.one_sided = one_sided(cfg, man, ref, epoch, batch, div)
    kink = getattr(model.module, "KINK", False) or model.activation == "relu"  # a network with relu
    if kink and "ambiguous" in extras:  # a model with relu's kink
        verdict.ambiguous = int(np.sum(extras["ambiguous"]))
    if cfg.judge == "step":
        from sgdtrace.verdict import divergent_steps

        verdict.divergent_steps = divergent_steps(div, epoch, batch)
    # stalled_w, stalled_b per side: the steps whose update was lost to rounding
    stalled = {"manual": stall.stalled(man, cfg, ref, initial), "torch": stall.stalled(ref, cfg, man, initial)}
    verdict.stalled = stall.summary(stalled["torch"])
    assert epoch.shape[0] == steps
    return Trace(
        cfg,
        dataset,
        plan,
        device,
        epoch,
        batch,
        n,
        man,
        ref,
        div,
        verdict,
        stable,
        stalled=stalled,
        model=model,
        initial=initial,
        schedule=schedule,
    )


# ------------------------------------------------------------------ data-parallel SGD (--world-size N)


@dataclass
class RankTrace:
    """The rank axis of a ``--world-size N`` run: each rank's own values, ``(steps, N)`` arrays.

    ``manual``/``torch`` hold each rank's ``grad_w``, ``grad_b`` (its own, before DDP's average)
    and ``loss``; ``divergence`` judges them with the per-batch terms on the rank's batch.
    """

    plan: data_mod.DistributedPlan
    n: np.ndarray
    manual: dict[str, np.ndarray]
    torch: dict[str, np.ndarray]
    divergence: dict[str, divergence.FieldDivergence]

    @property
    def world_size(self) -> int:
        return self.plan.world_size

    def indices(self, step: int, rank: int) -> np.ndarray:
        """The sample indices rank ``rank`` used at step ``step`` (0-based)."""
        return self.plan.rank_plan(rank).indices(step)


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    """The same values bit for bit (nan equal to nan)."""
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def check_world(config: Config, n_samples: int, device) -> None:
    """A world size the data and the machine can hold, before any process starts."""
    ws = config.world_size
    if ws > n_samples:
        raise ConfigError(
            f"{label(config, 'world_size')} {ws}: more ranks than the {n_samples} samples; allowed: 1..{n_samples}"
        )
    if device.type == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if ws > gpus:
            raise ConfigError(
                f"--world-size {ws} on CUDA: one GPU per rank, and this machine has {gpus}; allowed: 1..{gpus}"
            )


def run_distributed(
    config: Config,
    *,
    dataset: data_mod.Dataset | None = None,
    engine: Callable[[Config, Any], Any] | None = None,
    gathered: list[dict[str, Any]] | None = None,
) -> Trace | None:
    """``--world-size N``: the DDP loop on torch.distributed beside the hand-worked ranks.

    Started here: N spawned processes (:func:`sgdtrace.engines.torch_ddp.run`). Under torchrun
    this process is one rank (:func:`sgdtrace.engines.torch_ddp.join`); every rank but 0
    returns ``None`` and writes nothing. ``gathered``: the torch side's values when already run
    (:func:`sgdtrace.engines.torch_ddp.run_many`, the tests' matrix in one group).
    """
    from sgdtrace import dtypes
    from sgdtrace.engines import ddp, manual, protocol, torch_ddp

    device = resolve_device(config.device)
    label = device_label(device)
    cfg = config.replace(device=label, origin=config.origin)
    if dataset is None:
        dataset = data_mod.load(cfg)
    check_world(cfg, len(dataset), device)
    dplan = data_mod.distributed_plan(len(dataset), cfg)
    gplan = dplan.global_plan()
    model = build_model(cfg, dataset)
    # the schedule, worked out once (exit 2 before any process starts where torch would raise)
    from sgdtrace.engines.optimizers import schedules

    schedule = schedules.table(cfg, gplan)
    if engine is None and cfg.engine is not None:  # --engine FILE.py: the user's gradients on every rank
        from sgdtrace.engines.user import UserEngine

        engine = UserEngine(cfg.engine, cfg.engine_timeout)
    # the ranks build the model from the config and the samples: D features named by the data
    # (a CSV file's x1..xD) are named to them in the config
    ranks_cfg = cfg if cfg.features is not None or model.scalar else cfg.replace(features=model.features)
    if gathered is None and torch_ddp.under_torchrun():
        gathered = torch_ddp.join(dataset.x, dataset.y, ranks_cfg, device)
        if gathered is None:  # a rank other than 0 under torchrun: rank 0 writes the output
            return None
    elif gathered is None:
        gathered = torch_ddp.run(dataset.x, dataset.y, ranks_cfg, device)
    gathered = sorted(gathered, key=lambda r: r["rank"])
    for r, res in enumerate(gathered):
        for e, idx in enumerate(res["indices"]):
            if not np.array_equal(idx, dplan.rank_orders[e][r]):  # pragma: no cover - a replay bug
                raise RuntimeError(
                    f"rank {r}, epoch {e + 1}: DistributedSampler gave {idx.tolist()}, "
                    f"the replay {dplan.rank_orders[e][r].tolist()}"
                )
    backend = manual.ArrayBackend("numpy", cfg.dtype)
    initial = model.module.initial(cfg, model)
    own = torch_ddp.OWN
    ref = {f: v for f, v in gathered[0]["cols"].items() if not f.startswith(own)}
    # --judge step: each step of the hand side starts, on every rank, from torch's rank-0 values
    starts = ref if cfg.judge == "step" else None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        info = None
        if hasattr(engine, "run_ddp_columns"):  # a user's file, in a child process: its gradients per rank
            from sgdtrace.engines import optimizers

            state_keys = optimizers.get(cfg.optimizer).state_keys(cfg)
            man, man_ranks = engine.run_ddp_columns(
                cfg, dataset, dplan, state_keys, model, **_reset(engine, starts, cfg)
            )
            info = engine.info
            order = protocol.fields_for(state_keys, model.names)
        else:
            hand = engine(cfg, backend) if engine is not None else manual.engine(cfg, backend, gplan, model, schedule)
            man, man_ranks = ddp.run(hand, dataset.x, dataset.y, dplan, initial, backend, reset=starts)
            order = tuple(hand.fields)
        ref_ranks = {f: np.stack([g["cols"][own + f] for g in gathered], axis=1) for f in man_ranks}
        np_dtype = dtypes.np_dtype(cfg.dtype)
        man["loss"] = man_ranks["loss"].astype(np.float64).mean(axis=1).astype(np_dtype)
        ref["loss"] = ref_ranks["loss"].astype(np.float64).mean(axis=1).astype(np_dtype)
        order += (protocol.LR,) if protocol.LR in ref else ()
        not_kept = info.not_kept if info else ()
        man = {f: man[f] for f in order if f not in not_kept}
        ref = {f: ref[f] for f in order}
        copies = {g["rank"]: {f: g["cols"][f] for f in ref if f in g["cols"]} for g in gathered[1:]}
        trace = judge_distributed(
            cfg,
            dataset,
            dplan,
            label,
            man,
            ref,
            man_ranks,
            ref_ranks,
            model,
            not_kept=not_kept,
            copies=copies,
            schedule=schedule,
        )
        trace.engine = info
        return trace


def judge_distributed(
    cfg: Config,
    dataset: data_mod.Dataset,
    dplan: data_mod.DistributedPlan,
    device: str,
    man: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    man_ranks: dict[str, np.ndarray],
    ref_ranks: dict[str, np.ndarray],
    model=None,
    not_kept: tuple[str, ...] = (),
    copies: dict[int, dict[str, np.ndarray]] | None = None,
    schedule=None,
) -> Trace:
    """The trace of a DDP run: the step's columns judged as one process's (the update on the
    averaged gradients), the averaged gradients and mean loss by the all-reduce's model
    (:func:`sgdtrace.divergence.compare_allreduce`), each rank's own values on its batch.

    ``not_kept``: as for :func:`judge` (a user's update that keeps torch's state under other names).
    ``copies``: rank r's own copy of the shared columns (the averaged gradients, the parameters,
    the optimizer's state), which DDP keeps identical on every rank: where one differs from rank
    0's, the verdict reports it as ``rank<r>.<field>`` (judged bit for bit: no rounding separates
    them). ``schedule``: the run's schedule table over the global plan, when worked out already."""
    world = dplan.world_size
    gplan = dplan.global_plan()
    model = model or build_model(cfg, dataset)
    initial = model.module.initial(cfg, model)
    man = {**man, **{f: ref[f] for f in not_kept}}
    rank_divs = []
    for r in range(world):
        a = dict(man, **{f: man_ranks[f][:, r] for f in man_ranks})
        b = dict(ref, **{f: ref_ranks[f][:, r] for f in ref_ranks})
        div_r = divergence.compare_columns(a, b, dataset.x, dataset.y, dplan.rank_plan(r), cfg, model, initial)
        rank_divs.append({f: div_r[f] for f in man_ranks})
    div = divergence.compare_columns(
        man, ref, dataset.x, dataset.y, gplan, cfg, model, initial, hidden=not_kept, schedule=schedule
    )
    div.update(divergence.compare_allreduce(rank_divs, man_ranks, ref_ranks, man, ref, cfg))
    for f in not_kept:
        del div[f], man[f]
    rank_div = {
        f: divergence.FieldDivergence(
            *(
                np.stack([getattr(d[f], part.name) for d in rank_divs], axis=1)
                for part in dataclasses.fields(divergence.FieldDivergence)
            )
        )
        for f in man_ranks
    }
    epoch, batch, n = gplan.step_epochs(), gplan.step_batches(), gplan.step_sizes()
    stable = _stable_lr(dataset.x, gplan, cfg, model)
    blown = diagnose(cfg, dataset, man, ref, epoch, batch, stable, gplan, model)
    # the verdict also holds each rank's own values (named rank<r>.<field>)
    judged = dict(div)
    a, b = dict(man), dict(ref)
    for f in man_ranks:
        for r in range(world):
            key = f"rank{r}.{f}"
            judged[key] = rank_divs[r][f]
            a[key], b[key] = man_ranks[f][:, r], ref_ranks[f][:, r]
    for r, cols in sorted((copies or {}).items()):  # a rank whose copy differs from rank 0's: reported
        for f, col in cols.items():
            if f in ref and not _identical(ref[f], col):
                key = f"rank{r}.{f}"
                zero = np.zeros(ref[f].shape)
                judged[key] = divergence._distances(ref[f], col, zero, "float64" if f == divergence.LR else cfg.dtype)
                a[key], b[key] = ref[f], col
    verdict = divergence.verdict(judged, a, b, epoch, batch, blown)
    verdict.one_sided = one_sided(cfg, man, ref, epoch, batch, div)
    if cfg.judge == "step":  # every step judged alone: each one outside its allowance, ranks' values too
        from sgdtrace.verdict import divergent_steps

        verdict.divergent_steps = divergent_steps(judged, epoch, batch)
    ranks = RankTrace(
        dplan,
        np.tile(dplan.rank_plan(0).batch_sizes(), dplan.epochs)[:, None].repeat(world, axis=1),
        man_ranks,
        ref_ranks,
        rank_div,
    )
    return Trace(
        cfg,
        dataset,
        gplan,
        device,
        epoch,
        batch,
        n,
        man,
        ref,
        div,
        verdict,
        stable,
        ranks=ranks,
        model=model,
        initial=initial,
        schedule=schedule,
    )
