"""Across-the-sequence summaries on hand-built records with known answers.

Tolerances: sums of a few exact binary fractions are compared with ``==``; anything through a
division, a log or a square root to 1e-12 relative.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from obstacle.artifacts.layout import TRAIN_LOG
from obstacle.battery.sequence import (
    curvature_variation,
    read_train_log,
    train_log_uphill,
    trends,
    uphill_step_rate,
)
from obstacle.errors import ParameterError, RunDirectoryError

KEYS = (
    "lr",
    "loss",
    "validation_loss",
    "train_loss",
    "grad_norm",
    "param_norm",
    "distance_from_start",
    "curvature_along_gradient",
    "lr_curvature",
    "predicted_change",
    "lambda_min",
    "lambda_max",
    "noise_scale",
    "snr",
    "uphill_fraction_minibatch",
    "full_step_uphill",
)


def rec(step: int, **values: Any) -> dict[str, Any]:
    """A checkpoint record with every key present, None unless given."""
    out: dict[str, Any] = {"step": step, **dict.fromkeys(KEYS)}
    out.update(values)
    return out


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-12, abs=1e-15)


# -- uphill_step_rate ----------------------------------------------------------------------------


def test_uphill_rate_counts_rises_and_skips_non_finite_pairs() -> None:
    losses = [3.0, 2.0, 2.5, 1.0, math.nan, 0.5, 0.75]
    predicted = [-0.875, -0.125, None, None, None, 0.25, None]
    records = [
        rec(s, loss=j, predicted_change=p)
        for s, (j, p) in enumerate(zip(losses, predicted, strict=True))
    ]
    out = uphill_step_rate(reversed(records))  # order of the input does not matter
    assert out["pairs"] == 4
    assert out["uphill_pairs"] == 2
    assert out["skipped_pairs"] == 2
    assert out["rate"] == 0.5
    cons = out["consecutive"]
    assert cons["pairs"] == [
        {"step": 0, "actual": -1.0, "predicted": -0.875},
        {"step": 1, "actual": 0.5, "predicted": -0.125},
        {"step": 2, "actual": -1.5, "predicted": None},
        {"step": 5, "actual": 0.25, "predicted": 0.25},
    ]
    assert cons["count"] == 4
    assert cons["compared"] == 3
    assert cons["sign_agreement"] == approx(2 / 3)
    assert cons["actual_uphill"] == 2
    assert cons["predicted_uphill"] == 1


def test_uphill_rate_compares_the_taylor_prediction_only_for_step_pairs_t_t_plus_1() -> None:
    records = [
        rec(0, loss=1.0, predicted_change=-0.5),
        rec(10, loss=2.0, predicted_change=-0.25),
        rec(11, loss=1.5),
    ]
    out = uphill_step_rate(records)
    assert (out["pairs"], out["uphill_pairs"], out["rate"]) == (2, 1, 0.5)
    assert out["consecutive"]["pairs"] == [{"step": 10, "actual": -0.5, "predicted": -0.25}]
    assert out["consecutive"]["sign_agreement"] == 1.0


def test_uphill_rate_without_pairs_is_undefined() -> None:
    for records in ([], [rec(0, loss=1.0)], [rec(0, loss=None), rec(1, loss=math.inf)]):
        out = uphill_step_rate(records)
        assert out["rate"] is None
        assert out["pairs"] == 0
        assert out["consecutive"]["sign_agreement"] is None


def test_records_without_an_int_step_are_refused() -> None:
    with pytest.raises(ParameterError, match="'records' parameter must be a sequence of dicts"):
        uphill_step_rate([{"loss": 1.0}])


# -- train log ---------------------------------------------------------------------------------


def test_train_log_uphill_raw_and_block_smoothed() -> None:
    losses = [9.0, 1.0, 2.0, math.nan, 3.0, 4.0, 5.0, 0.0]
    entries = [{"step": s, "lr": 0.1, "loss": j} for s, j in enumerate(losses)]
    out = train_log_uphill(entries, window=3)
    # finite: 9 1 2 3 4 5 0 -> rises 1→2, 2→3, 3→4, 4→5 out of 6 pairs
    assert (out["entries"], out["finite"], out["pairs"], out["uphill_pairs"]) == (8, 7, 6, 4)
    assert out["rate"] == approx(4 / 6)
    # blocks of 3 aligned to the end: [1 2 3] mean 2, [4 5 0] mean 3 (the leading 9 is dropped)
    assert out["smoothed"] == {"window": 3, "blocks": 2, "pairs": 1, "uphill_pairs": 1, "rate": 1.0}


def test_train_log_uphill_with_too_few_entries() -> None:
    out = train_log_uphill([{"step": 0, "loss": 1.0}], window=2)
    assert out["rate"] is None
    assert out["smoothed"]["rate"] is None
    with pytest.raises(ParameterError, match="'window' parameter must be an int in the range"):
        train_log_uphill([], window=0)


def test_read_train_log(tmp_path: Path) -> None:
    assert read_train_log(tmp_path) == []
    (tmp_path / TRAIN_LOG).write_text(
        '{"step": 0, "lr": 0.1, "loss": 2.0}\n\n{"step": 1, "lr": 0.1, "loss": NaN}\n'
    )
    entries = read_train_log(tmp_path)
    assert [e["step"] for e in entries] == [0, 1]
    assert math.isnan(entries[1]["loss"])
    (tmp_path / TRAIN_LOG).write_text("not json\n")
    with pytest.raises(RunDirectoryError, match="line 1"):
        read_train_log(tmp_path)


# -- curvature_variation -------------------------------------------------------------------------


def test_curvature_variation_cv_sign_changes_and_extremes() -> None:
    curvature = [1.0, 3.0, -1.0, 2.0, None, math.nan, 5.0]
    records = [rec(s, lr=0.5, curvature_along_gradient=c) for s, c in enumerate(curvature)]
    records[4]["lr_curvature"] = 4.0  # an explicit lr·curvature is used as given
    out = curvature_variation(records)
    c = out["curvature"]
    # values 1 3 -1 2 5: mean 2, population variance (1+1+9+0+9)/5 = 4
    assert c["count"] == 5
    assert c["mean"] == 2.0
    assert c["std"] == approx(2.0)
    assert c["cv"] == approx(1.0)
    assert c["sign_changes"] == 2
    assert (c["min"], c["min_step"], c["max"], c["max_step"]) == (-1.0, 2, 5.0, 6)
    s = out["lr_curvature"]
    # 0.5 1.5 -0.5 1.0 4.0 2.5: mean 1.5, squared deviations 1 0 4 0.25 6.25 1
    assert s["count"] == 6
    assert s["mean"] == approx(1.5)
    assert s["std"] == approx(math.sqrt(12.5 / 6))
    assert s["cv"] == approx(math.sqrt(12.5 / 6) / 1.5)
    assert s["sign_changes"] == 2
    assert (s["threshold"], s["above_threshold"]) == (2.0, 2)
    assert (s["max"], s["max_step"]) == (4.0, 4)


def test_curvature_variation_undefined_cases() -> None:
    empty = curvature_variation([rec(0), rec(1, curvature_along_gradient=math.inf)])
    assert empty["curvature"]["count"] == 0
    assert empty["curvature"]["cv"] is None
    assert empty["curvature"]["min"] is None
    assert empty["curvature"]["sign_changes"] == 0
    zero_mean = curvature_variation(
        [rec(0, curvature_along_gradient=-1.0), rec(1, curvature_along_gradient=1.0)]
    )
    assert zero_mean["curvature"]["cv"] is None
    assert zero_mean["curvature"]["sign_changes"] == 1
    single = curvature_variation([rec(0, curvature_along_gradient=3.0)])
    assert single["curvature"]["cv"] is None
    assert single["curvature"]["std"] == 0.0


# -- trends ------------------------------------------------------------------------------------


def test_parameter_norm_growth_on_an_exponential_series() -> None:
    records = [rec(s, param_norm=2.0 * math.exp(0.01 * s)) for s in range(0, 101, 10)]
    p = trends(records)["parameter_norm"]
    assert p["log_slope_second_half"] == approx(0.01)
    assert p["window_second_half"] == 6
    assert p["ratio"] == approx(math.e)
    assert p["first"] == 2.0


def test_gradient_decay_and_loss_progress() -> None:
    losses = [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.5, 3.4]
    grads = [1.0, 4.0, 2.0, 0.5, None, None, None, None, None]
    records = [
        rec(10 * i, loss=j, grad_norm=g) for i, (j, g) in enumerate(zip(losses, grads, strict=True))
    ]
    out = trends(records)
    g = out["gradient_norm"]
    assert (g["peak"], g["peak_step"], g["last"], g["last_step"]) == (4.0, 10, 0.5, 30)
    assert g["decay"] == 0.125
    loss = out["loss"]
    assert loss["window_last_third"] == 3
    assert loss["relative_decrease_last_third"] == approx(0.6 / 4.0)
    assert loss["slope_last_third"] == approx(
        -0.03
    )  # least squares through (60,4) (70,3.5) (80,3.4)
    assert loss["relative_decrease_last_two"] == approx(0.1 / 3.5)
    assert loss["slope_last_two"] == approx(-0.01)
    assert (loss["first"], loss["last"], loss["min"]) == (10.0, 3.4, 3.4)
    assert out["explosion_ratio"] == 1.0


def test_validation_rising_while_train_falls() -> None:
    records = [rec(s, loss=10.0 - 0.5 * s, validation_loss=(s - 3.0) ** 2 + 1.0) for s in range(10)]
    v = trends(records)["validation"]
    assert v["available"] is True
    assert (v["min"], v["min_step"], v["last"]) == (1.0, 3, 37.0)
    assert v["rise_from_min"] == 36.0
    assert v["slope_last_half"] == approx(8.0)  # steps 5..9: Σ(x−7)·y / Σ(x−7)² = 80/10
    assert v["train_slope_last_half"] == approx(-0.5)
    assert v["rising_while_train_falls"] is True


def test_validation_falling_with_train_is_not_overfitting() -> None:
    records = [rec(s, loss=5.0 - s, validation_loss=6.0 - s) for s in range(4)]
    v = trends(records)["validation"]
    assert v["rising_while_train_falls"] is False
    assert v["min_step"] == 3
    assert trends([rec(0, loss=1.0)])["validation"]["available"] is False


def test_non_finite_count_and_explosion_ratio() -> None:
    losses = [2.0, 5.0, 100.0, math.inf, math.nan, None]
    norms = [1.0, 1.0, 3.0, math.inf, math.nan, None]
    records = [
        rec(s, loss=j, param_norm=n) for s, (j, n) in enumerate(zip(losses, norms, strict=True))
    ]
    out = trends(records)
    assert out["non_finite"] == {
        "count": 3,
        "first_step": 3,
        "parameter_norm_count": 2,
        "parameter_norm_first_step": 3,
    }
    assert out["explosion_ratio"] == 50.0
    assert out["loss"]["last"] == 100.0
    json.dumps(out, allow_nan=False)  # JSON-ready: undefined numbers are None, never NaN
    assert trends([rec(0, loss=math.nan), rec(1, loss=3.0)])["explosion_ratio"] is None


def test_trends_degrade_on_empty_and_single_checkpoint() -> None:
    empty = trends([])
    assert empty["checkpoints"] == 0
    assert empty["explosion_ratio"] is None
    assert empty["gradient_norm"]["decay"] is None
    single = trends([rec(7, loss=1.0, grad_norm=0.5, param_norm=3.0, validation_loss=2.0)])
    assert single["last_step"] == 7
    assert single["gradient_norm"]["decay"] == 1.0
    assert single["loss"]["slope_last_third"] is None
    assert single["parameter_norm"]["log_slope_second_half"] is None
    assert single["validation"]["rising_while_train_falls"] is None
    for out in (empty, single, curvature_variation([]), uphill_step_rate([])):
        json.dumps(out, allow_nan=False)
