"""The facts the verdict decides on: one typed record per checkpoint and one per run.

The battery's per-checkpoint records (flat dicts, possibly through JSON where NaN became null)
are read here exactly once into :class:`CheckpointFacts`; every derived fact — is the curvature
clearly negative, does the escape certificate descend, how close is the step to its stability
limit, how noisy is the gradient at the run's own batch size — is a property defined here and
nowhere else. :class:`RunFacts` adds the run-level statistics (taken from
:mod:`obstacle.battery.sequence`, which defines them) and the windows the rules judge.

Units are in the names: ``*_rel`` is a fraction of the loss, ``*_examples`` a number of
examples, ``*_steps`` optimizer steps. Unknown numbers are NaN, never None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from obstacle.battery import sequence
from obstacle.battery.verdict.numbers import percent, quantity, times
from obstacle.battery.verdict.thresholds import Thresholds

__all__ = [
    "CheckpointFacts",
    "RunFacts",
    "Trend",
    "Window",
    "finite",
    "fmt",
    "num",
    "percent",
    "run_facts",
    "times",
    "trend",
    "window",
]

Record = Mapping[str, Any]


def num(value: Any) -> float:
    """A record value as float; None/missing/non-numeric become NaN."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return math.nan


def finite(x: float) -> bool:
    return math.isfinite(x)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True)
class CheckpointFacts:
    """What the battery measured at one checkpoint (NaN where it did not)."""

    step: int
    lr: float
    loss: float
    """Probe loss J over the probe's K batches; NaN when non-finite or missing."""
    weights_finite: bool
    validation_loss: float
    grad_norm: float
    param_norm: float
    grad_param_cosine: float
    """cos(g, θ): −1 when descent pushes the weights straight outward."""
    lambda_min: float
    lambda_max: float
    escape_delta: float
    """The most negative loss change measured along the λmin eigenvector (the escape certificate)."""
    lr_lambda_max: float
    stability_threshold: float
    preconditioned_lr_lambda_max: float
    preconditioned_threshold: float
    curvature_along_gradient: float
    """gᵀHg/gᵀg."""
    snr_probe_batch: float
    """|G|²/tr(Σ) with Σ the covariance of one probe batch's gradient."""
    noise_scale_examples: float
    """B_noise = tr(Σ₁)/|G|² (McCandlish et al. 2018, B_simple): Σ₁ the per-example covariance."""
    probe_batch_size: int | None
    run_batch_size: int | None
    """Examples per optimizer step in the run, when its checkpoints recorded it."""
    minibatch_uphill_fraction: float
    """Share of the optimizer's simulated steps on single probe batches that raise the full J."""
    full_step_uphill: float
    """1 when the optimizer's full-batch step raises J, 0 when it lowers it."""
    full_step_gain_rel_minibatch: float
    """−ΔJ of the full-batch step over the median |ΔJ| of the minibatch steps."""
    optimizer: str | None

    # -- derived facts: each defined once ----------------------------------------------------

    @property
    def finite(self) -> bool:
        return self.weights_finite and finite(self.loss)

    @property
    def curvature_scale(self) -> float:
        """max(|λmax|, |λmin|): the spectrum's scale."""
        if not (finite(self.lambda_min) and finite(self.lambda_max)):
            return math.nan
        return max(abs(self.lambda_max), abs(self.lambda_min), 1e-300)

    @property
    def negative_curvature_rel(self) -> float:
        """−λmin / max|λ| (positive when λmin < 0); NaN when not measured."""
        scale = self.curvature_scale
        return -self.lambda_min / scale if finite(scale) else math.nan

    @property
    def escape_drop_rel(self) -> float:
        """How much stepping along the λmin eigenvector lowers J, as a fraction of |J|."""
        if not (finite(self.escape_delta) and finite(self.loss)):
            return math.nan
        return -self.escape_delta / max(abs(self.loss), 1e-12)

    @property
    def gradient_step_gain_rel(self) -> float:
        """‖g‖²/(2·λmax·|J|): what a gradient step of lr = 1/λmax is sure to gain, over J.

        Along −g the curvature is at most λmax, so that step lowers J by at least ‖g‖²/(2λmax).
        Small: the gradient has lost its force and θ sits near a critical point.
        """
        if not (finite(self.grad_norm) and finite(self.lambda_max) and finite(self.loss)):
            return math.nan
        if self.lambda_max <= 0:
            return math.nan
        return self.grad_norm**2 / (2 * self.lambda_max * max(abs(self.loss), 1e-12))

    @property
    def stability_ratio(self) -> float:
        """lr·λmax over the optimizer's stability threshold (preconditioned for adaptive ones)."""
        pre, pre_thr = self.preconditioned_lr_lambda_max, self.preconditioned_threshold
        if finite(pre) and finite(pre_thr) and pre_thr > 0:
            return pre / pre_thr
        lr_l, thr = self.lr_lambda_max, self.stability_threshold
        return lr_l / thr if finite(lr_l) and finite(thr) and thr > 0 else math.nan

    @property
    def preconditioned(self) -> bool:
        return finite(self.preconditioned_lr_lambda_max) and finite(self.preconditioned_threshold)

    @property
    def judged_batch_size(self) -> int | None:
        """The batch size gradient noise is judged at: the run's when known, else the probe's."""
        return self.run_batch_size or self.probe_batch_size

    @property
    def noise_to_batch(self) -> float:
        """B_noise / B at the run's batch size: above 1 the noise outweighs the mean gradient.

        Equals 1/SNR of one batch of the run's size (tr(Σ₁)/B against |G|²). Falls back to the
        probe batch's 1/SNR when the per-example noise scale is unknown.
        """
        batch = self.judged_batch_size
        if finite(self.noise_scale_examples) and batch:
            return self.noise_scale_examples / batch
        return (
            1.0 / self.snr_probe_batch
            if finite(self.snr_probe_batch) and self.snr_probe_batch > 0
            else math.nan
        )

    @property
    def run_batch_smaller_than_probe(self) -> bool:
        return bool(
            self.run_batch_size
            and self.probe_batch_size
            and self.run_batch_size < self.probe_batch_size
        )

    @classmethod
    def from_record(cls, r: Record) -> CheckpointFacts:
        return cls(
            step=int(r["step"]),
            lr=num(r.get("lr")),
            loss=num(r.get("loss")),
            weights_finite=r.get("finite") is not False,
            validation_loss=num(r.get("validation_loss")),
            grad_norm=num(r.get("grad_norm")),
            param_norm=num(r.get("param_norm")),
            grad_param_cosine=num(r.get("grad_param_cosine")),
            lambda_min=num(r.get("lambda_min")),
            lambda_max=num(r.get("lambda_max")),
            escape_delta=num(r.get("escape_delta")),
            lr_lambda_max=num(r.get("lr_lambda_max")),
            stability_threshold=num(r.get("stability_threshold")),
            preconditioned_lr_lambda_max=num(r.get("preconditioned_lr_lambda_max")),
            preconditioned_threshold=num(r.get("preconditioned_threshold")),
            curvature_along_gradient=num(r.get("curvature_along_gradient")),
            snr_probe_batch=num(r.get("snr")),
            noise_scale_examples=num(r.get("noise_scale")),
            probe_batch_size=_count(r.get("probe_batch_size")),
            run_batch_size=_count(r.get("run_batch_size")),
            minibatch_uphill_fraction=num(r.get("uphill_fraction_minibatch")),
            full_step_uphill=num(r.get("full_step_uphill")),
            full_step_gain_rel_minibatch=num(r.get("noise_signal")),
            optimizer=r.get("optimizer") if isinstance(r.get("optimizer"), str) else None,
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            negative_curvature_rel=self.negative_curvature_rel,
            escape_drop_rel=self.escape_drop_rel,
            stability_ratio=self.stability_ratio,
            gradient_step_gain_rel=self.gradient_step_gain_rel,
            noise_to_batch=self.noise_to_batch,
            judged_batch_size=self.judged_batch_size,
        )
        return out


