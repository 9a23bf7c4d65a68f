"""Config: every training option in one frozen dataclass; TOML loading; ALL validation of user input.

A value can come from three places, weakest first: the defaults below (the article's run),
a TOML file (``--config``), and command-line flags. :func:`build_config` merges them and
validates once, naming where a bad value came from (``--lr`` or ``'lr' in run.toml``).

This module is pure Python: it imports neither torch nor numpy, so ``--help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sgdtrace.engines.optimizers import registry as optimizer_registry
from sgdtrace.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DTYPES = ("float32", "float64", "bfloat16", "float16")
FORMATS = ("table", "json", "csv", "markdown", "html")
_DEVICE_RE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
#: memory bounds: every step keeps a few dozen numbers (both engines' values, distances,
#: tolerances), and torch's BatchSampler allocates a list of batch_size slots; beyond these a
#: run would exhaust memory instead of reporting anything
MAX_SAMPLES = 10**7
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max
#: the largest finite value of each type narrower than float64 (numpy.finfo; ml_dtypes.finfo for bfloat16)
_LARGEST = {"float32": FLOAT32_MAX, "bfloat16": 3.3895313892515355e38, "float16": 65504.0}
MAX_BATCH_SIZE = 10**7
MAX_STEPS = 10**7
#: seconds a user's engine file (--engine) may take for one run before it is stopped: a course's
#: files train a few hundred steps in well under a second; a minute leaves room for long runs
#: and still ends an endless loop before a grader's patience does
ENGINE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Config:
    """One run: data, batching, optimizer, device and tolerance. Defaults reproduce the article."""

    lr: float = 0.01
    batch_size: int = 3
    epochs: int = 1
    # the initial values: init_w a number, or a list of D (one per feature)
    init_w: float | tuple[float, ...] = 0.0
    init_b: float = 0.0
    # data: the article's nine points unless a CSV file or a synthetic set is named
    data: str | None = None
    synthetic: int | None = None
    true_w: float | tuple[float, ...] = 2.0
    true_b: float = 10.0
    noise: float = 0.0
    seed: int | None = None
    # batching, as DataLoader does it
    shuffle: bool = False
    drop_last: bool = False
    # torch.optim.SGD's options
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float | None = None
    maximize: bool = False
    # the optimizer (torch.optim's class, lower case) and its options by torch's keyword names;
    # eps None: the optimizer's own default (see OPTIMIZER_DEFAULTS), weight_decay None likewise
    # (AdamW's is 0.01): both are filled in when the Config is made
    optimizer: str = "sgd"
    betas: tuple = (0.9, 0.999)
    eps: float | None = None
    amsgrad: bool = False
    alpha: float = 0.99
    centered: bool = False
    lr_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    foreach: bool | None = None  # torch's implementation choice (the torch side only)
    fused: bool | None = None
    # a learning-rate schedule (torch.optim.lr_scheduler), or None
    scheduler: Schedule | None = None
    # where and how precisely
    device: str = "cpu"
    dtype: str = "float32"
    rtol: float | None = None  # None: the dtype's default (see divergence.default_tolerance)
    atol: float | None = None
    # data-parallel SGD (torch.distributed): processes, DistributedSampler.set_epoch, fault bound
    world_size: int = 1
    set_epoch: bool = True
    rank_timeout: float = 60.0
    # a user's engine file on the hand side (sgdtrace.engines.user), and its time limit in seconds
    engine: str | None = None
    engine_timeout: float = ENGINE_TIMEOUT
    # an engine in any language: a command speaking JSON lines (sgdtrace.engines.command)
    engine_cmd: str | None = None
    # the model (sgdtrace.models) and its loss; features: D input columns (None: the article's
    # form, one x column, scalar w and b)
    model: str = "linear"
    loss: str | None = None  # None: the model's default (mse for linear, bce for logistic)
    features: int | None = None
    # the network's hidden width and activation (--model mlp; None: its defaults, 8 and relu)
    hidden: int | None = None
    activation: str | None = None
    # how the judge runs the hand side: "carry" (two trajectories) or "step" (each step from torch's values)
    judge: str = "carry"
    # where each value came from, for error messages; not part of the run's identity
    origin: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: options given that do not apply to this run (one line each, for stderr); not part of its identity
    warnings: tuple[str, ...] = field(default=(), compare=False, repr=False)
    #: view options a config file set (``rows``, ``every``, ...), merged with the flags by :func:`run_options`
    view: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: how errors name an option not in ``origin``: "keyword" (the Python API: ``lr``) or "flag" (the
    #: command line, :func:`build_config`: ``--lr``); not part of the run's identity
    named_as: str = field(default="keyword", compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", canonical_optimizer(self.optimizer))
        if self.loss is None:
            from sgdtrace.models import LOSSES

            object.__setattr__(self, "loss", LOSSES.get(self.model, ("mse",))[0])
        _fill_optimizer_defaults(self)
        validate(self)

    def replace(self, **changes: Any) -> Config:
        new_opt = canonical_optimizer(changes.get("optimizer", self.optimizer))
        if new_opt != self.optimizer and new_opt in OPTIMIZER_DEFAULTS:
            # eps and weight_decay at the old optimizer's default follow the new one's (AdamW: 0.01)
            for key in ("eps", "weight_decay"):
                if key not in changes and getattr(self, key) == OPTIMIZER_DEFAULTS[self.optimizer][key]:
                    changes[key] = None
        return dataclasses.replace(self, **changes)

    @property
    def effective_seed(self) -> int:
        """The seed actually used for shuffling and synthetic data (0 when none was given)."""
        return 0 if self.seed is None else self.seed

    def to_json(self) -> dict[str, Any]:
        """The training options as the JSON contract's ``config`` object (without ``data``)."""
        return {
            "lr": self.lr,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
            "maximize": self.maximize,
            "init_w": list(self.init_w) if isinstance(self.init_w, tuple) else self.init_w,
            "init_b": self.init_b,
            "shuffle": self.shuffle,
            "seed": self.seed if self.seed is not None else (0 if self.shuffle else None),
            "drop_last": self.drop_last,
            "device": self.device,
            "dtype": self.dtype,
            "rtol": self.rtol,
            "atol": self.atol,
            "world_size": self.world_size,
            **({"set_epoch": self.set_epoch} if self.world_size > 1 else {}),
            "optimizer": self.optimizer,
            "betas": list(self.betas),
            "eps": self.eps,
            "amsgrad": self.amsgrad,
            "alpha": self.alpha,
            "centered": self.centered,
            "lr_decay": self.lr_decay,
            "initial_accumulator_value": self.initial_accumulator_value,
            "foreach": self.foreach,
            "fused": self.fused,
            "scheduler": None if self.scheduler is None else self.scheduler.to_json(),
            "model": self.model,
            "loss": self.loss,
            "features": self.features,
            **({"hidden": self.hidden or 8, "activation": self.activation or "relu"} if self.model == "mlp" else {}),
            "judge": self.judge,
        }


