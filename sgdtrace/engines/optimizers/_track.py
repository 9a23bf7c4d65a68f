"""The tolerance model's bookkeeping for an optimizer's update: :mod:`sgdtrace.track`, under the
name the optimizers import it by (the judge's one way of bounding rounding lives below the
engines, so that the models' ops algebra can use it too)."""

from sgdtrace.track import (  # noqa: F401
    SQRT_ULPS,
    Track,
    _coefficient,
    _finite_mag,
    _is_one,
    _smaller,
    div,
    fit,
    lerp,
    maximum,
    mul,
    neg,
    sqrt,
)
