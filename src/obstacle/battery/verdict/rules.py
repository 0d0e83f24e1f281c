"""One rule class per obstacle: named conditions over the facts, in the order they are checked.

A rule judges a :class:`~obstacle.battery.verdict.facts.Window` — the end of the run, or one
stalled stretch of it found by the timeline — and returns a
:class:`~obstacle.battery.verdict.conditions.Finding`. Its conditions are both the decision and
the explanation (see :mod:`obstacle.battery.verdict.conditions` for how confidence follows from
their margins). Rules read only facts and thresholds; nothing here touches a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from obstacle.battery.verdict.conditions import Condition, Evaluation, Finding, ramp
from obstacle.battery.verdict.facts import (
    CheckpointFacts,
    RunFacts,
    Window,
    finite,
    fmt,
    percent,
    times,
)
from obstacle.battery.verdict.thresholds import Thresholds


@dataclass(frozen=True)
class Context:
    """What a rule may read: the run's facts, the window it judges, the limits and the target."""

    facts: RunFacts
    window: Window
    thresholds: Thresholds
    target_loss: float | None = None


class Rule:
    """An obstacle's rule. Subclasses set ``kind``, ``headline`` and write :meth:`evaluate`."""

    kind: ClassVar[str]
    headline: ClassVar[str]
    episodic: ClassVar[bool] = False
    """True when the obstacle can hold a stalled stretch of the run and then end (saddles,
    conditioning, noise); False when it is judged on the run as a whole or only at its end."""
    conditions: ClassVar[int]

    def judge(self, ctx: Context) -> Finding:
        finding = Finding(self.kind)
        self.evaluate(ctx, Evaluation(finding, self.conditions))
        return finding

    def evaluate(self, ctx: Context, ev: Evaluation) -> None:
        raise NotImplementedError


def _stalled(ctx: Context) -> Condition:
    w, t = ctx.window, ctx.thresholds
    limit = (
        max(t.plateau_rel, 2 * w.trend.scatter_rel)
        if finite(w.trend.scatter_rel)
        else t.plateau_rel
    )
    if not finite(w.trend.decrease_rel):
        statement = "progress cannot be judged from a single checkpoint (or non-finite losses)"
    elif w.stalled:
        statement = (
            f"the loss is on a plateau: {w.trend.describe()} (a plateau is below {percent(limit)})"
        )
    else:
        statement = (
            f"the loss is still falling: {w.trend.describe()} (a plateau is below {percent(limit)})"
        )
    return Condition(
        "loss_stalled", w.stalled, statement, "loss", w.trend.decrease_rel, limit, unit="fraction"
    )


def _full_step_descends(ctx: Context, otherwise: str) -> Condition:
    """The optimizer's full-batch step lowers J at most of the window's checkpoints.

    When it goes uphill at ``full_step_uphill_fraction`` or more of them, the step is too large
    for the curvature: that, not ``otherwise``, is what stops progress.
    """
    w, t = ctx.window, ctx.thresholds
    full_up = w.mean("full_step_uphill")
    uphill = finite(full_up) and full_up >= t.full_step_uphill_fraction
    return Condition(
        "full_step_descends",
        not uphill,
        f"the optimizer's full-batch step goes uphill at {percent(full_up)} of these checkpoints"
        + (
            f": the step is too large for the curvature, not {otherwise}"
            if uphill
            else f" (too large from {percent(t.full_step_uphill_fraction)})"
        ),
        "steps",
        full_up,
        t.full_step_uphill_fraction,
    )


# -- divergence ------------------------------------------------------------------------------------


