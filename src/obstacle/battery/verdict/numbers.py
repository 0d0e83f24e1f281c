"""Numbers in sentences: one way to write a quantity, a percentage and a ratio in the report.

Every sentence of the verdict and every caption or label of the HTML report writes its numbers
through these three functions, so a value reads the same everywhere and as a person would write
it: ``100%``, ``0.02%``, ``28%``, ``1.2×``, ``1.004×`` (never ``1×`` for a ratio that is not 1),
``3.2e-7``; ``n/a`` for an unknown (NaN) value and ``∞`` for an infinite one.
"""

from __future__ import annotations

import math

__all__ = ["percent", "quantity", "times"]

MINUS = "−"  # U+2212: a minus sign, not a hyphen


def _signed(text: str) -> str:
    return MINUS + text[1:] if text.startswith("-") else text


def _trim(text: str) -> str:
    """``2.50`` → ``2.5``, ``2.0`` → ``2`` (only after a decimal point)."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def quantity(x: float) -> str:
    """A quantity: 3 significant digits, thousands grouped, scientific only when tiny or huge.

    ``0``, ``0.0123``, ``4.88``, ``1,234``, ``3.2e-7``, ``1.5e12``, ``n/a`` (NaN), ``∞``.
    """
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else MINUS + "∞"
    if x == 0:
        return "0"
    magnitude = abs(x)
    if magnitude >= 1e5 or magnitude < 1e-3:
        mantissa, exponent = f"{x:.2e}".split("e")
        return _signed(f"{_trim(mantissa)}e{int(exponent)}")
    if magnitude >= 100:
        return _signed(f"{x:,.0f}")
    return _signed(_trim(f"{x:.3g}"))


def percent(fraction: float) -> str:
    """A fraction as a percentage: ``0%``, ``<0.001%``, ``0.02%``, ``0.3%``, ``9.5%``, ``28%``,
    ``>99.9%``,
    ``100%``, ``1,200%``; ``n/a`` when unknown, ``∞%`` when infinite.

    Below 0.1% one significant digit, below 10% one decimal (trimmed), from 10% whole numbers; a value that is not exactly 0 or
    100% never reads as one.
    """
    if math.isnan(fraction):
        return "n/a"
    if math.isinf(fraction):
        return "∞%" if fraction > 0 else MINUS + "∞%"
    p = 100 * fraction
    if p == 0:
        return "0%"
    sign = MINUS if p < 0 else ""
    m = abs(p)
    if m < 0.001:
        return f"<{sign}0.001%" if not sign else f">{sign}0.001%"
    if m < 0.1:
        return f"{sign}{float(f'{m:.1g}'):g}%"
    if m < 10:
        return f"{sign}{_trim(f'{m:.1f}')}%"
    if 99.5 <= m < 100:
        return f"{sign}{'>99.9' if m >= 99.95 else f'{m:.1f}'}%"
    if m >= 1e6:
        return f"{sign}{quantity(m)}%"
    return f"{sign}{m:,.0f}%"


def times(ratio: float) -> str:
    """A ratio as a multiple: ``0×``, ``0.5×``, ``1×``, ``1.2×``, ``1.004×``, ``12×``, ``1,200×``,
    ``2.4e7×``; ``n/a`` when unknown, ``∞×`` when infinite.

    A ratio close to but not equal to 1 keeps the digits that tell it from 1 (up to three
    decimals; closer still it reads ``≈1×``).
    """
    if math.isnan(ratio):
        return "n/a"
    if ratio == 1:
        return "1×"
    m = abs(ratio)
    if math.isinf(ratio) or m < 1e-3 or m >= 100:
        return f"{quantity(ratio)}×"
    if m >= 10:
        return f"{_signed(_trim(f'{ratio:.1f}'))}×"
    if m < 0.99:
        return f"{quantity(ratio)}×"
    for decimals in (1, 2, 3) if m >= 1 else (2, 3):
        text = f"{ratio:.{decimals}f}"
        if float(text) != 1 and float(text) != -1:
            return f"{_signed(_trim(text))}×"
    return f"≈{_signed('-1' if ratio < 0 else '1')}×"
