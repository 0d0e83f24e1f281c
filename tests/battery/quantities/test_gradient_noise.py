"""GradientNoise against a known covariance.

The quadratic probe's batch-k gradient is g_k = A(θ − c̄_k), c̄_k the mean of batch k's centres.
With c̄_k = m + δ_k and Σ_k δ_k = 0, the per-batch gradient covariance has the exact trace
tr(Σ) = Σ_k ‖Aδ_k‖²/(K − 1), and ḡ = A(θ − m). Tolerance 1e-12 relative (float64 round-off).
The estimator's unbiasedness is checked by Monte Carlo on synthetic gradients with known Σ,
within 4 standard errors (seeded, so deterministic).
"""

from __future__ import annotations

import math

import pytest
import torch

from obstacle.battery.engine import LossEngine
from obstacle.battery.quantities.gradient_noise import (
    GradientNoise,
    _centred_gram,
    _estimates,
    noise_statistics,
)
from obstacle.errors import ParameterError
from support import calls, quadratic_context, quadratic_engine

A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
M = torch.tensor([0.5, -0.25, 1.0], dtype=torch.float64)
S = 0.5
E = torch.eye(3, dtype=torch.float64)
DELTAS = [S * E[0], -S * E[0], S * E[1], -S * E[1]]
U = torch.tensor([0.25, 0.25, -0.5], dtype=torch.float64)  # within-batch spread: no effect on g_k
CENTRES = [torch.stack([M + d + U, M + d - U]) for d in DELTAS]
K, B = 4, 2
TRACE = sum(float((A @ d).norm() ** 2) for d in DELTAS) / (K - 1)  # = 2·S²·(1 + 4)/3


_ctx = quadratic_context


@pytest.fixture(scope="module")
def engine() -> LossEngine:
    return quadratic_engine(A, CENTRES)[0]


def test_known_covariance(engine: LossEngine) -> None:
    theta = M + torch.tensor([1.0, 0.5, -0.5], dtype=torch.float64)
    g_bar = A @ (theta - M)
    grads = [A @ (theta - M - d) for d in DELTAS]
    g2 = float(g_bar @ g_bar)
    g2_unbiased = g2 - TRACE / K
    record = GradientNoise()(_ctx(engine, theta, bootstrap=200))

    assert math.isclose(TRACE, 2 * S**2 * 5 / 3, rel_tol=1e-15)
    assert (record["num_batches"], record["batch_size"], record["reason"]) == (K, B, None)
    assert record["batch_gradient_norms"] == pytest.approx(
        [float(g.norm()) for g in grads], rel=1e-14
    )
    assert record["trace"] == pytest.approx(TRACE, rel=1e-12)
    assert record["mean_gradient_sq_norm"] == pytest.approx(g2, rel=1e-12)
    assert record["gradient_sq_norm_unbiased"] == pytest.approx(g2_unbiased, rel=1e-12)
    assert record["signal_resolved"] is True
    assert record["gradient_sq_norm_estimator"] == "unbiased"
    assert record["noise_scale"] == pytest.approx(B * TRACE / g2_unbiased, rel=1e-12)
    assert record["noise_scale_raw"] == pytest.approx(B * TRACE / g2, rel=1e-12)
    assert record["snr"] == pytest.approx(g2_unbiased / TRACE, rel=1e-12)
    assert record["snr_raw"] == pytest.approx(g2 / TRACE, rel=1e-12)
    cosines = [
        float(grads[i] @ grads[j] / (grads[i].norm() * grads[j].norm()))
        for i in range(K)
        for j in range(i + 1, K)
    ]
    assert record["mean_pairwise_cosine"] == pytest.approx(sum(cosines) / len(cosines), rel=1e-12)
    boot = record["bootstrap"]
    assert (boot["resamples"], boot["seed"], boot["confidence"]) == (200, 0, 0.95)
    assert boot["noise_scale"][0] <= boot["noise_scale"][1]
    assert boot["snr"][0] <= boot["snr"][1]
    assert calls(record["cost"]) == {"loss_evals": 0, "grad_evals": K, "hvp_evals": 0}


def test_unresolved_signal_falls_back_to_the_raw_norm(engine: LossEngine) -> None:
    # ‖ḡ‖² = 0.01 < tr(Σ)/K: the corrected |G|² is negative, the noise scale a lower bound.
    theta = M + torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64)
    record = GradientNoise()(_ctx(engine, theta, bootstrap=0))
    g2 = 0.01
    assert record["signal_resolved"] is False
    assert record["gradient_sq_norm_estimator"] == "raw"
    assert record["gradient_sq_norm_unbiased"] == pytest.approx(g2 - TRACE / K, rel=1e-12)
    assert record["noise_scale"] == pytest.approx(B * TRACE / g2, rel=1e-10)
    assert record["snr"] == pytest.approx(g2 / TRACE, rel=1e-10)
    assert record["bootstrap"] is None