@dataclass(frozen=True)
class Refusal:
    """A combination of options sgdtrace does not run: exit 2, one line naming both options and why.

    ``a`` and ``b`` name the options as docs/options.md's table of combinations shows them,
    ``why`` is the reason (the error message says it), ``names`` the words the message names the two
    options by (``|`` between alternatives), and ``example`` a command line that meets it (the tests
    run each one).
    """

    a: str
    b: str
    why: str
    names: tuple[str, str]
    example: tuple[str, ...]


_ENGINE_EXAMPLE = "docs/examples/engine_correct.py"
_WS = "--world-size N (N >= 2)"
#: every combination refused, by a key the code that refuses it names: the one source of the error
#: messages' reasons and of docs/options.md's table (tests/test_combinations.py holds the two equal)
COMBINATIONS: dict[str, Refusal] = {
    "data-synthetic": Refusal(
        "--data FILE.csv",
        "--synthetic N",
        "choose one data source, not both",
        ("--data", "--synthetic"),
        ("run", "--data", "docs/examples/snippet.csv", "--synthetic", "5"),
    ),
    "nesterov-momentum": Refusal(
        "--nesterov",
        "--momentum 0 (the default), or --dampening other than 0",
        "Nesterov momentum requires a momentum > 0 and zero dampening",
        ("--nesterov", "momentum"),
        ("run", "--nesterov"),
    ),
    "foreach-fused": Refusal(
        "--foreach",
        "--fused",
        "torch takes one of them, not both",
        ("--foreach", "--fused"),
        ("run", "--foreach", "--fused"),
    ),
    "onecycle-adagrad": Refusal(
        "--scheduler OneCycleLR (cycle_momentum = true, its default)",
        "--optimizer adagrad",
        "Adagrad has no momentum or beta1 to cycle; set cycle_momentum = false",
        ("OneCycleLR", "--optimizer adagrad"),
        ("run", "--optimizer", "adagrad", "--scheduler", "OneCycleLR", "--scheduler-arg", "max_lr=0.1")
        + ("--scheduler-arg", "total_steps=9"),
    ),
    "set_epoch-world_size": Refusal(
        "--no-set-epoch",
        "--world-size 1 (the default)",
        "set_epoch is DistributedSampler's; it needs a world size >= 2",
        ("--no-set-epoch", "--world-size"),
        ("run", "--no-set-epoch"),
    ),
    "world_size-reference": Refusal(
        _WS,
        "--reference exact",
        "the ground truth replays one process's run",
        ("--world-size", "--reference exact"),
        ("run", "--world-size", "2", "--reference", "exact"),
    ),
    "float16-bce_sigmoid": Refusal(
        "--dtype float16",
        "--loss bce-sigmoid",
        "torch's BCELoss backward divides by max((1 - p)·p, 1e-12), and 1e-12 is 0 in float16: a "
        "saturated p gives an inf or nan gradient, and the nan parameters then stop BCELoss ('all "
        "elements of input should be between 0 and 1'); use --loss bce (BCEWithLogitsLoss) or another dtype",
        ("--dtype", "--loss"),
        ("run", "--model", "logistic", "--loss", "bce-sigmoid", "--dtype", "float16", "--synthetic", "8"),
    ),
    "world_size-engine_cmd": Refusal(
        _WS,
        '--engine-cmd "COMMAND"',
        "the data-parallel loop asks a Python engine for each rank's gradients; "
        "use --engine FILE.py, or --world-size 1 with --engine-cmd",
        ("--world-size", "--engine-cmd"),
        ("run", "--world-size", "2", "--engine-cmd", "./my_engine"),
    ),
    "world_size-gradcheck": Refusal(
        _WS,
        "--gradcheck",
        "the gradient check replays one process's batches",
        ("--world-size", "--gradcheck"),
        ("run", "--world-size", "2", "--gradcheck"),
    ),
    "graph-world_size": Refusal(
        "sgdtrace graph",
        _WS,
        "the graph is one process's autograd graph",
        ("graph", "--world-size"),
        ("graph", "--world-size", "2"),
    ),
    "graph-engine": Refusal(
        "sgdtrace graph",
        "--engine FILE.py",
        "graph draws sgdtrace's own derivation beside torch's; "
        "use `sgdtrace explain --engine FILE.py --batch K` to see your file's nodes",
        ("graph", "--engine"),
        ("graph", "--engine", _ENGINE_EXAMPLE),
    ),
    "batch-format": Refusal(
        "sgdtrace run --batch K",
        "--format table, json, csv or markdown",
        "run takes --batch with --format html only; for one batch's equations use sgdtrace explain --batch",
        ("--batch", "--format html"),
        ("run", "--batch", "1"),
    ),
    "features-reference": Refusal(
        "--reference exact",
        "--features D, or a CSV file's columns x1..xD",
        "the exact replay works the article's model (one x column, scalar w and b)",
        ("--reference exact", "--features|--data"),
        ("run", "--reference", "exact", "--synthetic", "9", "--features", "2"),
    ),
    "features-gradcheck": Refusal(
        "--gradcheck",
        "--features D, or a CSV file's columns x1..xD",
        "the gradient check works the article's model (one x column, scalar w and b)",
        ("--gradcheck", "--features|--data"),
        ("run", "--gradcheck", "--synthetic", "9", "--features", "2"),
    ),
    "explain-world_size-features": Refusal(
        "sgdtrace explain " + _WS,
        "--features D, or a CSV file's columns x1..xD",
        "explain shows the ranks' equations for the article's model (one x column); "
        "use --world-size 1 to explain a step of this model",
        ("--world-size", "--features|--data"),
        ("explain", "--batch", "1", "--world-size", "2", "--synthetic", "9", "--features", "2"),
    ),
    "explain-world_size-model": Refusal(
        "sgdtrace explain " + _WS,
        "--model logistic or mlp",
        "explain shows the ranks' equations for the linear model; "
        "use sgdtrace run --world-size N for this model's ranks, or explain --world-size 1 for its equations",
        ("--world-size", "--model"),
        ("explain", "--batch", "1", "--world-size", "2", "--model", "mlp", "--synthetic", "9"),
    ),
    "features-data": Refusal(
        "--features D",
        "the article's data (one column), or --data FILE.csv of another number of feature columns",
        "the data's columns give D; give their number, or leave --features out",
        ("--features", "the article's data|--data"),
        ("run", "--features", "2"),
    ),
    "mlp-init": Refusal(
        "--model mlp",
        "--init-w or --init-b",
        "the network starts from torch's default initialisation under torch.manual_seed(--seed); "
        "choose the draw with --seed",
        ("--model mlp", "--init-w|--init-b"),
        ("run", "--model", "mlp", "--init-w", "1"),
    ),
    "mlp-reference": Refusal(
        "--model mlp",
        "--reference exact or --gradcheck",
        "the exact replay and the gradient check work the article's model (one x column, scalar w and b)",
        ("--model mlp", "--reference exact|--gradcheck"),
        ("run", "--model", "mlp", "--gradcheck"),
    ),
    "epoch-batch": Refusal(
        "sgdtrace run --epoch E",
        "no --batch K",
        "run's --epoch is the epoch of --batch K, the batch --format html explains",
        ("--epoch", "--batch"),
        ("run", "--epoch", "3"),
    ),
    "rows-format": Refusal(
        "sgdtrace run --rows N or --every K",
        "--format json, csv or markdown",
        "shapes the table (--format table or html), and the other formats write every step; leave it out",
        ("--rows|--every", "--format"),
        ("run", "--format", "json", "--rows", "5"),
    ),
}


