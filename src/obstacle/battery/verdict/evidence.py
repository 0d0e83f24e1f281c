"""Read the battery's records into the few run-level facts every rule needs.

Only reads records (plain dicts); computes nothing on the model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from obstacle.battery.verdict.thresholds import Thresholds

Record = dict[str, Any]


def num(value: Any) -> float:
    """A record value as float; None/missing/non-numeric become NaN."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return math.nan


def finite(x: float) -> bool:
    return math.isfinite(x)


@dataclass
class RunFacts:
    """Run-level facts, all derived from the per-checkpoint records."""

    records: list[Record]
    steps: list[int]
    late: list[Record]  # the late window: the run's present state
    losses: list[float]
    first_loss: float
    last_loss: float
    late_progress: float  # fitted relative decrease of J over the second half of the run
    fluctuation: float  # scatter of J around that fit, relative to J
    plateau: bool
    non_finite_steps: list[int]
    peak_grad: float
    last_grad: float
    uphill_rate: float  # fraction of consecutive checkpoints whose J rose
    uphill_pairs: int
    pairs: int
    has_validation: bool
    curvature_cv: float  # coefficient of variation of gᵀHg/gᵀg over the run

    def column(self, key: str, rows: Sequence[Record] | None = None) -> list[float]:
        return [num(r.get(key)) for r in (self.records if rows is None else rows)]

    def late_steps(self, predicate: Any) -> list[int]:
        return [int(r["step"]) for r in self.late if predicate(r)]


def run_facts(records: list[Record], thresholds: Thresholds) -> RunFacts:
    """The run-level facts of ``records`` (at least one)."""
    if not records:
        raise ValueError("run_facts() needs at least one checkpoint record")
    ordered = sorted(records, key=lambda r: int(r["step"]))
    n = len(ordered)
    late_n = max(2, math.ceil(n * thresholds.late_fraction)) if n >= 2 else 1
    late = ordered[-late_n:]
    losses = [num(r.get("loss")) for r in ordered]
    non_finite = [
        int(r["step"])
        for r, j in zip(ordered, losses, strict=True)
        if not finite(j) or r.get("finite") is False
    ]
    first = losses[0] if losses else math.nan
    last = losses[-1] if losses else math.nan
    late_progress, fluctuation = _progress(ordered[len(ordered) // 2 :] if n >= 6 else ordered)
    grads = [num(r.get("grad_norm")) for r in ordered]
    finite_grads = [g for g in grads if finite(g)]
    rises = [
        b > a + 1e-12 * max(abs(a), 1.0)
        for a, b in itertools.pairwise(losses)
        if finite(a) and finite(b)
    ]
    return RunFacts(
        records=ordered,
        steps=[int(r["step"]) for r in ordered],
        late=late,
        losses=losses,
        first_loss=first,
        last_loss=last,
        late_progress=late_progress,
        fluctuation=fluctuation,
        # A plateau: the fitted decrease is below plateau_rel of the loss, or no larger than the
        # checkpoints' own scatter around the trend (minibatch noise can fake or hide progress).
        plateau=finite(late_progress)
        and late_progress < max(thresholds.plateau_rel, 2 * fluctuation),
        non_finite_steps=non_finite,
        peak_grad=max(finite_grads) if finite_grads else math.nan,
        last_grad=grads[-1] if grads else math.nan,
        uphill_rate=(sum(rises) / len(rises)) if rises else math.nan,
        uphill_pairs=sum(rises),
        pairs=len(rises),
        has_validation=any(finite(num(r.get("validation_loss"))) for r in ordered),
        curvature_cv=_cv([num(r.get("curvature_along_gradient")) for r in ordered]),
    )


def _cv(values: Sequence[float]) -> float:
    """Coefficient of variation (population std over |mean|) of the finite values."""
    known = [v for v in values if finite(v)]
    if len(known) < 2:
        return math.nan
    mean = sum(known) / len(known)
    if mean == 0:
        return math.nan
    return math.sqrt(sum((v - mean) ** 2 for v in known) / len(known)) / abs(mean)


def _progress(rows: Sequence[Record]) -> tuple[float, float]:
    """(relative decrease, relative scatter) of J from a least-squares line over ``rows``.

    The decrease is −slope·(last step − first step)/mean J; the scatter is the residuals' RMS
    over mean J. Two points give the plain relative change and no scatter.
    """
    points = [(float(r["step"]), num(r.get("loss"))) for r in rows]
    if len(points) < 2 or not all(finite(j) for _, j in points):
        return math.nan, math.nan
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mean_y = sum(ys) / len(ys)
    scale = max(abs(mean_y), 1e-12)
    if len(points) == 2 or xs[-1] == xs[0]:
        return (ys[0] - ys[-1]) / max(abs(ys[0]), 1e-12), 0.0
    mean_x = sum(xs) / len(xs)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    residuals = [y - (mean_y + slope * (x - mean_x)) for x, y in points]
    rms = math.sqrt(sum(e * e for e in residuals) / (len(points) - 2)) if len(points) > 2 else 0.0
    return -slope * (xs[-1] - xs[0]) / scale, rms / scale


def fmt(x: float) -> str:
    """A number for a sentence: 3 significant digits, scientific when tiny or huge."""
    if not finite(x):
        return "non-finite" if not math.isnan(x) else "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.3g}"
