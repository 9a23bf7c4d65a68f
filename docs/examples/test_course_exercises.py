"""A course's pytest file for four exercises: the gradients, an Adam update, a model on D features,
logistic regression (docs/own-engine.md shows it; tests/test_engine_everywhere.py runs it)."""

import os

from sgdtrace.testing import assert_matches_torch

HERE = os.path.dirname(os.path.abspath(__file__))


def test_gradients_exercise():
    """The gradients only: the update is sgdtrace's own (torch.optim.SGD's)."""
    assert_matches_torch(os.path.join(HERE, "engine_correct.py"), momentum=0.9, epochs=5)


def test_adam_exercise():
    """An Adam update, judged step by step (each step starts from torch's values), in float32 and bfloat16."""
    for dtype in ("float32", "bfloat16"):
        assert_matches_torch(os.path.join(HERE, "engine_adam.py"), optimizer="adam", judge="step", dtype=dtype)


def test_features_exercise():
    """gradients(params, x, y) on three features, with Adam."""
    assert_matches_torch(
        os.path.join(HERE, "engine_features.py"), synthetic=48, features=3, batch_size=16, optimizer="adam"
    )


def test_logistic_exercise():
    """Logistic regression's gradients (nn.BCEWithLogitsLoss on z = x·w + b), on two features."""
    assert_matches_torch(
        os.path.join(HERE, "engine_logistic.py"), model="logistic", loss="bce", synthetic=64, features=2, batch_size=16
    )
