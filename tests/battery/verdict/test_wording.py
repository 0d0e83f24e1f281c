"""The verdict's sentences say what was measured, and never contradict the run's numbers."""

from __future__ import annotations

import json
from typing import Any

from obstacle.battery.verdict import judge
from obstacle.battery.verdict.facts import CheckpointFacts, trend


def _records(losses: list[float], **fields: Any) -> list[dict[str, Any]]:
    return [{"step": 20 * i, "loss": loss, **fields} for i, loss in enumerate(losses)]


# What an SGD run at lr = 30 records: the loss jumps to 4× its first value and stays there.
BLOWN_UP_AND_STUCK = _records(
    [2.33, 6.0, 9.0, 9.5, 9.52, 9.5, 9.53, 9.51, 9.52, 9.52, 9.52],
    lr=30.0,
    grad_norm=0.5,
    param_norm=10.0,
    lambda_min=1e-8,
    lambda_max=0.35,
    lr_lambda_max=10.5,
    stability_threshold=2.0,
)


def test_a_run_that_ended_above_its_first_loss_is_never_said_to_have_converged() -> None:
    verdict = judge(BLOWN_UP_AND_STUCK)
    text = json.dumps(verdict, ensure_ascii=False)
    assert "converged to a minimum" not in text
    reason = next(r["reason"] for r in verdict["ruled_out"] if r["kind"] == "local_minimum")
    assert "did not converge" in reason
    assert "4.1× its first value" in reason


def test_the_healthy_summary_of_a_stuck_run_above_its_start_does_not_say_converged() -> None:
    flat_high = _records([1.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    verdict = judge(flat_high)
    assert verdict["primary"] == "healthy"
    assert "converged" not in verdict["summary"].replace("without converging", "")
    assert "3× its first value" in verdict["summary"]


def test_listed_obstacles_hold_every_condition_and_ruled_out_ones_are_not_listed() -> None:
    verdict = judge(BLOWN_UP_AND_STUCK)
    listed = {o["kind"] for o in verdict["obstacles"]}
    assert listed and not listed & {r["kind"] for r in verdict["ruled_out"]}
    for obstacle in verdict["obstacles"]:
        assert all(c["holds"] for c in obstacle["conditions"]), obstacle["kind"]


def test_parameter_norm_that_did_not_grow_is_not_said_to_grow() -> None:
    verdict = judge(BLOWN_UP_AND_STUCK)
    reason = next(r["reason"] for r in verdict["ruled_out"] if r["kind"] == "no_critical_point")
    assert reason.startswith("‖θ‖ did not grow over the second half of the run, but")


def _facts(step: int, loss: float) -> CheckpointFacts:
    return CheckpointFacts.from_record({"step": step, "loss": loss})


def test_the_fitted_trend_says_what_was_fitted_and_over_which_steps() -> None:
    falling = trend([_facts(50, 1.0), _facts(75, 0.6), _facts(100, 0.2)])
    text = falling.describe()
    assert "least-squares line fitted through the checkpoints' probe losses" in text
    assert "the loss fell 133% of its mean from step 50 to step 100" in text
    rising = trend([_facts(0, 1.0), _facts(10, 1.05), _facts(20, 1.1)])
    assert "the loss rose 9.5% of its mean from step 0 to step 20" in rising.describe()


def test_an_obstacle_that_shows_only_at_the_last_checkpoint_has_no_zero_share() -> None:
    exploding = _records([1.0, 0.9, 0.8, 0.7, 1e6], lr=1.0, grad_norm=1.0)
    verdict = judge(exploding)
    assert verdict["primary"] == "divergence"
    assert "0% of the run" not in verdict["summary"]
    assert verdict["summary"].startswith("The run diverged at its last checkpoint (step 80)")


def test_a_high_snr_at_the_probe_batch_is_explained_next_to_the_runs_noisy_batch() -> None:
    # B_noise = 8 examples against a run batch of 2: noisy at the run's batch (SNR 0.25) while
    # the probe's batch of 16 sees an SNR of 2 — the report must say which one is judged
    noisy = _records(
        [0.25, 0.251, 0.249, 0.25, 0.252, 0.25, 0.249, 0.251, 0.25],
        lr=0.1,
        grad_norm=0.5,
        param_norm=3.0,
        lambda_min=0.1,
        lambda_max=1.0,
        lr_lambda_max=0.1,
        stability_threshold=2.0,
        snr=2.0,
        noise_scale=8.0,
        run_batch_size=2,
        probe_batch_size=16,
        noise_signal=1.1,
        full_step_uphill=0.0,
        uphill_fraction_minibatch=0.1,
    )
    verdict = judge(noisy)
    noise = next(o for o in verdict["obstacles"] if o["kind"] == "gradient_noise")
    line = next(e["statement"] for e in noise["evidence"] if "signal-to-noise" in e["statement"])
    assert "= 2 at the probe's batch of 16; the SNR judged is B/B_noise = 0.25 at the run's" in line


def test_a_divergence_is_shown_at_the_step_its_evidence_cites() -> None:
    blown = _records([1.0, 2.0, 30.0, None, None, None], lr=1.0)  # type: ignore[list-item]
    verdict = judge(blown)
    divergence = verdict["obstacles"][0]
    assert divergence["kind"] == "divergence"
    assert divergence["shown_at_step"] == 60  # the first non-finite step, not the last
    assert "from step 60 on" in divergence["evidence"][0]["statement"]
    exploding = judge(_records([1.0, 0.9, 0.8, 50.0, 0.7, 0.6], lr=1.0))
    cited = exploding["obstacles"][0]
    assert cited["kind"] == "divergence" and cited["shown_at_step"] == 60
    assert "50× its first value at step 60" in cited["evidence"][0]["statement"]
