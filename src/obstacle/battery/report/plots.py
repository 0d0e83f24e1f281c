"""The report's plots, drawn only from the battery's recorded numbers (the report JSON).

Each ``plot_*`` function takes the report dict (schema ``obstacle.report/1``) and returns a
:class:`~matplotlib.figure.Figure`, or ``None`` when the report holds no data for that plot (the
HTML report then says why the plot is missing). Nothing is recomputed while drawing: a plot shows
what the battery measured, so it can stand as evidence. Any field may be null or missing; JSON null
(how non-finite numbers travel) becomes a gap in a line, never an error.

Figures are built from :class:`matplotlib.figure.Figure` directly — no pyplot, so no global figure
registry and no GUI backend; saving renders through Agg. This module never imports torch.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

__all__ = [
    "PALETTE",
    "format_number",
    "plot_interpolation",
    "plot_negative_curvature",
    "plot_spectrum",
    "plot_subspace",
    "plot_time_series",
    "png_bytes",
    "save_png",
    "select_saddle_checkpoint",
]

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
_GREY = "#6b6b6b"
_CYCLE = [PALETTE[k] for k in ("blue", "orange", "green", "vermillion", "purple", "sky", "black")]

# A quantity whose positive values span this many decades is drawn on a log axis.
LOG_DECADES = 2.0
# Gradient norm and SNR are read as ratios (10× smaller gradient): log from one decade on.
RATIO_LOG_DECADES = 1.0
# The saddle slice compares −λmin with λmax, never with less than this fraction of the run's
# largest λmax (see select_saddle_checkpoint): 1e-3 keeps a 0.1%-of-sharpest negative curvature
# eligible while ignoring eigenvalues at float-noise level (1e-15 and below) on flat checkpoints.
SADDLE_SCALE_FLOOR = 1e-3
# Log axes show at most 1e±200: matplotlib's log tick locator reaches a stride of decades
# beyond the view, and fails when that passes the float range (1e308).
DISPLAY_LIMIT = 1e200
# PNG resolution: sharp on a high-density screen, small enough to inline in one HTML file.
PNG_DPI = 130

# ----------------------------------------------------------------------------- reading records


def _get(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]…``, or None as soon as a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _to_float(value: Any) -> float:
    """A recorded number as a float; null, booleans and non-numbers become NaN (a gap)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _array(values: Any) -> FloatArray:
    """A recorded list as a float array (nulls → NaN); anything that is not a list → empty."""
    if not isinstance(values, Sequence) or isinstance(values, str | bytes):
        return np.zeros(0)
    return np.array([_to_float(v) for v in values], dtype=np.float64)


def _checkpoints(report: Report) -> list[Mapping[str, Any]]:
    """The report's checkpoint records that carry a step, in step order."""
    records = report.get("checkpoints") if isinstance(report, Mapping) else None
    if not isinstance(records, Sequence):
        return []
    usable = [
        c for c in records if isinstance(c, Mapping) and math.isfinite(_to_float(c.get("step")))
    ]
    return sorted(usable, key=lambda c: _to_float(c.get("step")))


def _series(checkpoints: Sequence[Mapping[str, Any]], key: str) -> FloatArray:
    return np.array([_to_float(c.get(key)) for c in checkpoints], dtype=np.float64)


def _finite(*arrays: FloatArray | None) -> FloatArray:
    parts = [a[np.isfinite(a)] for a in arrays if a is not None and a.size]
    return np.concatenate(parts) if parts else np.zeros(0)


def _decades(positive: FloatArray) -> float:
    """log10(max / min) of positive values, without overflowing for 1e300 / 1e-300."""
    return math.log10(float(positive.max())) - math.log10(float(positive.min()))


def _spans_decades(*arrays: FloatArray | None, decades: float = LOG_DECADES) -> bool:
    """All finite values positive and spanning at least ``decades`` decades."""
    values = _finite(*arrays)
    if values.size < 2 or np.any(values <= 0):
        return False
    return _decades(values) >= decades


def _safe_margins(ax: Axes) -> None:
    """Keep a log/symlog axis inside what matplotlib can draw when the data nears 1e±308.

    A diverging run can record a loss of 1e300: matplotlib pads 5% in log space (10^315
    overflows) and its log tick locator fails past the float range. Beyond ``DISPLAY_LIMIT`` the
    view is clamped (the line leaves the frame, as on any plot whose data exceeds its axis);
    below it, the margins shrink so the padded view stays finite.
    """
    scale = ax.get_yscale()
    if scale not in ("log", "symlog"):
        return
    drawn = _finite(*[np.asarray(ln.get_ydata(), dtype=np.float64) for ln in ax.get_lines()])
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


