"""The fields' labels (the article's notation), shared by the views and the diagnosis.

A module of its own, importing nothing: the diagnosis (a computation) and the views (which render)
both read it, and neither imports the other.
"""

from __future__ import annotations


#: how each field is labelled in tables: the article's notation
class _Labels(dict):
    """Field -> label; a field without one (an optimizer's state, exp_avg_w, ...) is its own label."""

    def __missing__(self, key: str) -> str:
        return key


LABELS = _Labels(
    {
        "grad_w": "dl/dw",
        "grad_b": "dl/db",
        "loss": "loss",
        "w": "w",
        "b": "b",
        "buf_w": "buf_w",
        "buf_b": "buf_b",
        "lr": "lr",
        # a network's (--model mlp)
        "grad_w1": "dl/dW1",
        "grad_b1": "dl/db1",
        "grad_w2": "dl/dW2",
        "grad_b2": "dl/db2",
        "w1": "W1",
        "b1": "b1",
        "w2": "W2",
        "b2": "b2",
    }
)


def label(field: str) -> str:
    """A field's column label (the optimizers' state fields go by their own names: exp_avg_w, ...)."""
    return LABELS.get(field, field)


#: torch's names of state entries whose recorded column does not follow ``<state>_<param>`` (part 1's
#: names): SGD's ``momentum_buffer`` is recorded as ``buf_w``, ``buf_b``
STATE_NAMES = {"momentum_buffer": "buf"}