def test_estimators_are_unbiased_for_a_known_covariance() -> None:
    gen = torch.Generator().manual_seed(1)
    p, k, reps = 6, 4, 2000
    mean = torch.linspace(-1, 1, p, dtype=torch.float64)
    factor = torch.randn(p, p, generator=gen, dtype=torch.float64) / 2
    trace, g2 = float((factor @ factor.T).trace()), float(mean @ mean)
    estimates = []
    for _ in range(reps):
        grads = mean + torch.randn(k, p, generator=gen, dtype=torch.float64) @ factor.T
        s = noise_statistics(grads, batch_size=1)
        estimates.append([s["trace"], s["gradient_sq_norm_unbiased"], s["mean_gradient_sq_norm"]])
    est = torch.tensor(estimates)
    avg, se = est.mean(dim=0), est.std(dim=0) / math.sqrt(reps)
    assert abs(avg[0] - trace) < 4 * se[0]
    assert abs(avg[1] - g2) < 4 * se[1]
    # the raw ‖ḡ‖² is biased by tr(Σ)/K, far beyond the Monte Carlo error
    assert abs(avg[2] - (g2 + trace / k)) < 4 * se[2]
    assert avg[2] - g2 > 10 * se[2]


def test_bootstrap_resample_algebra_matches_recomputing_on_the_resample() -> None:
    gen = torch.Generator().manual_seed(2)
    grads = torch.randn(5, 7, generator=gen, dtype=torch.float64) + 0.3
    index = torch.randint(0, 5, (20, 5), generator=gen)
    counts = torch.zeros(20, 5, dtype=torch.float64).scatter_add_(
        1, index, torch.ones(20, 5, dtype=torch.float64)
    )
    est = _estimates(counts, _centred_gram(grads @ grads.T), batch_size=3)
    for r in range(20):
        direct = noise_statistics(grads[index[r]], batch_size=3)
        if direct["trace"] == 0:  # a resample of one batch repeated
            continue
        assert float(est["trace"][r]) == pytest.approx(direct["trace"], rel=1e-10)
        assert float(est["noise_scale"][r]) == pytest.approx(direct["noise_scale"], rel=1e-10)
        assert float(est["snr"][r]) == pytest.approx(direct["snr"], rel=1e-10)


def test_bootstrap_is_seeded(engine: LossEngine) -> None:
    theta = M + torch.tensor([0.3, 0.2, -0.1], dtype=torch.float64)
    first = GradientNoise()(_ctx(engine, theta, bootstrap=300, bootstrap_seed=5))["bootstrap"]
    again = GradientNoise()(_ctx(engine, theta, bootstrap=300, bootstrap_seed=5))["bootstrap"]
    other = GradientNoise()(_ctx(engine, theta, bootstrap=300, bootstrap_seed=6))["bootstrap"]
    assert first == again
    assert first != other


def test_one_batch_gives_no_noise_with_a_reason() -> None:
    engine = quadratic_engine(A, CENTRES[:1])[0]
    record = GradientNoise()(_ctx(engine, torch.zeros(3, dtype=torch.float64)))
    assert record["num_batches"] == 1 and len(record["batch_gradient_norms"]) == 1
    assert record["noise_scale"] is None and record["snr"] is None and record["bootstrap"] is None
    assert "K ≥ 2" in record["reason"]


def test_non_finite_weights_are_recorded_not_raised(engine: LossEngine) -> None:
    theta = torch.tensor([math.nan, 0.0, 0.0], dtype=torch.float64)
    record = GradientNoise()(_ctx(engine, theta, bootstrap=50))
    assert math.isnan(record["trace"]) and math.isnan(record["noise_scale"])
    assert record["signal_resolved"] is False
    assert all(math.isnan(v) for v in record["bootstrap"]["noise_scale"])


@pytest.mark.parametrize(
    ("option", "value"),
    [("bootstrap", -1), ("bootstrap_seed", 1.5), ("bootstrap_confidence", 1.0)],
)
def test_bad_options_are_parameter_errors(engine: LossEngine, option: str, value: object) -> None:
    with pytest.raises(ParameterError, match=f"The '{option}' parameter"):
        GradientNoise()(_ctx(engine, torch.zeros(3, dtype=torch.float64), **{option: value}))