def refusal(key: str, a: str, b: str, sep: str = "and") -> ConfigError:
    """The error for combination ``key`` of :data:`COMBINATIONS`: ``"<a> <sep> <b>: <why>"``, where
    ``a`` and ``b`` are the two options as the user gave them."""
    return ConfigError(f"{a} {sep} {b}: {COMBINATIONS[key].why}")


TRAINING_KEYS = tuple(
    f.name for f in dataclasses.fields(Config) if f.name not in ("origin", "warnings", "view", "named_as")
)
#: ``sgdtrace run``'s own options and their defaults (a file may set them too; see :func:`run_options`)
RUN_DEFAULTS: Mapping[str, Any] = {
    "rows": None,
    "every": 1,
    "reference": "none",
    "gradcheck": False,
    "quiet": False,
    "batch": None,
    "epoch": None,
}
REFERENCES = ("none", "exact")
#: keys a TOML file may hold beyond the training options
VIEW_KEYS = ("format", "output") + tuple(RUN_DEFAULTS)
KNOWN_KEYS = TRAINING_KEYS + VIEW_KEYS

_FLOAT_KEYS = {
    "lr",
    "init_b",
    "true_b",
    "noise",
    "momentum",
    "dampening",
    "weight_decay",
    "rtol",
    "atol",
    "rank_timeout",
    "eps",
    "alpha",
    "lr_decay",
    "initial_accumulator_value",
    "engine_timeout",
}
_INT_KEYS = {
    "batch_size",
    "epochs",
    "synthetic",
    "seed",
    "world_size",
    "rows",
    "every",
    "batch",
    "epoch",
    "features",
    "hidden",
}
#: a number, or a list of numbers (one per feature)
_VECTOR_KEYS = {"init_w", "true_w"}
_BOOL_KEYS = {
    "shuffle",
    "drop_last",
    "nesterov",
    "maximize",
    "set_epoch",
    "gradcheck",
    "quiet",
    "amsgrad",
    "centered",
    "foreach",
    "fused",
}
_STR_KEYS = {
    "data",
    "device",
    "dtype",
    "format",
    "output",
    "reference",
    "optimizer",
    "engine",
    "engine_cmd",
    "model",
    "loss",
    "activation",
    "judge",
}
#: the widest hidden layer a network takes (every step records every weight)
MAX_HIDDEN = 4096
#: how the judge runs the hand side (``--judge``)
JUDGES = ("carry", "step")
#: synthetic data's options: they do nothing without ``synthetic``
_SYNTHETIC_KEYS = ("true_w", "true_b", "noise")
#: the most input columns a linear model takes (every step records a few dozen values per feature)
MAX_FEATURES = 1024


def label(cfg: Config, key: str) -> str:
    """How an error names option ``key``: where it came from (``--lr``, ``'lr' in run.toml``), else as
    the user spells it: a flag on the command line, a keyword argument in Python (``lr``)."""
    return cfg.origin.get(key) or ("--" + key.replace("_", "-") if cfg.named_as == "flag" else key)


_label = label


def _given_value(cfg: Config, key: str, value: Any) -> str:
    """An option and its value as the user gave them: ``--lr -1.0``, ``'lr' in run.toml -1.0``, ``lr=-1``."""
    name = _label(cfg, key)
    return f"{name}={value!r}" if name.isidentifier() else f"{name} {_show(value)}"