class Divergence(Rule):
    kind = "divergence"
    headline = "The run diverged"
    conditions = 1

    def evaluate(self, ctx: Context, ev: Evaluation) -> None:
        facts, t = ctx.facts, ctx.thresholds
        f = ev.finding
        f.suggestion = (
            "the step is far too large for the curvature: lower the learning rate (by 10× to start), "
            "add warm-up and gradient clipping, and check the data for NaN/inf"
        )
        ratio, peak_step = facts.explosion_ratio()
        if facts.non_finite_steps:
            first = facts.non_finite_steps[0]
            f.steps = facts.non_finite_steps
            f.shown_at = first  # the step the evidence cites, for the text and the plots alike
            ev.check(
                Condition(
                    "non_finite",
                    True,
                    f"the probe loss or the weights become non-finite from step {first} on",
                    "loss",
                )
            )
        elif finite(ratio) and ratio >= t.explosion_ratio:
            f.steps = [peak_step] if peak_step is not None else []
            f.shown_at = peak_step
            ev.check(
                Condition(
                    "explosion",
                    True,
                    f"the probe loss climbs to {times(ratio)} its first value at step {peak_step} "
                    "(an explosion is "
                    f"{times(t.explosion_ratio)} or more)",
                    "loss",
                    ratio,
                    t.explosion_ratio,
                    ramp(
                        math.log10(ratio),
                        math.log10(t.explosion_ratio),
                        math.log10(10 * t.explosion_ratio),
                    ),
                    unit="ratio",
                )
            )
        else:
            peak = (
                "it never rises above its first value"
                if finite(ratio) and ratio <= 1
                else f"its peak is {times(ratio)} its first value"
            )
            ev.check(
                Condition(
                    "explosion",
                    False,
                    f"every probe loss and weight is finite and {peak} (an explosion is "
                    f"{times(t.explosion_ratio)} or more)",
                    "loss",
                    ratio,
                    t.explosion_ratio,
                    unit="ratio",
                )
            )
            return
        worst = max(
            (c.lr_lambda_max for c in facts.checkpoints if finite(c.lr_lambda_max)),
            default=math.nan,
        )
        if finite(worst):
            f.add("lanczos", f"lr·λmax reached {fmt(worst)} before the blow-up", worst)


# -- overfitting -----------------------------------------------------------------------------------


class Overfitting(Rule):
    kind = "overfitting"
    headline = "The run overfits"
    conditions = 2

    def evaluate(self, ctx: Context, ev: Evaluation) -> None:
        facts, t = ctx.facts, ctx.thresholds
        f = ev.finding
        f.suggestion = (
            "the model memorises the training set: add data or augmentation, regularise (weight "
            "decay, dropout), shrink the model, or stop at the validation minimum"
        )
        rows = [c for c in facts.checkpoints if finite(c.validation_loss) and finite(c.loss)]
        if not ev.check(
            Condition(
                "validation_measured",
                len(rows) >= 3,
                "the probe has no validation batch, so train/validation divergence cannot be seen"
                if not facts.has_validation
                else f"{len(rows)} checkpoints have both training and validation loss (three are needed)",
                "validation",
                len(rows),
                3,
            )
        ):
            return
        best = min(range(len(rows)), key=lambda i: rows[i].validation_loss)
        low, last = rows[best], rows[-1]
        rise = (last.validation_loss - low.validation_loss) / max(abs(low.validation_loss), 1e-12)
        train_fall = (low.loss - last.loss) / max(abs(low.loss), 1e-12)
        holds = best < len(rows) - 1 and rise >= t.validation_rise and train_fall > 0
        if holds:
            statement = (
                f"the validation loss rose {percent(rise)} above its minimum at step {low.step} while "
                f"the training loss fell a further {percent(train_fall)} (overfitting is a rise of "
                f"{percent(t.validation_rise)} or more)"
            )
            f.steps = [c.step for c in rows[best + 1 :]]
        else:
            statement = (
                f"the validation loss ends {percent(max(rise, 0.0))} above its minimum (overfitting "
                f"needs {percent(t.validation_rise)} or more while the training loss still falls)"
            )
        ev.check(
            Condition(
                "validation_rises",
                holds,
                statement,
                "validation",
                rise,
                t.validation_rise,
                ramp(rise, t.validation_rise, 4 * t.validation_rise),
                unit="fraction",
            )
        )


# -- saddle point and local minimum ----------------------------------------------------------------


def negative_curvature(c: CheckpointFacts, t: Thresholds) -> bool:
    """λmin < −negative_curvature_rel·max|λ|."""
    return finite(c.negative_curvature_rel) and c.negative_curvature_rel > t.negative_curvature_rel


