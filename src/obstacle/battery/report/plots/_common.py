"""What the plots share: reading recorded numbers, choosing scales, building and saving figures.

Like the rest of the package, never imports torch or pyplot.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from obstacle.battery.verdict.numbers import quantity

Report = Mapping[str, Any]
FloatArray = np.ndarray[Any, np.dtype[np.float64]]

# Okabe & Ito (2008), distinguishable under the common colour-vision deficiencies.
PALETTE = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
}
GREY = "#6b6b6b"

# A quantity whose positive values span this many decades is drawn on a log axis.
LOG_DECADES = 2.0
# Log axes show at most 1e±200: matplotlib's log tick locator reaches a stride of decades
# beyond the view, and fails when that passes the float range (1e308).
DISPLAY_LIMIT = 1e200
# PNG resolution: sharp on a high-density screen, small enough to inline in one HTML file.
PNG_DPI = 130

# ----------------------------------------------------------------------------- reading records


def lookup(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]…``, or None as soon as a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def to_float(value: Any) -> float:
    """A recorded number as a float; null, booleans and non-numbers become NaN (a gap)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def float_array(values: Any) -> FloatArray:
    """A recorded list as a float array (nulls → NaN); anything that is not a list → empty."""
    if not isinstance(values, Sequence) or isinstance(values, str | bytes):
        return np.zeros(0)
    return np.array([to_float(v) for v in values], dtype=np.float64)


def checkpoints_by_step(report: Report) -> list[Mapping[str, Any]]:
    """The report's checkpoint records that carry a step, in step order."""
    records = report.get("checkpoints") if isinstance(report, Mapping) else None
    if not isinstance(records, Sequence):
        return []
    usable = [
        c for c in records if isinstance(c, Mapping) and math.isfinite(to_float(c.get("step")))
    ]
    return sorted(usable, key=lambda c: to_float(c.get("step")))


def series(checkpoints: Sequence[Mapping[str, Any]], key: str) -> FloatArray:
    return np.array([to_float(c.get(key)) for c in checkpoints], dtype=np.float64)


def finite(*arrays: FloatArray | None) -> FloatArray:
    parts = [a[np.isfinite(a)] for a in arrays if a is not None and a.size]
    return np.concatenate(parts) if parts else np.zeros(0)


def decade_span(values: FloatArray) -> float:
    """log10(max / min) of positive values, without overflowing for 1e300 / 1e-300."""
    return math.log10(float(values.max())) - math.log10(float(values.min()))


def spans_decades(*arrays: FloatArray | None, decades: float = LOG_DECADES) -> bool:
    """All finite values positive and spanning at least ``decades`` decades."""
    values = finite(*arrays)
    if values.size < 2 or np.any(values <= 0):
        return False
    return decade_span(values) >= decades


def value_at(alphas: FloatArray, values: FloatArray, alpha: float) -> float:
    """The recorded curve at ``alpha`` (linear between recorded points), NaN outside them."""
    ok = np.isfinite(alphas) & np.isfinite(values)
    if not ok.any():
        return math.nan
    a, v = alphas[ok], values[ok]
    order = np.argsort(a)
    a, v = a[order], v[order]
    if alpha < a[0] or alpha > a[-1]:
        return math.nan
    return float(np.interp(alpha, a, v))


# ----------------------------------------------------------------------------- scales and numbers


def safe_margins(ax: Axes) -> None:
    """Keep a log/symlog axis inside what matplotlib can draw when the data nears 1e±308.

    A diverging run can record a loss of 1e300: matplotlib pads 5% in log space (10^315
    overflows) and its log tick locator fails past the float range. Beyond ``DISPLAY_LIMIT`` the
    view is clamped (the line leaves the frame, as on any plot whose data exceeds its axis);
    below it, the margins shrink so the padded view stays finite.
    """
    scale = ax.get_yscale()
    if scale not in ("log", "symlog"):
        return
    drawn = finite(*[np.asarray(ln.get_ydata(), dtype=np.float64) for ln in ax.get_lines()])
    magnitudes = np.abs(drawn[drawn != 0])
    if magnitudes.size == 0:
        return
    high, low = float(magnitudes.max()), float(magnitudes.min())
    if high > DISPLAY_LIMIT or low < 1 / DISPLAY_LIMIT:
        ax.set_ymargin(0.0)  # set_ylim below first autoscales the stale view: keep that finite
    if scale == "log":
        if high > DISPLAY_LIMIT or low < 1 / DISPLAY_LIMIT:
            top, bottom = min(high, DISPLAY_LIMIT), max(low, 1 / DISPLAY_LIMIT)
            pad = 10.0 ** (0.05 * max(math.log10(top / bottom), 1.0))
            ax.set_ylim(max(bottom / pad, 1 / DISPLAY_LIMIT), min(top * pad, DISPLAY_LIMIT))
            return
        room = min(300.0 - math.log10(high), math.log10(low) + 300.0)
    else:
        if high > DISPLAY_LIMIT:
            vmin = max(float(drawn.min()), -DISPLAY_LIMIT)
            vmax = min(float(drawn.max()), DISPLAY_LIMIT)
            ax.set_ylim(vmin * 2 if vmin < 0 else 0.0, vmax * 2 if vmax > 0 else 0.0)
            return
        room = 300.0 - math.log10(high)
    span = max(math.log10(high) - math.log10(low), 1e-9)
    if room < 0.05 * span:
        ax.margins(y=max(room, 0.0) / span)