def _fail(cfg: Config, key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{_given_value(cfg, key, value)}: {allowed}")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return repr(value) if isinstance(value, str) else str(value)


def validate(cfg: Config) -> None:
    """Check every value and combination; raise :class:`ConfigError` naming the first bad one."""

    def finite(key: str) -> float:
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            _fail(cfg, key, v, "must be a number")
        if not math.isfinite(v):
            _fail(cfg, key, v, "must be a finite number")
        return float(v)

    def integer(key: str, lo: int) -> int:
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int):
            _fail(cfg, key, v, "must be a whole number")
        if v < lo:
            _fail(cfg, key, v, f"must be a whole number >= {lo}")
        return v

    if finite("lr") <= 0:
        _fail(cfg, "lr", cfg.lr, "the learning rate must be a finite number > 0")
    if integer("batch_size", 1) > MAX_BATCH_SIZE:
        _fail(cfg, "batch_size", cfg.batch_size, f"must be a whole number in [1, {MAX_BATCH_SIZE:_}]")
    if integer("epochs", 1) > MAX_STEPS:
        _fail(cfg, "epochs", cfg.epochs, f"must be a whole number in [1, {MAX_STEPS:_}]")
    _vector(cfg, "init_w")
    finite("init_b")
    if finite("momentum") < 0:
        _fail(cfg, "momentum", cfg.momentum, "momentum must be a finite number >= 0")
    d = finite("dampening")
    if not 0.0 <= d <= 1.0:
        _fail(cfg, "dampening", d, "dampening must be in [0, 1]")
    if finite("weight_decay") < 0:
        _fail(cfg, "weight_decay", cfg.weight_decay, "weight decay must be a finite number >= 0")
    for key in ("shuffle", "drop_last", "nesterov", "maximize"):
        if not isinstance(getattr(cfg, key), bool):
            _fail(cfg, key, getattr(cfg, key), "must be true or false")
    if cfg.nesterov and (cfg.momentum <= 0 or cfg.dampening != 0):
        raise ConfigError(
            f"{_label(cfg, 'nesterov')}: {COMBINATIONS['nesterov-momentum'].why} "
            f"(got momentum {cfg.momentum:g}, dampening {cfg.dampening:g}), as torch.optim.SGD does"
        )
    if cfg.seed is not None:
        integer("seed", 0)
        if cfg.seed >= 2**63:
            _fail(cfg, "seed", cfg.seed, "must be a whole number in [0, 2**63)")
    if cfg.data is not None and not isinstance(cfg.data, str):
        _fail(cfg, "data", cfg.data, "must be a path to a CSV file")
    if cfg.synthetic is not None:
        if integer("synthetic", 1) > MAX_SAMPLES:
            _fail(cfg, "synthetic", cfg.synthetic, f"must be a whole number in [1, {MAX_SAMPLES:_}]")
        if cfg.data is not None:
            raise refusal("data-synthetic", _label(cfg, "data"), _label(cfg, "synthetic"))
    _vector(cfg, "true_w")
    finite("true_b")
    if finite("noise") < 0:
        _fail(cfg, "noise", cfg.noise, "the noise level must be a finite number >= 0")
    if not isinstance(cfg.device, str) or not _DEVICE_RE.match(cfg.device):
        _fail(cfg, "device", cfg.device, "allowed: cpu, cuda, cuda:N, auto")
    if cfg.dtype not in DTYPES:
        _fail(cfg, "dtype", cfg.dtype, "allowed: " + ", ".join(DTYPES))
    for key in ("rtol", "atol"):
        if getattr(cfg, key) is not None and finite(key) < 0:
            _fail(cfg, key, getattr(cfg, key), "must be a finite number >= 0")
    _validate_distributed(cfg, integer, finite)
    if cfg.engine is not None:  # --engine FILE.py: a Python file that exists
        if not isinstance(cfg.engine, str) or not cfg.engine.endswith(".py"):
            _fail(cfg, "engine", cfg.engine, "must be a Python file (FILE.py)")
        if not os.path.isfile(cfg.engine):
            _fail(cfg, "engine", cfg.engine, "no such file")
        _validate_declared(cfg)
    if cfg.engine_cmd is not None:  # --engine-cmd "COMMAND": a command line a shell would split
        import shlex

        if cfg.engine is not None:
            _fail(cfg, "engine_cmd", cfg.engine_cmd, f"choose one engine: {_label(cfg, 'engine')} or this, not both")
        try:
            argv = shlex.split(cfg.engine_cmd) if isinstance(cfg.engine_cmd, str) else []
        except ValueError as exc:
            _fail(cfg, "engine_cmd", cfg.engine_cmd, f"not a command line ({exc})")
        if not argv:
            _fail(cfg, "engine_cmd", cfg.engine_cmd, 'must be a command line, e.g. "./my_engine"')
    if finite("engine_timeout") <= 0:
        _fail(cfg, "engine_timeout", cfg.engine_timeout, "must be a number of seconds > 0")
    _validate_model(cfg, integer)
    validate_optimizer(cfg)
    largest = _LARGEST.get(cfg.dtype)
    if largest is not None:  # torch refuses, NumPy turns to inf, a value the type cannot hold
        for key in ("lr", "init_w", "init_b", "momentum", "weight_decay"):
            value = getattr(cfg, key)
            if max(map(abs, value if isinstance(value, tuple) else (value,))) > largest:
                _fail(
                    cfg,
                    key,
                    value,
                    f"does not fit {cfg.dtype} (largest {largest:.8g}); use --dtype float64",
                )
    # where 0 is refused, so is a value that rounds to 0 in the run's dtype (a learning rate of 1e-46
    # is 0 in float32). Where 0 is allowed (init_w, init_b, momentum, dampening, weight_decay) a value
    # that rounds to 0 runs as that 0 in both engines, a legal run. Python's floats are float64 already.
    must_be_nonzero = ("lr", "momentum") if cfg.nesterov else ("lr",)
    for key in must_be_nonzero:
        v = getattr(cfg, key)
        if to_dtype(v, cfg.dtype) == 0:
            _fail(
                cfg,
                key,
                v,
                f"rounds to 0 in {cfg.dtype} (smallest nonzero {TINIEST[cfg.dtype]:.2g}), "
                f"and {'Nesterov momentum needs a momentum' if key == 'momentum' else 'the learning rate must be'}"
                " > 0; use a larger value" + (" or --dtype float64" if cfg.dtype == "float32" else ""),
            )


def _vector(cfg: Config, key: str) -> None:
    """``init_w``, ``true_w``: a finite number, or a non-empty list of finite numbers (one per feature)."""
    value = getattr(cfg, key)
    items = value if isinstance(value, tuple) else (value,)
    if isinstance(value, tuple) and not value:
        _fail(cfg, key, value, "must be a number, or a list of numbers (one per feature)")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            _fail(cfg, key, value, "must be a number, or a list of numbers (one per feature)")
        if not math.isfinite(v):
            _fail(cfg, key, value, "must be finite numbers")


def _validate_model(cfg: Config, integer) -> None:
    """--model, --loss, --features, and the lists of --init-w and --true-w against D."""
    from sgdtrace.models import LOSSES, NAMES

    if cfg.model not in NAMES:
        _fail(cfg, "model", cfg.model, "allowed: " + ", ".join(NAMES))
    if cfg.judge not in JUDGES:
        _fail(cfg, "judge", cfg.judge, "allowed: " + ", ".join(JUDGES))
    if cfg.loss == "bce-sigmoid" and cfg.dtype == "float16":
        raise refusal("float16-bce_sigmoid", f"{_label(cfg, 'dtype')} float16", f"{_label(cfg, 'loss')} bce-sigmoid")
    if cfg.loss not in LOSSES[cfg.model]:
        _fail(cfg, "loss", cfg.loss, f"allowed with --model {cfg.model}: " + ", ".join(LOSSES[cfg.model]))
    if cfg.features is not None and integer("features", 1) > MAX_FEATURES:
        _fail(cfg, "features", cfg.features, f"must be a whole number in [1, {MAX_FEATURES}]")
    for key in ("init_w", "true_w"):
        value = getattr(cfg, key)
        if not isinstance(value, tuple) or (key == "init_w" and cfg.data is not None and cfg.features is None):
            continue  # a CSV file's columns give D: checked against them when the data are read
        if key == "true_w" and cfg.synthetic is None:
            continue  # synthetic data's option, unused here (a warning says so)
        d = cfg.features if cfg.features is not None else 1
        if len(value) != d:
            given = f"{_label(cfg, 'features')} {d}" if cfg.features is not None else "no --features (1 feature)"
            raise ConfigError(
                f"{_label(cfg, key)} {_show(value)} has {len(value)} value{'s' if len(value) != 1 else ''} "
                f"but {given} gives D = {d}: give one number, or {d}"
                + (f" (or --features {len(value)})" if cfg.features is None else "")
            )
    _validate_network(cfg, integer)