def escapes(c: CheckpointFacts, t: Thresholds) -> bool:
    """Stepping along the λmin eigenvector lowers J by more than escape_rel of |J|."""
    return finite(c.escape_drop_rel) and c.escape_drop_rel > t.escape_rel


def gradient_collapsed(c: CheckpointFacts, facts: RunFacts, t: Thresholds) -> bool:
    """‖g‖ below small_gradient_rel of its peak over the run."""
    return (
        finite(c.grad_norm)
        and finite(facts.peak_grad_norm)
        and c.grad_norm <= t.small_gradient_rel * facts.peak_grad_norm
    )


def noise_floor(w: Window, t: Thresholds) -> bool:
    """Noise dominates at the run's batch size and a clean full-batch step would gain at least
    ``noise_signal`` of a typical minibatch step's change: the run is held above a floor by noise."""
    ratio = w.median("noise_to_batch")
    signal = w.median("full_step_gain_rel_minibatch")
    gain = w.median("gradient_step_gain_rel")
    return (
        w.last.run_batch_size is not None
        and not (finite(gain) and gain < t.critical_gain_rel)
        and finite(ratio)
        and ratio * t.snr_noisy > 1.0
        and finite(signal)
        and signal >= t.noise_signal
    )


class SaddlePoint(Rule):
    kind = "saddle_point"
    headline = "The run is stuck at a saddle point"
    episodic = True
    conditions = 6

    def evaluate(self, ctx: Context, ev: Evaluation) -> None:
        w, t = ctx.window, ctx.thresholds
        f = ev.finding
        negative = [c for c in w.checkpoints if negative_curvature(c, t)]
        saddles = [c for c in negative if escapes(c, t)]
        # The one checkpoint every sentence, section and plot cites for this window.
        cited = max(
            saddles or negative or [w.last],
            key=lambda c: (
                c.negative_curvature_rel if finite(c.negative_curvature_rel) else -math.inf
            ),
        )
        f.shown_at = cited.step
        f.suggestion = (
            f"negative curvature {fmt(cited.lambda_min)} along a direction that lowers the loss — "
            "momentum, gradient noise, a larger initialisation or a curvature-aware step (e.g. "
            "saddle-free Newton) escapes it"
        )
        if not ev.check(
            Condition(
                "negative_curvature",
                bool(negative),
                f"λmin = {fmt(cited.lambda_min)} against λmax = {fmt(cited.lambda_max)} at step "
                f"{cited.step} (clearly negative is below −{fmt(t.negative_curvature_rel)}·max|λ|)",
                "lanczos",
                cited.lambda_min,
                -t.negative_curvature_rel,
                ramp(cited.negative_curvature_rel, t.negative_curvature_rel, 0.2),
            )
        ):
            return
        if not ev.check(
            Condition(
                "escape_descends",
                bool(saddles),
                f"stepping along the λmin eigenvector at step {cited.step} lowers the probe loss by "
                f"{percent(cited.escape_drop_rel)} (an escapable saddle lowers it by more than "
                f"{percent(t.escape_rel)})",
                "escape",
                cited.escape_delta,
                t.escape_rel,
                len(saddles) / len(w.checkpoints),
            )
        ):
            return
        f.steps = [c.step for c in saddles]
        if not ev.check(_stalled(ctx)):
            return
        if not ev.check(_full_step_descends(ctx, "held at a saddle")):
            return
        gain = w.median("gradient_step_gain_rel")
        if not ev.check(
            Condition(
                "near_critical_point",
                finite(gain) and gain < t.critical_gain_rel,
                f"a gradient step of lr = 1/λmax would lower the loss by at least {percent(gain)} here "
                f"(‖g‖ = {fmt(cited.grad_norm)} at step {cited.step}; near a critical point that is "
                f"under {percent(t.critical_gain_rel)})",
                "gradient",
                gain,
                t.critical_gain_rel,
                ramp(
                    -math.log10(gain),
                    -math.log10(t.critical_gain_rel),
                    2 - math.log10(t.critical_gain_rel),
                )
                if finite(gain) and gain > 0
                else 1.0,
                unit="fraction",
            )
        ):
            return
        floor = noise_floor(w, t)
        ev.check(
            Condition(
                "not_a_noise_floor",
                not floor,
                (
                    f"the noise of the run's {w.last.judged_batch_size}-example steps dominates "
                    f"(B_noise/B = {fmt(w.median('noise_to_batch'))}) while a clean step would gain "
                    f"{times(w.median('full_step_gain_rel_minibatch'))} a minibatch step's change: noise, "
                    "not the negative curvature, holds the run"
                )
                if floor
                else "no noise floor: a clean full-batch step would not gain much more than a noisy one",
                "noise",
                w.median("noise_to_batch"),
            )
        )


