"""NegativeCurvature: λmin/λmax, the escape certificate, the slice and the stability thresholds,
against closed-form quadratics, simulated optimizers and exact Hessians."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from obstacle.battery.checkpoint import Checkpoint, OptimizerState
from obstacle.battery.engine import LossEngine
from obstacle.battery.probe import Probe
from obstacle.battery.quantities.base import CheckpointContext
from obstacle.battery.quantities.negative_curvature import (
    NegativeCurvature,
    escape_scale,
    stability_threshold,
)
from obstacle.errors import ConvergenceWarning, ParameterError
from support import quadratic_engine

RECORD_KEYS = {
    "lambda_min",
    "lambda_min_resolution",
    "lambda_min_unresolved",
    "lambda_max",
    "restarts",
    "max_vectors",
    "converged_min",
    "converged_max",
    "residual_min",
    "residual_max",
    "iterations",
    "matvecs",
    "exact",
    "warm_started",
    "tol",
    "escape",
    "slice",
    "lr",
    "lr_lambda_max",
    "optimizer",
    "stability_threshold",
    "preconditioned",
    "cost",
}


def _matrix(eigenvalues: list[float], seed: int = 0) -> Tensor:
    n = len(eigenvalues)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (q * torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def _context(
    engine: LossEngine,
    model: nn.Module,
    *,
    step: int = 0,
    lr: float = 0.1,
    options: dict[str, Any] | None = None,
    carry: dict[str, Any] | None = None,
    optimizer: OptimizerState | None = None,
) -> CheckpointContext:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    checkpoint = Checkpoint(step=step, lr=lr, train_loss=None, state=state, optimizer=optimizer)
    return CheckpointContext(
        engine=engine,
        theta=engine.flatten(state),
        checkpoint=checkpoint,
        options=options or {},
        carry=carry if carry is not None else {},
    )


def _quadratic(
    eigenvalues: list[float], *, point: float = 0.3, seed: int = 0
) -> tuple[LossEngine, nn.Module, Tensor]:
    """J(θ) = mean ½(θ − c)ᵀA(θ − c) at θ = point·(1, …, 1): the gradient is not zero."""
    a = _matrix(eigenvalues, seed)
    g = torch.Generator().manual_seed(seed + 1)
    centres = [torch.randn(4, len(eigenvalues), generator=g, dtype=torch.float64) for _ in range(2)]
    engine, model = quadratic_engine(a, centres)
    with torch.no_grad():
        model.theta.fill_(point)
    return engine, model, a


def test_indefinite_quadratic_has_known_extremes_and_a_descending_escape() -> None:
    engine, model, _ = _quadratic([-1.0, 0.5, 1.0, 2.0, 3.0], point=3.0)
    record = NegativeCurvature()(_context(engine, model))
    assert set(record) == RECORD_KEYS
    # Tolerance: 5×5 in float64, Lanczos is exact to rounding.
    assert record["lambda_min"] == pytest.approx(-1.0, abs=1e-10)
    assert record["lambda_max"] == pytest.approx(3.0, abs=1e-10)
    assert record["converged_min"] and record["converged_max"] and record["exact"]
    escape = record["escape"]
    assert escape["descends"] is True
    # Along a unit eigenvector ΔJ(±α) = ±α·gᵀv + ½λα² exactly: the even part is the prediction.
    for dp, dm, pred, curv in zip(
        escape["delta_plus"],
        escape["delta_minus"],
        escape["predicted"],
        escape["measured_curvature"],
        strict=True,
    ):
        assert 0.5 * (dp + dm) == pytest.approx(pred, rel=1e-8)
        assert curv == pytest.approx(-1.0, rel=1e-8)
        assert min(dp, dm) < 0
    # The scale: ½|λmin|α*² = 1% of |J| (‖θ‖ is large enough not to cap it).
    loss = engine.loss(engine.flatten(model.state_dict()))
    assert escape["alphas"][-1] == pytest.approx(math.sqrt(2 * 0.01 * abs(loss) / 1.0), rel=1e-10)


def test_slice_is_the_exact_parabola_along_the_ritz_vector() -> None:
    engine, model, _ = _quadratic([-1.0, 0.5, 1.0, 2.0, 3.0])
    record = NegativeCurvature()(_context(engine, model, options={"slice_points": 9}))
    alphas, losses = record["slice"]["alphas"], record["slice"]["losses"]
    assert len(alphas) == len(losses) == 9
    assert alphas == pytest.approx([-a for a in reversed(alphas)], abs=1e-15)
    h = alphas[1] - alphas[0]
    assert alphas[-1] == pytest.approx(2 * record["escape"]["alphas"][-1], rel=1e-12)
    assert losses[4] == pytest.approx(engine.loss(engine.flatten(model.state_dict())), rel=1e-14)
    # Second differences of a parabola of curvature λmin = −1 (tolerance: float64 rounding).
    for i in range(1, 8):
        assert losses[i - 1] - 2 * losses[i] + losses[i + 1] == pytest.approx(
            -1.0 * h * h, rel=1e-7
        )


@pytest.mark.parametrize("eigenvalues", [[0.5, 1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
def test_positive_semidefinite_quadratic_does_not_descend(eigenvalues: list[float]) -> None:
    engine, model, _ = _quadratic(eigenvalues)
    record = NegativeCurvature()(_context(engine, model))
    assert record["lambda_min"] == pytest.approx(eigenvalues[0], abs=1e-10)
    # The gradient's linear term may take one side down; the even part never goes below rounding.
    assert record["escape"]["descends"] is False


def test_escape_scale_follows_the_quadratic_model_and_the_parameter_norm() -> None:
    # ½·2·α² = 0.01·8 → α = sqrt(0.08); the cap 0.1·‖θ‖ = 1 does not bind.
    assert escape_scale(8.0, -2.0, 10.0) == pytest.approx(math.sqrt(0.08))
    assert escape_scale(8.0, -2e-6, 10.0) == pytest.approx(1.0)  # nearly flat: capped at 0.1·‖θ‖
    assert escape_scale(0.0, -2.0, 10.0) == pytest.approx(1.0)  # J = 0: the cap sets the scale
    # At the origin (a saddle reached from a tiny initialisation) the cap is 0.1·max(‖θ‖, 1),
    # so the certificate's step does not shrink with ‖θ‖ below float noise.
    assert escape_scale(8.0, -2.0, 1e-6) == pytest.approx(0.1)
    assert escape_scale(8.0, 0.0, 0.0) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kind", "hyper", "expected"),
    [
        ("SGD", {}, 2.0),
        ("SGD", {"momentum": 0.9}, 3.8),
        ("momentum", {"momentum": 0.5}, 3.0),
        ("SGD", {"momentum": 0.9, "dampening": 0.5}, 7.6),
        ("SGD", {"momentum": 0.9, "nesterov": True}, 3.8 / 2.8),
        ("nesterov", {"momentum": 0.0}, 2.0),
        ("Adam", {"betas": [0.9, 0.999]}, 38.0),
        ("AdamW", {}, 38.0),
        ("Adam", {"betas": [0.0, 0.999]}, 2.0),
        ("RMSprop", {}, 2.0),
        ("RMSprop", {"momentum": 0.9}, 3.8),
    ],
)
def test_stability_threshold_values(kind: str, hyper: dict[str, Any], expected: float) -> None:
    assert stability_threshold(kind, hyper) == pytest.approx(expected, rel=1e-12)


def test_stability_threshold_validates_its_inputs() -> None:
    with pytest.raises(ParameterError, match="The 'kind' parameter must be one of 'sgd'"):
        stability_threshold("LBFGS", {})
    with pytest.raises(
        ParameterError,
        match=r"The 'momentum' parameter must be a finite float in the range \[0, 1\)",
    ):
        stability_threshold("SGD", {"momentum": 1.0})


def _diverges(lr_lambda: float, **sgd: Any) -> bool:
    """Run torch.optim.SGD on f(x) = ½x² (λ = 1) and report whether |x| blew up."""
    x = nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = torch.optim.SGD([x], lr=lr_lambda, **sgd)
    for _ in range(3000):
        opt.zero_grad()
        (0.5 * x * x).sum().backward()
        opt.step()
    return bool(x.abs() > 1.0)


@pytest.mark.parametrize(
    ("kind", "sgd"),
    [
        ("SGD", {}),
        ("SGD", {"momentum": 0.9}),
        ("SGD", {"momentum": 0.6, "dampening": 0.3}),
        ("SGD", {"momentum": 0.9, "nesterov": True}),
        # Adam with a frozen preconditioner is SGD with momentum β1 and dampening β1.
        ("Adam", {"momentum": 0.9, "dampening": 0.9}),
    ],
)
def test_stability_threshold_matches_the_simulated_optimizer(
    kind: str, sgd: dict[str, Any]
) -> None:
    hyper = {"betas": [sgd["momentum"], 0.999]} if kind == "Adam" else sgd
    threshold = stability_threshold(kind, hyper)
    # Tolerance: 1% either side of the threshold, 3,000 steps.
    assert not _diverges(0.99 * threshold, **sgd)
    assert _diverges(1.01 * threshold, **sgd)


def test_record_states_lr_lambda_max_against_the_momentum_threshold() -> None:
    engine, model, _ = _quadratic([-1.0, 0.5, 1.0, 2.0, 3.0])
    optimizer = OptimizerState(kind="SGD", hyperparameters={"momentum": 0.9, "nesterov": False})
    record = NegativeCurvature()(_context(engine, model, lr=0.5, optimizer=optimizer))
    assert record["optimizer"] == "SGD"
    assert record["lr_lambda_max"] == pytest.approx(1.5, rel=1e-10)
    assert record["stability_threshold"] == pytest.approx(3.8)
    assert record["preconditioned"] is None
    unknown = NegativeCurvature()(_context(engine, model, options={"optimizer": "LBFGS"}))
    assert unknown["optimizer"] == "LBFGS" and unknown["stability_threshold"] is None


def test_preconditioned_sharpness_of_adam_on_a_quadratic() -> None:
    engine, model, a = _quadratic([-1.0, 0.5, 1.0, 2.0, 30.0])
    p = torch.tensor([4.0, 1.0, 0.25, 2.0, 9.0], dtype=torch.float64)
    exact = torch.linalg.eigvalsh(a / torch.sqrt(p)[:, None] / torch.sqrt(p)[None, :])[-1]
    options = {
        "optimizer": {"kind": "Adam", "hyperparameters": {"betas": [0.9, 0.999]}},
        "preconditioner": p,
    }
    carry: dict[str, Any] = {}
    record = NegativeCurvature()(_context(engine, model, lr=0.01, options=options, carry=carry))
    pre = record["preconditioned"]
    # Tolerance: only λmax has to converge, to the default tol = 1e-3 relative.
    assert pre["lambda_max"] == pytest.approx(float(exact), rel=1e-3)
    assert pre["lr_lambda_max"] == pytest.approx(0.01 * pre["lambda_max"], rel=1e-12)
    assert pre["threshold"] == pytest.approx(38.0) and pre["converged"] is True
    assert record["stability_threshold"] is None  # lr·λmax(H) vs 2 says nothing about Adam
    assert "preconditioned_ritz_vectors" in carry
    overridden = NegativeCurvature()(
        _context(engine, model, options={**options, "preconditioned_threshold": 20.0})
    )
    assert overridden["preconditioned"]["threshold"] == 20.0


@pytest.mark.parametrize(
    ("preconditioner", "message"),
    [
        (torch.ones(4, dtype=torch.float64), "1-D tensor of 5 entries"),
        (torch.zeros(5), "finite, positive"),
    ],
)
def test_preconditioner_is_validated(preconditioner: Tensor, message: str) -> None:
    engine, model, _ = _quadratic([-1.0, 0.5, 1.0, 2.0, 3.0])
    with pytest.raises(ParameterError, match=message):
        NegativeCurvature()(_context(engine, model, options={"preconditioner": preconditioner}))


def test_non_convergence_warns_and_the_record_says_so() -> None:
    engine, model, _ = _quadratic([float(x) for x in torch.linspace(-1.0, 10.0, 200)])
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        record = NegativeCurvature(max_iter=3)(_context(engine, model))
    assert record["converged_min"] is False and record["iterations"] == 3
    assert -1.0 <= record["lambda_min"] < record["lambda_max"] <= 10.0
    json.dumps(record, allow_nan=False)


def test_options_override_the_constructor_and_are_validated() -> None:
    engine, model, _ = _quadratic([float(x) for x in torch.linspace(-1.0, 10.0, 200)])
    with pytest.warns(ConvergenceWarning):
        record = NegativeCurvature()(_context(engine, model, options={"lanczos_max_iter": 4}))
    assert record["iterations"] == 4
    with pytest.raises(
        ParameterError, match="The 'slice_points' parameter must be an int in the range"
    ):
        NegativeCurvature()(_context(engine, model, options={"slice_points": 2}))
    with pytest.raises(ParameterError, match="The 'max_iter' parameter"):
        NegativeCurvature(max_iter=1)


def test_record_is_json_ready_and_states_its_cost() -> None:
    engine, model, _ = _quadratic([-1.0, 0.5, 1.0, 2.0, 3.0])
    record = NegativeCurvature()(_context(engine, model, options={"slice_points": 11}))
    text = json.dumps(record, allow_nan=False)
    assert json.loads(text) == record
    # One gradient graph, one HVP per Lanczos step, 2×3 escape losses and the slice; each over
    # the probe's 2 batches.
    hvps = record["matvecs"]
    assert record["cost"] == {
        "loss_evals": 6 + 11,
        "grad_evals": 1,
        "hvp_evals": hvps,
        "loss_batch_passes": 2 * (6 + 11),
        "grad_batch_passes": 2,
        "hvp_batch_passes": 2 * hvps,
    }


def test_non_finite_checkpoint_is_recorded_not_raised() -> None:
    engine, model, _ = _quadratic([-1.0, 0.5, 1.0, 2.0, 3.0])
    with torch.no_grad():
        model.theta[0] = math.nan
    record = NegativeCurvature()(_context(engine, model))
    assert (
        record["lambda_min"] is None
        and record["escape"] is None
        and record["converged_min"] is False
    )
    json.dumps(record, allow_nan=False)


def _exact_eigenvalues(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Eigenvalues of the exact float64 Hessian by vmapped reverse-over-reverse autograd of the
    eager model (no LayerNorm here, so nothing needs decomposing), independent of the engine."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def objective(x: Tensor) -> Tensor:
        params = {
            n: c.view(s) for n, c, s in zip(names, torch.split(x, sizes), shapes, strict=True)
        }
        losses = [
            nn.functional.cross_entropy(torch.func.functional_call(model, params, (xb,)), yb)
            for xb, yb in batches
        ]
        return torch.stack(losses).mean()

    return torch.linalg.eigvalsh(torch.func.jacrev(torch.func.jacrev(objective))(flat))


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Tiny models gain nothing from intra-op threads, and on a shared, loaded machine their
    # spin-waits cost 30x (measured); the HVP counts asserted here do not depend on it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_warm_start_along_an_sgd_run_is_as_accurate_in_fewer_hvps() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    ).double()
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(10, 3, generator=g, dtype=torch.float64)
    batches = []
    for _ in range(4):
        x = torch.randn(32, 10, generator=g, dtype=torch.float64)
        batches.append((x, (x @ teacher).argmax(dim=1)))
    engine = LossEngine.create(
        Probe.capture(model, nn.CrossEntropyLoss(), batches), dtype="float64"
    )
    assert engine.num_parameters == 499
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    cold_carry: dict[str, Any] = {}
    warm_carry: dict[str, Any] = {}
    cold_hvps = warm_hvps = 0
    for step in range(40):
        if step % 4 == 0:
            exact = _exact_eigenvalues(model, batches)
            cold = NegativeCurvature()(
                _context(engine, model, step=step, options={"warm_start": False}, carry=cold_carry)
            )
            warm = NegativeCurvature()(_context(engine, model, step=step, carry=warm_carry))
            assert warm["warm_started"] is (step > 0) and cold["warm_started"] is False
            for record in (cold, warm):
                # Tolerance: tol = 1e-3 relative on both ends, warm and cold alike.
                assert record["lambda_min"] == pytest.approx(float(exact[0]), rel=1e-3)
                assert record["lambda_max"] == pytest.approx(float(exact[-1]), rel=1e-3)
            cold_hvps += cold["cost"]["hvp_evals"]
            warm_hvps += warm["cost"]["hvp_evals"]
        x, y = batches[step % 4]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    # Measured 285 cold vs 214 warm over the ten checkpoints; assert a clear saving.
    assert warm_hvps < 0.9 * cold_hvps


def test_float32_lambda_min_below_resolution_is_said_not_reported() -> None:
    # λmin = 1e-6·λmax: float32 cannot resolve it (FLOAT32_RESOLUTION = 1e-4 of λmax); float64 can.
    eigenvalues = [-1e-6, 0.5, 1.0, 2.0, 1.0]
    engine, model, _ = _quadratic(eigenvalues, point=3.0)
    record = NegativeCurvature()(_context(engine, model))
    assert record["lambda_min"] == pytest.approx(-1e-6, rel=1e-6)
    assert record["lambda_min_unresolved"] is None and record["lambda_min_resolution"] == 0.0
    engine32 = LossEngine.create(engine.probe, dtype="float32")
    record32 = NegativeCurvature()(_context(engine32, model))
    assert record32["lambda_min"] is None
    assert record32["lambda_min_resolution"] == pytest.approx(1e-4 * 2.0, rel=1e-3)
    assert "below what float32 resolves" in record32["lambda_min_unresolved"]
    assert "--dtype float64" in record32["lambda_min_unresolved"]