def _validate_network(cfg: Config, integer) -> None:
    """--hidden and --activation (a network's only), and what a network does not take."""
    from sgdtrace.models import ACTIVATIONS

    if cfg.model != "mlp":
        for key in ("hidden", "activation"):
            if getattr(cfg, key) is not None:
                _fail(cfg, key, getattr(cfg, key), "is an option of --model mlp (the network's hidden layer)")
        return
    if cfg.hidden is not None and integer("hidden", 1) > MAX_HIDDEN:
        _fail(cfg, "hidden", cfg.hidden, f"must be a whole number in [1, {MAX_HIDDEN}]")
    if cfg.activation is not None and cfg.activation not in ACTIVATIONS:
        _fail(cfg, "activation", cfg.activation, "allowed: " + ", ".join(ACTIVATIONS))
    model = f"{_label(cfg, 'model')} mlp"
    for key in ("init_w", "init_b"):
        if key in cfg.origin or getattr(cfg, key) != 0.0:
            raise refusal("mlp-init", model, _label(cfg, key))


def _validate_declared(cfg: Config) -> None:
    """A run the engine file says it does not serve (its ``SGDTRACE`` declaration): exit 2 naming both.
    Only for an engine named as an option or in a file (``sgdtrace grade`` and the library run the
    configs they are given)."""
    from sgdtrace.engines import declared

    if "engine" not in cfg.origin:
        return

    try:
        found = declared.read(cfg.engine)
    except declared.DeclarationError as exc:
        raise ConfigError(f"{_label(cfg, 'engine')} {cfg.engine!r}: {exc}") from None
    for key in declared.KEYS:
        names = getattr(found, key)
        value = getattr(cfg, key)
        if names is not None and value not in names:
            raise ConfigError(
                f"{_label(cfg, 'engine')} {cfg.engine!r} declares SGDTRACE {key} {', '.join(names)}, "
                f"not {_label(cfg, key)} {value}: run it with one of them, or add {value} to its SGDTRACE"
            )


#: the smallest positive (subnormal) number of each dtype
TINIEST = {
    "float32": 1.401298464324817e-45,
    "float64": 5e-324,
    "bfloat16": 9.183549615799121e-41,
    "float16": 5.960464477539063e-08,
}


def to_dtype(value: float, dtype: str) -> float:
    """``value`` rounded to ``dtype`` (to nearest, as torch and NumPy cast), as a Python float; inf on overflow."""
    if dtype == "float64":
        return float(value)
    if dtype == "bfloat16":  # as torch casts: through float32 (imported here: the CLI's import stays light)
        import ml_dtypes
        import numpy as np

        with np.errstate(over="ignore"):
            return float(ml_dtypes.bfloat16(np.float32(value)))
    try:
        if dtype == "float16":
            return struct.unpack("e", struct.pack("e", value))[0]
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


#: the most processes --world-size starts (DistributedSampler and gloo take more; a teaching run does not)
MAX_WORLD_SIZE = 64


def _validate_distributed(cfg: Config, integer, finite) -> None:
    """--world-size, --no-set-epoch, --rank-timeout (the data's size and the GPUs are checked where known)."""
    if integer("world_size", 1) > MAX_WORLD_SIZE:
        _fail(cfg, "world_size", cfg.world_size, f"must be a whole number in [1, {MAX_WORLD_SIZE}]")
    if not isinstance(cfg.set_epoch, bool):
        _fail(cfg, "set_epoch", cfg.set_epoch, "must be true or false")
    if finite("rank_timeout") <= 0:
        _fail(cfg, "rank_timeout", cfg.rank_timeout, "must be a number of seconds > 0")
    if cfg.engine_cmd is not None and cfg.world_size > 1:
        raise refusal(
            "world_size-engine_cmd", f"{_label(cfg, 'world_size')} {cfg.world_size}", _label(cfg, "engine_cmd"), "with"
        )
    if not cfg.set_epoch and cfg.world_size == 1:
        flag = _label(cfg, "set_epoch")
        flag = {"--set-epoch": "--no-set-epoch", "set_epoch": "set_epoch=False"}.get(flag, flag + " false")
        raise refusal("set_epoch-world_size", flag, f"{_label(cfg, 'world_size')} 1", "with")


# ---------------------------------------------------------------- TOML files


def load_toml(path: str) -> dict[str, Any]:
    """Read a config file into ``{key: value}``; keys may be spelled ``batch_size`` or ``batch-size``.

    Relative ``data`` and ``output`` paths are taken relative to the file's own folder.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"--config {path!r}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path!r}: is a folder, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"--config {path!r}: cannot be read ({exc.strerror})") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path!r}: not a text file (TOML must be UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path!r}: not valid TOML: {exc}") from None

    name = os.path.basename(path)
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for raw_key, value in doc.items():
        key = raw_key.replace("-", "_")
        where = f"{raw_key!r} in {name}"
        if key in spelled:
            raise ConfigError(
                f"{name}: {spelled[key]!r} = {_toml_repr(doc[spelled[key]])} and {raw_key!r} = "
                f"{_toml_repr(value)} set the same option twice; keep one"
            )
        spelled[key] = raw_key
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "; known keys: " + ", ".join(KNOWN_KEYS)
            raise ConfigError(f"{name}: unknown key {raw_key!r}{hint}")
        out[key] = _check_type(key, value, where)
        if key in RUN_DEFAULTS:
            _check_run_option(key, value, where)
        if key in ("data", "output", "engine") and not os.path.isabs(value) and value != "-":
            out[key] = os.path.join(os.path.dirname(os.path.abspath(path)), value)
    return out


def _check_type(key: str, value: Any, where: str) -> Any:
    def bad(kind: str) -> ConfigError:
        return ConfigError(f"{where} = {_toml_repr(value)}: must be {kind}")

    if key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise bad("true or false")
    elif key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("a whole number")
    elif key in _FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
    elif key in _VECTOR_KEYS:
        if isinstance(value, list):
            if not value or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
                raise bad("a number, or an array of numbers (one per feature), e.g. [1.0, -2.0]")
            value = tuple(float(v) for v in value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number, or an array of numbers (one per feature), e.g. [1.0, -2.0]")
        else:
            value = float(value)
    elif key in _STR_KEYS:
        if not isinstance(value, str):
            raise bad("a string")
    elif key == "betas":
        if (
            not isinstance(value, list)
            or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
        ):
            raise bad("an array of two numbers, e.g. [0.9, 0.999]")
        value = tuple(float(v) for v in value)
    elif key == "scheduler":
        if not isinstance(value, dict):
            raise bad('a table: [scheduler] with name = "StepLR" and torch\'s keyword arguments')
        value = schedule_from_table(value, where.split(" in ")[-1])
    return value


def _check_run_option(key: str, value: Any, where: str) -> None:
    """The checks click makes on ``run``'s flags, for the same keys in a file."""
    if key == "rows" and value < 0:
        raise ConfigError(f"{where} = {value}: must be a whole number >= 0 (0: all rows)")
    if key in ("every", "batch", "epoch") and value < 1:
        raise ConfigError(f"{where} = {value}: must be a whole number >= 1")
    if key == "reference" and value not in REFERENCES:
        raise ConfigError(f"{where} = {value!r}: allowed: " + ", ".join(REFERENCES))


