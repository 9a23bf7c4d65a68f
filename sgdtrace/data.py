"""Data sets (the article's, a CSV file, a synthetic line) and the batch plan.

The batch plan is the manual side's own derivation of the batches that
``DataLoader(TensorDataset(x, y), batch_size, shuffle, generator, drop_last)`` yields,
epoch after epoch. The torch engine never sees it: it runs a real DataLoader, and the
tests hold the two against each other.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from sgdtrace.config import MAX_STEPS, Config
from sgdtrace.errors import ConfigError, DataError

#: The article's data: x = 0..8 and y = 2x + 10 (Equation 12). The article's code snippet
#: drops 18 from y (nine x, eight y); sgdtrace uses the table's data, which has all nine.
ARTICLE_X = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
ARTICLE_Y = (10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 22.0, 24.0, 26.0)


@dataclass(frozen=True)
class Dataset:
    """Samples as float64 arrays (as read); each engine casts them to the run's dtype.

    ``x`` is ``(n, D)``; ``features`` is D, or None for the article's form: one column named ``x``
    (the article's data, a CSV file's ``x`` column, ``--synthetic N`` without ``--features``).
    ``true_w`` is a number, or a tuple of D numbers.
    """

    x: np.ndarray
    y: np.ndarray
    info: dict[str, Any]  # the JSON contract's config.data object
    true_w: Any = None
    true_b: float | None = None
    features: int | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def from_arrays(
        cls,
        x: Any,
        y: Any,
        info: dict[str, Any] | None = None,
        true_w: Any = None,
        true_b: float | None = None,
    ) -> Dataset:
        """Build a data set, refusing what a DataLoader would choke on (the article's 9-vs-8 slip).

        ``x`` of one dimension is the article's form (one ``x`` column); ``(n, D)`` is D features.
        """
        xa = np.asarray(x, dtype=np.float64)
        features = None if xa.ndim <= 1 else int(xa.shape[1])
        xa = xa.reshape(-1, 1) if xa.ndim <= 1 else xa.reshape(xa.shape[0], -1)
        ya = np.asarray(y, dtype=np.float64).reshape(-1)
        if xa.shape[0] != ya.shape[0]:
            raise DataError(
                f"x has {xa.shape[0]} values but y has {ya.shape[0]}: every x needs its y "
                "(the article's snippet has nine x and eight y, it drops 18)"
            )
        if xa.shape[0] == 0:
            raise DataError("the data set is empty: at least one (x, y) sample is needed")
        if xa.shape[1] == 0:
            raise DataError("x has no columns: at least one feature is needed")
        for j in range(xa.shape[1]):
            bad = np.flatnonzero(~np.isfinite(xa[:, j]))
            if bad.size:
                name = "x" if features is None else f"x{j + 1}"
                raise DataError(f"{name}[{bad[0]}] = {xa[bad[0], j]}: values must be finite numbers")
        bad = np.flatnonzero(~np.isfinite(ya))
        if bad.size:
            raise DataError(f"y[{bad[0]}] = {ya[bad[0]]}: values must be finite numbers")
        return cls(
            xa,
            ya,
            info if info is not None else {"source": "arrays", "n": int(xa.shape[0])},
            true_w,
            true_b,
            features,
        )

    @property
    def columns(self) -> tuple[str, ...]:
        """The input columns' names: ``("x",)``, or ``("x1", ..., "xD")``."""
        if self.features is None:
            return ("x",)
        return tuple(f"x{j + 1}" for j in range(self.features))


def article() -> Dataset:
    return Dataset.from_arrays(ARTICLE_X, ARTICLE_Y, {"source": "article", "n": 9}, 2.0, 10.0)


def synthetic(n: int, true_w: Any, true_b: float, noise: float, seed: int, features: int | None = None) -> Dataset:
    """``n`` points with x uniform in [0, 10) and y = true_w*x + true_b + noise*N(0, 1); reproducible.

    With ``features`` D: x of shape (n, D), each entry uniform in [0, 10) (drawn row by row), and
    y = x·true_w + true_b + noise (``true_w`` a number for every feature, or a list of D).
    Without it, the article's form (the draws are those of D = 1).
    """
    rng = np.random.default_rng(seed)
    if features is None:
        x = rng.uniform(0.0, 10.0, n)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by from_arrays
            y = true_w * x + true_b
            if noise > 0:
                y = y + noise * rng.standard_normal(n)
        info = {"source": "synthetic", "n": n, "true_w": true_w, "true_b": true_b, "noise": noise, "seed": seed}
        return Dataset.from_arrays(x, y, info, true_w, true_b)
    weights = np.broadcast_to(np.asarray(true_w, dtype=np.float64), (features,))
    x = rng.uniform(0.0, 10.0, (n, features))
    with np.errstate(over="ignore", invalid="ignore"):
        y = x @ weights + true_b
        if noise > 0:
            y = y + noise * rng.standard_normal(n)
    shown = list(true_w) if isinstance(true_w, (tuple, list)) else true_w
    info = {
        "source": "synthetic",
        "n": n,
        "features": features,
        "true_w": shown,
        "true_b": true_b,
        "noise": noise,
        "seed": seed,
    }
    return Dataset.from_arrays(x, y, info, tuple(float(v) for v in weights), true_b)


def read_csv(path: str) -> Dataset:
    """A CSV file with a header row naming columns ``x`` and ``y`` (other columns are ignored); ``-``: stdin.

    A well-formed file is parsed column-wise (:func:`_parse_fast`); anything else goes through
    the row-by-row reader (:func:`_parse_rows`), which accepts the same files with the same
    values and names the row and column of what is wrong.
    """
    label = f"--data {path!r}"
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as fh:
                raw = fh.read()
    except FileNotFoundError:
        raise DataError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{label}: is a folder, not a CSV file") from None
    except OSError as exc:
        raise DataError(f"{label}: cannot be read ({exc.strerror})") from None
    if b"\x00" in raw:
        raise DataError(f"{label}: a binary file, not CSV text")
    text: str | bytes = raw[len(codecs.BOM_UTF8) :] if raw.startswith(codecs.BOM_UTF8) else raw
    if not text.isascii():  # plain ASCII is UTF-8 already: read as bytes, never decoded whole
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DataError(f"{label}: not UTF-8 text, so not a CSV file sgdtrace can read") from None
    parsed = _parse_fast(text, label)
    if parsed is None and isinstance(text, bytes):
        text = text.decode("ascii")
    xs, ys = parsed if parsed is not None else _parse_rows(text, label)
    return Dataset.from_arrays(xs, ys, {"source": "csv", "path": path, "n": len(ys)})


def _header_columns(header_row: list[str], label: str) -> tuple[list[tuple[str, int]], int]:
    """The x columns (``[("x", i)]``, or ``[("x1", i1), ..., ("xD", iD)]`` in order) and the index
    of column y in the header; each must be named exactly once (any case, spaces). A mix of ``x``
    and ``x1..xD``, or numbered columns with a gap, is an error naming the header."""
    header = [h.strip().lower() for h in header_row]
    numbered = sorted({h for h in header if re.fullmatch(r"x\d+", h)}, key=lambda h: int(h[1:]))
    missing = [c for c in ("x", "y") if c not in header and not (c == "x" and numbered)]
    if missing:
        raise DataError(
            f"{label}: the header {header_row!r} has no column {' or '.join(map(repr, missing))}; "
            "expected a header row naming columns x and y (or x1..xD and y)"
        )
    if "x" in header and numbered:
        raise DataError(
            f"{label}: the header {header_row!r} names both x and {numbered[0]}: use one column x, "
            "or the feature columns x1..xD, not both"
        )
    for col in ("x", "y", *numbered):
        where = [i for i, h in enumerate(header) if h == col]
        if len(where) > 1:
            names = " and ".join(f"{header_row[i].strip()!r} (column {i + 1})" for i in where)
            raise DataError(
                f"{label}: the header {header_row!r} names column {col} twice: {names}; rename or remove one"
            )
    if not numbered:
        return [("x", header.index("x"))], header.index("y")
    expected = [f"x{j + 1}" for j in range(len(numbered))]
    if numbered != expected:
        lacking = [c for c in expected if c not in numbered] or [numbered[0]]
        why = f"no {lacking[0]}" if lacking[0] in expected else "they start at x1"
        raise DataError(
            f"{label}: the header {header_row!r} has feature columns {', '.join(numbered)}: expected "
            f"x1..x{len(numbered)} without a gap ({why})"
        )
    return [(c, header.index(c)) for c in expected], header.index("y")


def _parse_fast(text: str | bytes, label: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A well-formed file's x and y columns, or ``None`` when the file needs the row-by-row reader.

    "Well-formed": every non-empty row has the header's number of fields and its x and y cells
    are finite numbers. The rows are those the csv module reads in :func:`_parse_rows`, and every
    cell is parsed as ``float`` parses it (``np.loadtxt`` parses as Python does, without ``1_000``'s
    underscores, which it refuses), so both readers give the same values. Where a file is not
    plain (quoted fields, non-ASCII text) the csv module splits the rows; else ``np.loadtxt``
    reads them from the bytes (``text``: the file's text, or its bytes when they are ASCII).
    Each row's width is checked by ``np.loadtxt`` itself where every column is x or y (it
    refuses a row whose number of columns changes), else by vectorised counts of its commas.
    """
    plain = text if isinstance(text, bytes) else text.encode("ascii") if text.isascii() else None
    if plain is None or b'"' in plain or (b"\r" in plain and plain.count(b"\r") != plain.count(b"\r\n")):
        # quoted fields, a lone CR (an error for the csv module), Unicode spaces: the csv module splits the rows
        if isinstance(text, bytes):
            text = text.decode("ascii")
        try:
            rows = list(csv.reader(io.StringIO(text)))
        except csv.Error:
            return None
        start = 0
        while start < len(rows) and not any(cell.strip() for cell in rows[start]):
            start += 1  # blank rows before the header
        if start == len(rows):
            return None
        xcols, iy = _header_columns(rows[start], label)
        body = [r for r in rows[start + 1 :] if r]  # an empty line is an empty row; other blank rows fail below
        if not body or set(map(len, body)) != {len(rows[start])}:
            return None
        try:
            xs = np.array([list(map(float, map(itemgetter(ix), body))) for _, ix in xcols], dtype=np.float64).T
            ys = np.array(list(map(float, map(itemgetter(iy), body))), dtype=np.float64)
        except ValueError:  # an empty or non-numeric cell (or a blank row): the row-by-row reader says where
            return None
    else:
        if b"\r" in plain:
            plain = plain.replace(b"\r\n", b"\n")
        pos = 0
        while True:  # the header: the first line with a non-blank cell
            end = plain.find(b"\n", pos)
            line = (plain[pos:] if end < 0 else plain[pos:end]).decode("ascii")
            if line.replace(",", "").strip():
                break
            if end < 0:
                return None
            pos = end + 1
        xcols, iy = _header_columns(line.split(","), label)
        body = len(plain) if end < 0 else end + 1  # where the rows start
        width = line.count(",") + 1
        usecols = [ix for _, ix in xcols] + [iy]
        every = sorted(usecols) == list(range(width))  # no column but x and y
        # per line (vectorised, a few MB at a time): its length (and its commas); empty lines are
        # skipped by both readers
        b = np.frombuffer(plain, dtype=np.uint8)[body:]
        step = 1 << 22
        newlines = np.concatenate(
            [np.flatnonzero(b[i : i + step] == 10) + i for i in range(0, b.size, step)] or [np.zeros(0, np.intp)]
        )
        lengths = np.diff(np.concatenate(([-1], newlines, [b.size]))) - 1
        used = lengths > 0
        n = int(used.sum())
        if n == 0 or lengths.max() > csv.field_size_limit():
            return None  # no rows, or a field over the csv module's limit
        if not every:
            commas = np.bincount(np.searchsorted(newlines, np.flatnonzero(b == 44)), minlength=lengths.size)
            if (commas[used] != width - 1).any():
                return None  # a row of another width
        rows = io.BytesIO(plain)  # shares the bytes, not a copy
        rows.seek(body)
        try:
            values = np.loadtxt(
                rows,
                dtype=np.float64,
                delimiter=",",
                comments=None,
                usecols=None if every else usecols,
                ndmin=2,
                encoding="ascii",
            )
        except ValueError:  # an empty or non-numeric cell, a blank row, a row of another width: the row reader says
            return None
        if values.shape != (n, width if every else len(usecols)):
            return None
        if every:
            values = values[:, usecols]
        xs, ys = np.ascontiguousarray(values[:, :-1]), np.ascontiguousarray(values[:, -1])
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        return None
    return (xs[:, 0] if xcols[0][0] == "x" else xs), ys


def _parse_rows(text: str, label: str) -> tuple[Any, list[float]]:
    """The row-by-row reader: x and y cell by cell, naming the row and column of the first bad one."""
    try:
        rows = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    except csv.Error as exc:  # e.g. a field longer than the csv module's limit
        raise DataError(f"{label}: not a CSV file sgdtrace can read ({exc})") from None
    if not rows:
        raise DataError(f"{label}: the file is empty; expected a header row naming columns x and y")
    xcols, iy = _header_columns(rows[0], label)
    width = len(rows[0])
    body = rows[1:]
    if not body:
        raise DataError(f"{label}: a header but no data rows")
    columns = [*xcols, ("y", iy)]

    def counts() -> dict[str, int]:
        return {c: sum(1 for r in body if len(r) > i and r[i].strip()) for c, i in columns}

    def uneven(cx: dict[str, int]) -> tuple[str, str]:
        """The first x column whose count is not y's: ``column x has 2 values but column y has 1``."""
        c = next((c for c, _ in xcols if cx[c] != cx["y"]), xcols[0][0])
        return f"column {c} has {cx[c]} values", f"column y has {cx['y']}"

    xs: list[list[float]] = [[] for _ in xcols]
    ys: list[float] = []
    outs = [*xs, ys]
    for lineno, row in enumerate(body, start=2):
        if len(row) != width:
            cx = counts()
            lacking = [c for c, i in columns if len(row) <= i]
            if len(set(cx.values())) > 1:
                what = f"no {' or '.join(lacking)} value" if lacking else f"{len(row)} fields"
                a, b = uneven(cx)
                raise DataError(f"{label}: row {lineno} has {what}: {a} but {b}; every x needs its y")
            raise DataError(
                f"{label}: row {lineno} has {len(row)} field{'s' if len(row) != 1 else ''} but the header "
                f"has {width}" + (f" (no {' or '.join(lacking)} value)" if lacking else "")
            )
        for (col, idx), out in zip(columns, outs):
            cell = row[idx].strip()
            if not cell:
                a, b = uneven(counts())
                raise DataError(f"{label}: row {lineno} has no {col} value ({a}, {b}); every x needs its y")
            try:
                value = float(cell)
            except ValueError:
                raise DataError(f"{label}: row {lineno}, column {col}: {cell!r} is not a number") from None
            if not math.isfinite(value):
                raise DataError(f"{label}: row {lineno}, column {col}: {cell!r}; values must be finite numbers")
            out.append(value)
    if xcols[0][0] == "x":
        return xs[0], ys
    return np.array(xs, dtype=np.float64).T, ys


def load(config: Config) -> Dataset:
    """The data set a config names: ``--data`` (CSV), ``--synthetic N``, or the article's."""
    features = getattr(config, "features", None)
    if config.data is not None:
        dataset = read_csv(config.data)
    elif config.synthetic is not None:
        own = getattr(_model_module(config), "synthetic", None)  # a model's own draw (logistic: 0/1 labels)
        if own is not None:
            return _checked(own(config, features), config)
        return _checked(
            synthetic(config.synthetic, config.true_w, config.true_b, config.noise, config.effective_seed, features),
            config,
        )
    else:
        dataset = article()
    if features is not None:  # --features D names the data's columns: one x column is D = 1
        if dataset.x.shape[1] != features:
            from sgdtrace.config import refusal

            where = f"--data {config.data!r}" if config.data is not None else "the article's data"
            d = dataset.x.shape[1]
            raise refusal(
                "features-data",
                f"{config.origin.get('features') or '--features'} {features}",
                f"{where}, which has {d} feature column{'s' if d != 1 else ''} ({', '.join(dataset.columns)})",
                "with",
            )
        if dataset.features is None:
            dataset = Dataset(dataset.x, dataset.y, dataset.info, dataset.true_w, dataset.true_b, features)
    return _checked(dataset, config)


def _model_module(config: Config):
    from sgdtrace import models

    return models.get(getattr(config, "model", "linear"))


def _checked(dataset: Dataset, config: Config) -> Dataset:
    check_range(dataset, config.dtype)
    check = getattr(_model_module(config), "check_data", None)  # a model's own rule (logistic: labels 0/1)
    if check is not None:
        check(dataset, config)
    return dataset


def check_range(dataset: Dataset, dtype: str) -> None:
    """Refuse samples the run's dtype cannot hold (1e39 is inf in float32): both engines would see inf."""
    from sgdtrace.dtypes import finfo

    big = float(finfo(dtype).max)
    columns = [(c, dataset.x[:, j]) for j, c in enumerate(dataset.columns)]
    for name, arr in (*columns, ("y", dataset.y)):
        over = np.flatnonzero(np.abs(arr) > big)
        if over.size:
            i = int(over[0])
            src = dataset.info.get("source")
            where = (
                f"--data {dataset.info.get('path')!r}: data row {i + 1}, column {name}"
                if src == "csv"
                else f"--{src} data: {name}[{i}]"
            )
            raise DataError(
                f"{where} = {arr[i]:g} overflows {dtype} (largest {big:.4g}): use --dtype float64 or rescale the data"
            )


# ---------------------------------------------------------------- the batch plan


@dataclass(frozen=True)
class BatchPlan:
    """Which samples each step uses: per epoch an order of the samples, cut into batches.

    ``orders[e]`` is ``None`` for file order (no shuffle), else the epoch's permutation.
    Steps count epoch-major: step ``s`` is epoch ``s // steps_per_epoch``, batch ``s % steps_per_epoch``.
    """

    n_samples: int
    batch_size: int
    epochs: int
    drop_last: bool
    orders: tuple[np.ndarray | None, ...]

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_last:
            return self.n_samples // self.batch_size
        return -(-self.n_samples // self.batch_size)

    @property
    def n_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def batch_sizes(self) -> np.ndarray:
        """Samples per batch within one epoch (the last may be partial)."""
        sizes = np.full(self.steps_per_epoch, self.batch_size, dtype=np.int64)
        rest = self.n_samples % self.batch_size
        if rest and not self.drop_last:
            sizes[-1] = rest
        return sizes

    def batch_starts(self) -> np.ndarray:
        """Where each batch of an epoch starts in the epoch's order."""
        sizes = self.batch_sizes()
        return np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64) if sizes.size else sizes

    def step_epochs(self) -> np.ndarray:
        """Per step, its epoch (1-based)."""
        return np.repeat(np.arange(1, self.epochs + 1, dtype=np.int64), self.steps_per_epoch)

    def step_batches(self) -> np.ndarray:
        """Per step, its batch within the epoch (1-based)."""
        return np.tile(np.arange(1, self.steps_per_epoch + 1, dtype=np.int64), self.epochs)

    def step_sizes(self) -> np.ndarray:
        """Per step, the samples in its batch."""
        return np.tile(self.batch_sizes(), self.epochs)

    def step(self, batch: int, epoch: int = 1) -> int:
        """The 0-based step of (epoch, batch), both 1-based; a clear error when out of range."""
        spe, epochs = self.steps_per_epoch, self.epochs
        if not 1 <= epoch <= epochs:
            raise ConfigError(
                f"--epoch {epoch}: this run has {epochs} epoch{'s' if epochs != 1 else ''}; allowed: 1..{epochs}"
            )
        if not 1 <= batch <= spe:
            raise ConfigError(
                f"--batch {batch}: each epoch of this run has {spe} batch{'es' if spe != 1 else ''}; allowed: 1..{spe}"
            )
        return (epoch - 1) * spe + (batch - 1)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch`` (0-based) as an index array."""
        order = self.orders[epoch]
        return np.arange(self.n_samples) if order is None else order

    def indices(self, step: int) -> np.ndarray:
        """The sample indices of global step ``step`` (0-based)."""
        epoch, j = divmod(step, self.steps_per_epoch)
        start = j * self.batch_size
        stop = min(start + self.batch_size, self.n_samples)
        order = self.orders[epoch]
        return np.arange(start, stop) if order is None else order[start:stop]

    def spans(self) -> Iterator[tuple[int, int, int, int]]:
        """``(epoch, batch, start, stop)`` for every step, 0-based, slicing the epoch's order."""
        for epoch in range(self.epochs):
            for j in range(self.steps_per_epoch):
                start = j * self.batch_size
                yield epoch, j, start, min(start + self.batch_size, self.n_samples)


def plan(n_samples: int, config: Config) -> BatchPlan:
    """Derive the batches DataLoader yields, without running one.

    With ``shuffle``, DataLoader(shuffle=True, generator=g) draws from the one generator ``g``,
    every epoch, in this order (torch/utils/data/dataloader.py and sampler.py):

    1. creating the epoch's iterator draws a base seed: ``torch.empty((), dtype=torch.int64).random_(generator=g)``;
    2. RandomSampler then draws the permutation: ``torch.randperm(n, generator=g)``;
    3. when the epoch's batches run out, RandomSampler's last line runs: it yields the first
       ``num_samples % n`` entries of ANOTHER ``torch.randperm(n, generator=g)``. With
       ``num_samples == n`` that slice is empty, but the draw still advances ``g``.

    Without step 1 a replay is wrong from epoch 1 on; without step 3, from epoch 2 on.
    The epoch always runs out (the DataLoader's loop asks for one more batch, with drop_last
    too: BatchSampler's ``zip`` stops on the sampler's StopIteration), so step 3 happens every
    epoch.
    """
    if config.drop_last and n_samples < config.batch_size:
        raise ConfigError(
            f"{_origin(config, 'drop_last')} with {_origin(config, 'batch_size')} {config.batch_size} and "
            f"{n_samples} samples leaves no batch: use a batch size <= {n_samples} or leave "
            f"{_origin(config, 'drop_last')} out"
        )
    steps = (n_samples // config.batch_size if config.drop_last else -(-n_samples // config.batch_size)) * config.epochs
    if steps > MAX_STEPS:
        raise ConfigError(
            f"{_origin(config, 'epochs')} {config.epochs} with {steps // config.epochs:_} batches per epoch makes "
            f"{steps:_} steps: "
            f"at most {MAX_STEPS:_} fit in memory; use fewer epochs or a larger batch size"
        )
    if not config.shuffle:
        orders: tuple[np.ndarray | None, ...] = (None,) * config.epochs
    else:
        import torch

        g = torch.Generator().manual_seed(config.effective_seed)
        out = []
        for _ in range(config.epochs):
            torch.empty((), dtype=torch.int64).random_(generator=g)  # the iterator's base seed
            out.append(torch.randperm(n_samples, generator=g).numpy())
            torch.randperm(n_samples, generator=g)  # the sampler's empty tail slice, drawn all the same
        orders = tuple(out)
    return BatchPlan(n_samples, config.batch_size, config.epochs, config.drop_last, orders)


# ---------------------------------------------------------------- DistributedSampler's plan


def sampler_indices(
    n: int, num_replicas: int, rank: int, shuffle: bool, seed: int, epoch: int, drop_last: bool
) -> list[int]:
    """The indices ``DistributedSampler(dataset, num_replicas, rank, shuffle, seed, drop_last)``
    yields after ``set_epoch(epoch)``, replayed (torch/utils/data/distributed.py, ``__iter__``):

    1. the epoch's order: ``torch.randperm(n)`` from a generator seeded with ``seed + epoch``
       (with shuffle), else ``0..n-1``;
    2. every rank gets ``num_samples`` indices: ``ceil(n / N)``, or with drop_last (when N does
       not divide n) ``ceil((n - N) / N)``; the order is padded to ``N * num_samples`` by
       repeating indices from its start (drop_last cuts it there instead);
    3. rank r takes every N-th index from position r: ``indices[r:total:N]``.
    """
    total, _ = _sampler_sizes(n, num_replicas, drop_last)
    return _sampler_order(n, num_replicas, shuffle, seed, epoch, drop_last)[rank:total:num_replicas]


def _sampler_sizes(n: int, num_replicas: int, drop_last: bool) -> tuple[int, int]:
    """``(total_size, num_samples)`` as DistributedSampler's ``__init__`` sets them."""
    if drop_last and n % num_replicas != 0:
        per_rank = math.ceil((n - num_replicas) / num_replicas)
    else:
        per_rank = math.ceil(n / num_replicas)
    return per_rank * num_replicas, per_rank


def _sampler_order(n: int, num_replicas: int, shuffle: bool, seed: int, epoch: int, drop_last: bool) -> list[int]:
    """The padded (or cut) order of all ranks' indices, before the interleaved split."""
    if shuffle:
        import torch

        g = torch.Generator()
        g.manual_seed(seed + epoch)
        indices = torch.randperm(n, generator=g).tolist()
    else:
        indices = list(range(n))
    total, _ = _sampler_sizes(n, num_replicas, drop_last)
    if drop_last:
        return indices[:total]
    pad = total - len(indices)
    if pad <= len(indices):
        return indices + indices[:pad]
    return indices + (indices * math.ceil(pad / len(indices)))[:pad]


@dataclass(frozen=True)
class DistributedPlan:
    """Which samples each rank's steps use: DistributedSampler's split, then each rank's DataLoader.

    ``rank_orders[e][r]`` is rank r's indices in epoch e (0-based); ``padded[e]`` the indices the
    sampler repeated to even the ranks out (empty with drop_last, which drops ``dropped[e]``).
    Every rank has the same number of samples, so the same batches (a partial last one included)
    and steps; the step's global batch is the ranks' batches in rank order (:meth:`global_plan`).
    """

    n_samples: int
    world_size: int
    batch_size: int
    epochs: int
    drop_last: bool
    set_epoch: bool
    rank_orders: tuple[tuple[np.ndarray, ...], ...]
    padded: tuple[np.ndarray, ...]
    dropped: tuple[np.ndarray, ...]

    @property
    def per_rank(self) -> int:
        return _sampler_sizes(self.n_samples, self.world_size, self.drop_last)[1]

    def rank_plan(self, rank: int) -> BatchPlan:
        """Rank ``rank``'s DataLoader over its sampler's indices, as a batch plan of its own."""
        return BatchPlan(
            self.per_rank,
            self.batch_size,
            self.epochs,
            self.drop_last,
            tuple(orders[rank] for orders in self.rank_orders),
        )

    def global_plan(self) -> BatchPlan:
        """The steps' global batches: per step, rank 0's batch, then rank 1's, ... (N*B samples)."""
        one = self.rank_plan(0)
        sizes, starts = one.batch_sizes(), one.batch_starts()
        orders = []
        for ranks in self.rank_orders:
            parts = [r[s : s + k] for s, k in zip(starts.tolist(), sizes.tolist()) for r in ranks]
            orders.append(np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64))
        return BatchPlan(
            self.per_rank * self.world_size,
            self.batch_size * self.world_size,
            self.epochs,
            self.drop_last,
            tuple(orders),
        )


def distributed_plan(n_samples: int, config: Config) -> DistributedPlan:
    """Replay DistributedSampler for every rank and epoch (``set_epoch(e)`` each epoch unless
    ``config.set_epoch`` is false: then every epoch uses epoch 0's order)."""
    ws = config.world_size
    if ws > n_samples:
        raise ConfigError(
            f"{_origin(config, 'world_size')} {ws}: more ranks than the {n_samples} samples; allowed: 1..{n_samples}"
        )
    total, per_rank = _sampler_sizes(n_samples, ws, config.drop_last)
    if per_rank == 0 or (config.drop_last and per_rank < config.batch_size):
        raise ConfigError(
            f"--drop-last with --world-size {ws} and --batch-size {config.batch_size}: each rank "
            f"gets {per_rank} of the {n_samples} samples, which leaves no batch; use a batch size "
            f"<= {max(per_rank, 1)} or drop --drop-last"
        )
    plan(per_rank, config.replace(shuffle=False, origin=config.origin))  # the step limit, checked as for one process
    seed = config.effective_seed
    rank_orders, padded, dropped = [], [], []
    for epoch in range(config.epochs):
        e = epoch if config.set_epoch else 0
        order = np.asarray(_sampler_order(n_samples, ws, config.shuffle, seed, e, config.drop_last), dtype=np.int64)
        rank_orders.append(tuple(order[r:total:ws] for r in range(ws)))
        padded.append(order[n_samples:])
        if config.drop_last:
            full = torch_randperm(n_samples, seed + e) if config.shuffle else np.arange(n_samples)
            dropped.append(full[total:])
        else:
            dropped.append(np.zeros(0, dtype=np.int64))
    return DistributedPlan(
        n_samples,
        ws,
        config.batch_size,
        config.epochs,
        config.drop_last,
        config.set_epoch,
        tuple(rank_orders),
        tuple(padded),
        tuple(dropped),
    )


def torch_randperm(n: int, seed: int) -> np.ndarray:
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()


def _origin(config: Config, key: str) -> str:
    from sgdtrace.config import label

    return label(config, key)
