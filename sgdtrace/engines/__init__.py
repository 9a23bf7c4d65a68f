"""The two engines: ``manual`` (Equations 1-11 by hand) and ``torch_ref`` (what a learner writes)."""
