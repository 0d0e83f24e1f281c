"""The per-checkpoint training signals on a shared step axis, one stacked panel each."""

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
    auto_scale,
    checkpoints_by_step,
    figure,
    finite,
    float_array,
    legend,
    lookup,
    no_data,
    no_offset,
    positive,
    safe_margins,
    series,
    spans_decades,
    style,
    symlog_linthresh,
    titles,
    to_float,
)
from obstacle.battery.verdict.numbers import quantity

# Gradient norm and SNR are read as ratios (10× smaller gradient): log from one decade on.
RATIO_LOG_DECADES = 1.0


def plot_time_series(report: Report) -> Figure | None:
    """Per-checkpoint signals on a shared step axis, one stacked panel each.

    Loss (probe, logged minibatch, validation); gradient norm (log); lr·gᵀHg/gᵀg and the sharpness
    the optimizer is judged on (lr·λmax, or lr·λmax(P⁻¹H) for adaptive ones) with the run's
    optimizer's stability threshold; λmin and λmax (symlog); gradient SNR
    (log); minibatch uphill fraction with the full-data step's direction. Nulls are gaps; a
    non-finite checkpoint is shaded. ``None`` when no checkpoint carries a step.
    """
    checkpoints = checkpoints_by_step(report)
    if not checkpoints:
        return None
    steps = series(checkpoints, "step")

    fig = figure(8.4, 12.5)
    axes = fig.subplots(6, 1, sharex=True)
    for ax in axes:
        style(ax)
    _panel_loss(axes[0], report, checkpoints, steps)
    _panel_gradient(axes[1], checkpoints, steps)
    _panel_step_curvature(axes[2], checkpoints, steps)
    _panel_eigenvalues(axes[3], checkpoints, steps)
    _panel_snr(axes[4], checkpoints, steps)
    _panel_uphill(axes[5], checkpoints, steps)
    _shade_nonfinite(axes, checkpoints, steps)
    _shade_episodes(axes, report)
    _mark_shown(axes, report)
    for ax in axes:
        legend(ax, outside=True)
        no_offset(ax)
        safe_margins(ax)
    axes[-1].set_xlabel("step")
    if steps.size == 1:
        axes[-1].set_xlim(steps[0] - 1, steps[0] + 1)
        axes[-1].set_xticks([steps[0]], labels=[f"{int(steps[0])}"])
    else:
        logged = float_array(lookup(report, "run", "train_log", "steps"))
        span = finite(steps, logged)
        margin = 0.03 * float(span.max() - span.min())
        axes[-1].set_xlim(float(span.min()) - margin, float(span.max()) + margin)
    titles(
        fig,
        axes[0],
        "Training signals per checkpoint",
        "Shaded: the verdict's obstacle episodes, dashed: the step each is shown at · look for: lr·curvature above the threshold "
        "(conditioning) · λmin < 0 while ‖g‖ is small (saddle)\nlow SNR with uphill minibatch steps "
        "but a downhill full step (noise) · red bands: non-finite checkpoints",
    )
    return fig


def _line(ax: Axes, x: FloatArray, y: FloatArray, label: str, color: str, **kw: Any) -> bool:
    """Plot a recorded series (gaps at nulls, markers so isolated points show); False if empty."""
    if not np.isfinite(y).any():
        return False
    ax.plot(x, y, marker=kw.pop("marker", "o"), ms=kw.pop("ms", 3), color=color, label=label, **kw)
    # before anything autoscales this axis (a shared-x sibling setting its scale does)
    safe_margins(ax)
    return True


def _panel_loss(
    ax: Axes, report: Report, checkpoints: Sequence[Mapping[str, Any]], steps: FloatArray
) -> None:
    probe = series(checkpoints, "loss")
    validation = series(checkpoints, "validation_loss")
    log_steps = float_array(lookup(report, "run", "train_log", "steps"))
    log_loss = float_array(lookup(report, "run", "train_log", "loss"))
    if log_steps.size == 0 or log_steps.size != log_loss.size:
        log_steps, log_loss = steps, series(checkpoints, "train_loss")
        logged_style: dict[str, Any] = {"lw": 0, "marker": "s", "ms": 3}
    else:
        logged_style = {"lw": 0.8, "marker": "", "alpha": 0.7}
    log = spans_decades(probe, validation, log_loss)
    if log:
        ax.set_yscale("log")
    shown = positive if log else (lambda a: a)
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
    target = to_float(lookup(report, "run", "target_loss"))
    if math.isfinite(target) and any(drawn) and (target > 0 or not log):
        ax.axhline(target, color=PALETTE["green"], lw=1, ls=":", label="target loss")
    if not any(drawn):
        no_data(ax, "no loss recorded")
    ax.set_ylabel("loss (probe mean)")
    no_offset(ax)


