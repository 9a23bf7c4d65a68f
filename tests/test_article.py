"""The article's table is the first golden test: to the article's digits, by hand, and against torch itself."""

from fractions import Fraction

import numpy as np
import pytest
import torch

import sgdtrace
from sgdtrace.engines import manual

# The article's table (lr 0.01, batch size 3, w = b = 0), to the digits it prints.
# Kept as the article's strings: each value is checked to the decimals the article prints.
ARTICLE = [
    # dl/dw,    dl/db,    w,       b,      loss
    ("-26.67", "-24", "0.267", "0.24", "146.67"),
    ("-135.86", "-33.39", "1.63", "0.57", "280.67"),
    ("-169.19", "-24.10", "3.32", "0.81", "145.28"),
]


def decimals(text):
    return len(text.split(".")[1]) if "." in text else 0


@pytest.fixture(scope="module")
def article_trace():
    return sgdtrace.trace()


def test_article_table_to_its_digits(article_trace):
    t = article_trace
    assert t.n_steps == 3 and list(t.n) == [3, 3, 3]
    for k, row in enumerate(ARTICLE):
        for field, text in zip(("grad_w", "grad_b", "w", "b", "loss"), row):
            for engine in (t.manual, t.torch):
                # the article's value is the engines' value rounded half-up to its printed decimals
                value = float(engine[field][k])
                assert abs(value - float(text)) <= 0.5 * 10 ** -decimals(text) + 1e-12, (k, field, value, text)
    assert t.verdict.ok
    assert t.verdict.diverged_training is None


def test_batch_one_by_hand(article_trace):
    """Batch 1: x = 0, 1, 2; y = 10, 12, 14; w = b = 0; n = 3; lr = 0.01."""
    # forward: a = w*x = 0, 0, 0; c = a + b = 0, 0, 0; d = c - y = -10, -12, -14
    d = [Fraction(-10), Fraction(-12), Fraction(-14)]
    x = [Fraction(0), Fraction(1), Fraction(2)]
    # e = d^2 = 100, 144, 196; l = (100 + 144 + 196) / 3 = 440/3 = 146.666...
    loss = sum(di * di for di in d) / 3
    assert loss == Fraction(440, 3)
    # dl/dw = (1/3) * sum 2 d_i x_i = (2/3)(0 - 12 - 28) = -80/3 = -26.666...   (Eq. 7/8)
    gw = Fraction(2, 3) * sum(di * xi for di, xi in zip(d, x))
    assert gw == Fraction(-80, 3)
    # dl/db = (1/3) * sum 2 d_i = (2/3)(-36) = -24   (Eq. 10/11)
    gb = Fraction(2, 3) * sum(d)
    assert gb == -24
    # w1 = 0 - 0.01 * (-80/3) = 0.8/3 = 0.2666...; b1 = 0 - 0.01 * (-24) = 0.24   (Eq. 4/5)
    lr = Fraction(1, 100)
    w1, b1 = -lr * gw, -lr * gb
    assert (w1, b1) == (Fraction(4, 15), Fraction(6, 25))

    # float32 values: each within a few roundings (u = 2^-24 relative) of the exact value
    u = 2.0**-24
    for field, exact in (("loss", loss), ("grad_w", gw), ("grad_b", gb), ("w", w1), ("b", b1)):
        for engine in (article_trace.manual, article_trace.torch):
            value = Fraction(float(engine[field][0]))
            assert abs(value - exact) <= 8 * u * abs(exact), field


def article_snippet():
    """The article's own verification code, with its errata fixed (18 restored in y, model.bias,
    the f-string), printing nothing: it returns what the article prints per batch."""
    from torch import nn, optim
    from torch.utils.data import DataLoader, TensorDataset

    x = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    y = (10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 22.0, 24.0, 26.0)
    dataloader = DataLoader(TensorDataset(torch.tensor(x), torch.tensor(y)), batch_size=3, shuffle=False)

    class Simple_model(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1))
            self.bias = nn.Parameter(torch.zeros(1))

        def forward(self, xb):
            return xb * self.weight + self.bias

    model = Simple_model()
    criterion = nn.MSELoss()
    optimizer = optim.SGD(model.parameters(), lr=0.01)
    rows = []
    for data, target in dataloader:
        loss = criterion(model(data), target)
        loss.backward()
        optimizer.step()
        rows.append(
            (model.weight.grad.item(), model.bias.grad.item(), model.weight.item(), model.bias.item(), loss.item())
        )
        optimizer.zero_grad()
    return rows


def test_torch_side_is_the_articles_code(article_trace):
    """sgdtrace's torch column is exactly what the article's snippet computes, bit for bit."""
    for k, row in enumerate(article_snippet()):
        got = tuple(float(article_trace.torch[f][k]) for f in ("grad_w", "grad_b", "w", "b", "loss"))
        assert got == row


def test_manual_engine_functions_match_the_article_equations():
    x = np.array([3.0, 4.0, 5.0], dtype=np.float32)
    y = 2 * x + 10
    w, b = np.float32(0.5), np.float32(0.25)
    step = manual.forward_backward(w, b, x, y, 3, np.float32)
    d = w * x + b - y
    assert np.array_equal(step.a, w * x) and np.array_equal(step.c, w * x + b) and np.array_equal(step.d, d)
    assert np.array_equal(step.e, d * d)
    # Eq. 8 and 11 in float64 agree with the chain-rule products to float32 rounding
    assert float(step.grad_w) == pytest.approx(2 / 3 * float(np.sum(d.astype(np.float64) * x)), rel=1e-6)
    assert float(step.grad_b) == pytest.approx(2 / 3 * float(np.sum(d.astype(np.float64))), rel=1e-6)
    assert float(step.loss) == pytest.approx(float(np.mean(d.astype(np.float64) ** 2)), rel=1e-6)


def test_float64_article_agrees_and_is_closer_to_exact():
    t64 = sgdtrace.trace(dtype="float64")
    assert t64.verdict.ok
    assert float(t64.manual["w"][0]) == pytest.approx(4 / 15, rel=1e-15)


def test_lr_0_1_blows_up_and_engines_still_agree():
    """The article's prose rate: w = -29.16 after batch 3; reported as a blow-up, exit code still 0."""
    t = sgdtrace.trace(lr=0.1)
    assert round(float(t.manual["w"][2]), 2) == -29.16
    assert t.verdict.ok
    blown = t.verdict.diverged_training
    assert blown is not None and (blown["epoch"], blown["batch"]) == (1, 2)
    # batch 2: x = 3, 4, 5; H = (2/3)[[50, 12], [12, 3]]; lambda_max = (53 + sqrt(47^2 + 4*144))/3
    lam = (53 + (47**2 + 4 * 144) ** 0.5) / 3
    assert float(t.stable_lr[1]) == pytest.approx(2 / lam)
    # the largest rate stable on every batch is batch 3's (x = 6, 7, 8)
    lam3 = (149 + 3 + ((149 - 3) ** 2 + 4 * 21**2) ** 0.5) / 3
    assert blown["stable_lr"] == pytest.approx(2 / lam3)
