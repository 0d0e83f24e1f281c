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

__all__ = [
    "DEFAULT_LIMIT",
    "HEADROOM",
    "SOFT_SHARE",
    "VISIBILITY_SHARE",
    "FinalizeLimit",
    "batch_passes",
    "finalize_time_limit",
    "limit_cap",
    "soft_limit",
]

#: The limit over the prediction.
HEADROOM = 3.0
#: A task's soft limit over its hard one: the soft limit interrupts the battery in time for the
#: task to record why; the hard one kills the process.
SOFT_SHARE = 0.9
#: No task's limit passes this share of the visibility timeout, after which Redis hands a task
#: that is still running to a second worker.
VISIBILITY_SHARE = 0.9
#: What a run-level task's limit is when its message does not say (queued by an older worker).
DEFAULT_LIMIT = "OBSTACLE_FINALIZE_TIME_LIMIT_S"
_PASS_KINDS = ("loss_batch_passes", "grad_batch_passes", "hvp_batch_passes")


def soft_limit(hard_s: int) -> int:
    """The soft time limit that goes with a hard one."""
    return max(1, int(hard_s * SOFT_SHARE))


def limit_cap(visibility_timeout_s: int) -> int:
    """The longest limit a task may be given under this visibility timeout."""
    return int(VISIBILITY_SHARE * visibility_timeout_s)


@dataclass(frozen=True)
class FinalizeLimit:
    """The run-level task's hard limit, and why it is that."""

    seconds: int
    predicted_s: float | None  # the run level's predicted seconds; None when nothing was measured
    floor_s: int  # OBSTACLE_FINALIZE_TIME_LIMIT_S
    cap_s: int | None  # below the visibility timeout; None: no cap

    def describe(self) -> str:
        """E.g. ``900 s (3 × the 300 s its checkpoints' cost predicts; at least
        OBSTACLE_FINALIZE_TIME_LIMIT_S=240)``."""
        if self.predicted_s is None or self.seconds == self.floor_s:
            return f"{self.seconds} s ({DEFAULT_LIMIT})"
        why = f"{HEADROOM:g} × the {self.predicted_s:.0f} s its checkpoints' measured cost predicts"
        if self.seconds == self.cap_s:
            why += f", cut to {VISIBILITY_SHARE:g} × OBSTACLE_VISIBILITY_TIMEOUT_S"
        return f"{self.seconds} s ({why}; at least {DEFAULT_LIMIT}={self.floor_s})"


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
    cap_s: int | None,
) -> FinalizeLimit:
    """The run-level task's limit from its analysed checkpoints, each as (wall seconds, record);
    ``cap_s`` None: no limit above the prediction's (in-process, where no broker redelivers)."""
    chosen = get_preset(preset)
    cap_s = None if cap_s is None else max(cap_s, floor_s)
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
    wanted = math.ceil(HEADROOM * predicted)
    limit = max(floor_s, wanted if cap_s is None else min(cap_s, wanted))
    return FinalizeLimit(limit, predicted, floor_s, cap_s)
