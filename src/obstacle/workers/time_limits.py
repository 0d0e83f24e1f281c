"""How long the run-level task may run: at least OBSTACLE_FINALIZE_TIME_LIMIT_S, longer when what
its checkpoints measured says its work needs longer.

The run-level tests are loss evaluations: the θ0 → θT line, each checkpoint's line to θT, and the
2-D lattice. How many follows from the preset and the number of checkpoints
(``Preset.run_level_loss_evaluations``), and each one is a pass over every probe batch. What a
pass costs on this model and device was measured by the checkpoints themselves: their wall time
over the batch passes their records count. Loss, gradient and Hessian-vector passes are counted
alike there, so a loss pass, the cheapest kind, is priced high. The limit is three times that
prediction, because the task may run on a slower or busier worker than its checkpoints did.

Without this, a fixed limit that suits small models fails the analyses of large ones after every
checkpoint is done. A 25M-parameter CNN on one CPU core spends about 270 s on the run level, over
the 240 s default. The limit stays below the visibility timeout, past which Redis hands a running
task to a second worker.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from obstacle.battery.presets import get_preset

__all__ = ["HEADROOM", "FinalizeLimit", "batch_passes", "finalize_time_limit"]

#: The limit over the prediction.
HEADROOM = 3.0
_PASS_KINDS = ("loss_batch_passes", "grad_batch_passes", "hvp_batch_passes")


@dataclass(frozen=True)
class FinalizeLimit:
    """The run-level task's hard limit, and why it is that."""

    seconds: int
    predicted_s: float | None  # the run level's predicted seconds; None when nothing was measured
    floor_s: int  # OBSTACLE_FINALIZE_TIME_LIMIT_S
    cap_s: int  # below the visibility timeout

    def describe(self) -> str:
        """E.g. ``900 s (3 × the 300 s its checkpoints' cost predicts; at least
        OBSTACLE_FINALIZE_TIME_LIMIT_S=240)``."""
        if self.predicted_s is None or self.seconds == self.floor_s:
            return f"{self.seconds} s (OBSTACLE_FINALIZE_TIME_LIMIT_S)"
        why = f"{HEADROOM:g} × the {self.predicted_s:.0f} s its checkpoints' measured cost predicts"
        if self.seconds == self.cap_s:
            why += ", cut to 0.9 × OBSTACLE_VISIBILITY_TIMEOUT_S"
        return f"{self.seconds} s ({why}; at least OBSTACLE_FINALIZE_TIME_LIMIT_S={self.floor_s})"


def batch_passes(record: Mapping[str, Any]) -> tuple[int, int]:
    """(batch passes of every kind, probe batches per evaluation) that a checkpoint record counts;
    the second is 0 when the record has no loss evaluation."""
    total = batches = 0
    for detail in (record.get("details") or {}).values():
        cost = (detail or {}).get("cost") or {}
        total += sum(int(cost.get(kind) or 0) for kind in _PASS_KINDS)
        evaluations = int(cost.get("loss_evals") or 0)
        if evaluations:
            batches = max(batches, int(cost.get("loss_batch_passes") or 0) // evaluations)
    return total, batches


def finalize_time_limit(
    *,
    preset: str,
    checkpoints: Iterable[tuple[float, Mapping[str, Any]]],
    floor_s: int,
    cap_s: int,
) -> FinalizeLimit:
    """The run-level task's limit from its analysed checkpoints, each as (wall seconds, record)."""
    chosen = get_preset(preset)
    cap_s = max(cap_s, floor_s)
    seconds, passes, batches, count = 0.0, 0, 0, 0
    for wall, record in checkpoints:
        count += 1
        n, k = batch_passes(record)
        if n > 0 and wall > 0:
            seconds, passes, batches = seconds + wall, passes + n, max(batches, k)
    if passes == 0:
        return FinalizeLimit(floor_s, None, floor_s, cap_s)
    per_pass = seconds / passes
    predicted = (
        chosen.run_level_loss_evaluations(count) * (batches or chosen.max_batches) * per_pass
    )
    limit = max(floor_s, min(cap_s, math.ceil(HEADROOM * predicted)))
    return FinalizeLimit(limit, predicted, floor_s, cap_s)
