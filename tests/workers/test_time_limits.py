"""The run-level task's time limit, priced from what its checkpoints measured: the arithmetic here,
a prefork worker that enforces it in tests/workers/test_task_limits.py."""

from __future__ import annotations

import math
from typing import Any

import pytest

from obstacle.battery.presets import PRESETS
from obstacle.workers.time_limits import (
    HEADROOM,
    batch_passes,
    finalize_time_limit,
    limit_cap,
    soft_limit,
)


def _record(loss: int, grad: int, hvp: int, batches: int = 8) -> dict[str, Any]:
    """A checkpoint record whose tests made these batch passes, ``batches`` per loss evaluation."""
    return {
        "step": 1,
        "details": {
            "loss": {"cost": {"loss_evals": 1, "loss_batch_passes": batches}},
            "lanczos": {
                "cost": {
                    "loss_evals": 2,
                    "loss_batch_passes": loss - batches,
                    "grad_batch_passes": grad,
                    "hvp_batch_passes": hvp,
                }
            },
            "failed_test": None,
        },
    }


def test_batch_passes_counts_every_kind_and_the_batches_of_one_evaluation() -> None:
    assert batch_passes(_record(loss=24, grad=16, hvp=400)) == (440, 8)
    assert batch_passes({"step": 1}) == (0, 0)


def test_the_limit_is_headroom_times_the_priced_run_level_work_between_floor_and_cap() -> None:
    standard = PRESETS["standard"]
    records = [(12.0, _record(24, 16, 200)), (8.0, _record(24, 16, 200))]  # 20 s over 480 passes
    predicted = standard.run_level_loss_evaluations(2) * 8 * 20.0 / 480
    limit = finalize_time_limit(preset="standard", checkpoints=records, floor_s=10, cap_s=10_000)
    assert limit.predicted_s == pytest.approx(predicted)
    assert limit.seconds == math.ceil(HEADROOM * predicted)
    assert "at least OBSTACLE_FINALIZE_TIME_LIMIT_S=10" in limit.describe()
    assert f"{HEADROOM:g} × the {predicted:.0f} s" in limit.describe()

    floor = finalize_time_limit(
        preset="standard", checkpoints=records, floor_s=10_000, cap_s=20_000
    )
    assert floor.seconds == 10_000
    assert floor.describe() == "10000 s (OBSTACLE_FINALIZE_TIME_LIMIT_S)"

    cut = finalize_time_limit(preset="standard", checkpoints=records, floor_s=10, cap_s=100)
    assert cut.seconds == 100 and "cut to 0.9 × OBSTACLE_VISIBILITY_TIMEOUT_S" in cut.describe()


def test_more_checkpoints_and_a_bigger_preset_price_more_run_level_work() -> None:
    def limit(preset: str, count: int) -> float:
        records = [(10.0, _record(24, 16, 200))] * count
        found = finalize_time_limit(preset=preset, checkpoints=records, floor_s=1, cap_s=10**9)
        assert found.predicted_s is not None
        return found.predicted_s

    assert limit("quick", 3) < limit("standard", 3) < limit("full", 3)
    assert limit("standard", 3) < limit("standard", 20)


def test_without_a_measured_checkpoint_the_limit_is_the_setting() -> None:
    for checkpoints in ([], [(5.0, {"step": 1})], [(0.0, _record(24, 16, 200))]):
        limit = finalize_time_limit(
            preset="standard", checkpoints=checkpoints, floor_s=240, cap_s=4860
        )
        assert (limit.seconds, limit.predicted_s) == (240, None)


def test_without_a_cap_the_limit_follows_the_prediction_however_long() -> None:
    records = [(5000.0, _record(24, 16, 200))] * 3
    capped = finalize_time_limit(preset="standard", checkpoints=records, floor_s=240, cap_s=4860)
    free = finalize_time_limit(preset="standard", checkpoints=records, floor_s=240, cap_s=None)
    assert capped.seconds == 4860 and capped.predicted_s is not None
    assert free.seconds == math.ceil(HEADROOM * capped.predicted_s) > 4860
    assert "cut to" not in free.describe()


def test_the_soft_limit_and_the_cap_stay_inside_what_they_bound() -> None:
    # The defaults: a 240 s task is interrupted at 216 s; a 5400 s visibility timeout caps at 4860.
    assert (soft_limit(240), limit_cap(5400)) == (216, 4860)
    for seconds in (1, 2, 7, 240, 4860, 86_400):
        assert 1 <= soft_limit(seconds) <= seconds
        assert limit_cap(seconds) < seconds
