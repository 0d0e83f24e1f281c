"""Parameter constraints declared once, with uniform messages (after scikit-learn).

check_int("lanczos_steps", 1, low=2)
-> ParameterError: The 'lanczos_steps' parameter must be an int in the range [2, inf). Got 1 instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import TypeVar

from obstacle.errors import ParameterError

T = TypeVar("T")


def _interval(low: float | None, high: float | None, closed: str) -> str:
    left = "[" if closed in ("both", "left") and low is not None else "("
    right = "]" if closed in ("both", "right") and high is not None else ")"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{left}{lo}, {hi}{right}"


def check_int(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int if it lies in [low, high], else raise ParameterError."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ParameterError(
            f"The {name!r} parameter must be an int in the range {_interval(low, high, 'both')}. "
            f"Got {value!r} of type {type(value).__name__} instead."
        )
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ParameterError(
            f"The {name!r} parameter must be an int in the range {_interval(low, high, 'both')}. "
            f"Got {v} instead."
        )
    return v


def check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    closed: str = "both",
) -> float:
    """Return ``value`` as a finite float inside the interval, else raise ParameterError."""
    rule = f"The {name!r} parameter must be a finite float in the range {_interval(low, high, closed)}."
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ParameterError(f"{rule} Got {value!r} of type {type(value).__name__} instead.")
    v = float(value)
    if not math.isfinite(v):
        raise ParameterError(f"{rule} Got {v} instead.")
    lo_ok = low is None or (v >= low if closed in ("both", "left") else v > low)
    hi_ok = high is None or (v <= high if closed in ("both", "right") else v < high)
    if not (lo_ok and hi_ok):
        raise ParameterError(f"{rule} Got {v!r} instead.")
    return v


def check_choice(name: str, value: T, choices: Iterable[T]) -> T:
    """Return ``value`` if it is one of ``choices``, else raise ParameterError."""
    options = list(choices)
    if value not in options:
        listed = ", ".join(repr(c) for c in options)
        raise ParameterError(
            f"The {name!r} parameter must be one of {listed}. Got {value!r} instead."
        )
    return value
