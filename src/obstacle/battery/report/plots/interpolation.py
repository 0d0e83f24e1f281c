"""The loss on the straight line between the first and the last checkpoint."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from obstacle.battery.report.plots._common import (
    GREY,
    PALETTE,
    FloatArray,
    Report,
    figure,
    float_array,
    format_number,
    legend,
    lookup,
    no_offset,
    positive,
    safe_margins,
    spans_decades,
    style,
    titles,
    to_float,
    value_at,
)


def plot_interpolation(report: Report) -> Figure | None:
    """Loss on the straight line θ(α) = θ0 + α(θT − θ0), α ∈ [−0.5, 1.5] (Goodfellow et al. 2015).

    Training loss, validation loss when recorded, the segment between the checkpoints shaded, the
    endpoints marked θ0/θT, and the barrier annotated when the battery found the curve not monotone.
    ``None`` without a recorded interpolation (e.g. a single checkpoint).
    """
    record = lookup(report, "run", "interpolation")
    alphas, train = float_array(lookup(record, "alphas")), float_array(lookup(record, "train"))
    if alphas.size < 2 or train.size != alphas.size or not np.isfinite(train).any():
        return None
    recorded = float_array(lookup(record, "validation"))
    usable = recorded.size == alphas.size and np.isfinite(recorded).any()
    validation = recorded if usable else None

    fig = figure(7.6, 4.3)
    ax = fig.add_subplot()
    style(ax)
    log = spans_decades(train, validation)
    if log:
        ax.set_yscale("log")
    shown = positive if log else (lambda a: a)

    ax.axvspan(0.0, 1.0, color=PALETTE["sky"], alpha=0.12, lw=0, label="between the checkpoints")
    ax.plot(alphas, shown(train), color=PALETTE["blue"], lw=2.0, label="training loss (probe)")
    safe_margins(ax)
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
        y = value_at(alphas, train, alpha)
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
    safe_margins(ax)
    if lookup(record, "monotone") is False:
        _annotate_barrier(ax, record, alphas, train, log=log)

    ax.set_xlabel(r"$\alpha$   (0 = first checkpoint $\theta_0$, 1 = last checkpoint $\theta_T$)")
    ax.set_ylabel("loss (probe mean)")
    no_offset(ax)
    legend(ax, outside=True)
    monotone = lookup(record, "monotone")
    hint = (
        "No bump between the checkpoints: the straight line from θ0 to θT crosses no barrier."
        if monotone is True
        else "Look for a bump inside the shaded segment: a barrier between the first and last "
        "checkpoints."
    )
    titles(fig, ax, "Loss on the straight line from the first to the last checkpoint", hint)
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
    barrier = to_float(record.get("barrier"))
    rise = to_float(record.get("rise"))
    alpha = to_float(record.get("barrier_alpha"))
    inside = np.isfinite(train) & (alphas >= 0) & (alphas <= 1)
    if not inside.any():
        return
    start, end = value_at(alphas, train, 0.0), value_at(alphas, train, 1.0)
    if math.isfinite(start) and math.isfinite(end):
        ax.plot([0.0, 1.0], [start, end], color=GREY, lw=1.0, ls="--", label="chord θ0 → θT")
    if not math.isfinite(alpha):
        # where the curve climbs most above its running minimum: the visible bump
        a, j = alphas[inside], train[inside]
        alpha = float(a[np.argmax(j - np.minimum.accumulate(j))])
    y = value_at(alphas, train, alpha)
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
