"""HessianSpectrum: Hutch++ trace and SLQ density against exact traces and eigenvalues."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from obstacle.battery.checkpoint import Checkpoint
from obstacle.battery.engine import LossEngine
from obstacle.battery.probe import Probe
from obstacle.battery.quantities.base import CheckpointContext
from obstacle.battery.quantities.spectrum import (
    HessianSpectrum,
    hutch_plus_plus,
    lanczos_quadrature,
)
from obstacle.errors import ParameterError
from support import classification_batches, full_hessian, quadratic_engine, tiny_mlp

RECORD_KEYS = {
    "trace",
    "trace_std",
    "trace_matvecs",
    "trace_slq",
    "density",
    "quadrature",
    "support",
    "broadening",
    "num_probes",
    "lanczos_steps",
    "cost",
}


def _matrix(eigenvalues: Tensor, seed: int = 0) -> Tensor:
    n = eigenvalues.numel()
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (q * eigenvalues.double()) @ q.T


def _context(engine: LossEngine, model: nn.Module) -> CheckpointContext:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    checkpoint = Checkpoint(step=0, lr=0.1, train_loss=None, state=state)
    return CheckpointContext(engine=engine, theta=engine.flatten(state), checkpoint=checkpoint)


@pytest.fixture(scope="module")
def mlp() -> tuple[LossEngine, nn.Module, Tensor]:
    model = tiny_mlp(0)  # 75 parameters
    batches = classification_batches()
    exact = torch.linalg.eigvalsh(full_hessian(model, nn.CrossEntropyLoss(), batches))
    engine = LossEngine.create(
        Probe.capture(model, nn.CrossEntropyLoss(), batches), dtype="float64"
    )
    return engine, model, exact


def test_hutch_plus_plus_is_exact_on_a_low_rank_operator() -> None:
    eigenvalues = torch.zeros(60)
    eigenvalues[:5] = torch.tensor([-2.0, 1.0, 3.0, 4.0, 7.0])
    a = _matrix(eigenvalues)
    estimate = hutch_plus_plus(
        lambda v: a @ v, 60, matvecs=30, generator=torch.Generator().manual_seed(0)
    )
    # The 10-column sketch spans the rank-5 range: the low-rank part is the whole trace.
    assert estimate.trace == pytest.approx(13.0, abs=1e-10)
    assert estimate.std is not None and estimate.std < 1e-10
    assert estimate.matvecs == 30


def test_hutch_plus_plus_is_unbiased_within_its_stated_error() -> None:
    a = _matrix(torch.linspace(-1.0, 5.0, 200), seed=1)
    exact = float(torch.trace(a))
    g = torch.Generator().manual_seed(0)
    runs = [hutch_plus_plus(lambda v: a @ v, 200, matvecs=12, generator=g) for _ in range(200)]
    estimates = torch.tensor([r.trace for r in runs])
    # Tolerance: 4 standard errors of the mean of 200 independent estimates.
    assert abs(float(estimates.mean()) - exact) <= 4 * float(estimates.std()) / math.sqrt(200)
    # Each run's trace_std is an honest standard error: on average it matches the spread.
    mean_std = float(np.mean([r.std for r in runs]))
    assert 0.7 * float(estimates.std()) <= mean_std <= 1.3 * float(estimates.std())


def test_trace_on_a_tiny_model_matches_the_full_hessian(
    mlp: tuple[LossEngine, nn.Module, Tensor],
) -> None:
    engine, model, exact = mlp
    record = HessianSpectrum(trace_matvecs=30, num_probes=4, lanczos_steps=40)(
        _context(engine, model)
    )
    assert set(record) == RECORD_KEYS
    trace = float(exact.sum())
    # Tolerance: statistical, 4·trace_std (the Hutchinson part's standard error) plus rounding.
    assert record["trace_std"] > 0
    assert abs(record["trace"] - trace) <= 4 * record["trace_std"] + 1e-8
    # The SLQ trace n·mean(Σ τθ) is a second unbiased estimate: 4 probes of 75 parameters give
    # a relative standard error near sqrt(2/75)·‖H‖_F/|tr H| per probe; 50% is a loose bound.
    assert record["trace_slq"] == pytest.approx(trace, rel=0.5)


def test_density_integrates_to_one_and_covers_the_spectrum(
    mlp: tuple[LossEngine, nn.Module, Tensor],
) -> None:
    engine, model, exact = mlp
    record = HessianSpectrum(trace_matvecs=30, num_probes=4, lanczos_steps=40)(
        _context(engine, model)
    )
    grid, values = np.asarray(record["density"]["grid"]), np.asarray(record["density"]["values"])
    assert grid.size == values.size == 256 and np.all(values >= 0)
    # Tolerance: the Gaussians extend 5σ past the grid's ends; trapezoid error is negligible.
    assert np.trapezoid(values, grid) == pytest.approx(1.0, abs=1e-4)
    lo, hi = float(exact[0]), float(exact[-1])
    assert grid[0] <= lo and grid[-1] >= hi
    # The extreme quadrature nodes are the extreme Ritz values of 40 steps: within 1e-6·spread.
    assert record["support"][0] == pytest.approx(lo, abs=1e-6 * (hi - lo))
    assert record["support"][1] == pytest.approx(hi, abs=1e-6 * (hi - lo))
    for weights in record["quadrature"]["weights"]:
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)
    json.dumps(record, allow_nan=False)
    # One gradient graph; the HVPs are the trace's plus one per Lanczos step and probe, each
    # over the probe's 4 batches.
    assert record["cost"] == {
        "loss_evals": 0,
        "grad_evals": 1,
        "hvp_evals": 30 + 4 * 40,
        "loss_batch_passes": 0,
        "grad_batch_passes": 4,
        "hvp_batch_passes": 4 * (30 + 4 * 40),
    }


def test_quadrature_on_few_distinct_eigenvalues_is_exact() -> None:
    eigenvalues = torch.tensor([-1.0, 2.0, 6.0]).repeat_interleave(torch.tensor([60, 180, 60]))
    a = _matrix(eigenvalues, seed=2)
    quad = lanczos_quadrature(
        lambda v: a @ v, 300, num_probes=4, steps=20, generator=torch.Generator().manual_seed(0)
    )
    # The Krylov space of each probe is 3-dimensional: 3 nodes at the 3 eigenvalues.
    assert quad.matvecs == 4 * 3
    for nodes, weights in zip(quad.nodes, quad.weights, strict=True):
        assert nodes == pytest.approx([-1.0, 2.0, 6.0], abs=1e-10)
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)
    # Weights estimate the multiplicity fractions 0.2, 0.6, 0.2. Tolerance: 4 standard errors,
    # with the per-probe error sqrt(2·0.2·0.8/300) ≈ 0.033 averaged over 4 probes.
    mean = np.mean(np.asarray(quad.weights), axis=0)
    assert mean == pytest.approx([0.2, 0.6, 0.2], abs=4 * 0.033 / 2)


def test_spectrum_of_a_quadratic_puts_its_mass_at_the_eigenvalues() -> None:
    eigenvalues = torch.tensor([-1.0, 3.0]).repeat_interleave(torch.tensor([4, 4]))
    g = torch.Generator().manual_seed(3)
    engine, model = quadratic_engine(
        _matrix(eigenvalues), [torch.randn(4, 8, generator=g, dtype=torch.float64)]
    )
    record = HessianSpectrum(trace_matvecs=24, num_probes=2, lanczos_steps=5)(
        _context(engine, model)
    )
    # The 8-column sketch spans R^8: Hutch++ is exact.
    assert record["trace"] == pytest.approx(8.0, abs=1e-10)
    grid, values = np.asarray(record["density"]["grid"]), np.asarray(record["density"]["values"])

    def at(x: float) -> float:
        return float(values[np.argmin(np.abs(grid - x))])

    # Two Gaussian peaks at the eigenvalues, nothing in between (σ = 1% of the 4-wide spread).
    assert record["support"] == pytest.approx([-1.0, 3.0], abs=1e-10)
    assert min(at(-1.0), at(3.0)) > 1e6 * at(1.0)


def test_parameters_are_validated() -> None:
    with pytest.raises(ParameterError) as info:
        HessianSpectrum(lanczos_steps=1)
    assert (
        str(info.value)
        == "The 'lanczos_steps' parameter must be an int in the range [2, inf). Got 1 instead."
    )
    with pytest.raises(ParameterError, match="The 'trace_matvecs' parameter"):
        HessianSpectrum(trace_matvecs=2)
    with pytest.raises(ParameterError, match="The 'broadening' parameter"):
        HessianSpectrum(broadening=0.0)


def test_non_finite_checkpoint_is_recorded_not_raised() -> None:
    g = torch.Generator().manual_seed(4)
    engine, model = quadratic_engine(
        _matrix(torch.ones(4)), [torch.randn(3, 4, generator=g, dtype=torch.float64)]
    )
    with torch.no_grad():
        model.theta[0] = math.nan
    record: dict[str, Any] = HessianSpectrum()(_context(engine, model))
    assert record["trace"] is None and record["density"] is None
    json.dumps(record, allow_nan=False)