def _toml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def build_config(
    file_values: Mapping[str, Any], flag_values: Mapping[str, Any], config_path: str | None = None
) -> Config:
    """Merge defaults < file < flags (flags that were not given are ``None``) and validate."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    name = os.path.basename(config_path) if config_path else "config"
    for key, value in file_values.items():
        if key in TRAINING_KEYS:
            values[key] = value
            origin[key] = f"{key!r} in {name}"
    for key, value in flag_values.items():
        if key in TRAINING_KEYS and value is not None:
            values[key] = value
            origin[key] = "--" + key.replace("_", "-")
    warnings = []
    if values.get("synthetic") is None:
        unused = [origin[k] for k in _SYNTHETIC_KEYS if k in values]
        if unused:
            source = f"the CSV file {values['data']!r}" if values.get("data") is not None else "the article's data"
            warnings.append(
                f"{', '.join(unused)} ignored: synthetic data's option{'s' if len(unused) > 1 else ''}, "
                f"and this run reads {source} (add --synthetic N to use it)"
            )
    view = {k: v for k, v in file_values.items() if k in RUN_DEFAULTS}
    origin.update({k: f"{k!r} in {name}" for k in view})
    return Config(**values, origin=origin, warnings=tuple(warnings), view=view, named_as="flag")


def run_options(cfg: Config, fmt: str, flags: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``run``'s view options: defaults < ``cfg.view`` (the file) < flags given (``None`` or ``False``: not given).

    Returns the options and the warnings (none today). An option of another format is refused
    (:func:`refuse_unused_run_options`), from a flag or a file alike.
    """
    out: dict[str, Any] = {}
    label: dict[str, str] = {}
    for key, default in RUN_DEFAULTS.items():
        flag = flags.get(key)
        if flag is not None and flag is not False:
            out[key], label[key] = flag, "--" + key
        elif key in cfg.view:
            out[key], label[key] = cfg.view[key], cfg.origin[key]
        else:
            out[key] = default
    refuse_unused_run_options(out, label, fmt)
    return out, []


def _given(label: str, value: Any) -> str:
    """An option as the user gave it: ``--rows 5`` or ``'rows' in c.toml = 5``."""
    return f"{label} {value}" if label.startswith("--") else f"{label} = {_toml_repr(value)}"


def _meant(label: str, key: str, value: Any) -> str:
    """The did-you-mean of a misspelt option: ``--epochs 3`` or ``'epochs'``."""
    return f"--{key} {value}" if label.startswith("--") else repr(key)


def refuse_unused_run_options(opts: Mapping[str, Any], label: Mapping[str, str], fmt: str) -> None:
    """The rule for options a command does not take: an option belongs to the commands and formats
    that use it, and given to another (as a flag or a key of the file) it is exit 2, naming where it
    belongs, with a did-you-mean where its name is close to an option that applies. ``run``'s own:
    ``rows`` and ``every`` shape the table (``table`` and ``html``); ``batch`` picks the batch the HTML
    page explains; ``epoch`` is that batch's epoch (and most often ``epochs`` misspelt)."""
    if "batch" in label and fmt != "html":
        raise refusal("batch-format", _given(label["batch"], opts["batch"]), f"--format {fmt}")
    if "epoch" in label and "batch" not in label:
        error = refusal("epoch-batch", _given(label["epoch"], opts["epoch"]), "no --batch K", "with")
        raise ConfigError(f"{error}; did you mean {_meant(label['epoch'], 'epochs', opts['epoch'])}?")
    if fmt not in ("table", "html"):
        for key in ("rows", "every"):
            if key in label:
                raise refusal("rows-format", _given(label[key], opts[key]), f"--format {fmt}")


#: what each of run's own keys is, for a file given to another command
_RUN_KEY_TEXT = {
    "rows": "the table's rows",
    "every": "the table's every K-th step",
    "reference": "the exact reference column",
    "gradcheck": "the finite-difference check",
    "quiet": "the progress bar",
    "batch": "the batch the HTML page explains",
    "epoch": "the epoch of the batch the HTML page explains",
}


def refuse_run_keys(cfg: Config, command: str) -> None:
    """A config file's keys that only ``sgdtrace run`` takes, given to another command: exit 2 (the
    same rule as a flag the command does not take)."""
    for key in cfg.view:
        if command in ("explain", "graph") and key in ("batch", "epoch"):
            hint = f"; give --{key} on the command line" + (" (or did you mean 'epochs'?)" if key == "epoch" else "")
        else:
            hint = "; leave it out of the file"
        raise ConfigError(
            f"{_given(cfg.origin[key], cfg.view[key])}: a key of sgdtrace run ({_RUN_KEY_TEXT[key]}); "
            f"sgdtrace {command} does not take it{hint}"
        )


# ---------------------------------------------------------------- optimizers and schedules

# every optimizer is declared once, in sgdtrace.engines.optimizers.registry (no NumPy, no torch);
# the names below are read from it
OPTIMIZERS = optimizer_registry.NAMES
#: torch's class name of each optimizer
OPTIMIZER_CLASSES = {name: spec.torch_class for name, spec in optimizer_registry.SPECS.items()}
#: the defaults that differ by optimizer (torch's own): eps, weight_decay
OPTIMIZER_DEFAULTS = {name: dict(spec.defaults) for name, spec in optimizer_registry.SPECS.items()}
#: the options each optimizer takes, by torch's keyword names (lr, weight_decay, maximize,
#: foreach: all of them)
OPTIMIZER_OPTIONS = {name: spec.options for name, spec in optimizer_registry.SPECS.items()}
_OPTION_DEFAULTS = {key: option.default for key, option in optimizer_registry.OPTIONS.items()}


