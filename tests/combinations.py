"""The option space of ``sgdtrace run`` as the combination test walks it, and a pairwise covering array.

Each dimension is one option (or a few flags that go together, as a learner sets them: momentum with
Nesterov), with a handful of values; a value is the flags it adds to ``sgdtrace run``. The default of
each dimension (its first value) adds nothing.

:func:`pairwise` builds a covering array greedily and deterministically: every pair of values of two
dimensions that the tool accepts together appears in at least one row whose pairs are all accepted,
so every row is an honest run; each pair it refuses is tried in a row of its own, everything else at
its default, so the refusal is the pair's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import combinations

ENGINE = "docs/examples/engine_any.py"

#: (dimension, ((value name, flags), ...)); the first value of each is the default (no flags)
DIMENSIONS: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = (
    (
        "optimizer",
        (
            ("sgd", ()),
            ("adam", ("--optimizer", "adam")),
            ("adamw", ("--optimizer", "adamw")),
            ("rmsprop", ("--optimizer", "rmsprop")),
            ("adagrad", ("--optimizer", "adagrad")),
        ),
    ),
    (
        "scheduler",
        (
            ("none", ()),
            ("StepLR", ("--scheduler", "StepLR", "--scheduler-arg", "step_size=1", "--scheduler-arg", "gamma=0.5")),
            (
                "MultiStepLR/step",
                ("--scheduler", "MultiStepLR", "--scheduler-arg", "milestones=1,3", "--scheduler-arg", "interval=step"),
            ),
            ("ExponentialLR", ("--scheduler", "ExponentialLR", "--scheduler-arg", "gamma=0.9")),
            (
                "CosineAnnealingLR/step",
                ("--scheduler", "CosineAnnealingLR", "--scheduler-arg", "T_max=3", "--scheduler-arg", "interval=step"),
            ),
            ("LinearLR", ("--scheduler", "LinearLR", "--scheduler-arg", "total_iters=2")),
            (
                "OneCycleLR",
                ("--scheduler", "OneCycleLR", "--scheduler-arg", "max_lr=0.02", "--scheduler-arg", "total_steps=100"),
            ),
        ),
    ),
    (
        "dtype",
        (
            ("float32", ()),
            ("float64", ("--dtype", "float64")),
            ("bfloat16", ("--dtype", "bfloat16")),
            ("float16", ("--dtype", "float16")),
        ),
    ),
    ("world_size", (("1", ()), ("2", ("--world-size", "2")))),
    ("engine", (("none", ()), ("file", ("--engine", ENGINE)))),
    ("implementation", (("default", ()), ("foreach", ("--foreach",)), ("fused", ("--fused",)))),
    ("reference", (("none", ()), ("exact", ("--reference", "exact")))),
    ("gradcheck", (("off", ()), ("on", ("--gradcheck",)))),
    (
        "format",
        (
            ("table", ()),
            ("json", ("--format", "json")),
            ("csv", ("--format", "csv")),
            ("markdown", ("--format", "markdown")),
            ("html", ("--format", "html")),
        ),
    ),
    ("shuffle", (("off", ()), ("on", ("--shuffle", "--seed", "3")))),
    ("drop_last", (("off", ()), ("on", ("--drop-last",)))),
    (
        "batch_size",
        (("3", ()), ("1", ("--batch-size", "1")), ("2", ("--batch-size", "2")), ("4", ("--batch-size", "4"))),
    ),
    ("epochs", (("1", ()), ("3", ("--epochs", "3")))),
    (
        "sgd_options",
        (
            ("none", ()),
            ("momentum", ("--momentum", "0.9")),
            ("nesterov", ("--momentum", "0.9", "--nesterov")),
            ("dampening", ("--momentum", "0.5", "--dampening", "0.5")),
            ("maximize", ("--maximize",)),
            ("weight_decay", ("--weight-decay", "0.01")),
        ),
    ),
    (
        "optimizer_options",
        (
            ("none", ()),
            ("amsgrad", ("--amsgrad",)),
            ("betas", ("--betas", "0.8,0.99")),
            ("centered", ("--centered",)),
            ("alpha", ("--alpha", "0.9")),
            ("lr_decay", ("--lr-decay", "0.01")),
            ("initial_accumulator_value", ("--initial-accumulator-value", "0.1")),
            ("eps", ("--eps", "1e-6")),
        ),
    ),
    (
        "data",
        (
            ("article", ()),
            ("synthetic", ("--synthetic", "12", "--noise", "0.5", "--true-w", "-1.5", "--true-b", "3")),
            ("start", ("--init-w", "1.5", "--init-b", "-2")),
            # the linear model on D = 3 features (w of shape (3,), nn.Linear(3, 1))
            (
                "features",
                ("--synthetic", "12", "--features", "3", "--true-w", "1,-2,0.5", "--noise", "0.5", "--init-w", "0.5"),
            ),
        ),
    ),
)

#: the flags by which a refusal's message names each dimension (the option a learner typed)
FLAGS = {
    "optimizer": ("--optimizer",),
    "scheduler": ("--scheduler",),
    "dtype": ("--dtype",),
    "world_size": ("--world-size",),
    "engine": ("--engine",),
    "implementation": ("--foreach", "--fused"),
    "reference": ("--reference",),
    "gradcheck": ("--gradcheck",),
    "format": ("--format",),
    "shuffle": ("--shuffle", "--seed"),
    "drop_last": ("--drop-last",),
    "batch_size": ("--batch-size",),
    "epochs": ("--epochs",),
    "sgd_options": ("--momentum", "--nesterov", "--dampening", "--maximize", "--weight-decay"),
    "optimizer_options": (
        "--amsgrad",
        "--betas",
        "--centered",
        "--alpha",
        "--lr-decay",
        "--initial-accumulator-value",
        "--eps",
    ),
    "data": ("--synthetic", "--noise", "--true-w", "--true-b", "--init-w", "--init-b", "--features"),
}

Row = tuple[int, ...]  # one value index per dimension
Pair = tuple[tuple[int, int], tuple[int, int]]  # ((dimension, value), (dimension, value)), dimensions ascending


def argv(row: Row) -> list[str]:
    """``sgdtrace run``'s command line for a row (``-q``: no progress bar)."""
    out = ["run", "-q"]
    for d, v in enumerate(row):
        out += DIMENSIONS[d][1][v][1]
    return out


