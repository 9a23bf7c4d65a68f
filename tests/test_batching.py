"""Batching as DataLoader does it: the batch plan held against a real DataLoader.

The manual side derives its batches (``data.plan``) without running a DataLoader; these
tests run one, ``DataLoader(TensorDataset(torch.arange(n)), batch_size, shuffle=True,
generator=torch.Generator().manual_seed(S), drop_last=...)`` iterated once per epoch, and
compare every batch's sample indices, epoch after epoch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader, TensorDataset

from sgdtrace.cli import cli
from sgdtrace.config import Config
from sgdtrace.data import plan
from sgdtrace.errors import ConfigError
from sgdtrace.tracing import run_trace


def loader_batches(n: int, batch_size: int, epochs: int, shuffle: bool, seed: int, drop_last: bool):
    """The sample indices a learner's DataLoader yields, one list per batch, all epochs in order."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    loader = DataLoader(
        TensorDataset(torch.arange(n)), batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last
    )
    return [batch.tolist() for _ in range(epochs) for (batch,) in loader]


def plan_batches(n: int, batch_size: int, epochs: int, shuffle: bool, seed: int, drop_last: bool):
    p = plan(n, Config(batch_size=batch_size, epochs=epochs, shuffle=shuffle, seed=seed, drop_last=drop_last))
    return [p.indices(k).tolist() for k in range(p.n_steps)]


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("n,batch_size", [(9, 3), (10, 3), (10, 4), (7, 2), (5, 5), (6, 1), (13, 6), (2, 2)])
@pytest.mark.parametrize("seed", [0, 1, 7, 12345, 2**40 + 3])
def test_shuffled_batches_are_the_dataloaders_over_four_epochs(n, batch_size, seed, drop_last):
    expected = loader_batches(n, batch_size, 4, True, seed, drop_last)
    assert plan_batches(n, batch_size, 4, True, seed, drop_last) == expected


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("n,batch_size", [(9, 3), (10, 3), (1, 1), (11, 4)])
def test_unshuffled_batches_are_in_file_order(n, batch_size, drop_last):
    expected = loader_batches(n, batch_size, 3, False, 0, drop_last)
    assert plan_batches(n, batch_size, 3, False, 0, drop_last) == expected
    assert plan_batches(n, batch_size, 3, False, 0, drop_last)[0] == list(range(min(n, batch_size)))


def test_epochs_differ_and_each_is_a_permutation():
    p = plan(9, Config(batch_size=3, epochs=3, shuffle=True, seed=5))
    orders = [p.epoch_order(e).tolist() for e in range(3)]
    for order in orders:
        assert sorted(order) == list(range(9))
    assert orders[0] != orders[1] and orders[1] != orders[2]


def _replay(n: int, bs: int, seed: int, epochs: int, base_seed: bool, tail_draw: bool):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(epochs):
        if base_seed:
            torch.empty((), dtype=torch.int64).random_(generator=g)
        order = torch.randperm(n, generator=g).tolist()
        if tail_draw:
            torch.randperm(n, generator=g)
        batches += [order[i : i + bs] for i in range(0, n, bs)]
    return batches


def test_simpler_replays_of_the_generator_fail():
    """What the plan must replay: the loader draws more from the generator than the permutation.

    Per epoch, DataLoader's iterator draws a base seed before RandomSampler's randperm (so
    "one randperm per epoch" is wrong from epoch 1), and the sampler draws one more,
    empty-sliced randperm when the epoch runs out (so "base seed + randperm" is right for
    epoch 1 and wrong from epoch 2 on). Only all three draws reproduce the loader.
    """
    n, bs, seed = 9, 3, 0
    real = loader_batches(n, bs, 3, True, seed, False)
    assert _replay(n, bs, seed, 3, base_seed=False, tail_draw=False)[:3] != real[:3]
    without_tail = _replay(n, bs, seed, 3, base_seed=True, tail_draw=False)
    assert without_tail[:3] == real[:3] and without_tail[3:6] != real[3:6]
    assert _replay(n, bs, seed, 3, base_seed=True, tail_draw=True) == real
    assert plan_batches(n, bs, 3, True, seed, False) == real