def canonical_optimizer(name: Any) -> Any:
    """An optimizer's name in any case as sgdtrace spells it (torch's class, lower case: ``Adam`` and
    ``ADAM`` are ``adam``, ``RMSprop`` is ``rmsprop``); anything else unchanged, for validation to refuse."""
    return name.lower() if isinstance(name, str) and name.lower() in OPTIMIZERS else name


def did_you_mean(name: Any, choices, spelled=None) -> str:
    """``; did you mean 'X'?`` for a misspelt name (any case; a unique prefix counts), or ""."""
    if not isinstance(name, str) or not name:
        return ""
    spelled = spelled or {c.lower(): c for c in choices}
    low = name.lower()
    close = difflib.get_close_matches(low, list(spelled), n=1, cutoff=0.6)
    if not close:
        close = [c for c in spelled if c.startswith(low)]
        close = close if len(close) == 1 else []
    return f"; did you mean {spelled[close[0]]!r}?" if close else ""


#: an example value of each optimizer option on the command line (for the combinations' examples)
_OPTION_EXAMPLES = {key: option.example for key, option in optimizer_registry.OPTIONS.items()}
for _key in _OPTION_DEFAULTS:  # each optimizer option, with the optimizers torch gives no such keyword
    _users = [o for o in OPTIMIZERS if _key in OPTIMIZER_OPTIONS[o]]
    _others = [o for o in OPTIMIZERS if o not in _users]
    _flag = "--" + _key.replace("_", "-")
    COMBINATIONS[f"{_key}-optimizer"] = Refusal(
        _flag,
        "--optimizer " + ", ".join(_others),
        f"has no {_key} (it belongs to {', '.join(_users)})",
        (_flag, "--optimizer"),
        ("run", "--optimizer", _others[0], _flag, *_OPTION_EXAMPLES[_key])
        if _key != "nesterov"  # Nesterov needs a momentum: RMSprop has one (the rest refuse --momentum first)
        else ("run", "--optimizer", "rmsprop", "--momentum", "0.9", "--nesterov"),
    )


def combinations_table() -> str:
    """docs/options.md's table of the combinations refused (:data:`COMBINATIONS`), as Markdown."""
    lines = ["| option | with | why |", "| --- | --- | --- |"]
    for r in COMBINATIONS.values():
        lines.append(f"| `{r.a}` | `{r.b}` | {r.why} |")
    return "\n".join(lines) + "\n"


def _fill_optimizer_defaults(cfg: Config) -> None:
    """eps and weight_decay left unset take the chosen optimizer's default (as torch's classes do)."""
    defaults = OPTIMIZER_DEFAULTS.get(cfg.optimizer, OPTIMIZER_DEFAULTS["sgd"])
    if cfg.weight_decay is None:
        object.__setattr__(cfg, "weight_decay", defaults["weight_decay"])
    if cfg.eps is None:
        object.__setattr__(cfg, "eps", defaults["eps"])
    if isinstance(cfg.betas, list):
        object.__setattr__(cfg, "betas", tuple(cfg.betas))


#: the optimizer options that take a number >= 0 (the registry's ranges; momentum is checked with
#: the run's options first, and again here to no effect)
_NON_NEGATIVE = tuple(key for key, option in optimizer_registry.OPTIONS.items() if option.range == ">= 0")


def validate_optimizer(cfg: Config) -> None:
    """torch's rules for the optimizer's options; an option the optimizer does not take is exit 2."""
    if cfg.optimizer not in OPTIMIZERS:
        _fail(
            cfg,
            "optimizer",
            cfg.optimizer,
            "allowed: " + ", ".join(OPTIMIZERS) + " (any case)" + did_you_mean(cfg.optimizer, OPTIMIZERS),
        )
    name = cfg.optimizer
    takes = OPTIMIZER_OPTIONS[name]
    for key, default in _OPTION_DEFAULTS.items():
        value = getattr(cfg, key)
        if key not in takes and value != default and not (key == "eps" and value is None):
            raise ConfigError(
                f"{_given_value(cfg, key, value)} and "
                f"{_given_value(cfg, 'optimizer', name) if cfg.named_as == 'keyword' else _label(cfg, 'optimizer')}"
                f"{'' if cfg.named_as == 'keyword' else ' ' + name}: "
                f"torch.optim.{OPTIMIZER_CLASSES[name]} {COMBINATIONS[f'{key}-optimizer'].why}"
            )
    b = cfg.betas
    if (
        not isinstance(b, tuple)
        or len(b) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in b)
    ):
        _fail(cfg, "betas", b, "must be two numbers, e.g. 0.9,0.999")
    for i, v in enumerate(b):
        if not (math.isfinite(v) and 0.0 <= v < 1.0):
            raise ConfigError(f"{_label(cfg, 'betas')} {_show_betas(b)}: betas[{i}] = {v!r} must be in [0, 1)")
    for key in _NON_NEGATIVE:
        v = getattr(cfg, key)
        if v is None and key == "eps":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            _fail(cfg, key, v, f"{key} must be a finite number >= 0 (as torch.optim checks)")
    for key in ("amsgrad", "centered"):
        if not isinstance(getattr(cfg, key), bool):
            _fail(cfg, key, getattr(cfg, key), "must be true or false")
    for key in ("foreach", "fused"):
        if getattr(cfg, key) is not None and not isinstance(getattr(cfg, key), bool):
            _fail(cfg, key, getattr(cfg, key), "must be true or false")
    if cfg.foreach and cfg.fused:
        raise refusal("foreach-fused", _label(cfg, "foreach"), _label(cfg, "fused"))
    if cfg.scheduler is not None:
        if not isinstance(cfg.scheduler, Schedule):
            _fail(cfg, "scheduler", cfg.scheduler, "must be a schedule (a [scheduler] table)")
        cycled = optimizer_registry.spec(name).cycles
        if cfg.scheduler.name == "OneCycleLR" and cfg.scheduler.get("cycle_momentum", True) and cycled is None:
            raise refusal(
                "onecycle-adagrad", f"{_label(cfg, 'scheduler')} OneCycleLR", f"{_label(cfg, 'optimizer')} adagrad"
            )


def _show_betas(b: Any) -> str:
    return ",".join(repr(v) for v in b) if isinstance(b, tuple) else _show(b)