def no_offset(ax: Axes) -> None:
    """Plain tick labels on a linear y axis: a loss flat to 1e-12 reads 4.5763801274, not as
    '1e-12 + 4.576380127' (matplotlib's offset notation)."""
    if ax.get_yscale() == "linear":
        ax.ticklabel_format(axis="y", useOffset=False)


def positive(values: FloatArray) -> FloatArray:
    """Non-positive values cannot sit on a log axis: gaps, not clipped spikes."""
    out = values.copy()
    out[~(out > 0)] = np.nan
    return out


def symlog_linthresh(values: FloatArray) -> float:
    """A symlog linear range around 0 that keeps values ≥ 1e-4 of the largest outside it."""
    magnitudes = np.abs(values[np.isfinite(values) & (values != 0)])
    if magnitudes.size == 0:
        return 1.0
    floor = max(float(magnitudes.min()), float(magnitudes.max()) * 1e-4)
    return float(10.0 ** math.floor(math.log10(floor)))


def auto_scale(ax: Axes, *arrays: FloatArray | None) -> str:
    """Log when positive values span decades, symlog when signed values do, else linear."""
    values = finite(*arrays)
    if values.size < 2:
        return "linear"
    if spans_decades(values):
        ax.set_yscale("log")
        return "log"
    magnitudes = np.abs(values[values != 0])
    if np.any(values < 0) and magnitudes.size >= 2 and decade_span(magnitudes) >= LOG_DECADES + 1:
        ax.set_yscale("symlog", linthresh=symlog_linthresh(values))
        return "symlog"
    return "linear"


def format_number(value: Any) -> str:
    """A recorded value for a person, as the verdict's sentences write it
    (:func:`obstacle.battery.verdict.numbers.quantity`: 3 significant digits, thousands grouped,
    scientific only when tiny or huge, ``n/a`` for NaN, ``∞``).

    Shared with the HTML report so a number reads the same in a plot, the table and the text.
    ``None`` → "—", booleans → "yes"/"no", integers verbatim.
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, float):
        return str(value)
    return quantity(value)


# ----------------------------------------------------------------------------- figures


def figure(width: float, height: float) -> Figure:
    # styles are set per artist, not through rcParams: a server may draw from several threads
    return Figure(figsize=(width, height), layout="constrained", facecolor="white")


def style(ax: Axes) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#e3e3e3", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=8.5)


def titles(fig: Figure, top: Axes, title: str, hint: str) -> None:
    """A bold title saying what is drawn and, above the top axes, a grey line saying what to
    look for."""
    fig.suptitle(title, x=0.01, ha="left", fontsize=11.5, fontweight="bold")
    # about 13 characters of 8.8-pt text per inch of figure width
    width = int(fig.get_figwidth() * 13)
    wrapped = "\n".join(textwrap.fill(line, width=width) for line in hint.split("\n"))
    top.set_title(wrapped, loc="left", fontsize=8.8, color=GREY)


def legend(ax: Axes, *, outside: bool = False) -> None:
    handles, _labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.legend(loc="upper right", fontsize=8.5, frameon=True, framealpha=0.9, edgecolor="none")


def no_data(ax: Axes, message: str) -> None:
    ax.text(
        0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color=GREY, fontsize=9
    )
    ax.set_yticks([])


def png_bytes(fig: Figure, *, dpi: int = PNG_DPI) -> bytes:
    """The figure rendered as PNG bytes (Agg)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white", metadata={"Software": None})
    return buffer.getvalue()


def save_png(fig: Figure, path: str | Path, *, dpi: int = PNG_DPI) -> Path:
    """Write the figure to ``path`` as PNG (parent folders created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png_bytes(fig, dpi=dpi))
    return target