@pytest.mark.parametrize(
    "n,batch_size,drop_last,sizes",
    [
        (9, 4, False, [4, 4, 1]),
        (9, 4, True, [4, 4]),
        (10, 3, False, [3, 3, 3, 1]),
        (10, 3, True, [3, 3, 3]),
        (9, 3, True, [3, 3, 3]),
        (3, 5, False, [3]),
    ],
)
def test_batch_sizes_and_the_partial_last_batch(n, batch_size, drop_last, sizes):
    p = plan(n, Config(batch_size=batch_size, epochs=2, drop_last=drop_last))
    assert p.batch_sizes().tolist() == sizes
    assert [len(b) for b in loader_batches(n, batch_size, 2, False, 0, drop_last)] == sizes * 2
    assert p.n_steps == 2 * len(sizes)


def test_partial_batch_of_one_uses_one_over_n_equal_one():
    """Batch size 4 on the article's nine points leaves a last batch of one sample (x = 8, y = 26).

    With n = 1 the loss is d^2 and the gradients are 2*d*x and 2*d, d = w*8 + b - 26, at the
    parameters that batch started from (those after batch 2). Worked here in float64.
    """
    t = run_trace(Config(batch_size=4, dtype="float64"))
    assert t.n.tolist() == [4, 4, 1]
    assert t.indices(2).tolist() == [8]
    w, b = float(t.manual["w"][1]), float(t.manual["b"][1])
    d = w * 8 + b - 26
    for side in (t.manual, t.torch):
        assert side["loss"][2] == pytest.approx(d * d, rel=1e-14)
        assert side["grad_w"][2] == pytest.approx(2 * d * 8, rel=1e-14)
        assert side["grad_b"][2] == pytest.approx(2 * d, rel=1e-14)
    # and batch 1, by hand from w = b = 0: d = -y over x = 0..3, y = 10..16
    # loss = (100 + 144 + 196 + 256) / 4 = 174; dl/dw = (2/4)(-0 - 12 - 28 - 48) = -44; dl/db = (2/4)(-52) = -26
    assert t.manual["loss"][0] == 174.0 and t.manual["grad_w"][0] == -44.0 and t.manual["grad_b"][0] == -26.0
    assert t.verdict.ok


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("seed,batch_size,drop_last", [(0, 3, False), (3, 4, False), (11, 4, True), (99, 2, True)])
def test_shuffled_training_agrees_with_torch_over_several_epochs(seed, batch_size, drop_last, dtype):
    """The torch engine iterates a real DataLoader; the manual one follows the plan: same batches, same numbers."""
    t = run_trace(Config(batch_size=batch_size, epochs=5, shuffle=True, seed=seed, drop_last=drop_last, dtype=dtype))
    assert t.verdict.ok, t.verdict.first_divergent_step
    real = loader_batches(9, batch_size, 5, True, seed, drop_last)
    assert [t.indices(k).tolist() for k in range(t.n_steps)] == real


def test_json_steps_record_the_loaders_indices():
    result = CliRunner().invoke(
        cli, ["run", "--shuffle", "--seed", "42", "--epochs", "3", "--batch-size", "4", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    real = loader_batches(9, 4, 3, True, 42, False)
    assert [s["indices"] for s in doc["steps"]] == real
    assert [s["n"] for s in doc["steps"]] == [len(b) for b in real]
    assert [(s["epoch"], s["batch"]) for s in doc["steps"]] == [(e, b) for e in (1, 2, 3) for b in (1, 2, 3)]
    assert doc["config"]["shuffle"] is True and doc["config"]["seed"] == 42


def test_json_drop_last_leaves_out_the_partial_batch():
    result = CliRunner().invoke(cli, ["run", "--batch-size", "4", "--drop-last", "--epochs", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [s["indices"] for s in doc["steps"]] == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2
    assert doc["config"]["drop_last"] is True


def test_drop_last_with_too_few_samples_is_an_input_error():
    with pytest.raises(ConfigError, match="drop_last with batch_size 10 and 9 samples"):
        plan(9, Config(batch_size=10, drop_last=True))
    result = CliRunner().invoke(cli, ["run", "--batch-size", "10", "--drop-last"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgdtrace: error: --drop-last with --batch-size 10")


def test_batch_larger_than_the_data_is_one_partial_batch():
    t = run_trace(Config(batch_size=50, epochs=2, shuffle=True, seed=1))
    assert t.n.tolist() == [9, 9]
    assert sorted(t.indices(0).tolist()) == list(range(9))
    assert t.verdict.ok


def test_plan_orders_are_integer_index_arrays():
    p = plan(9, Config(shuffle=True, seed=3, epochs=2))
    for e in range(2):
        assert p.epoch_order(e).dtype.kind == "i"
    assert np.array_equal(plan(9, Config(epochs=2)).epoch_order(1), np.arange(9))