#: torch.optim.lr_scheduler's classes sgdtrace runs: each keyword argument's kind and default
#: (REQUIRED: torch has none), and the range sgdtrace accepts
REQUIRED = object()
SCHEDULERS: dict[str, dict[str, tuple[str, Any]]] = {
    "StepLR": {"step_size": ("int>=1", REQUIRED), "gamma": ("float>=0", 0.1)},
    "MultiStepLR": {"milestones": ("ints>=0", REQUIRED), "gamma": ("float>=0", 0.1)},
    "ExponentialLR": {"gamma": ("float>=0", REQUIRED)},
    "CosineAnnealingLR": {"T_max": ("int>=1", REQUIRED), "eta_min": ("float>=0", 0.0)},
    "LinearLR": {
        "start_factor": ("float(0,1]", 1.0 / 3),
        "end_factor": ("float[0,1]", 1.0),
        "total_iters": ("int>=0", 5),
    },
    "OneCycleLR": {
        "max_lr": ("float>0", REQUIRED),
        "total_steps": ("int>=1", None),
        "epochs": ("int>=1", None),
        "steps_per_epoch": ("int>=1", None),
        "pct_start": ("float[0,1]", 0.3),
        "anneal_strategy": ("cos|linear", "cos"),
        "cycle_momentum": ("bool", True),
        "base_momentum": ("float>=0", 0.85),
        "max_momentum": ("float>=0", 0.95),
        "div_factor": ("float>0", 25.0),
        "final_div_factor": ("float>0", 1e4),
        "three_phase": ("bool", False),
    },
}
INTERVALS = ("epoch", "step")
_KIND_TEXT = {
    "int>=1": "a whole number >= 1",
    "int>=0": "a whole number >= 0",
    "float>=0": "a finite number >= 0",
    "float>0": "a finite number > 0",
    "float(0,1]": "a number in (0, 1]",
    "float[0,1]": "a number in [0, 1]",
    "ints>=0": "a list of whole numbers >= 0 (e.g. [2, 4]; on the command line 2,4)",
    "cos|linear": "cos or linear",
    "bool": "true or false",
}


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: torch's class name, its keyword arguments, when it steps."""

    name: str
    args: tuple[tuple[str, Any], ...]  # (keyword, value), every keyword of the class (defaults filled)
    interval: str  # "epoch" or "step": when scheduler.step() is called

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.args).get(key, default)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments torch's class is called with (unset optional ones left out)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.args if v is not None}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "interval": self.interval, **self.kwargs}


def _check_arg(name: str, key: str, kind: str, value: Any, where: str) -> Any:
    def bad() -> ConfigError:
        shown = repr(value) if isinstance(value, float) else _toml_repr(value)
        return ConfigError(f"{where}: {name} {key} = {shown}: must be {_KIND_TEXT[kind]}")

    if kind in ("int>=1", "int>=0"):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if kind == "int>=1" else 0):
            raise bad()
    elif kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad()
        value = float(value)
        lo_open = kind in ("float>0", "float(0,1]")
        if value < 0 or (lo_open and value == 0) or (kind.endswith("1]") and value > 1):
            raise bad()
    elif kind == "ints>=0":
        if (
            not isinstance(value, (list, tuple))
            or not value
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value)
        ):
            raise bad()
        value = tuple(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad()
    elif value not in kind.split("|"):
        raise bad()
    return value


def make_schedule(values: Mapping[str, Any], where: str) -> Schedule:
    """A :class:`Schedule` from ``name``, ``interval`` and torch's keyword arguments; ``where`` names
    the source in errors (``'scheduler' in run.toml``, ``--scheduler-arg``)."""
    values = dict(values)
    name = values.pop("name", None)
    if name is None:
        raise ConfigError(f"{where}: the schedule needs a name: one of {', '.join(SCHEDULERS)}")
    name = {n.lower(): n for n in SCHEDULERS}.get(name.lower(), name) if isinstance(name, str) else name
    if name not in SCHEDULERS:  # (torch's class names, in any case: steplr is StepLR)
        hint = did_you_mean(name, SCHEDULERS)
        raise ConfigError(f"{where}: scheduler {name!r}: allowed: {', '.join(SCHEDULERS)} (any case){hint}")
    interval = values.pop("interval", "step" if name == "OneCycleLR" else "epoch")
    if interval not in INTERVALS:
        raise ConfigError(f"{where}: interval = {interval!r}: must be epoch or step")
    spec = SCHEDULERS[name]
    for key in values:
        if key not in spec:
            raise ConfigError(f"{where}: {name} has no argument {key!r}; it takes {', '.join(spec)} (and interval)")
    args = []
    for key, (kind, default) in spec.items():
        if key in values:
            args.append((key, _check_arg(name, key, kind, values[key], where)))
        elif default is REQUIRED:
            raise ConfigError(f"{where}: {name} needs {key} ({_KIND_TEXT[kind]})")
        else:
            args.append((key, default))
    sched = Schedule(name, tuple(args), interval)
    if (
        name == "OneCycleLR"
        and sched.get("total_steps") is None
        and (sched.get("epochs") is None or sched.get("steps_per_epoch") is None)
    ):
        raise ConfigError(f"{where}: OneCycleLR needs total_steps, or epochs and steps_per_epoch (as torch does)")
    return sched


def schedule_from_table(table: Mapping[str, Any], file_name: str) -> Schedule:
    return make_schedule(table, f"'scheduler' in {file_name}")


def parse_scheduler_flags(name: str | None, args: tuple[str, ...]) -> Schedule | None:
    """``--scheduler NAME`` and its ``--scheduler-arg KEY=VALUE`` flags (values read as TOML would)."""
    if name is None:
        if args:
            raise ConfigError(f"--scheduler-arg {args[0]!r}: name the schedule with --scheduler")
        return None
    values: dict[str, Any] = {"name": name}
    for item in args:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--scheduler-arg {item!r}: must be KEY=VALUE (e.g. gamma=0.5)")
        values[key.strip()] = _parse_value(text.strip())
    return make_schedule(values, "--scheduler")


def _parse_value(text: str) -> Any:
    """A flag's value: true/false, a whole number, a number, a comma list of those, else a string."""
    if "," in text:
        return [_parse_value(t.strip()) for t in text.split(",") if t.strip()]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_vector(text: str | None, flag: str) -> float | tuple[float, ...] | None:
    """``--init-w 0.5`` (a number) or ``--init-w 1,2,3`` (a list of numbers, one per feature)."""
    if text is None:
        return None
    parts = [t.strip() for t in text.split(",")]
    try:
        values = tuple(float(t) for t in parts)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: must be a number, or a list of numbers such as 1,-2,0.5") from None
    return values if "," in text else values[0]


def parse_betas(text: str | None) -> tuple[float, float] | None:
    """``--betas 0.9,0.999``."""
    if text is None:
        return None
    parts = [t.strip() for t in text.split(",")]
    try:
        values = tuple(float(t) for t in parts)
    except ValueError:
        values = ()
    if len(values) != 2:
        raise ConfigError(f"--betas {text!r}: must be two numbers, e.g. 0.9,0.999")
    return values  # type: ignore[return-value]
