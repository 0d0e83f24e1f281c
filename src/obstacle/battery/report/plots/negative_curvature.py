"""The loss along the most negative curvature direction at the strongest saddle checkpoint."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from obstacle.battery.report.plots._common import (
    GREY,
    PALETTE,
    FloatArray,
    Report,
    checkpoints_by_step,
    figure,
    finite,
    float_array,
    format_number,
    legend,
    lookup,
    no_offset,
    series,
    style,
    titles,
    to_float,
    value_at,
)

# The saddle slice compares −λmin with λmax, never with less than this fraction of the run's
# largest λmax (see select_saddle_checkpoint): 1e-3 keeps a 0.1%-of-sharpest negative curvature
# eligible while ignoring eigenvalues at float-noise level (1e-15 and below) on flat checkpoints.
SADDLE_SCALE_FLOOR = 1e-3


def _slice(checkpoint: Mapping[str, Any]) -> tuple[FloatArray, FloatArray] | None:
    alphas = float_array(lookup(checkpoint, "details", "lanczos", "slice", "alphas"))
    losses = float_array(lookup(checkpoint, "details", "lanczos", "slice", "losses"))
    if alphas.size != losses.size or (np.isfinite(alphas) & np.isfinite(losses)).sum() < 2:
        return None
    return alphas, losses


def select_saddle_checkpoint(report: Report) -> Mapping[str, Any] | None:
    """The checkpoint where the saddle evidence is strongest, among those with a recorded slice.

    When the verdict found a saddle, the checkpoint its evidence cites (``shown_at_step``), so
    the plot and the text show the same step. Otherwise, among the checkpoints:

    First choice: λmin < 0 with an escape certificate that descends, largest −λmin/|λmax| (the
    negative curvature relative to the scale of the landscape; ties broken by −λmin). |λmax| is
    floored at ``SADDLE_SCALE_FLOOR`` × the run's largest |λmax|: where a checkpoint's λmax is
    numerically 0 (dead units, a flat diverged region) its λmin is float noise, and a raw ratio
    would pick it. Otherwise the most negative λmin, otherwise the first checkpoint with a slice.
    ``None`` when no checkpoint recorded a slice.
    """
    candidates = [c for c in checkpoints_by_step(report) if _slice(c) is not None]
    if not candidates:
        return None
    # The verdict decides where a saddle shows; the plot draws that checkpoint, never another.
    cited = [
        o.get("shown_at_step")
        for o in lookup(report, "verdict", "obstacles") or []
        if isinstance(o, Mapping) and o.get("kind") == "saddle_point"
    ]
    chosen = next((c for c in candidates if cited and c.get("step") == cited[0]), None)
    if chosen is not None:
        return chosen

    def lam(c: Mapping[str, Any], key: str) -> float:
        return to_float(c.get(key))

    certified = [
        c
        for c in candidates
        if lam(c, "lambda_min") < 0
        and lookup(c, "details", "lanczos", "escape", "descends") is True
    ]
    if certified:
        scales = finite(np.abs(series(checkpoints_by_step(report), "lambda_max")))
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
    lam_min = to_float(checkpoint.get("lambda_min"))
    lam_max = to_float(checkpoint.get("lambda_max"))
    step = to_float(checkpoint.get("step"))
    centre = value_at(alphas, losses, 0.0)
    if not math.isfinite(centre):
        centre = to_float(checkpoint.get("loss"))

    fig = figure(7.6, 4.5)
    ax = fig.add_subplot()
    style(ax)
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
        ax.axhline(centre, color=GREY, lw=0.8, ls=":", label="loss at the checkpoint")
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
        _draw_escape(ax, lookup(checkpoint, "details", "lanczos", "escape"), centre)
    # the recorded curve sets the view; the quadratic may leave it where it stops being accurate
    seen = finite(losses, np.array([centre]))
    low, high = float(seen.min()), float(seen.max())
    pad = (high - low) or abs(high) or 1.0
    ax.set_ylim(low - 0.3 * pad, high + 0.1 * pad)

    ax.set_xlabel(
        r"$\alpha$   (distance along the unit eigenvector $v_{\min}$ of $\lambda_{\min}$)"
    )
    ax.set_ylabel("loss (probe mean)")
    no_offset(ax)
    legend(ax, outside=True)
    where = f"step {int(step)}" if math.isfinite(step) else "the selected checkpoint"
    facts = f"λmin = {format_number(lam_min)}, λmax = {format_number(lam_max)}"
    if math.isfinite(lam_min) and lam_min < 0:
        hint = (
            f"{facts}. A curve that bends down on either side is a saddle: a step along ±v lowers "
            "the loss."
        )
    else:
        hint = f"{facts}. A curve that bends up on both sides: no negative curvature here."
    titles(fig, ax, f"Loss along the most negative curvature direction at {where}", hint)
    return fig


def _draw_escape(ax: Axes, escape: Any, centre: float) -> None:
    alphas = [to_float(a) for a in _as_list(lookup(escape, "alphas"))]
    plus = [to_float(d) for d in _as_list(lookup(escape, "delta_plus"))]
    minus = [to_float(d) for d in _as_list(lookup(escape, "delta_minus"))]
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
    descends = lookup(escape, "descends")
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
