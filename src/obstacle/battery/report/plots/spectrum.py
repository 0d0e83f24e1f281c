"""The Hessian spectral density (stochastic Lanczos quadrature) at a few checkpoints."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from obstacle.battery.report.plots._common import (
    PALETTE,
    FloatArray,
    Report,
    checkpoints_by_step,
    figure,
    float_array,
    format_number,
    legend,
    lookup,
    positive,
    style,
    titles,
    to_float,
)

_CYCLE = [PALETTE[k] for k in ("blue", "orange", "green", "vermillion", "purple", "sky", "black")]


def plot_spectrum(report: Report, *, max_curves: int = 5) -> Figure | None:
    """Hessian spectral density (stochastic Lanczos quadrature) at up to ``max_curves`` checkpoints.

    ``None`` when the preset did not compute a spectrum.
    """
    recorded: list[tuple[float, FloatArray, FloatArray, float]] = []
    for c in checkpoints_by_step(report):
        grid = float_array(lookup(c, "details", "spectrum", "density", "grid"))
        values = float_array(lookup(c, "details", "spectrum", "density", "values"))
        if grid.size >= 2 and grid.size == values.size and (values > 0).any():
            trace = to_float(lookup(c, "details", "spectrum", "trace"))
            recorded.append((to_float(c.get("step")), grid, values, trace))
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

    fig = figure(7.6, 4.3)
    ax = fig.add_subplot()
    style(ax)
    ax.set_yscale("log")
    for colour, i in zip(_CYCLE, picks, strict=False):
        step, grid, values, trace = recorded[i]
        label = f"step {int(step)}" + (
            f"  (tr H = {format_number(trace)})" if math.isfinite(trace) else ""
        )
        ax.plot(grid, positive(values), color=colour, lw=1.6, label=label)
    ax.axvline(0.0, color=PALETTE["black"], lw=0.8, ls=":")
    # densities from quadrature have tails of 1e-30: show six decades below the peak
    peak = max(float(np.nanmax(values)) for _, _, values, _ in recorded)
    ax.set_ylim(bottom=peak * 1e-6)
    ax.set_xlabel(r"Hessian eigenvalue $\lambda$")
    ax.set_ylabel("spectral density (log)")
    legend(ax, outside=True)
    titles(
        fig,
        ax,
        "Hessian spectral density",
        "Look for mass left of 0 (negative curvature: saddles) and a long right tail\n"
        "(large λmax against the bulk: poor conditioning).",
    )
    return fig
