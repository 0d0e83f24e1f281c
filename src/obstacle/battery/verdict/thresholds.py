"""The verdict's thresholds: named, documented, overridable.

Each value is a property of the evidence, not of one run. They were chosen from the theory
(stability thresholds, Taylor arithmetic) where there is one, and otherwise checked across the
whole scenario suite (two or more architectures per obstacle, SGD, momentum and Adam runs) with
room on both sides — none is fitted to a single run. Override any of them with
``Thresholds(**{"plateau_rel": 0.05})`` or ``obstacle analyze --threshold plateau_rel=0.05``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, NamedTuple

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

    critical_gain_rel: float = 0.01
    """θ is near a critical point when a gradient step tuned to the sharpest curvature
    (lr = 1/λmax), which is sure to lower J by ‖g‖²/(2λmax), would gain less than 1% of J: the
    gradient has lost its force. A saddle stalls a run there; a run that stalls far from any
    critical point is held by its optimizer (a step too large, or noise), not by the landscape,
    even where the Hessian has negative eigenvalues (it usually has some)."""

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
    # Noise is judged at the run's own batch size B when its checkpoints record it: the probe's
    # batches are usually larger than the run's, and simulated steps on them underestimate it.
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
    """|G|²/tr(Σ_B) below 1 at the run's batch size B: the noise of one step's gradient outweighs
    its mean, i.e. the noise scale B_noise = tr(Σ₁)/|G|² (McCandlish et al. 2018) exceeds B.
    Below B_noise a step's progress shrinks by about 1/(1 + B_noise/B)."""

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

    # -- episodes --------------------------------------------------------------------------------
    episode_share: float = 0.25
    """An obstacle episode that has ended counts as an obstacle of the run when it held the run
    for a quarter of its steps or more; a shorter one that ended (a transient plateau early on) is
    drawn on the timeline but does not make the verdict. An episode still present at the last
    checkpoint always counts."""

    # -- confidence ------------------------------------------------------------------------------
    present: float = 0.5
    """An obstacle with confidence at or above 0.5 is reported as present; below it, only as
    weak evidence in the ruled-out list."""

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f.name, getattr(self, f.name))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def override(self, values: dict[str, Any]) -> Thresholds:
        """A copy with ``values`` replaced; unknown names and out-of-range values are a ParameterError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ParameterError(
                f"Unknown threshold(s) {unknown}. Known thresholds: {', '.join(sorted(known))}."
            )
        return replace(self, **{k: _check(k, v) for k, v in values.items()})


class _Range(NamedTuple):
    low: float
    high: float | None
    closed: str  # "both", "left", "right" or "neither", as obstacle._validation takes it


_FRACTION = _Range(0.0, 1.0, "right")  # a share of checkpoints or steps: (0, 1]
_POSITIVE = _Range(0.0, None, "neither")  # a ratio or a relative size: (0, inf)

# Every threshold's type and range (scikit-learn's parameter constraints, by name): a value
# outside makes the verdict meaningless, so it is refused with the rule and the value.
CONSTRAINTS: dict[str, _Range] = {
    "late_fraction": _FRACTION,
    "plateau_rel": _Range(0.0, 1.0, "neither"),
    "explosion_ratio": _Range(1.0, None, "neither"),
    "negative_curvature_rel": _Range(0.0, 1.0, "neither"),
    "escape_rel": _Range(0.0, 1.0, "neither"),
    "small_gradient_rel": _Range(0.0, 1.0, "neither"),
    "critical_gain_rel": _Range(0.0, 1.0, "neither"),
    "edge_of_stability": _POSITIVE,
    "uphill_rate": _FRACTION,
    "full_step_uphill_fraction": _FRACTION,
    "minibatch_uphill_fraction": _FRACTION,
    "noise_signal": _POSITIVE,
    "snr_noisy": _POSITIVE,
    "norm_growth": _POSITIVE,
    "outward_cosine": _Range(-1.0, 1.0, "both"),
    "curvature_fade": _Range(0.0, 1.0, "neither"),
    "validation_rise": _POSITIVE,
    "episode_share": _FRACTION,
    "present": _Range(0.0, 1.0, "neither"),
}


def _check(name: str, value: object) -> float:
    rule = CONSTRAINTS[name]
    return check_float(name, value, low=rule.low, high=rule.high, closed=rule.closed)


DEFAULT_THRESHOLDS = Thresholds()