def _no_offset(ax: Axes) -> None:
    """Plain tick labels on a linear y axis: a loss flat to 1e-12 reads 4.5763801274, not as
    '1e-12 + 4.576380127' (matplotlib's offset notation)."""
    if ax.get_yscale() == "linear":
        ax.ticklabel_format(axis="y", useOffset=False)


def _positive(values: FloatArray) -> FloatArray:
    """Non-positive values cannot sit on a log axis: gaps, not clipped spikes."""
    out = values.copy()
    out[~(out > 0)] = np.nan
    return out


def _linthresh(values: FloatArray) -> float:
    """A symlog linear range around 0 that keeps values ≥ 1e-4 of the largest outside it."""
    magnitudes = np.abs(values[np.isfinite(values) & (values != 0)])
    if magnitudes.size == 0:
        return 1.0
    floor = max(float(magnitudes.min()), float(magnitudes.max()) * 1e-4)
    return float(10.0 ** math.floor(math.log10(floor)))


def _auto_scale(ax: Axes, *arrays: FloatArray | None) -> str:
    """Log when positive values span decades, symlog when signed values do, else linear."""
    values = _finite(*arrays)
    if values.size < 2:
        return "linear"
    if _spans_decades(values):
        ax.set_yscale("log")
        return "log"
    magnitudes = np.abs(values[values != 0])
    if np.any(values < 0) and magnitudes.size >= 2 and _decades(magnitudes) >= LOG_DECADES + 1:
        ax.set_yscale("symlog", linthresh=_linthresh(values))
        return "symlog"
    return "linear"