@dataclass(frozen=True)
class Trend:
    """The least-squares line of J over a span of checkpoints, in words a rule can cite."""

    decrease_rel: float
    """The fitted fall of J from the first to the last step of the span, over mean J."""
    scatter_rel: float
    """RMS of J around the line, over mean J (minibatch noise can fake or hide progress)."""
    first_step: int
    last_step: int

    def stalled(self, limit_rel: float) -> bool:
        """The fitted fall is below ``limit_rel`` of J, or no larger than twice the scatter."""
        return finite(self.decrease_rel) and self.decrease_rel < max(
            limit_rel, 2 * self.scatter_rel
        )

    def describe(self) -> str:
        if not finite(self.decrease_rel):
            return "no trend (fewer than two finite losses)"
        moved = "fell" if self.decrease_rel >= 0 else "rose"
        return (
            f"on a least-squares line fitted through the checkpoints' probe losses, the loss "
            f"{moved} {percent(abs(self.decrease_rel))} of its mean from step {self.first_step} "
            f"to step {self.last_step}"
        )


def trend(checkpoints: Sequence[CheckpointFacts]) -> Trend:
    """The :class:`Trend` of J over ``checkpoints`` (in step order)."""
    steps = [c.step for c in checkpoints]
    first, last = (steps[0], steps[-1]) if steps else (0, 0)
    decrease, scatter = sequence.relative_trend([(c.step, c.loss) for c in checkpoints])
    return Trend(decrease, scatter, first, last)


