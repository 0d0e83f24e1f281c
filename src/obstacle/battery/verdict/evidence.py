"""Read the battery's records into the few run-level facts every rule needs.

Only reads records (plain dicts); computes nothing on the model.
"""

from __future__ import annotations

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
    late_progress: float  # relative decrease of J over the late window
    plateau: bool
    non_finite_steps: list[int]
    peak_grad: float
    last_grad: float
    uphill_rate: float  # fraction of consecutive checkpoints whose J rose
    uphill_pairs: int
    pairs: int
    has_validation: bool

    def column(self, key: str, rows: Sequence[Record] | None = None) -> list[float]:
        return [num(r.get(key)) for r in (self.records if rows is None else rows)]

    def late_steps(self, predicate: Any) -> list[int]:
        return [int(r["step"]) for r in self.late if predicate(r)]


def run_facts(records: list[Record], thresholds: Thresholds) -> RunFacts:
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
    finite_losses = [j for j in losses if finite(j)]
    first = losses[0] if losses else math.nan
    last = losses[-1] if losses else math.nan
    late_losses = [num(r.get("loss")) for r in late]
    if len(late_losses) >= 2 and all(finite(j) for j in late_losses):
        start, end = late_losses[0], late_losses[-1]
        scale = max(abs(start), 1e-12)
        late_progress = (start - end) / scale
    else:
        late_progress = math.nan
    grads = [num(r.get("grad_norm")) for r in ordered]
    finite_grads = [g for g in grads if finite(g)]
    rises = [
        b > a + 1e-12 * max(abs(a), 1.0)
        for a, b in zip(losses, losses[1:], strict=False)
        if finite(a) and finite(b)
    ]
    return (
        RunFacts(
            records=ordered,
            steps=[int(r["step"]) for r in ordered],
            late=late,
            losses=losses,
            first_loss=first,
            last_loss=last,
            late_progress=late_progress,
            plateau=finite(late_progress) and late_progress < thresholds.plateau_rel,
            non_finite_steps=non_finite,
            peak_grad=max(finite_grads) if finite_grads else math.nan,
            last_grad=grads[-1] if grads else math.nan,
            uphill_rate=(sum(rises) / len(rises)) if rises else math.nan,
            uphill_pairs=sum(rises),
            pairs=len(rises),
            has_validation=any(finite(num(r.get("validation_loss"))) for r in ordered),
        )
        if finite_losses or ordered
        else _empty(thresholds)
    )


def _empty(thresholds: Thresholds) -> RunFacts:  # pragma: no cover - guarded by callers
    raise ValueError("no checkpoint records")


def fmt(x: float) -> str:
    """A number for a sentence: 3 significant digits, scientific when tiny or huge."""
    if not finite(x):
        return "non-finite" if not math.isnan(x) else "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.3g}"