def _panel_gradient(ax: Axes, checkpoints: Sequence[Mapping[str, Any]], steps: FloatArray) -> None:
    norm = series(checkpoints, "grad_norm")
    if (norm > 0).any():
        if spans_decades(norm, decades=RATIO_LOG_DECADES):
            ax.set_yscale("log")
        _line(ax, steps, positive(norm), r"$\|g\|$ (probe gradient)", PALETTE["blue"], lw=1.8)
    else:
        no_data(ax, "gradient norm not recorded")
    ax.set_ylabel(r"gradient norm $\|g\|$")


def _sharpness(
    checkpoints: Sequence[Mapping[str, Any]],
) -> tuple[FloatArray, FloatArray, str]:
    """The sharpness the run's optimizer is stable against, its threshold, and the label.

    Adaptive optimizers (Adam, RMSprop, Adagrad) are judged on the preconditioned sharpness
    lr·λmax(P⁻¹H) against their own threshold (38 for Adam with β1 = 0.9), SGD on lr·λmax
    against 2(1+μ)…; the verdict reads the same fields (``CheckpointFacts.stability_ratio``).
    """
    pre = series(checkpoints, "preconditioned_lr_lambda_max")
    if np.isfinite(pre).any():
        return (
            pre,
            series(checkpoints, "preconditioned_threshold"),
            r"lr$\cdot\lambda_{\max}(P^{-1}H)$ (preconditioned)",
        )
    return (
        series(checkpoints, "lr_lambda_max"),
        series(checkpoints, "stability_threshold"),
        r"lr$\cdot\lambda_{\max}$",
    )


# how torch spells the optimizers the battery records in lower case
OPTIMIZER_NAMES = {
    "sgd": "SGD",
    "momentum": "SGD with momentum",
    "nesterov": "SGD with Nesterov momentum",
    "adam": "Adam",
    "adamw": "AdamW",
    "rmsprop": "RMSprop",
    "adagrad": "Adagrad",
}


def _optimizer(checkpoints: Sequence[Mapping[str, Any]]) -> str:
    names = [c.get("optimizer") for c in checkpoints if isinstance(c.get("optimizer"), str)]
    name = str(names[-1]) if names else ""
    return OPTIMIZER_NAMES.get(name.lower(), name)


def _panel_step_curvature(
    ax: Axes, checkpoints: Sequence[Mapping[str, Any]], steps: FloatArray
) -> None:
    along = series(checkpoints, "lr_curvature")
    sharpness, threshold, sharp_label = _sharpness(checkpoints)
    known = threshold[np.isfinite(threshold)]
    reference = known if known.size else np.array([2.0])
    # the scale is set before plotting: setting it afterwards autoscales with default margins
    auto_scale(ax, along, sharpness, reference)
    drawn = [
        _line(ax, steps, along, r"lr$\cdot g^\top H g / g^\top g$", PALETTE["blue"], lw=1.8),
        _line(ax, steps, sharpness, sharp_label, PALETTE["vermillion"], lw=1.4, ls="--"),
    ]
    if not any(drawn):
        ax.set_yscale("linear")
        no_data(ax, "step curvature not recorded")
        ax.set_ylabel("lr × curvature")
        return
    name = _optimizer(checkpoints)
    if not known.size:
        ax.axhline(
            2.0,
            color=PALETTE["black"],
            lw=1.0,
            ls=":",
            label="2: above it a plain SGD step goes uphill (the optimizer's threshold is not recorded)",
        )
    elif np.allclose(known, known[0]):
        ax.axhline(
            float(known[0]),
            color=PALETTE["black"],
            lw=1.0,
            ls=":",
            label=f"{name or 'the optimizer'}'s stability threshold {quantity(float(known[0]))}: "
            "above it a step goes uphill",
        )
    else:
        ax.step(
            steps,
            threshold,
            where="mid",
            color=PALETTE["black"],
            lw=1.0,
            ls=":",
            label=f"{name or 'the optimizer'}'s stability threshold",
        )
    ax.set_ylabel("lr × curvature")