def format_number(value: Any, *, digits: int = 3) -> str:
    """A recorded value for a person: 3 significant digits, scientific when tiny or huge.

    Shared with the HTML report so a number reads the same in a plot and in the table.
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
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+∞" if value > 0 else "−∞"
    if value == 0:
        return "0"
    magnitude = abs(value)
    text = f"{value:.{digits}g}"
    if magnitude >= 1e4 or magnitude < 1e-3 or "e" in text:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return text


# ----------------------------------------------------------------------------- figure helpers


def _figure(width: float, height: float) -> Figure:
    # styles are set per artist, not through rcParams: a server may draw from several threads
    return Figure(figsize=(width, height), layout="constrained", facecolor="white")


def _style(ax: Axes) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#e3e3e3", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=8.5)


def _titles(fig: Figure, top: Axes, title: str, hint: str) -> None:
    """A bold title saying what is drawn and, above the top axes, a grey line saying what to
    look for."""
    fig.suptitle(title, x=0.01, ha="left", fontsize=11.5, fontweight="bold")
    # about 13 characters of 8.8-pt text per inch of figure width
    width = int(fig.get_figwidth() * 13)
    wrapped = "\n".join(textwrap.fill(line, width=width) for line in hint.split("\n"))
    top.set_title(wrapped, loc="left", fontsize=8.8, color=_GREY)


def _legend(ax: Axes, *, outside: bool = False) -> None:
    handles, _labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.legend(loc="upper right", fontsize=8.5, frameon=True, framealpha=0.9, edgecolor="none")


def _no_data(ax: Axes, message: str) -> None:
    ax.text(
        0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color=_GREY, fontsize=9
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


# ----------------------------------------------------------------------------- 1. interpolation


def _value_at(alphas: FloatArray, values: FloatArray, alpha: float) -> float:
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


def plot_interpolation(report: Report) -> Figure | None:
    """Loss on the straight line θ(α) = θ0 + α(θT − θ0), α ∈ [−0.5, 1.5] (Goodfellow et al. 2015).

    Training loss, validation loss when recorded, the segment between the checkpoints shaded, the
    endpoints marked θ0/θT, and the barrier annotated when the battery found the curve not monotone.
    ``None`` without a recorded interpolation (e.g. a single checkpoint).
    """
    record = _get(report, "run", "interpolation")
    alphas, train = _array(_get(record, "alphas")), _array(_get(record, "train"))
    if alphas.size < 2 or train.size != alphas.size or not np.isfinite(train).any():
        return None
    recorded = _array(_get(record, "validation"))
    usable = recorded.size == alphas.size and np.isfinite(recorded).any()
    validation = recorded if usable else None

    fig = _figure(7.6, 4.3)
    ax = fig.add_subplot()
    _style(ax)
    log = _spans_decades(train, validation)
    if log:
        ax.set_yscale("log")
    shown = _positive if log else (lambda a: a)

    ax.axvspan(0.0, 1.0, color=PALETTE["sky"], alpha=0.12, lw=0, label="between the checkpoints")
    ax.plot(alphas, shown(train), color=PALETTE["blue"], lw=2.0, label="training loss (probe)")
    _safe_margins(ax)
    if validation is not None:
        ax.plot(
            alphas,
            shown(validation),
            color=PALETTE["orange"],
            lw=2.0,
            ls="--",
            label="validation loss",
        )

    _shade_missing(ax, alphas, train)
    for alpha, name in ((0.0, r"$\theta_0$ (first)"), (1.0, r"$\theta_T$ (last)")):
        y = _value_at(alphas, train, alpha)
        if not (math.isfinite(y) and (y > 0 or not log)):
            ax.annotate(
                name + "\nloss non-finite",
                (alpha, 0.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8.5,
                color=PALETTE["vermillion"],
            )
        else:
            ax.plot([alpha], [y], "o", color=PALETTE["black"], ms=7, zorder=5)
            ax.annotate(
                name,
                (alpha, y),
                xytext=(0, 10),
                textcoords="offset points",
                ha="center",
                fontsize=9,
                fontweight="bold",
            )

    ax.set_xlim(float(np.nanmin(alphas)), float(np.nanmax(alphas)))
    _safe_margins(ax)
    if _get(record, "monotone") is False:
        _annotate_barrier(ax, record, alphas, train, log=log)

    ax.set_xlabel(r"$\alpha$   (0 = first checkpoint $\theta_0$, 1 = last checkpoint $\theta_T$)")
    ax.set_ylabel("loss (probe mean)")
    _no_offset(ax)
    _legend(ax, outside=True)
    monotone = _get(record, "monotone")
    hint = (
        "No bump between the checkpoints: the straight line from θ0 to θT crosses no barrier."
        if monotone is True
        else "Look for a bump inside the shaded segment: a barrier between the first and last "
        "checkpoints."
    )
    _titles(fig, ax, "Loss on the straight line from the first to the last checkpoint", hint)
    return fig


def _shade_missing(ax: Axes, alphas: FloatArray, values: FloatArray) -> None:
    """Shade the stretches of α where the recorded loss is null (non-finite)."""
    missing = np.isfinite(alphas) & ~np.isfinite(values)
    if not missing.any():
        return
    spacing = float(np.median(np.diff(np.sort(alphas[np.isfinite(alphas)]))))
    first = True
    for alpha in alphas[missing]:
        ax.axvspan(
            alpha - spacing / 2,
            alpha + spacing / 2,
            color=PALETTE["vermillion"],
            alpha=0.12,
            lw=0,
            label="loss non-finite" if first else None,
        )
        first = False


def _annotate_barrier(
    ax: Axes, record: Mapping[str, Any], alphas: FloatArray, train: FloatArray, *, log: bool
) -> None:
    """Mark where the curve is not monotone, with the battery's numbers.

    The battery's ``barrier`` is the height above the chord between J(θ0) and J(θT) (linear mode
    connectivity); the chord is drawn so the number can be read off the plot. A curve can rise
    without crossing the chord (``barrier`` 0): then the recorded ``rise`` is what is shown.
    """
    barrier = _to_float(record.get("barrier"))
    rise = _to_float(record.get("rise"))
    alpha = _to_float(record.get("barrier_alpha"))
    inside = np.isfinite(train) & (alphas >= 0) & (alphas <= 1)
    if not inside.any():
        return
    start, end = _value_at(alphas, train, 0.0), _value_at(alphas, train, 1.0)
    if math.isfinite(start) and math.isfinite(end):
        ax.plot([0.0, 1.0], [start, end], color=_GREY, lw=1.0, ls="--", label="chord θ0 → θT")
    if not math.isfinite(alpha):
        # where the curve climbs most above its running minimum: the visible bump
        a, j = alphas[inside], train[inside]
        alpha = float(a[np.argmax(j - np.minimum.accumulate(j))])
    y = _value_at(alphas, train, alpha)
    if not math.isfinite(y) or (log and y <= 0):
        return
    ax.plot([alpha], [y], marker="v", color=PALETTE["vermillion"], ms=9, zorder=6, ls="none")
    if math.isfinite(barrier) and barrier > 0:
        text = f"barrier {format_number(barrier)} above the chord\nat α = {format_number(alpha)}"
    elif math.isfinite(rise) and rise > 0:
        text = f"not monotone: rises by {format_number(rise)}\nat α = {format_number(alpha)}"
    else:
        text = f"not monotone\nat α = {format_number(alpha)}"
    # put the text inside the axes, on the side of the point with more room
    ax.autoscale_view()
    fx, fy = (ax.transScale + ax.transLimits).transform((alpha, y))
    annotation = ax.annotate(
        text,
        (alpha, y),
        xytext=(fx - 0.08 if fx > 0.6 else fx + 0.08, fy - 0.3 if fy > 0.6 else fy + 0.2),
        textcoords="axes fraction",
        ha="right" if fx > 0.6 else "left",
        color=PALETTE["vermillion"],
        fontsize=9,
        fontweight="bold",
        arrowprops={"arrowstyle": "->", "color": PALETTE["vermillion"], "lw": 1.2},
    )
    annotation.set_gid("barrier")


# ----------------------------------------------------------------------------- 2. subspace


def plot_subspace(report: Report) -> Figure | None:
    """Loss contours on the plane of θT − θ0 and the path's largest orthogonal deviation.

    The projected training path is drawn over them with each checkpoint marked and labelled by its
    step. Contour levels are log-spaced when the loss spans decades. ``None`` without the record.
    """
    record = _get(report, "run", "subspace")
    x, y = _array(_get(record, "x")), _array(_get(record, "y"))
    rows = _get(record, "loss")
    if x.size < 2 or y.size < 2 or not isinstance(rows, Sequence) or len(rows) != y.size:
        return None
    grid = np.array(
        [_array(row) if len(_array(row)) == x.size else np.full(x.size, np.nan) for row in rows]
    )
    values = _finite(grid.ravel())
    if values.size < 4:
        return None
    surface = np.ma.masked_invalid(grid)

    fig = _figure(7.6, 5.6)
    ax = fig.add_subplot()
    ax.tick_params(labelsize=8.5)
    low, high = float(values.min()), float(values.max())
    log = _spans_decades(values)
    if log:
        levels = np.geomspace(low, high, 16)
        filled = ax.contourf(x, y, surface, levels=levels, norm=LogNorm(low, high), cmap="viridis")
    else:
        top = high if high > low else low + 1.0
        levels = np.linspace(low, top, 16)
        filled = ax.contourf(x, y, surface, levels=levels, cmap="viridis")
    if high > low:
        ax.contour(x, y, surface, levels=levels, colors="white", linewidths=0.4, alpha=0.5)
    bar = fig.colorbar(filled, ax=ax, shrink=0.9)
    ticks = np.geomspace(low, high, 6) if log else np.linspace(low, high, 6)
    bar.set_ticks(ticks.tolist(), labels=[format_number(float(t)) for t in ticks])
    bar.minorticks_off()
    bar.set_label("loss (probe mean)" + (", log scale" if log else ""))

    _draw_path(ax, _get(record, "path"))
    length = _to_float(_get(record, "u_norm"))
    ax.set_xlabel(
        r"along $\theta_T - \theta_0$  (parameter distance from $\theta_0$"
        + (f"; θT at {format_number(length)})" if math.isfinite(length) else ")")
    )
    random = _get(record, "w_source") == "random"
    ax.set_ylabel(
        "a random direction orthogonal to it" if random else "along the path's largest deviation"
    )
    _legend(ax)
    hint = (
        "Look for where the path bends or stalls: a ridge it skirts, a valley floor it follows, or "
        "a basin it stops short of."
    )
    residual = _to_float(_get(record, "residual"))
    if math.isfinite(residual):
        share = format_number(100 * (1 - residual), digits=2)
        hint += f" The plane holds {share}% of the path's squared displacement."
    _titles(fig, ax, "Loss landscape on the plane of the training path", hint)
    return fig


def _draw_path(ax: Axes, path: Any) -> None:
    px, py = _array(_get(path, "x")), _array(_get(path, "y"))
    if px.size == 0 or px.size != py.size:
        return
    outline = [patheffects.withStroke(linewidth=4, foreground="black")]
    ax.plot(px, py, "-", color="white", lw=2, path_effects=outline, zorder=4, label="training path")
    ax.plot(
        px,
        py,
        "o",
        ms=5,
        mfc=PALETTE["orange"],
        mec="black",
        mew=0.8,
        zorder=5,
        label="checkpoints",
    )
    steps = _array(_get(path, "steps"))
    if steps.size != px.size:
        return
    # label every checkpoint when few, else the first, the last and ~8 in between
    count = px.size
    chosen = sorted(set(np.linspace(0, count - 1, min(count, 10)).round().astype(int).tolist()))
    # skip a label that would sit on top of one already placed (axes-relative distance)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    placed: list[tuple[float, float]] = []
    for i in chosen:
        if not (math.isfinite(px[i]) and math.isfinite(py[i]) and math.isfinite(steps[i])):
            continue
        u, v = (px[i] - x0) / (x1 - x0), (py[i] - y0) / (y1 - y0)
        if i not in (chosen[0], chosen[-1]) and any(
            math.hypot(u - a, v - b) < 0.06 for a, b in placed
        ):
            continue
        placed.append((u, v))
        ax.annotate(
            f"{int(steps[i])}",
            (px[i], py[i]),
            xytext=(5, 5),
            textcoords="offset points",
            fontsize=8,
            zorder=6,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
        )


# ----------------------------------------------------------------------------- 3. curvature slice


def _slice(checkpoint: Mapping[str, Any]) -> tuple[FloatArray, FloatArray] | None:
    alphas = _array(_get(checkpoint, "details", "lanczos", "slice", "alphas"))
    losses = _array(_get(checkpoint, "details", "lanczos", "slice", "losses"))
    if alphas.size != losses.size or (np.isfinite(alphas) & np.isfinite(losses)).sum() < 2:
        return None
    return alphas, losses


def select_saddle_checkpoint(report: Report) -> Mapping[str, Any] | None:
    """The checkpoint where the saddle evidence is strongest, among those with a recorded slice.

    First choice: λmin < 0 with an escape certificate that descends, largest −λmin/|λmax| (the
    negative curvature relative to the scale of the landscape; ties broken by −λmin). |λmax| is
    floored at ``SADDLE_SCALE_FLOOR`` × the run's largest |λmax|: where a checkpoint's λmax is
    numerically 0 (dead units, a flat diverged region) its λmin is float noise, and a raw ratio
    would pick it. Otherwise the most negative λmin, otherwise the first checkpoint with a slice.
    ``None`` when no checkpoint recorded a slice.
    """
    candidates = [c for c in _checkpoints(report) if _slice(c) is not None]
    if not candidates:
        return None

    def lam(c: Mapping[str, Any], key: str) -> float:
        return _to_float(c.get(key))

    certified = [
        c
        for c in candidates
        if lam(c, "lambda_min") < 0 and _get(c, "details", "lanczos", "escape", "descends") is True
    ]
    if certified:
        scales = _finite(np.abs(_series(_checkpoints(report), "lambda_max")))
        floor = SADDLE_SCALE_FLOOR * float(scales.max()) if scales.size else 0.0

        def strength(c: Mapping[str, Any]) -> tuple[float, float]:
            lam_max = abs(lam(c, "lambda_max"))
            scale = max(lam_max, floor) if math.isfinite(lam_max) else floor
            ratio = -lam(c, "lambda_min") / scale if scale > 0 else 0.0
            return ratio, -lam(c, "lambda_min")

        return max(certified, key=strength)
    known = [c for c in candidates if math.isfinite(lam(c, "lambda_min"))]
    if known:
        return min(known, key=lambda c: lam(c, "lambda_min"))
    return candidates[0]


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return [value]


def plot_negative_curvature(report: Report) -> Figure | None:
    """Loss along the Lanczos λmin eigenvector through the strongest saddle checkpoint.

    Draws the recorded slice, the quadratic prediction J(θ) + ½λmin·α², and the escape certificate
    points J(θ ± αv). ``None`` when no checkpoint recorded a slice.
    """
    checkpoint = select_saddle_checkpoint(report)
    if checkpoint is None:
        return None
    recorded = _slice(checkpoint)
    assert recorded is not None  # select_saddle_checkpoint only returns checkpoints with a slice
    alphas, losses = recorded
    lam_min = _to_float(checkpoint.get("lambda_min"))
    lam_max = _to_float(checkpoint.get("lambda_max"))
    step = _to_float(checkpoint.get("step"))
    centre = _value_at(alphas, losses, 0.0)
    if not math.isfinite(centre):
        centre = _to_float(checkpoint.get("loss"))

    fig = _figure(7.6, 4.5)
    ax = fig.add_subplot()
    _style(ax)
    ok = np.isfinite(alphas)
    order = np.argsort(alphas[ok])
    ax.plot(
        alphas[ok][order],
        losses[ok][order],
        "-o",
        ms=3,
        color=PALETTE["blue"],
        lw=2,
        label=r"loss along $v_{\min}$ (recorded)",
    )
    if math.isfinite(centre):
        ax.axhline(centre, color=_GREY, lw=0.8, ls=":", label="loss at the checkpoint")
        if math.isfinite(lam_min):
            grid = np.linspace(float(np.nanmin(alphas)), float(np.nanmax(alphas)), 200)
            ax.plot(
                grid,
                centre + 0.5 * lam_min * grid**2,
                color=PALETTE["vermillion"],
                ls="--",
                lw=1.5,
                label=r"quadratic prediction $J(\theta) + \frac{1}{2}\lambda_{\min}\alpha^2$",
            )
        _draw_escape(ax, _get(checkpoint, "details", "lanczos", "escape"), centre)
    # the recorded curve sets the view; the quadratic may leave it where it stops being accurate
    seen = _finite(losses, np.array([centre]))
    low, high = float(seen.min()), float(seen.max())
    pad = (high - low) or abs(high) or 1.0
    ax.set_ylim(low - 0.3 * pad, high + 0.1 * pad)

    ax.set_xlabel(
        r"$\alpha$   (distance along the unit eigenvector $v_{\min}$ of $\lambda_{\min}$)"
    )
    ax.set_ylabel("loss (probe mean)")
    _no_offset(ax)
    _legend(ax, outside=True)
    where = f"step {int(step)}" if math.isfinite(step) else "the selected checkpoint"
    facts = f"λmin = {format_number(lam_min)}, λmax = {format_number(lam_max)}"
    if math.isfinite(lam_min) and lam_min < 0:
        hint = (
            f"{facts}. A curve that bends down on either side is a saddle: a step along ±v lowers "
            "the loss."
        )
    else:
        hint = f"{facts}. A curve that bends up on both sides: no negative curvature here."
    _titles(fig, ax, f"Loss along the most negative curvature direction at {where}", hint)
    return fig


def _draw_escape(ax: Axes, escape: Any, centre: float) -> None:
    alphas = [_to_float(a) for a in _as_list(_get(escape, "alphas"))]
    plus = [_to_float(d) for d in _as_list(_get(escape, "delta_plus"))]
    minus = [_to_float(d) for d in _as_list(_get(escape, "delta_minus"))]
    points: list[tuple[float, float]] = []
    for i, alpha in enumerate(alphas):
        if not math.isfinite(alpha):
            continue
        for sign, deltas in ((1.0, plus), (-1.0, minus)):
            if i < len(deltas) and math.isfinite(deltas[i]):
                points.append((sign * abs(alpha), centre + deltas[i]))
    if not points:
        return
    xs, ys = zip(*points, strict=True)
    descends = _get(escape, "descends")
    ax.plot(
        xs,
        ys,
        "D",
        ms=7,
        mfc=PALETTE["green"] if descends else "white",
        mec="black",
        mew=0.9,
        zorder=6,
        linestyle="none",
        label="escape certificate " + ("(descends)" if descends else "(does not descend)"),
    )


# ----------------------------------------------------------------------------- 4. time series


def plot_time_series(report: Report) -> Figure | None:
    """Per-checkpoint signals on a shared step axis, one stacked panel each.

    Loss (probe, logged minibatch, validation); gradient norm (log); lr·gᵀHg/gᵀg with the line at
    2 and lr·λmax with the optimizer's stability threshold; λmin and λmax (symlog); gradient SNR
    (log); minibatch uphill fraction with the full-data step's direction. Nulls are gaps; a
    non-finite checkpoint is shaded. ``None`` when no checkpoint carries a step.
    """
    checkpoints = _checkpoints(report)
    if not checkpoints:
        return None
    steps = _series(checkpoints, "step")

    fig = _figure(8.4, 12.5)
    axes = fig.subplots(6, 1, sharex=True)
    for ax in axes:
        _style(ax)
    _panel_loss(axes[0], report, checkpoints, steps)
    _panel_gradient(axes[1], checkpoints, steps)
    _panel_step_curvature(axes[2], checkpoints, steps)
    _panel_eigenvalues(axes[3], checkpoints, steps)
    _panel_snr(axes[4], checkpoints, steps)
    _panel_uphill(axes[5], checkpoints, steps)
    _shade_nonfinite(axes, checkpoints, steps)
    for ax in axes:
        _legend(ax, outside=True)
        _no_offset(ax)
        _safe_margins(ax)
    axes[-1].set_xlabel("step")
    if steps.size == 1:
        axes[-1].set_xlim(steps[0] - 1, steps[0] + 1)
        axes[-1].set_xticks([steps[0]], labels=[f"{int(steps[0])}"])
    else:
        logged = _array(_get(report, "run", "train_log", "steps"))
        span = _finite(steps, logged)
        margin = 0.03 * float(span.max() - span.min())
        axes[-1].set_xlim(float(span.min()) - margin, float(span.max()) + margin)
    _titles(
        fig,
        axes[0],
        "Training signals per checkpoint",
        "Look for: lr·curvature above the threshold (conditioning) · λmin < 0 while ‖g‖ is small "
        "(saddle)\nlow SNR with uphill minibatch steps but a downhill full step (noise) · gaps or "
        "shading (non-finite)",
    )
    return fig


def _line(ax: Axes, x: FloatArray, y: FloatArray, label: str, color: str, **kw: Any) -> bool:
    """Plot a recorded series (gaps at nulls, markers so isolated points show); False if empty."""
    if not np.isfinite(y).any():
        return False
    ax.plot(x, y, marker=kw.pop("marker", "o"), ms=kw.pop("ms", 3), color=color, label=label, **kw)
    # before anything autoscales this axis (a shared-x sibling setting its scale does)
    _safe_margins(ax)
    return True


def _panel_loss(
    ax: Axes, report: Report, checkpoints: Sequence[Mapping[str, Any]], steps: FloatArray
) -> None:
    probe = _series(checkpoints, "loss")
    validation = _series(checkpoints, "validation_loss")
    log_steps = _array(_get(report, "run", "train_log", "steps"))
    log_loss = _array(_get(report, "run", "train_log", "loss"))
    if log_steps.size == 0 or log_steps.size != log_loss.size:
        log_steps, log_loss = steps, _series(checkpoints, "train_loss")
        logged_style: dict[str, Any] = {"lw": 0, "marker": "s", "ms": 3}
    else:
        logged_style = {"lw": 0.8, "marker": "", "alpha": 0.7}
    log = _spans_decades(probe, validation, log_loss)
    if log:
        ax.set_yscale("log")
    shown = _positive if log else (lambda a: a)
    drawn = [
        _line(
            ax,
            log_steps,
            shown(log_loss),
            "minibatch loss (logged)",
            PALETTE["sky"],
            **logged_style,
        ),
        _line(ax, steps, shown(probe), "probe loss", PALETTE["black"], lw=1.8),
        _line(ax, steps, shown(validation), "validation loss", PALETTE["orange"], lw=1.8, ls="--"),
    ]
    target = _to_float(_get(report, "run", "target_loss"))
    if math.isfinite(target) and any(drawn) and (target > 0 or not log):
        ax.axhline(target, color=PALETTE["green"], lw=1, ls=":", label="target loss")
    if not any(drawn):
        _no_data(ax, "no loss recorded")
    ax.set_ylabel("loss (probe mean)")
    _no_offset(ax)


def _panel_gradient(ax: Axes, checkpoints: Sequence[Mapping[str, Any]], steps: FloatArray) -> None:
    norm = _series(checkpoints, "grad_norm")
    if (norm > 0).any():
        if _spans_decades(norm, decades=RATIO_LOG_DECADES):
            ax.set_yscale("log")
        _line(ax, steps, _positive(norm), r"$\|g\|$ (probe gradient)", PALETTE["blue"], lw=1.8)
    else:
        _no_data(ax, "gradient norm not recorded")
    ax.set_ylabel(r"gradient norm $\|g\|$")


def _panel_step_curvature(
    ax: Axes, checkpoints: Sequence[Mapping[str, Any]], steps: FloatArray
) -> None:
    along = _series(checkpoints, "lr_curvature")
    sharpness = _series(checkpoints, "lr_lambda_max")
    threshold = _series(checkpoints, "stability_threshold")
    # the scale is set before plotting: setting it afterwards autoscales with default margins
    _auto_scale(ax, along, sharpness, np.array([2.0]))
    drawn = [
        _line(ax, steps, along, r"lr$\cdot g^\top H g / g^\top g$", PALETTE["blue"], lw=1.8),
        _line(
            ax, steps, sharpness, r"lr$\cdot\lambda_{\max}$", PALETTE["vermillion"], lw=1.4, ls="--"
        ),
    ]
    if not any(drawn):
        ax.set_yscale("linear")
        _no_data(ax, "step curvature not recorded")
        ax.set_ylabel("lr × curvature")
        return
    ax.axhline(2.0, color=PALETTE["black"], lw=1.0, ls=":", label="2: a gradient step goes uphill")
    known = threshold[np.isfinite(threshold)]
    if known.size and not np.allclose(known, 2.0):
        ax.step(steps, threshold, where="mid", color=_GREY, lw=1.2, label="stability threshold")
    ax.set_ylabel("lr × curvature")


def _panel_eigenvalues(
    ax: Axes, checkpoints: Sequence[Mapping[str, Any]], steps: FloatArray
) -> None:
    lam_min = _series(checkpoints, "lambda_min")
    lam_max = _series(checkpoints, "lambda_max")
    recorded = _finite(lam_min, lam_max)
    if recorded.size == 0:
        _no_data(ax, "Hessian eigenvalues not recorded")
    else:
        ax.set_yscale("symlog", linthresh=_linthresh(recorded))
        _line(ax, steps, lam_max, r"Hessian $\lambda_{\max}$", PALETTE["vermillion"], lw=1.6)
        _line(ax, steps, lam_min, r"Hessian $\lambda_{\min}$", PALETTE["blue"], lw=1.6)
        ax.axhline(0.0, color=PALETTE["black"], lw=0.8)
    ax.set_ylabel("eigenvalue (symlog)")


def _panel_snr(ax: Axes, checkpoints: Sequence[Mapping[str, Any]], steps: FloatArray) -> None:
    snr = _series(checkpoints, "snr")
    if (snr > 0).any():
        if _spans_decades(snr, decades=RATIO_LOG_DECADES):
            ax.set_yscale("log")
        _line(ax, steps, _positive(snr), "gradient SNR", PALETTE["green"], lw=1.8)
        ax.axhline(1.0, color=_GREY, lw=0.8, ls=":", label="SNR = 1")
    else:
        _no_data(ax, "gradient noise not recorded")
    ax.set_ylabel("signal / noise")


def _panel_uphill(ax: Axes, checkpoints: Sequence[Mapping[str, Any]], steps: FloatArray) -> None:
    fraction = _series(checkpoints, "uphill_fraction_minibatch")
    full = [c.get("full_step_uphill") for c in checkpoints]
    drawn = _line(ax, steps, fraction, "minibatch steps uphill", PALETTE["purple"], lw=1.6)
    up = np.array([f is True for f in full])
    down = np.array([f is False for f in full])
    if up.any():
        ax.plot(
            steps[up],
            np.full(up.sum(), 1.04),
            "v",
            color=PALETTE["vermillion"],
            ms=6,
            ls="none",
            label="full-data step uphill",
        )
    if down.any():
        ax.plot(
            steps[down],
            np.full(down.sum(), -0.04),
            "^",
            color=PALETTE["green"],
            ms=6,
            ls="none",
            label="full-data step downhill",
        )
    if not (drawn or up.any() or down.any()):
        _no_data(ax, "uphill steps not recorded")
    else:
        ax.set_ylim(-0.1, 1.1)
    ax.set_ylabel("fraction uphill")


def _shade_nonfinite(
    axes: Sequence[Axes], checkpoints: Sequence[Mapping[str, Any]], steps: FloatArray
) -> None:
    bad = [i for i, c in enumerate(checkpoints) if c.get("finite") is False]
    if not bad:
        return
    gaps = np.diff(steps)
    half = float(np.median(gaps)) / 2 if gaps.size else 0.5
    for k, ax in enumerate(axes):
        for n, i in enumerate(bad):
            ax.axvspan(
                steps[i] - half,
                steps[i] + half,
                color=PALETTE["vermillion"],
                alpha=0.13,
                lw=0,
                label="non-finite checkpoint" if k == 0 and n == 0 else None,
            )


# ----------------------------------------------------------------------------- 5. spectrum


def plot_spectrum(report: Report, *, max_curves: int = 5) -> Figure | None:
    """Hessian spectral density (stochastic Lanczos quadrature) at up to ``max_curves`` checkpoints.

    ``None`` when the preset did not compute a spectrum.
    """
    recorded: list[tuple[float, FloatArray, FloatArray, float]] = []
    for c in _checkpoints(report):
        grid = _array(_get(c, "details", "spectrum", "density", "grid"))
        values = _array(_get(c, "details", "spectrum", "density", "values"))
        if grid.size >= 2 and grid.size == values.size and (values > 0).any():
            trace = _to_float(_get(c, "details", "spectrum", "trace"))
            recorded.append((_to_float(c.get("step")), grid, values, trace))
    if not recorded:
        return None
    picks = sorted(
        set(
            np.linspace(0, len(recorded) - 1, min(len(recorded), max_curves))
            .round()
            .astype(int)
            .tolist()
        )
    )

    fig = _figure(7.6, 4.3)
    ax = fig.add_subplot()
    _style(ax)
    ax.set_yscale("log")
    for colour, i in zip(_CYCLE, picks, strict=False):
        step, grid, values, trace = recorded[i]
        label = f"step {int(step)}" + (
            f"  (tr H = {format_number(trace)})" if math.isfinite(trace) else ""
        )
        ax.plot(grid, _positive(values), color=colour, lw=1.6, label=label)
    ax.axvline(0.0, color=PALETTE["black"], lw=0.8, ls=":")
    # densities from quadrature have tails of 1e-30: show six decades below the peak
    peak = max(float(np.nanmax(values)) for _, _, values, _ in recorded)
    ax.set_ylim(bottom=peak * 1e-6)
    ax.set_xlabel(r"Hessian eigenvalue $\lambda$")
    ax.set_ylabel("spectral density (log)")
    _legend(ax, outside=True)
    _titles(
        fig,
        ax,
        "Hessian spectral density",
        "Look for mass left of 0 (negative curvature: saddles) and a long right tail\n"
        "(large λmax against the bulk: poor conditioning).",
    )
    return fig