class LocalMinimum(Rule):
    kind = "local_minimum"
    headline = "The run is stuck in a local minimum above the target loss"
    conditions = 4

    def evaluate(self, ctx: Context, ev: Evaluation) -> None:
        facts, w, t, target = ctx.facts, ctx.window, ctx.thresholds, ctx.target_loss
        f = ev.finding
        last = w.last
        f.suggestion = (
            f"the run sits in a minimum at loss {fmt(last.loss)} above the target "
            f"{fmt(target if target is not None else math.nan)}: restart from another "
            "initialisation, widen the model, or use a schedule with larger early steps or noise to "
            "reach a better basin"
        )
        if not ev.check(_stalled(ctx)):
            return
        saddle = negative_curvature(last, t) and escapes(last, t)
        if not ev.check(
            Condition(
                "no_escape",
                not saddle,
                (
                    f"the last checkpoint has clearly negative, escapable curvature (λmin = "
                    f"{fmt(last.lambda_min)} against λmax = {fmt(last.lambda_max)}): a saddle, "
                    "not a minimum"
                )
                if saddle
                else f"λmin = {fmt(last.lambda_min)} against λmax = {fmt(last.lambda_max)} at step "
                f"{last.step}: no escapable negative curvature",
                "lanczos",
                last.lambda_min,
            )
        ):
            return
        if not ev.check(Condition("target_declared", target is not None, _no_target(ctx), "loss")):
            return
        assert target is not None
        gap = (last.loss - target) / max(abs(target), abs(last.loss), 1e-12)
        above = finite(last.loss) and last.loss > target
        ev.check(
            Condition(
                "above_target",
                above,
                f"the loss plateaued at {fmt(last.loss)}, "
                + (
                    f"above the target {fmt(target)}"
                    if above
                    else f"which meets the target {fmt(target)}"
                ),
                "loss",
                last.loss,
                target,
                ramp(gap, 0.0, 0.5),
            )
        )
        if above:
            f.steps = w.steps
            small = gradient_collapsed(last, facts, t)
            f.add(
                "gradient",
                f"‖g‖ = {fmt(last.grad_norm)}, {percent(last.grad_norm / facts.peak_grad_norm) if finite(facts.peak_grad_norm) and facts.peak_grad_norm else 'n/a'} of its peak"
                + (" (collapsed)" if small else ""),
                last.grad_norm,
            )


def _no_target(ctx: Context) -> str:
    """Why a stalled run without a target is not judged a local minimum, without calling a run
    that ended above where it began, or bounces, converged."""
    facts, w, t = ctx.facts, ctx.window, ctx.thresholds
    last, first = w.last.loss, facts.first_loss
    if finite(last) and finite(first) and first > 0 and last >= first:
        return (
            f"the loss stalled at {fmt(last)}, {times(last / first)} its first value {fmt(first)} "
            "(the run did not converge to a minimum), and no target loss was declared to judge a "
            "local minimum against"
        )
    if finite(w.uphill_rate) and w.uphill_rate >= t.uphill_rate:
        return (
            f"the loss stalled around {fmt(last)} while rising from one checkpoint to the next in "
            f"{percent(w.uphill_rate)} of the pairs (bouncing, not converged), and no target loss "
            "was declared to judge a local minimum against"
        )
    return (
        f"the run converged to a minimum at loss {fmt(last)} and no target loss was declared, "
        "so it counts as healthy"
    )


