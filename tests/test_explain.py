"""The explain view: the article's batches, equation by equation, checked against the article."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from golden_util import check_golden, render

from sgdtrace import Config
from sgdtrace.cli import cli
from sgdtrace.engines import manual
from sgdtrace.teaching.explain import explain_step
from sgdtrace.tracing import run_trace
from sgdtrace.views.explain import explain_json, explain_view

# The article's printed values per batch: dl/dw, dl/db, w, b, loss (rounded as printed)
ARTICLE = {
    1: {"dl/dw": -26.67, "dl/db": -24, "w": 0.267, "b": 0.24, "loss": 146.67},
    2: {"dl/dw": -135.86, "dl/db": -33.39, "w": 1.63, "b": 0.57, "loss": 280.67},
    3: {"dl/dw": -169.19, "dl/db": -24.10, "w": 3.32, "b": 0.81, "loss": 145.28},
}


@pytest.fixture(scope="module")
def article():
    return run_trace(Config())


def _decimals(v: float) -> int:
    s = repr(float(v))
    return len(s.split(".")[1]) if "." in s and not s.endswith(".0") else 0


def _result_after(text: str, start: str, stop: str) -> float:
    """The last '= number' between the label ``start`` and ``stop`` (formulas may wrap)."""
    i = text.index(start)
    block = text[i : text.index(stop, i)]
    return float(re.findall(r"= (-?[0-9.]+)", " ".join(block.split()))[-1])


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_golden_explain_article_batches(article, batch):
    text = render(explain_view(explain_step(article, batch)))
    check_golden(f"explain_batch{batch}.txt", text)


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_article_numbers_appear_correctly_labelled(batch):
    from golden_util import GOLDEN

    text = (GOLDEN / f"explain_batch{batch}.txt").read_text(encoding="utf-8")
    want = ARTICLE[batch]
    got = {
        "loss": _result_after(text, "Eq. 2-3", "torch: l"),
        "dl/dw": _result_after(text, "Eq. 8", "torch: dl/dw"),
        "dl/db": _result_after(text, "Eq. 11", "torch: dl/db"),
        "w": _result_after(text, "Eq. 4", "torch: w"),
        "b": _result_after(text, "Eq. 5", "torch: b"),
    }
    for key, value in want.items():
        assert round(got[key], _decimals(value)) == value, (batch, key, got[key])
    # the correct derivative names, none of the article's slips
    for name in ("dl/de", "de/dd", "dd/dc", "dc/da", "da/dw", "dc/db"):
        assert name in text
    for slip in ("day/day", "CC/yes", "dd/pa", "Polarization"):
        assert slip not in text


def test_batch1_nodes_by_hand():
    """Batch 1 at w = b = 0: a = 0, c = 0, d = c - y = -10, -12, -14, e = 100, 144, 196, dl/de = 1/3."""
    from golden_util import GOLDEN

    text = (GOLDEN / "explain_batch1.txt").read_text(encoding="utf-8")
    rows = [line.split() for line in text.splitlines() if re.match(r"^[012]\s+[012]\s+1[024]\s", line)]
    assert rows == [
        ["0", "0", "10", "0", "0", "-10", "100"],
        ["1", "1", "12", "0", "0", "-12", "144"],
        ["2", "2", "14", "0", "0", "-14", "196"],
    ]
    assert "(1/3)·[100 + 144 + 196] = 146.667" in text
    assert "de/dd = 2d, per sample: -20, -24, -28" in text
    assert "dl/de = 1/n = 1/3 = 0.333333" in text


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(dtype="float64", epochs=3),
        dict(momentum=0.9, nesterov=True, epochs=2),
        dict(momentum=0.5, dampening=0.5, weight_decay=0.1, maximize=True, epochs=2),
        dict(batch_size=4, epochs=2),
        dict(synthetic=20, noise=0.3, batch_size=6, shuffle=True, seed=5),
    ],
)
def test_forward_backward_equals_the_manual_trace_bit_for_bit(kw):
    t = run_trace(Config(**kw))
    dt = t.manual["w"].dtype.type
    for k in range(t.n_steps):
        epoch, batch = int(t.epoch[k]), int(t.batch[k])
        ex = explain_step(t, batch, epoch)
        assert ex.matches_trace
        # and independently of explain's own check: the engine's function at the trace's state
        w0 = dt(t.config.init_w) if k == 0 else t.manual["w"][k - 1]
        b0 = dt(t.config.init_b) if k == 0 else t.manual["b"][k - 1]
        idx = t.indices(k)
        xb, yb = t.dataset.x[idx, 0].astype(dt), t.dataset.y[idx].astype(dt)  # the article's one x column
        r = manual.forward_backward(w0, b0, xb, yb, len(idx), dt)
        for f, v in (("grad_w", r.grad_w), ("grad_b", r.grad_b), ("loss", r.loss)):
            assert np.array(v, dtype=dt).tobytes() == t.manual[f][k : k + 1].tobytes(), (k, f)


def test_momentum_form_shown_with_buffers():
    t = run_trace(Config(momentum=0.9))
    text = render(explain_view(explain_step(t, 2)))
    assert "buf_w = momentum·buf_w + (1 − dampening)·dl/dw = 0.9·" in text
    assert "torch: buf_w" in text and "w ← w − lr·buf_w" in text
    first = render(explain_view(explain_step(t, 1)))
    assert "buf_w = dl/dw (the first step starts the buffer)" in first


def test_explain_json(article):
    doc = explain_json(explain_step(article, 1))
    assert doc["forward"]["d"] == [-10.0, -12.0, -14.0]
    assert doc["backward"]["de/dd"] == [-20.0, -24.0, -28.0]
    assert doc["manual"]["grad_b"] == -24.0 and doc["torch"]["grad_b"] == -24.0
    assert doc["matches_trace"] is True


def test_cli_explain_and_range_errors(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["explain", "--batch", "2"])
    assert ok.exit_code == 0, ok.output
    assert "Eq. 8" in ok.output and "-135.858" in ok.output
    js = runner.invoke(cli, ["explain", "--batch", "1", "--format", "json"])
    assert json.loads(js.output)["n"] == 3
    bad = runner.invoke(cli, ["explain", "--batch", "4"])
    assert bad.exit_code == 2
    assert "--batch 4" in bad.output and "1..3" in bad.output and "Traceback" not in bad.output
    out = tmp_path / "e.txt"
    bad = runner.invoke(cli, ["explain", "--batch", "1", "--epoch", "2", "--output", str(out)])
    assert bad.exit_code == 2 and "--epoch 2" in bad.output and not out.exists()
    missing = runner.invoke(cli, ["explain"])
    assert missing.exit_code == 2