def _panel_eigenvalues(
    ax: Axes, checkpoints: Sequence[Mapping[str, Any]], steps: FloatArray
) -> None:
    lam_min = series(checkpoints, "lambda_min")
    lam_max = series(checkpoints, "lambda_max")
    recorded = finite(lam_min, lam_max)
    if recorded.size == 0:
        no_data(ax, "Hessian eigenvalues not recorded")
    else:
        ax.set_yscale("symlog", linthresh=symlog_linthresh(recorded))
        _line(ax, steps, lam_max, r"Hessian $\lambda_{\max}$", PALETTE["vermillion"], lw=1.6)
        _line(ax, steps, lam_min, r"Hessian $\lambda_{\min}$", PALETTE["blue"], lw=1.6)
        ax.axhline(0.0, color=PALETTE["black"], lw=0.8)
    ax.set_ylabel("eigenvalue (symlog)")


def _panel_snr(ax: Axes, checkpoints: Sequence[Mapping[str, Any]], steps: FloatArray) -> None:
    snr = series(checkpoints, "snr")
    if (snr > 0).any():
        if spans_decades(snr, decades=RATIO_LOG_DECADES):
            ax.set_yscale("log")
        _line(ax, steps, positive(snr), "gradient SNR", PALETTE["green"], lw=1.8)
        ax.axhline(1.0, color=GREY, lw=0.8, ls=":", label="SNR = 1")
    else:
        no_data(ax, "gradient noise not recorded")
    ax.set_ylabel("signal / noise")


def _panel_uphill(ax: Axes, checkpoints: Sequence[Mapping[str, Any]], steps: FloatArray) -> None:
    fraction = series(checkpoints, "uphill_fraction_minibatch")
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
        no_data(ax, "uphill steps not recorded")
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


# One colour per obstacle, so an episode reads the same in every panel.
EPISODE_COLOURS = {
    "saddle_point": "sky",
    "local_minimum": "blue",
    "poor_conditioning": "orange",
    "gradient_noise": "yellow",
    "no_critical_point": "green",
    "divergence": "vermillion",
    "overfitting": "purple",
}


def _shade_episodes(axes: Sequence[Axes], report: Report) -> None:
    """Shade each episode of the verdict over its steps (to the last step while still present)."""
    episodes = [e for e in lookup(report, "verdict", "episodes") or [] if isinstance(e, Mapping)]
    checkpoints = checkpoints_by_step(report)
    if not episodes or not checkpoints:
        return
    last = to_float(checkpoints[-1].get("step"))
    for episode in episodes:
        start = to_float(episode.get("start_step"))
        end = to_float(episode.get("end_step")) if episode.get("end_step") is not None else last
        if not (math.isfinite(start) and math.isfinite(end)):
            continue
        kind = str(episode.get("kind") or "")
        colour = PALETTE.get(EPISODE_COLOURS.get(kind, "black"), GREY)
        label = kind.replace("_", " ") + (
            " (still present)" if episode.get("still_present") else ""
        )
        for k, ax in enumerate(axes):
            ax.axvspan(
                start,
                max(end, start),
                color=colour,
                alpha=0.16,
                lw=0,
                label=label if k == 0 else None,
                zorder=0,
            )


def _mark_shown(axes: Sequence[Axes], report: Report) -> None:
    """A dashed line at the step where the verdict shows each obstacle (``shown_at_step``): the
    same step its evidence cites and the other plots draw."""
    obstacles = [o for o in lookup(report, "verdict", "obstacles") or [] if isinstance(o, Mapping)]
    for obstacle in obstacles:
        step = to_float(obstacle.get("shown_at_step"))
        if not math.isfinite(step):
            continue
        kind = str(obstacle.get("kind") or "")
        colour = PALETTE.get(EPISODE_COLOURS.get(kind, "black"), GREY)
        for k, ax in enumerate(axes):
            ax.axvline(
                step,
                color=colour,
                lw=1.2,
                ls="--",
                label=f"{kind.replace('_', ' ')} shown at step {int(step)}" if k == 0 else None,
            )