# -- conditioning and noise ------------------------------------------------------------------------


class PoorConditioning(Rule):
    kind = "poor_conditioning"
    headline = "The run is held back by poor conditioning"
    episodic = True
    conditions = 2

    def evaluate(self, ctx: Context, ev: Evaluation) -> None:
        facts, w, t = ctx.facts, ctx.window, ctx.thresholds
        f = ev.finding
        ratios = [(c, c.stability_ratio) for c in w.checkpoints if finite(c.stability_ratio)]
        worst_c, worst = max(ratios, key=lambda cr: cr[1]) if ratios else (w.last, math.nan)
        f.shown_at = worst_c.step  # the checkpoint its evidence cites
        label = "lr·λmax(P⁻¹H)" if worst_c.preconditioned else "lr·λmax"
        value = (
            worst_c.preconditioned_lr_lambda_max
            if worst_c.preconditioned
            else worst_c.lr_lambda_max
        )
        limit = (
            worst_c.preconditioned_threshold
            if worst_c.preconditioned
            else worst_c.stability_threshold
        )
        f.suggestion = (
            f"{label} = {fmt(value)} against its stability limit {fmt(limit)} — lower the learning "
            "rate, add warm-up, or improve conditioning (normalise inputs and layers, use a preconditioner)"
        )
        at_edge = [c.step for c, q in ratios if q >= t.edge_of_stability]
        if not ev.check(
            Condition(
                "edge_of_stability",
                bool(at_edge),
                f"{label} = {fmt(value)} at step {worst_c.step}, {times(worst)} the optimizer's stability "
                f"threshold {fmt(limit)} (the edge is {times(t.edge_of_stability)})",
                "lanczos",
                worst,
                t.edge_of_stability,
                ramp(worst, t.edge_of_stability, 1.5),
                unit="ratio",
            )
        ):
            return
        ups = [c for c in w.checkpoints if finite(c.full_step_uphill)]
        up_steps = [c.step for c in ups if c.full_step_uphill >= 0.5]
        full_up = len(up_steps) / len(ups) if ups else math.nan
        full_uphill = finite(full_up) and full_up >= t.full_step_uphill_fraction
        rate = w.uphill_rate
        bouncing = finite(rate) and rate >= t.uphill_rate
        held = full_uphill or bouncing or w.stalled
        parts = []
        if finite(full_up):
            parts.append(
                f"the optimizer's full-batch step goes uphill at {percent(full_up)} of these checkpoints "
                f"(too large at {percent(t.full_step_uphill_fraction)})"
            )
        if finite(rate):
            parts.append(
                f"the probe loss rose from one checkpoint to the next in {percent(rate)} of the "
                f"pairs (bouncing from {percent(t.uphill_rate)})"
            )
        parts.append("the loss is on a plateau" if w.stalled else "the loss keeps falling")
        ev.check(
            Condition(
                "held_back",
                held,
                "; ".join(parts),
                "steps",
                full_up,
                t.full_step_uphill_fraction,
                (float(full_uphill) + float(bouncing) + float(w.stalled)) / 3 if held else 0.0,
                unit="fraction",
            )
        )
        if held:
            f.steps = sorted(set(at_edge) | set(up_steps))
            if finite(facts.curvature_cv):
                f.add(
                    "curvature",
                    f"gᵀHg/gᵀg varies with a coefficient of variation of {fmt(facts.curvature_cv)} over the run",
                    facts.curvature_cv,
                )


