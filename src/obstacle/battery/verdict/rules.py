"""One rule per obstacle: weigh the evidence for it, or say why it is ruled out.

Every rule returns a :class:`Finding` whose confidence is in [0, 1], the checkpoints where the
obstacle shows, the evidence lines (test, statement, value) and, when it is ruled out, the reason.
Rules read only :class:`RunFacts` (the records) and the thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from obstacle.battery.verdict.evidence import RunFacts, finite, fmt, num
from obstacle.battery.verdict.thresholds import Thresholds


@dataclass
class Finding:
    kind: str
    confidence: float = 0.0
    steps: list[int] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""  # why it is ruled out (when confidence < threshold)
    suggestion: str = ""

    def add(self, test: str, statement: str, value: float | None) -> None:
        v = None if value is None or not finite(float(value)) else float(value)
        self.evidence.append({"test": test, "statement": statement, "value": v})


def _clip(x: float) -> float:
    return 0.0 if not finite(x) else max(0.0, min(1.0, x))


def _ramp(x: float, at: float, full: float) -> float:
    """0 at ``at``, 1 at ``full`` (either direction), linear between; NaN gives 0."""
    if not finite(x):
        return 0.0
    return _clip((x - at) / (full - at))


def _late_fraction(
    facts: RunFacts, key: str, predicate: Callable[[float], bool]
) -> tuple[float, list[int]]:
    values = [(int(r["step"]), num(r.get(key))) for r in facts.late]
    known = [(s, v) for s, v in values if finite(v)]
    if not known:
        return math.nan, []
    hits = [s for s, v in known if predicate(v)]
    return len(hits) / len(known), hits


# -- divergence ------------------------------------------------------------------------------------


def divergence(facts: RunFacts, t: Thresholds) -> Finding:
    f = Finding("divergence")
    finite_losses = [j for j in facts.losses if finite(j)]
    ratio = (
        max(finite_losses) / facts.first_loss
        if finite_losses and facts.first_loss > 0
        else math.nan
    )
    if facts.non_finite_steps:
        first = facts.non_finite_steps[0]
        f.confidence = 1.0
        f.steps = facts.non_finite_steps
        f.add("loss", f"the probe loss or the weights become non-finite from step {first} on", None)
    elif finite(ratio) and ratio >= t.explosion_ratio:
        f.confidence = _clip(0.5 + 0.5 * math.log10(ratio / t.explosion_ratio))
        peak = max(
            range(len(facts.losses)),
            key=lambda i: facts.losses[i] if finite(facts.losses[i]) else -math.inf,
        )
        f.steps = [facts.steps[peak]]
        f.add("loss", f"the probe loss reaches {fmt(ratio)}× its first value", ratio)
    else:
        f.reason = (
            "every probe loss and weight is finite and the loss never exceeds "
            f"{fmt(ratio)}× its first value (explosion means ≥ {fmt(t.explosion_ratio)}×)"
        )
    lr = [num(r.get("lr_lambda_max")) for r in facts.records]
    worst = max((x for x in lr if finite(x)), default=math.nan)
    if f.confidence and finite(worst):
        f.add("lanczos", f"lr·λmax reached {fmt(worst)} before the blow-up", worst)
    f.suggestion = (
        "the step is far too large for the curvature: lower the learning rate (by 10× to start), "
        "add warm-up and gradient clipping, and check the data for NaN/inf"
    )
    return f


# -- overfitting -----------------------------------------------------------------------------------


def overfitting(facts: RunFacts, t: Thresholds) -> Finding:
    f = Finding("overfitting")
    f.suggestion = (
        "the model memorises the training set: add data or augmentation, regularise (weight "
        "decay, dropout), shrink the model, or stop at the validation minimum"
    )
    if not facts.has_validation:
        f.reason = (
            "the probe has no validation batch, so train/validation divergence cannot be seen"
        )
        return f
    rows = [
        r
        for r in facts.records
        if finite(num(r.get("validation_loss"))) and finite(num(r.get("loss")))
    ]
    if len(rows) < 3:
        f.reason = "fewer than three checkpoints have both training and validation loss"
        return f
    val = [num(r["validation_loss"]) for r in rows]
    train = [num(r["loss"]) for r in rows]
    best = min(range(len(val)), key=val.__getitem__)
    rise = (val[-1] - val[best]) / max(abs(val[best]), 1e-12)
    train_fall = (train[best] - train[-1]) / max(abs(train[best]), 1e-12)
    if best < len(val) - 1 and rise >= t.validation_rise and train_fall > 0:
        f.confidence = _clip(0.5 + 0.5 * _ramp(rise, t.validation_rise, 4 * t.validation_rise))
        f.steps = [int(r["step"]) for r in rows[best + 1 :]]
        f.add(
            "validation",
            f"validation loss rose {fmt(100 * rise)}% above its minimum at step {rows[best]['step']}",
            rise,
        )
        f.add(
            "loss", f"while the training loss fell a further {fmt(100 * train_fall)}%", train_fall
        )
    else:
        f.reason = (
            f"the validation loss ends {fmt(100 * max(rise, 0.0))}% above its minimum "
            f"(overfitting needs ≥ {fmt(100 * t.validation_rise)}% while the training loss still falls)"
        )
    return f


# -- saddle point and local minimum ----------------------------------------------------------------


def _negative_curvature(r: dict[str, Any], t: Thresholds) -> bool:
    lmin, lmax = num(r.get("lambda_min")), num(r.get("lambda_max"))
    if not (finite(lmin) and finite(lmax)):
        return False
    scale = max(abs(lmax), abs(lmin), 1e-300)
    return lmin < -t.negative_curvature_rel * scale


def _escapes(r: dict[str, Any], t: Thresholds) -> bool:
    drop = num(r.get("escape_delta"))
    loss = num(r.get("loss"))
    return finite(drop) and finite(loss) and drop < -t.escape_rel * max(abs(loss), 1e-12)


def saddle_point(facts: RunFacts, t: Thresholds) -> Finding:
    f = Finding("saddle_point")
    saddle_rows = [r for r in facts.late if _negative_curvature(r, t) and _escapes(r, t)]
    neg_rows = [r for r in facts.late if _negative_curvature(r, t)]
    last = facts.late[-1]
    lmin, lmax = num(last.get("lambda_min")), num(last.get("lambda_max"))
    f.suggestion = (
        f"negative curvature {fmt(lmin)} along a direction that lowers the loss — momentum, "
        "gradient noise, a larger initialisation or a curvature-aware step (e.g. saddle-free "
        "Newton) escapes it"
    )
    if not neg_rows:
        f.reason = (
            f"λmin = {fmt(lmin)} against λmax = {fmt(lmax)}: no clearly negative eigenvalue in the "
            f"late checkpoints (needs λmin < −{fmt(t.negative_curvature_rel)}·max|λ|)"
        )
        return f
    if not saddle_rows:
        f.reason = (
            f"λmin = {fmt(lmin)} is negative but stepping along its eigenvector does not lower the "
            "loss (the escape certificate fails), so it is not an escapable saddle"
        )
        return f
    if not facts.plateau:
        f.reason = (
            f"negative curvature (λmin = {fmt(lmin)}) is present but {_progress(facts)}, so a stall "
            "at it is not shown"
        )
        f.steps = [int(r["step"]) for r in saddle_rows]
        f.confidence = 0.25
        return f
    share = len(saddle_rows) / len(facts.late)
    ratio = min(
        abs(num(r["lambda_min"])) / max(abs(num(r["lambda_max"])), abs(num(r["lambda_min"])))
        for r in saddle_rows
    )
    f.confidence = _clip(0.55 + 0.25 * share + 0.2 * _ramp(ratio, t.negative_curvature_rel, 0.2))
    f.steps = [int(r["step"]) for r in saddle_rows]
    strongest = min(
        saddle_rows, key=lambda r: num(r["lambda_min"]) / max(abs(num(r["lambda_max"])), 1e-300)
    )
    f.add(
        "lanczos",
        f"λmin = {fmt(num(strongest['lambda_min']))} against λmax = {fmt(num(strongest['lambda_max']))} at step {strongest['step']}",
        num(strongest["lambda_min"]),
    )
    f.add(
        "escape",
        f"stepping along that eigenvector lowers the probe loss by {fmt(-num(strongest['escape_delta']))}",
        num(strongest["escape_delta"]),
    )
    f.add(
        "loss",
        f"the loss is on a plateau: it fell {fmt(100 * facts.late_progress)}% over the second half",
        facts.late_progress,
    )
    if finite(facts.last_grad):
        f.add(
            "gradient",
            f"‖g‖ = {fmt(facts.last_grad)} at the last checkpoint (peak {fmt(facts.peak_grad)})",
            facts.last_grad,
        )
    return f


def local_minimum(facts: RunFacts, t: Thresholds, target_loss: float | None) -> Finding:
    f = Finding("local_minimum")
    last = facts.late[-1]
    lmin, lmax = num(last.get("lambda_min")), num(last.get("lambda_max"))
    f.suggestion = (
        f"the run sits in a minimum at loss {fmt(facts.last_loss)} above the target {fmt(target_loss or math.nan)}: "
        "restart from another initialisation, widen the model, or use a schedule with larger early "
        "steps or noise to reach a better basin"
    )
    if not facts.plateau:
        f.reason = f"{_progress(facts)}: no minimum reached yet is shown"
        return f
    if _negative_curvature(last, t) and _escapes(last, t):
        f.reason = f"λmin = {fmt(lmin)} is clearly negative and escapable: a saddle, not a minimum"
        return f
    if target_loss is None:
        f.reason = f"the run converged to a minimum at loss {fmt(facts.last_loss)} and no target loss was declared, so it counts as healthy"
        return f
    if facts.last_loss <= target_loss:
        f.reason = f"the minimum's loss {fmt(facts.last_loss)} meets the target {fmt(target_loss)}"
        return f
    gap = (facts.last_loss - target_loss) / max(abs(target_loss), abs(facts.last_loss), 1e-12)
    grad_small = (
        finite(facts.last_grad)
        and finite(facts.peak_grad)
        and facts.last_grad <= t.small_gradient_rel * facts.peak_grad
    )
    f.confidence = _clip(0.6 + 0.2 * (1.0 if grad_small else 0.0) + 0.2 * _ramp(gap, 0.0, 0.5))
    f.steps = [int(r["step"]) for r in facts.late]
    f.add(
        "loss",
        f"the loss plateaued at {fmt(facts.last_loss)}, above the target {fmt(target_loss)}",
        facts.last_loss,
    )
    f.add(
        "lanczos",
        f"λmin = {fmt(lmin)} against λmax = {fmt(lmax)}: no significant negative curvature",
        lmin,
    )
    f.add(
        "gradient",
        f"‖g‖ = {fmt(facts.last_grad)}, {fmt(facts.last_grad / facts.peak_grad if facts.peak_grad else math.nan)} of its peak",
        facts.last_grad,
    )
    return f


# -- conditioning and noise ------------------------------------------------------------------------


def _stability_ratio(r: dict[str, Any]) -> float:
    """lr·λmax over its threshold, using the preconditioned sharpness for adaptive optimizers."""
    pre, pre_thr = (
        num(r.get("preconditioned_lr_lambda_max")),
        num(r.get("preconditioned_threshold")),
    )
    if finite(pre) and finite(pre_thr) and pre_thr > 0:
        return pre / pre_thr
    lr_l, thr = num(r.get("lr_lambda_max")), num(r.get("stability_threshold"))
    return lr_l / thr if finite(lr_l) and finite(thr) and thr > 0 else math.nan


def poor_conditioning(facts: RunFacts, t: Thresholds) -> Finding:
    f = Finding("poor_conditioning")
    ratios = [_stability_ratio(r) for r in facts.late]
    at_edge = [
        int(r["step"])
        for r, q in zip(facts.late, ratios, strict=True)
        if finite(q) and q >= t.edge_of_stability
    ]
    full_up, full_steps = _late_fraction(facts, "full_step_uphill", lambda v: v >= 0.5)
    worst = max((q for q in ratios if finite(q)), default=math.nan)
    last = facts.late[-1]
    lr_l = num(last.get("preconditioned_lr_lambda_max"))
    label = "lr·λmax(P⁻¹H)" if finite(lr_l) else "lr·λmax"
    lr_l = lr_l if finite(lr_l) else num(last.get("lr_lambda_max"))
    thr = (
        num(last.get("preconditioned_threshold"))
        if finite(num(last.get("preconditioned_threshold")))
        else num(last.get("stability_threshold"))
    )
    f.suggestion = (
        f"{label} = {fmt(lr_l)} against its stability limit {fmt(thr)} — lower the learning rate, add "
        "warm-up, or improve conditioning (normalise inputs and layers, use a preconditioner)"
    )
    bouncing = finite(facts.uphill_rate) and facts.uphill_rate >= t.uphill_rate
    full_uphill = finite(full_up) and full_up >= t.full_step_uphill_fraction
    stalled = facts.plateau or bouncing
    if not at_edge:
        # Below the threshold a plain-SGD step cannot go uphill along the gradient (that needs
        # lr·gᵀHg/gᵀg > 2 ≤ lr·λmax); a momentum step that overshoots there is ordinary
        # momentum, not a step too large for the curvature.
        f.reason = (
            f"{label} peaks at {fmt(worst)}× its stability threshold in the late checkpoints "
            f"(the edge is {fmt(t.edge_of_stability)}×): the step fits the curvature"
        )
        return f
    if not (full_uphill or stalled):
        f.reason = (
            f"{label} is at the edge of stability ({fmt(worst)}× the threshold) but the loss keeps "
            "falling and full-batch steps go downhill: the run is stable at the edge, not held back"
        )
        f.confidence = 0.3
        return f
    f.confidence = _clip(
        0.5
        + 0.2 * (1.0 if full_uphill else 0.0)
        + 0.15 * _ramp(worst, t.edge_of_stability, 1.5)
        + 0.15 * (1.0 if bouncing else 0.0)
    )
    f.steps = sorted(set(at_edge) | set(full_steps))
    f.add("lanczos", f"{label} = {fmt(lr_l)} against the stability threshold {fmt(thr)}", lr_l)
    if finite(full_up):
        f.add(
            "steps",
            f"the optimizer's full-batch step goes uphill at {fmt(100 * full_up)}% of the late checkpoints",
            full_up,
        )
    if finite(facts.uphill_rate):
        f.add(
            "uphill_step_rate",
            f"the probe loss rose between {facts.uphill_pairs} of {facts.pairs} consecutive checkpoints",
            facts.uphill_rate,
        )
    cv = facts.curvature_cv
    if finite(cv):
        f.add(
            "curvature",
            f"gᵀHg/gᵀg varies with a coefficient of variation of {fmt(cv)} over the run",
            cv,
        )
    return f


def gradient_noise(facts: RunFacts, t: Thresholds, target_loss: float | None) -> Finding:
    f = Finding("gradient_noise")
    _mini, mini_steps = _late_fraction(
        facts, "uphill_fraction_minibatch", lambda v: v >= t.minibatch_uphill_fraction
    )
    mean_mini = _mean(facts, "uphill_fraction_minibatch")
    full_up = _mean(facts, "full_step_uphill")
    snr = _median(facts, "snr")
    f.suggestion = (
        f"minibatch steps go uphill {fmt(100 * mean_mini)}% of the time while the full-batch step "
        "descends — raise the batch size, lower the learning rate (or decay it), or average "
        "gradients over more steps"
    )
    if not finite(mean_mini):
        f.reason = "the simulated minibatch steps were not computed (needs ≥ 2 probe batches and a known lr)"
        return f
    if mean_mini < t.minibatch_uphill_fraction:
        f.reason = (
            f"only {fmt(100 * mean_mini)}% of minibatch steps go uphill on the full probe loss in the late "
            f"checkpoints (noise-dominated means ≥ {fmt(100 * t.minibatch_uphill_fraction)}%)"
        )
        return f
    if finite(full_up) and full_up >= 0.5:
        f.reason = "the full-batch step goes uphill too: the step is too large for the curvature, not (only) noisy"
        return f
    if target_loss is not None and facts.last_loss <= target_loss:
        f.reason = f"the loss {fmt(facts.last_loss)} already meets the target {fmt(target_loss)}"
        return f
    signal = _median(facts, "noise_signal")
    if not (finite(signal) and signal >= t.noise_signal):
        # At a minimum every minibatch step goes uphill (the full gradient is zero), but there
        # is nothing left for a cleaner step to gain: that is convergence, not a noise floor.
        f.reason = (
            f"minibatch steps go uphill ({fmt(100 * mean_mini)}%) but the full-batch step would gain only "
            f"{fmt(signal)}× a typical minibatch change (a noise floor needs ≥ {fmt(t.noise_signal)}×): "
            "the run sits at a critical point, not held above one by noise"
        )
        return f
    if not facts.plateau:
        f.reason = (
            f"minibatch steps are noisy ({fmt(100 * mean_mini)}% uphill) but {_progress(facts)}"
        )
        f.confidence = 0.3
        return f
    noisy = finite(snr) and snr < t.snr_noisy
    f.confidence = _clip(
        0.55
        + 0.25 * _ramp(mean_mini, t.minibatch_uphill_fraction, 0.5)
        + 0.2 * (1.0 if noisy else 0.0)
    )
    f.steps = mini_steps
    f.add(
        "steps",
        f"{fmt(100 * mean_mini)}% of simulated minibatch steps go uphill on the full probe loss",
        mean_mini,
    )
    f.add(
        "steps",
        f"while the full-batch step goes downhill, gaining {fmt(signal)}× a typical minibatch change",
        signal,
    )
    if finite(snr):
        f.add("noise", f"gradient signal-to-noise |G|²/tr(Σ) = {fmt(snr)}", snr)
    scale = _median(facts, "noise_scale")
    if finite(scale):
        f.add("noise", f"noise scale B_simple = {fmt(scale)} examples", scale)
    f.add(
        "loss",
        f"the loss is on a plateau ({fmt(100 * facts.late_progress)}% over the second half)",
        facts.late_progress,
    )
    return f


# -- no critical point -----------------------------------------------------------------------------


def no_critical_point(facts: RunFacts, t: Thresholds) -> Finding:
    f = Finding("no_critical_point")
    f.suggestion = (
        "the loss has no minimum to reach (e.g. logistic loss on separable data): the weights grow "
        "without bound — add weight decay or label smoothing, or stop on a margin/accuracy criterion"
    )
    norms = facts.column("param_norm")
    half = len(norms) // 2
    if len(norms) < 3 or not all(finite(x) for x in norms[half:]) or norms[half] <= 0:
        f.reason = "too few finite parameter norms to measure growth"
        return f
    growth = norms[-1] / norms[half] - 1.0
    monotone = all(b >= a for a, b in zip(norms[half:], norms[half + 1 :], strict=False))
    # "Creeping down" is real progress, not a plateau: ~1/t decay loses a third over the last third.
    descending = finite(facts.late_progress) and not facts.plateau
    if not (growth >= t.norm_growth and monotone and descending):
        f.reason = (
            f"‖θ‖ grew {fmt(100 * growth)}% over the second half"
            + ("" if monotone else " (not steadily)")
            + ("" if descending else " and the loss is not still descending")
            + f" (no critical point needs steady growth ≥ {fmt(100 * t.norm_growth)}% while the loss creeps down)"
        )
        return f
    cos = num(facts.late[-1].get("grad_param_cosine"))
    outward = finite(cos) and -cos >= t.outward_cosine
    lmax = facts.column("lambda_max")
    peak = max((x for x in lmax if finite(x)), default=math.nan)
    fade = lmax[-1] / peak if finite(peak) and peak > 0 and finite(lmax[-1]) else math.nan
    fading = finite(fade) and fade <= t.curvature_fade
    if not (outward and fading):
        f.reason = (
            f"‖θ‖ grows ({fmt(100 * growth)}%) but "
            + (
                ""
                if outward
                else f"the descent direction does not point outward (cos(−g, θ) = {fmt(-cos)})"
            )
            + (" and " if not outward and not fading else "")
            + ("" if fading else f"the curvature does not fade (λmax at {fmt(fade)} of its peak)")
        )
        f.confidence = 0.35 if (outward or fading) else 0.2
        return f
    f.confidence = _clip(
        0.6 + 0.4 * _ramp(-cos, t.outward_cosine, 0.9) * _ramp(1 - fade, 1 - t.curvature_fade, 0.9)
    )
    f.steps = [int(r["step"]) for r in facts.late]
    f.add(
        "gradient",
        f"‖θ‖ grew {fmt(100 * growth)}% over the second half of the run, steadily",
        growth,
    )
    f.add(
        "loss",
        f"while the loss keeps creeping down ({fmt(100 * facts.late_progress)}% over the second half) toward {fmt(facts.last_loss)}",
        facts.last_loss,
    )
    if outward:
        f.add("gradient", f"cos(−g, θ) = {fmt(-cos)}: descent pushes the weights outward", -cos)
    if fading:
        f.add("lanczos", f"λmax faded to {fmt(fade)} of its peak", fade)
    return f


def _progress(facts: RunFacts) -> str:
    """How the loss moved, in words: a trend needs two or more checkpoints."""
    if not finite(facts.late_progress):
        return "progress cannot be judged from a single checkpoint (or non-finite losses)"
    return f"the loss is still falling ({fmt(100 * facts.late_progress)}% over the second half)"


def _mean(facts: RunFacts, key: str) -> float:
    values = [v for v in facts.column(key, facts.late) if finite(v)]
    return sum(values) / len(values) if values else math.nan


def _median(facts: RunFacts, key: str) -> float:
    values = sorted(v for v in facts.column(key, facts.late) if finite(v))
    return values[len(values) // 2] if values else math.nan
