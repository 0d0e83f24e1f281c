"""The loss landscape on the plane of the training path, with the path drawn over it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from obstacle.battery.report.plots._common import (
    PALETTE,
    Report,
    figure,
    finite,
    float_array,
    format_number,
    legend,
    lookup,
    spans_decades,
    titles,
    to_float,
)
from obstacle.battery.verdict.numbers import percent


def plot_subspace(report: Report) -> Figure | None:
    """Loss contours on the plane of θT − θ0 and the path's largest orthogonal deviation.

    The projected training path is drawn over them with each checkpoint marked and labelled by its
    step. Contour levels are log-spaced when the loss spans decades. ``None`` without the record.
    """
    record = lookup(report, "run", "subspace")
    x, y = float_array(lookup(record, "x")), float_array(lookup(record, "y"))
    rows = lookup(record, "loss")
    if x.size < 2 or y.size < 2 or not isinstance(rows, Sequence) or len(rows) != y.size:
        return None
    grid = np.array(
        [
            float_array(row) if len(float_array(row)) == x.size else np.full(x.size, np.nan)
            for row in rows
        ]
    )
    values = finite(grid.ravel())
    if values.size < 4:
        return None
    surface = np.ma.masked_invalid(grid)

    fig = figure(7.6, 5.6)
    ax = fig.add_subplot()
    ax.tick_params(labelsize=8.5)
    low, high = float(values.min()), float(values.max())
    log = spans_decades(values)
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

    _draw_path(ax, lookup(record, "path"))
    length = to_float(lookup(record, "u_norm"))
    ax.set_xlabel(
        r"along $\theta_T - \theta_0$  (parameter distance from $\theta_0$"
        + (f"; θT at {format_number(length)})" if math.isfinite(length) else ")")
    )
    random = lookup(record, "w_source") == "random"
    ax.set_ylabel(
        "a random direction orthogonal to it" if random else "along the path's largest deviation"
    )
    legend(ax)
    hint = (
        "Look for where the path bends or stalls: a ridge it skirts, a valley floor it follows, or "
        "a basin it stops short of."
    )
    residual = to_float(lookup(record, "residual"))
    if math.isfinite(residual):
        hint += f" The plane holds {percent(1 - residual)} of the path's squared displacement."
    titles(fig, ax, "Loss landscape on the plane of the training path", hint)
    return fig


def _draw_path(ax: Axes, path: Any) -> None:
    px, py = float_array(lookup(path, "x")), float_array(lookup(path, "y"))
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
    steps = float_array(lookup(path, "steps"))
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