class GradientNoise(Rule):
    kind = "gradient_noise"
    headline = "The run is held back by gradient noise"
    episodic = True
    conditions = 6

    def evaluate(self, ctx: Context, ev: Evaluation) -> None:
        w, t, target = ctx.window, ctx.thresholds, ctx.target_loss
        f = ev.finding
        last = w.last
        mini = w.mean("minibatch_uphill_fraction")
        ratio = w.median("noise_to_batch")
        batch = last.judged_batch_size
        run_known = last.run_batch_size is not None
        f.suggestion = (
            f"the noise of a {batch or '?'}-example step outweighs its signal — raise the batch size "
            "(toward B_noise), lower or decay the learning rate, or average gradients over more steps"
        )
        simulated_noisy = finite(mini) and mini >= t.minibatch_uphill_fraction
        # The simulated steps use the probe's batches; the run's own batch may be much smaller,
        # so its noise is judged from the per-example noise scale against the run's batch size.
        batch_noisy = run_known and finite(ratio) and ratio * t.snr_noisy > 1.0
        statement_parts = []
        if finite(mini):
            statement_parts.append(
                f"{percent(mini)} of simulated minibatch steps (probe batches of "
                f"{last.probe_batch_size or '?'}) go uphill on the full probe loss (noisy at "
                f"{percent(t.minibatch_uphill_fraction)})"
            )
        if finite(ratio):
            statement_parts.append(
                f"B_noise = {fmt(w.median('noise_scale_examples'))} examples against the "
                f"{'run' if run_known else 'probe'}'s batch of {batch}: B_noise/B = {fmt(ratio)} "
                f"(noise-dominated above {fmt(1 / t.snr_noisy)})"
            )
        if not ev.check(
            Condition(
                "noise_dominates",
                simulated_noisy or batch_noisy,
                "; ".join(statement_parts)
                or "the gradient noise was not measured (needs ≥ 2 probe batches and a known lr)",
                "noise",
                ratio if batch_noisy else mini,
                1 / t.snr_noisy if batch_noisy else t.minibatch_uphill_fraction,
                max(
                    ramp(mini, t.minibatch_uphill_fraction, 0.5),
                    ramp(
                        math.log10(ratio),
                        math.log10(1 / t.snr_noisy),
                        1 + math.log10(1 / t.snr_noisy),
                    )
                    if batch_noisy
                    else 0.0,
                ),
                unit="" if batch_noisy else "fraction",
            )
        ):
            return
        if not ev.check(_full_step_descends(ctx, "(only) noisy")):
            return
        if not ev.check(
            Condition(
                "target_not_met",
                target is None or not (finite(last.loss) and last.loss <= target),
                f"the loss {fmt(last.loss)} "
                + (
                    f"already meets the target {fmt(target)}"
                    if target is not None and last.loss <= target
                    else "is above any declared target"
                ),
                "loss",
                last.loss,
                target,
            )
        ):
            return
        signal = w.median("full_step_gain_rel_minibatch")
        if not ev.check(
            Condition(
                "something_to_gain",
                finite(signal) and signal >= t.noise_signal,
                f"a clean full-batch step would gain {times(signal)} a typical minibatch step's change "
                f"(a noise floor needs {times(t.noise_signal)} or more; near 0 the run sits at a critical "
                "point, not held above one by noise)",
                "steps",
                signal,
                t.noise_signal,
                unit="ratio",
            )
        ):
            return
        gain = w.median("gradient_step_gain_rel")
        if not ev.check(
            Condition(
                "away_from_critical_point",
                not (finite(gain) and gain < t.critical_gain_rel),
                f"a gradient step of lr = 1/λmax would lower the loss by at least {percent(gain)} "
                f"(at a critical point, under {percent(t.critical_gain_rel)}, there is no floor for "
                "noise to hold the run above)",
                "gradient",
                gain,
                t.critical_gain_rel,
                unit="fraction",
            )
        ):
            return
        if ev.check(_stalled(ctx)):
            f.steps = (
                w.steps
                if batch_noisy
                else [
                    c.step
                    for c in w.checkpoints
                    if finite(c.minibatch_uphill_fraction)
                    and c.minibatch_uphill_fraction >= t.minibatch_uphill_fraction
                ]
                or w.steps
            )
            snr = w.median("snr_probe_batch")
            if finite(snr):
                at_run = (
                    f"; the SNR judged is B/B_noise = {fmt(1 / ratio)} at the run's batch of "
                    f"{batch}, from the per-example noise scale (the noise dominates below "
                    f"{fmt(t.snr_noisy)})"
                    if batch_noisy and finite(ratio) and ratio > 0
                    else ""
                )
                f.add(
                    "noise",
                    f"gradient signal-to-noise |G|²/tr(Σ) = {fmt(snr)} at the probe's batch of "
                    f"{last.probe_batch_size or '?'}{at_run}",
                    snr,
                )


