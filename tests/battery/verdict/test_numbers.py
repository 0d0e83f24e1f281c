"""How the report writes numbers: percentages, ratios and quantities at their edge values."""

from __future__ import annotations

import math

import pytest

from obstacle.battery.verdict.numbers import percent, quantity, times


@pytest.mark.parametrize(
    ("fraction", "text"),
    [
        (0.0, "0%"),
        (1e-9, "<0.001%"),
        (0.0004, "0.04%"),
        (0.000123, "0.01%"),
        (0.003, "0.3%"),
        (0.05, "5%"),
        (0.095, "9.5%"),
        (0.285, "28%"),
        (0.998, "99.8%"),
        (0.9996, ">99.9%"),
        (1.0, "100%"),
        (12.0, "1,200%"),
        (1e5, "1e7%"),
        (-0.5, "−50%"),
        (-1e-5, "−0.001%"),
        (-1e-9, ">−0.001%"),
        (math.nan, "n/a"),
        (math.inf, "∞%"),
        (-math.inf, "−∞%"),
    ],
)
def test_percent(fraction: float, text: str) -> None:
    assert percent(fraction) == text


@pytest.mark.parametrize("fraction", [1.0, 1.0 - 1e-12, 0.99996])
def test_percent_near_one_never_reads_as_scientific(fraction: float) -> None:
    # "1.0e2%" was how 100% once read in the landscape plot's hint
    assert "e" not in percent(fraction)
    assert percent(fraction) in ("100%", ">99.9%")


@pytest.mark.parametrize(
    ("ratio", "text"),
    [
        (0.0, "0×"),
        (1e-9, "1e-9×"),
        (0.5, "0.5×"),
        (0.9996, "≈1×"),
        (1.0, "1×"),
        (1.0004, "≈1×"),
        (1.004, "1.004×"),
        (1.04, "1.04×"),
        (1.2, "1.2×"),
        (5.23, "5.2×"),
        (12.0, "12×"),
        (1234.0, "1,234×"),
        (2.4e7, "2.4e7×"),
        (-2.0, "−2×"),
        (math.nan, "n/a"),
        (math.inf, "∞×"),
    ],
)
def test_times(ratio: float, text: str) -> None:
    assert times(ratio) == text


@pytest.mark.parametrize("ratio", [1.001, 1.01, 0.999, 0.99])
def test_a_ratio_that_is_not_one_never_reads_one(ratio: float) -> None:
    # "never exceeds 1× its first value" was written for a peak 1.3% above it
    assert times(ratio) != "1×"


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (3.2e-7, "3.2e-7"),
        (0.001, "0.001"),
        (0.0123, "0.0123"),
        (4.88, "4.88"),
        (2.0, "2"),
        (1234.4, "1,234"),
        (1.5e12, "1.5e12"),
        (-0.349, "−0.349"),
        (-1.5e12, "−1.5e12"),
        (math.nan, "n/a"),
        (math.inf, "∞"),
        (-math.inf, "−∞"),
    ],
)
def test_quantity(x: float, text: str) -> None:
    assert quantity(x) == text
