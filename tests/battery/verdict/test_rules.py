"""The verdict's rules on hand-built records: each rule fires on its evidence and only on it.

These records are synthetic on purpose: they isolate one rule at a time. Real runs with known
obstacles are in tests/scenarios/.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from obstacle.battery.verdict import DEFAULT_THRESHOLDS, LABELS, Thresholds, judge
from obstacle.errors import ParameterError


def _records(n: int = 9, **columns: Any) -> list[dict[str, Any]]:
    """n checkpoints of a calm, converging SGD run; ``columns`` override values per step."""
    rows = []
    for i in range(n):
        row: dict[str, Any] = {
            "step": 10 * i,
            "lr": 0.1,
            "loss": 1.0 / (1 + i),
            "validation_loss": None,
            "finite": True,
            "grad_norm": 1.0 / (1 + i),
            "param_norm": 3.0,
            "grad_param_cosine": 0.0,
            "lambda_min": 0.01,
            "lambda_max": 5.0,
            "lr_lambda_max": 0.5,
            "stability_threshold": 2.0,
            "escape_delta": 0.0,
            "snr": 5.0,
            "noise_scale": 10.0,
            "uphill_fraction_minibatch": 0.0,
            "full_step_uphill": False,
        }
        for key, values in columns.items():
            row[key] = values[i] if isinstance(values, list) else values
        rows.append(row)
    return rows


def _present(verdict: dict[str, Any]) -> dict[str, float]:
    return {o["kind"]: o["confidence"] for o in verdict["obstacles"]}


def test_a_converging_run_is_healthy_and_every_obstacle_is_ruled_out_with_a_reason() -> None:
    verdict = judge(_records())
    assert verdict["primary"] == "healthy"
    assert verdict["obstacles"] == []
    assert {r["kind"] for r in verdict["ruled_out"]} == set(LABELS) - {"healthy"}
    assert all(r["reason"] for r in verdict["ruled_out"])
    assert "still falling" in verdict["summary"]


def test_non_finite_loss_is_divergence_and_silences_other_rules() -> None:
    losses = [1.0, 2.0, 50.0, math.nan, None, None, None, None, None]
    verdict = judge(
        _records(loss=losses, finite=[True, True, True, False, False, False, False, False, False])
    )
    assert verdict["primary"] == "divergence"
    assert _present(verdict) == {"divergence": 1.0}
    assert verdict["obstacles"][0]["steps"][0] == 30


def test_explosion_without_nan_is_divergence() -> None:
    verdict = judge(_records(loss=[1.0, 1.5, 3, 8, 20, 60, 200, 500, 900]))
    assert verdict["primary"] == "divergence"


def test_saddle_needs_plateau_negative_curvature_and_a_descending_escape() -> None:
    flat = [1.0] * 9
    base = {
        "loss": flat,
        "lambda_min": -1.0,
        "lambda_max": 2.0,
        "escape_delta": -0.05,
        "grad_norm": 1e-4,
    }
    assert judge(_records(**base))["primary"] == "saddle_point"
    # No descent along the eigenvector: not an escapable saddle.
    assert judge(_records(**{**base, "escape_delta": 0.0}))["primary"] != "saddle_point"
    # Still making progress: passing a saddle region is not being stuck at one.
    assert (
        judge(_records(**{**base, "loss": [1.0 / (1 + i) for i in range(9)]}))["primary"]
        != "saddle_point"
    )


def test_plateau_without_negative_curvature_is_a_minimum_judged_against_the_target() -> None:
    records = _records(
        loss=[2.0, 1.0, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        grad_norm=[1, 0.5, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-6],
    )
    above = judge(records, target_loss=0.1)
    assert above["primary"] == "local_minimum"
    below = judge(records, target_loss=0.6)
    assert (
        below["primary"] == "healthy" and "converged to a minimum at loss 0.5" in below["summary"]
    )
    assert judge(records)["primary"] == "healthy"


def test_conditioning_needs_the_edge_of_stability_and_uphill_or_stalled_steps() -> None:
    bouncing = [1.0, 0.8, 0.9, 0.7, 0.85, 0.75, 0.9, 0.8, 0.95]
    verdict = judge(_records(loss=bouncing, lr_lambda_max=2.4, full_step_uphill=True))
    assert verdict["primary"] == "poor_conditioning"
    # At the edge but descending well: stable at the edge, not an obstacle.
    calm = judge(_records(lr_lambda_max=1.95))
    assert "poor_conditioning" not in _present(calm)


def test_adaptive_runs_are_judged_by_preconditioned_sharpness_not_lr_lambda_max() -> None:
    bouncing = [1.0, 0.8, 0.9, 0.7, 0.85, 0.75, 0.9, 0.8, 0.95]
    # lr·λmax is huge (meaningless for Adam) but the preconditioned sharpness is well inside 38.
    adam = _records(
        loss=[1.0 / (1 + i) for i in range(9)],
        lr_lambda_max=50.0,
        preconditioned_lr_lambda_max=5.0,
        preconditioned_threshold=38.0,
    )
    assert "poor_conditioning" not in _present(judge(adam))
    unstable = _records(
        loss=bouncing,
        preconditioned_lr_lambda_max=60.0,
        preconditioned_threshold=38.0,
        full_step_uphill=True,
    )
    assert judge(unstable)["primary"] == "poor_conditioning"


def test_noise_needs_uphill_minibatch_steps_with_a_downhill_full_step_on_a_plateau() -> None:
    plateau = [1.0, 0.7, 0.6, 0.55, 0.55, 0.551, 0.549, 0.55, 0.55]
    noisy = _records(
        loss=plateau, uphill_fraction_minibatch=0.45, snr=0.2, noise_signal=1.0, grad_norm=0.5
    )
    assert judge(noisy)["primary"] == "gradient_noise"
    # At a critical point (a step of 1/λmax would gain nothing) there is no floor to hold above.
    critical = _records(
        loss=plateau, uphill_fraction_minibatch=0.45, snr=0.2, noise_signal=1.0, grad_norm=1e-6
    )
    assert "gradient_noise" not in _present(judge(critical))
    # At a converged minimum every minibatch step goes uphill, but a full step gains nothing.
    converged = _records(loss=plateau, uphill_fraction_minibatch=1.0, snr=0.0, noise_signal=1e-9)
    assert "gradient_noise" not in _present(judge(converged))
    assert judge(noisy, target_loss=0.6)["primary"] == "healthy"
    both = _records(
        loss=plateau, uphill_fraction_minibatch=0.45, full_step_uphill=True, noise_signal=1.0
    )
    assert "gradient_noise" not in _present(judge(both))


def test_growing_norm_with_creeping_loss_is_no_critical_point() -> None:
    records = _records(
        loss=[0.5 / (1 + i) for i in range(9)],
        param_norm=[1.0 + 0.5 * math.log1p(i) for i in range(9)],
        grad_param_cosine=-0.9,
        lambda_max=[5.0 / (1 + i) for i in range(9)],
    )
    assert judge(records)["primary"] == "no_critical_point"


def test_validation_rising_while_training_falls_is_overfitting() -> None:
    val = [1.0, 0.8, 0.7, 0.65, 0.7, 0.8, 0.9, 1.0, 1.1]
    verdict = judge(_records(validation_loss=val))
    assert verdict["primary"] == "overfitting"
    assert verdict["obstacles"][0]["steps"][0] == 40


def test_thresholds_are_overridable_and_checked() -> None:
    loose = DEFAULT_THRESHOLDS.override({"plateau_rel": 0.5})
    assert loose.plateau_rel == 0.5 and isinstance(loose, Thresholds)
    with pytest.raises(ParameterError, match="Unknown threshold"):
        DEFAULT_THRESHOLDS.override({"plateau": 0.5})
    with pytest.raises(ParameterError, match="'plateau_rel' parameter must be a finite float"):
        DEFAULT_THRESHOLDS.override({"plateau_rel": -1.0})


def test_single_checkpoint_gets_a_verdict_that_says_what_one_checkpoint_cannot_show() -> None:
    verdict = judge(_records(n=1))
    assert verdict["primary"] == "healthy"
    assert "need two or more checkpoints" in verdict["summary"]
    assert "n/a" not in " ".join(r["reason"] for r in verdict["ruled_out"])


def test_noise_is_judged_at_the_runs_batch_size_not_the_probes() -> None:
    plateau = [1.0, 0.7, 0.6, 0.55, 0.55, 0.551, 0.549, 0.55, 0.55]
    # Simulated at probe batches of 32 the steps rarely go uphill; at the run's batch of 2 the
    # noise scale (B_noise = 16 examples) is 8x the batch: noise-dominated.
    base = {
        "loss": plateau,
        "uphill_fraction_minibatch": 0.05,
        "noise_signal": 1.0,
        "grad_norm": 0.5,
        "noise_scale": 16.0,
        "probe_batch_size": 32,
        "lambda_min": -1.0,
        "lambda_max": 2.0,
        "escape_delta": -0.05,
    }
    verdict = judge(_records(**base, run_batch_size=2))
    assert verdict["primary"] == "gradient_noise", verdict["summary"]
    noise = verdict["obstacles"][0]
    assert any("against the run's batch of 2" in e["statement"] for e in noise["evidence"])
    # The negative curvature is there, but far from a critical point it does not outvote noise.
    assert "saddle_point" not in _present(verdict)
    # Without the run's batch size, the probe's batches say the noise is small.
    assert judge(_records(**base))["primary"] != "gradient_noise"


def test_a_saddle_plateau_escaped_late_is_an_ended_episode_that_cost_most_of_the_run() -> None:
    n = 16
    loss = [1.0] * 12 + [0.6, 0.3, 0.2, 0.15]
    records = _records(
        n,
        loss=loss,
        grad_norm=[1e-4] * 12 + [0.5, 0.3, 0.2, 0.1],
        lambda_min=[-1.0] * 12 + [0.01] * 4,
        lambda_max=2.0,
        escape_delta=[-0.05] * 12 + [0.0] * 4,
    )
    verdict = judge(records)
    assert verdict["primary"] == "saddle_point", verdict["summary"]
    (episode,) = [e for e in verdict["episodes"] if e["kind"] == "saddle_point"]
    assert episode["start_step"] == 0 and not episode["still_present"]
    assert episode["end_step"] in (110, 120, 130)
    assert episode["ended_by"].startswith("escaped by step")
    assert episode["share_of_run"] > 0.6
    assert "escaped by step" in verdict["summary"]
    # The saddle plot and the text cite one step.
    assert verdict["obstacles"][0]["shown_at_step"] in episode["steps"]


def test_thresholds_refuse_values_outside_their_declared_range() -> None:
    with pytest.raises(ParameterError, match=r"'late_fraction' parameter .* range \(0, 1\]"):
        Thresholds(late_fraction=2.0)
    with pytest.raises(ParameterError, match="'outward_cosine'"):
        DEFAULT_THRESHOLDS.override({"outward_cosine": 1.5})