# -- no critical point -----------------------------------------------------------------------------


class NoCriticalPoint(Rule):
    kind = "no_critical_point"
    headline = "The loss has no critical point to reach"
    conditions = 3

    def evaluate(self, ctx: Context, ev: Evaluation) -> None:
        facts, t = ctx.facts, ctx.thresholds
        f = ev.finding
        f.suggestion = (
            "the loss has no minimum to reach (e.g. logistic loss on separable data): the weights grow "
            "without bound — add weight decay or label smoothing, or stop on a margin/accuracy criterion"
        )
        norms = [c.param_norm for c in facts.checkpoints]
        half = len(norms) // 2
        measurable = len(norms) >= 3 and all(finite(x) for x in norms[half:]) and norms[half] > 0
        growth = norms[-1] / norms[half] - 1.0 if measurable else math.nan
        steady = measurable and all(
            b >= a for a, b in zip(norms[half:], norms[half + 1 :], strict=False)
        )
        descending = finite(facts.progress.decrease_rel) and not facts.late.stalled
        grows = measurable and growth >= t.norm_growth and steady and descending
        if not measurable:
            statement = "too few finite parameter norms to measure growth"
        else:
            change = (
                f"grew {percent(growth)}"
                if growth > 0
                else "did not grow"
                if growth == 0
                else f"shrank {percent(-growth)}"
            )
            statement = (
                f"‖θ‖ {change} over the second half of the run"
                + ((", steadily" if steady else " (not steadily)") if growth > 0 else "")
                + (
                    f", while the loss keeps creeping down ({facts.progress.describe()})"
                    if descending
                    else ", but the loss is not still descending"
                )
                + f" (no critical point needs steady growth of {percent(t.norm_growth)} or more while the loss creeps down)"
            )
        if not ev.check(
            Condition(
                "norm_grows", grows, statement, "gradient", growth, t.norm_growth, unit="fraction"
            )
        ):
            return
        cos = facts.checkpoints[-1].grad_param_cosine
        outward = finite(cos) and -cos >= t.outward_cosine
        if not ev.check(
            Condition(
                "descent_outward",
                outward,
                f"cos(−g, θ) = {fmt(-cos)}: "
                + (
                    "descent pushes the weights outward"
                    if outward
                    else "the descent direction does not point outward"
                )
                + f" (outward is {fmt(t.outward_cosine)} or more)",
                "gradient",
                -cos,
                t.outward_cosine,
                ramp(-cos, t.outward_cosine, 0.9),
            )
        ):
            return
        lmax = [c.lambda_max for c in facts.checkpoints]
        peak = max((x for x in lmax if finite(x)), default=math.nan)
        fade = lmax[-1] / peak if finite(peak) and peak > 0 and finite(lmax[-1]) else math.nan
        fading = finite(fade) and fade <= t.curvature_fade
        ev.check(
            Condition(
                "curvature_fades",
                fading,
                f"λmax is at {percent(fade)} of its peak (fading is {percent(t.curvature_fade)} or less)",
                "lanczos",
                fade,
                t.curvature_fade,
                ramp(1 - fade, 1 - t.curvature_fade, 0.9),
                unit="fraction",
            )
        )
        if fading:
            f.steps = facts.late.steps


RULES: tuple[Rule, ...] = (
    Divergence(),
    SaddlePoint(),
    PoorConditioning(),
    GradientNoise(),
    NoCriticalPoint(),
    LocalMinimum(),
    Overfitting(),
)
"""Every rule, in priority order: when two obstacles are equally supported the earlier one comes
first — a diverged run's other numbers are meaningless; a saddle or bad conditioning explains a
plateau before noise does; overfitting is about generalisation, not optimisation, so it is last."""

PRIORITY = tuple(rule.kind for rule in RULES)
EPISODIC = tuple(rule for rule in RULES if rule.episodic)