@dataclass(frozen=True)
class Window:
    """The checkpoints a rule judges: the end of the run, or one stalled stretch of it."""

    checkpoints: tuple[CheckpointFacts, ...]
    trend: Trend
    stalled: bool
    """The loss makes no real progress over the window (see :meth:`Trend.stalled`)."""
    at_end: bool
    """The window holds the last checkpoint: what it shows is still present."""
    uphill_rate: float
    """Fraction of consecutive checkpoint pairs whose J rose (at the end: over the whole run,
    since the last third holds few pairs)."""

    @property
    def last(self) -> CheckpointFacts:
        return self.checkpoints[-1]

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

    def values(self, name: str) -> list[float]:
        return [v for c in self.checkpoints if finite(v := float(getattr(c, name)))]

    def mean(self, name: str) -> float:
        values = self.values(name)
        return math.fsum(values) / len(values) if values else math.nan

    def median(self, name: str) -> float:
        values = sorted(self.values(name))
        return values[len(values) // 2] if values else math.nan


@dataclass(frozen=True)
class RunFacts:
    """Run-level facts, every one derived from the per-checkpoint facts."""

    checkpoints: tuple[CheckpointFacts, ...]
    late: Window
    """The last ``late_fraction`` of the checkpoints, with the trend of the run's second half."""
    progress: Trend
    """The trend of J over the second half of the run (the whole run below six checkpoints)."""
    uphill_rate: float
    """Fraction of consecutive checkpoint pairs whose J rose."""
    uphill_pairs: int
    pairs: int
    curvature_cv: float
    """Coefficient of variation of gᵀHg/gᵀg over the run."""
    peak_grad_norm: float
    non_finite_steps: list[int] = field(default_factory=list)

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

    @property
    def losses(self) -> list[float]:
        return [c.loss for c in self.checkpoints]

    @property
    def first_loss(self) -> float:
        return self.checkpoints[0].loss

    @property
    def last_loss(self) -> float:
        return self.checkpoints[-1].loss

    @property
    def last_grad_norm(self) -> float:
        return self.checkpoints[-1].grad_norm

    @property
    def span_steps(self) -> int:
        return self.checkpoints[-1].step - self.checkpoints[0].step

    @property
    def has_validation(self) -> bool:
        return any(finite(c.validation_loss) for c in self.checkpoints)

    def explosion_ratio(self) -> tuple[float, int | None]:
        """(max finite J / first J, the step of that maximum)."""
        known = [(c.loss, c.step) for c in self.checkpoints if finite(c.loss)]
        if not known or not (finite(self.first_loss) and self.first_loss > 0):
            return math.nan, None
        peak, step = max(known)
        return peak / self.first_loss, step

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoints": [c.as_dict() for c in self.checkpoints],
            "late_steps": self.late.steps,
            "progress": asdict(self.progress),
            "plateau": self.late.stalled,
            "uphill_rate": self.uphill_rate,
            "uphill_pairs": self.uphill_pairs,
            "pairs": self.pairs,
            "curvature_cv": self.curvature_cv,
            "peak_grad_norm": self.peak_grad_norm,
            "non_finite_steps": self.non_finite_steps,
        }


def run_facts(records: Sequence[Record], thresholds: Thresholds) -> RunFacts:
    """The run-level facts of ``records`` (at least one), in step order."""
    if not records:
        raise ValueError("run_facts() needs at least one checkpoint record")
    checkpoints = tuple(
        sorted((CheckpointFacts.from_record(r) for r in records), key=lambda c: c.step)
    )
    n = len(checkpoints)
    late_n = max(2, math.ceil(n * thresholds.late_fraction)) if n >= 2 else 1
    progress = trend(checkpoints[n // 2 :] if n >= 6 else checkpoints)
    uphill = _uphill(checkpoints)
    late = Window(
        checkpoints=checkpoints[-late_n:],
        trend=progress,
        stalled=progress.stalled(thresholds.plateau_rel),
        at_end=True,
        uphill_rate=num(uphill["rate"]),
    )
    curvature = sequence.curvature_variation(
        [
            {"step": c.step, "curvature_along_gradient": c.curvature_along_gradient}
            for c in checkpoints
        ]
    )
    grads = [c.grad_norm for c in checkpoints if finite(c.grad_norm)]
    return RunFacts(
        checkpoints=checkpoints,
        late=late,
        progress=progress,
        uphill_rate=num(uphill["rate"]),
        uphill_pairs=int(uphill["uphill_pairs"]),
        pairs=int(uphill["pairs"]),
        curvature_cv=num(curvature["curvature"]["cv"]),
        peak_grad_norm=max(grads) if grads else math.nan,
        non_finite_steps=[c.step for c in checkpoints if not c.finite],
    )


def _uphill(checkpoints: Sequence[CheckpointFacts]) -> dict[str, Any]:
    return sequence.uphill_step_rate(
        [{"step": c.step, "loss": c.loss if finite(c.loss) else None} for c in checkpoints]
    )


def window(
    checkpoints: Sequence[CheckpointFacts], thresholds: Thresholds, *, at_end: bool
) -> Window:
    """A window over a stretch of checkpoints, with its own trend and uphill rate."""
    part = tuple(checkpoints)
    fitted = trend(part)
    return Window(
        checkpoints=part,
        trend=fitted,
        stalled=fitted.stalled(thresholds.plateau_rel),
        at_end=at_end,
        uphill_rate=num(_uphill(part)["rate"]),
    )


# -- numbers in sentences: one module writes them (see obstacle.battery.verdict.numbers) -------------

fmt = quantity
"""A number for a sentence (:func:`obstacle.battery.verdict.numbers.quantity`)."""