def describe(row: Row) -> str:
    """A row's non-default values, for a test id and a failure message."""
    parts = [f"{DIMENSIONS[d][0]}={DIMENSIONS[d][1][v][0]}" for d, v in enumerate(row) if v]
    return ",".join(parts) or "defaults"


def row_of(*assigned: tuple[int, int]) -> Row:
    """The row with the given (dimension, value) set and every other dimension at its default."""
    row = [0] * len(DIMENSIONS)
    for d, v in assigned:
        row[d] = v
    return tuple(row)


def all_pairs() -> list[Pair]:
    """Every pair of values (defaults included) of two different dimensions, in a fixed order."""
    out = []
    for d1, d2 in combinations(range(len(DIMENSIONS)), 2):
        for v1 in range(len(DIMENSIONS[d1][1])):
            for v2 in range(len(DIMENSIONS[d2][1])):
                out.append(((d1, v1), (d2, v2)))
    return out


def pairwise(accepted: Callable[[Pair], bool]) -> tuple[list[Row], list[Pair]]:
    """A covering array of the pairs ``accepted`` holds true, and the list of refused pairs.

    Greedy (AETG-like), deterministic: each row starts from the first pair not yet covered, then
    fills the other dimensions in order, each with the value that covers the most new pairs among
    those compatible with every value already in the row (ties: the lower value). A value that is
    not compatible with the row is never chosen, so every pair in every row is accepted.
    """
    pairs = all_pairs()
    ok = {p: accepted(p) for p in pairs}
    refused = [p for p in pairs if not ok[p]]
    uncovered = {p for p in pairs if ok[p]}
    order = [p for p in pairs if ok[p]]

    def compatible(assigned: dict[int, int], d: int, v: int) -> bool:
        return all(ok[_pair((e, w), (d, v))] for e, w in assigned.items())

    rows: list[Row] = []
    while uncovered:
        seed = next(p for p in order if p in uncovered)
        assigned = {seed[0][0]: seed[0][1], seed[1][0]: seed[1][1]}
        for d in range(len(DIMENSIONS)):
            if d in assigned:
                continue
            best, gain = None, -1
            for v in range(len(DIMENSIONS[d][1])):
                if not compatible(assigned, d, v):
                    continue
                new = sum(1 for e, w in assigned.items() if _pair((e, w), (d, v)) in uncovered)
                if new > gain:
                    best, gain = v, new
            if best is None:  # pragma: no cover - the defaults are compatible with everything accepted
                raise AssertionError(f"no value of {DIMENSIONS[d][0]} fits the row {assigned}")
            assigned[d] = best
        row = tuple(assigned[d] for d in range(len(DIMENSIONS)))
        rows.append(row)
        uncovered -= set(pairs_of(row))
    return rows, refused


def pairs_of(row: Row) -> Iterable[Pair]:
    for d1, d2 in combinations(range(len(row)), 2):
        yield ((d1, row[d1]), (d2, row[d2]))


def _pair(a: tuple[int, int], b: tuple[int, int]) -> Pair:
    return (a, b) if a[0] < b[0] else (b, a)
