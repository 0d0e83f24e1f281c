"""The verdict's thresholds: named, documented, overridable.

Each value is a property of the evidence, not of one run. They were chosen from the theory
(stability thresholds, Taylor arithmetic) where there is one, and otherwise checked across the
whole scenario suite (two or more architectures per obstacle, SGD, momentum and Adam runs) with
room on both sides — none is fitted to a single run. Override any of them with
``Thresholds(**{"plateau_rel": 0.05})`` or ``obstacle analyze --threshold plateau_rel=0.05``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from obstacle._validation import check_float
from obstacle.errors import ParameterError


@dataclass(frozen=True)
class Thresholds:
    # -- which checkpoints speak for "now" -------------------------------------------------------
    late_fraction: float = 1 / 3
    """The last third of the checkpoints is the run's present state: an obstacle the run already
    left behind (an early plateau, a transient spike) is not what holds it back now."""

    # -- progress --------------------------------------------------------------------------------
    plateau_rel: float = 0.02
    """The run is on a plateau when the least-squares trend of the probe loss over the second half
    of the run falls by less than 2% of the loss — or by no more than twice the checkpoints'
    scatter around that trend, since minibatch noise can fake or hide progress. A run still
    learning drops far more than 2% over half its length, and so does the creep of a
    no-critical-point run (~1/t decay loses half of its loss when t doubles)."""

    # -- divergence ------------------------------------------------------------------------------
    explosion_ratio: float = 10.0
    """A finite loss 10× above the first checkpoint's is an explosion: no healthy run with a
    sensible initialisation climbs an order of magnitude above its starting loss."""

    # -- saddle / minimum ------------------------------------------------------------------------
    negative_curvature_rel: float = 0.01
    """λmin counts as clearly negative below −1% of the spectrum's scale max(λmax, |λmin|).
    Trained networks show tiny negative eigenvalues (~1e-4 relative and below) at points that
    behave as minima; Lanczos at tol 1e-3 cannot resolve anything smaller anyway."""

    escape_rel: float = 1e-4
    """The escape certificate counts when stepping along the λmin direction lowers the probe
    loss by more than 1e-4 of its value: above float64 and Lanczos noise, far below what a real
    saddle gives (the loss falls like ½|λmin|α²)."""

    small_gradient_rel: float = 0.1
    """‖g‖ is small when it is below 10% of its peak over the run (the run has lost most of its
    driving force)."""

    # -- conditioning ----------------------------------------------------------------------------
    edge_of_stability: float = 0.9
    """lr·λmax at 90% or more of the optimizer's stability threshold (2 for SGD, 2(1+μ) with
    momentum, (2+2β1)/(1−β1) for Adam's preconditioned sharpness) is at the edge: the sharpest
    direction oscillates instead of descending."""

    uphill_rate: float = 0.25
    """Probe loss rising between a quarter or more of consecutive checkpoints is not the odd
    bump: the run is bouncing."""

    full_step_uphill_fraction: float = 0.5
    """The full-batch step going uphill at half or more of the late checkpoints means the step
    itself is too large for the curvature, whatever the noise (one uphill step in a short late
    window is the ordinary overshoot of momentum)."""

    # -- noise -----------------------------------------------------------------------------------
    minibatch_uphill_fraction: float = 0.3
    """Minibatch steps uphill on the full probe loss 30% of the time or more while the full step
    goes down: the noise, not the curvature, undoes progress. (At a pure noise floor about half
    go up; a run dominated by signal has almost none.)"""

    noise_signal: float = 0.25
    """The full-batch step must still lower the loss by at least a quarter of a typical
    minibatch step's change (median |ΔJ_k|). At a noise floor θ jitters around a minimum and a
    clean step recovers about as much as the noise costs (ratio ~1); at a converged minimum every
    minibatch step goes uphill too, but the full gradient is zero and the ratio is ~0."""

    snr_noisy: float = 1.0
    """|G|²/tr(Σ) below 1: the per-batch gradient noise outweighs the mean gradient (equivalently
    the noise scale exceeds the batch size's worth of examples)."""

    # -- no critical point -----------------------------------------------------------------------
    norm_growth: float = 0.02
    """‖θ‖ growing steadily, by 2% or more over the second half, while the loss keeps creeping
    down: the weights run off to infinity. Under logistic loss the separator's norm grows like
    log t — about log 2 ≈ 0.7 between T/2 and T — on top of a norm that also holds the
    initialisation, so a few percent is what such runs show; the outward-gradient and fading-
    curvature tests below carry the specificity."""

    outward_cosine: float = 0.5
    """cos(−g, θ) ≥ 0.5: the descent direction points mostly along θ itself, pushing the weights
    outward (logistic loss on separable data descends by scaling up the separator)."""

    curvature_fade: float = 0.5
    """λmax falling below half its peak as the weights grow: the landscape flattens out."""

    # -- overfitting -----------------------------------------------------------------------------
    validation_rise: float = 0.05
    """The validation loss ending 5% above its minimum, while the training loss still falls."""

    # -- confidence ------------------------------------------------------------------------------
    present: float = 0.5
    """An obstacle with confidence at or above 0.5 is reported as present; below it, only as
    weak evidence in the ruled-out list."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def override(self, values: dict[str, Any]) -> Thresholds:
        """A copy with ``values`` replaced; unknown names are a ParameterError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ParameterError(
                f"Unknown threshold(s) {unknown}. Known thresholds: {', '.join(sorted(known))}."
            )
        checked = {k: check_float(k, v, low=0.0) for k, v in values.items()}
        return replace(self, **checked)


DEFAULT_THRESHOLDS = Thresholds()
