"""DirectionalCurvature against exact references.

- Closed-form quadratic (Hessian exactly A, g_k = A(θ − c̄_k)): gᵀAg/gᵀg, the uphill threshold
  ε·λ > 2 along an eigenvector (lr just below and just above 2/λ), and the Taylor prediction,
  which is exact on a quadratic. Tolerance 1e-12 relative.
- Tiny tanh MLP (75 parameters, float64) against the full autograd Hessian, with a real Adam
  checkpoint for the optimizer's step. Tolerance 1e-10 relative.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import obstacle
from obstacle.battery.checkpoint import Checkpoint, OptimizerState, load_checkpoint
from obstacle.battery.engine import LossEngine
from obstacle.battery.optimizer_step import OptimizerModel
from obstacle.battery.probe import Probe
from obstacle.battery.quantities.base import CheckpointContext
from obstacle.battery.quantities.curvature import DirectionalCurvature
from support import (
    classification_batches,
    full_hessian,
    quadratic_context,
    quadratic_engine,
    tiny_mlp,
)

LAMBDAS = [0.5, 2.0, 4.0]
A = torch.diag(torch.tensor(LAMBDAS, dtype=torch.float64))
E = torch.eye(3, dtype=torch.float64)
# batch means c̄_k = ±0.5·e1 (sum 0), so c̄ = 0 and g = Aθ
CENTRES = [torch.stack([0.5 * s * E[0] + E[1], 0.5 * s * E[0] - E[1]]) for s in (1.0, -1.0)]


_ctx = quadratic_context


@pytest.fixture(scope="module")
def engine() -> LossEngine:
    return quadratic_engine(A, CENTRES)[0]


def test_quadratic_curvatures_are_the_closed_form(engine: LossEngine) -> None:
    theta = torch.tensor([0.3, -0.2, 0.7], dtype=torch.float64)
    g = A @ theta
    grads = [A @ (theta - 0.5 * s * E[0]) for s in (1.0, -1.0)]
    record = DirectionalCurvature()(_ctx(engine, theta, lr=0.3))
    ray = [float(v @ A @ v / (v @ v)) for v in grads]
    assert record["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-14)
    assert record["along_gradient"] == pytest.approx(float(g @ A @ g / (g @ g)), rel=1e-12)
    assert record["per_batch"] == pytest.approx(ray, rel=1e-12)
    stats = record["per_batch_stats"]
    assert stats["mean"] == pytest.approx(statistics.mean(ray), rel=1e-12)
    assert stats["std"] == pytest.approx(statistics.stdev(ray), rel=1e-10)
    assert (stats["min"], stats["max"]) == pytest.approx((min(ray), max(ray)), rel=1e-12)
    assert stats["cv"] == pytest.approx(statistics.stdev(ray) / statistics.mean(ray), rel=1e-10)
    # plain SGD at ε = 0.3, and no optimizer state: the optimizer's step is the same one
    gg, ghg = float(g @ g), float(g @ A @ g)
    assert record["sgd_predicted_change"] == pytest.approx(-0.3 * gg + 0.045 * ghg, rel=1e-12)
    assert record["lr_curvature"] == pytest.approx(0.3 * ghg / gg, rel=1e-12)
    assert record["predicted_change"] == pytest.approx(record["sgd_predicted_change"], rel=1e-12)
    assert record["along_step"] == pytest.approx(record["along_gradient"], rel=1e-12)
    assert (record["optimizer"], record["step_source"], record["reason"]) == (
        "sgd",
        "sgd_at_lr",
        None,
    )
    # the Taylor expansion is exact on a quadratic
    actual = engine.loss(theta - 0.3 * g) - engine.loss(theta)
    assert record["predicted_change"] == pytest.approx(actual, rel=1e-10)
    assert record["cost"]["hvp_evals"] == 2 + 2  # g, each g_k, the step


@pytest.mark.parametrize("eigen", [0, 1, 2])
@pytest.mark.parametrize(("factor", "uphill"), [(1 - 1e-6, False), (1 + 1e-6, True)])
def test_uphill_exactly_above_lr_lambda_2(
    engine: LossEngine, eigen: int, factor: float, uphill: bool
) -> None:
    lam = LAMBDAS[eigen]
    lr = factor * 2 / lam
    record = DirectionalCurvature()(_ctx(engine, 0.7 * E[eigen], lr=lr))
    assert record["along_gradient"] == pytest.approx(lam, rel=1e-14)
    assert record["lr_curvature"] == pytest.approx(lr * lam, rel=1e-14)
    assert record["sgd_predicted_uphill"] is uphill
    assert record["predicted_uphill"] is uphill


def test_momentum_step_uses_the_saved_buffer(engine: LossEngine) -> None:
    theta = torch.tensor([0.3, -0.2, 0.7], dtype=torch.float64)
    buf = torch.tensor([-1.0, 2.0, 0.5], dtype=torch.float64)
    hyper = {"lr": 0.2, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}
    opt = OptimizerState("SGD", hyper, {"theta": {"momentum_buffer": buf}})
    record = DirectionalCurvature()(_ctx(engine, theta, lr=0.2, optimizer=opt))
    g = A @ theta
    d = -0.2 * (0.9 * buf + g)
    assert (record["optimizer"], record["step_source"]) == ("momentum", "optimizer_state")
    assert record["step_lr"] == 0.2
    assert record["along_step"] == pytest.approx(float(d @ A @ d / (d @ d)), rel=1e-12)
    assert record["first_order"] == pytest.approx(float(g @ d), rel=1e-12)
    assert record["second_order"] == pytest.approx(float(0.5 * d @ A @ d), rel=1e-12)
    actual = engine.loss(theta + d) - engine.loss(theta)
    assert record["predicted_change"] == pytest.approx(actual, rel=1e-10)
    assert record["predicted_uphill"] is (actual > 0)


def test_optimizer_model_from_options_is_used(engine: LossEngine) -> None:
    theta = torch.tensor([0.3, -0.2, 0.7], dtype=torch.float64)
    hyper = {"lr": 0.05, "momentum": 0.5, "dampening": 0.0, "weight_decay": 0.0}
    other = Checkpoint(
        step=0, lr=0.05, train_loss=None, state={}, optimizer=OptimizerState("SGD", hyper)
    )
    model = OptimizerModel.from_checkpoint(other, engine)
    record = DirectionalCurvature()(_ctx(engine, theta, lr=0.2, optimizer_model=model))
    assert (record["optimizer"], record["step_lr"], record["lr"]) == ("momentum", 0.05, 0.2)


def test_unknown_lr_keeps_the_curvature_and_says_why(engine: LossEngine) -> None:
    record = DirectionalCurvature()(_ctx(engine, 0.7 * E[2], lr=math.nan))
    assert record["along_gradient"] == pytest.approx(4.0, rel=1e-14)
    assert record["lr_curvature"] is None and record["predicted_change"] is None
    assert record["predicted_uphill"] is None and "unknown" in record["reason"]


def test_non_finite_weights_are_recorded_not_raised(engine: LossEngine) -> None:
    record = DirectionalCurvature()(_ctx(engine, torch.tensor([math.nan, 0.0, 0.0])))
    assert math.isnan(record["along_gradient"]) and math.isnan(record["predicted_change"])
    assert record["predicted_uphill"] is None and record["sgd_predicted_uphill"] is None


def test_tiny_mlp_against_the_full_hessian(tmp_path: Path) -> None:
    batches = classification_batches(k=4, b=8)
    model = tiny_mlp(4)
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe.capture(model, loss_fn, batches)
    engine = LossEngine.create(probe, dtype="float64")
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for x, y in batches[:3]:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    ckpt = load_checkpoint(
        obstacle.save_checkpoint(tmp_path, model, step=3, lr=0.02, optimizer=opt)
    )
    theta = engine.flatten(ckpt.state)
    record = DirectionalCurvature()(CheckpointContext(engine=engine, theta=theta, checkpoint=ckpt))

    assert engine.num_parameters == 75
    hess = full_hessian(model, loss_fn, batches)
    params = dict(model.named_parameters())

    def grad_of(batch_list: list[tuple[Tensor, Tensor]]) -> Tensor:
        model.zero_grad()
        torch.stack([loss_fn(model(x), y) for x, y in batch_list]).mean().backward()
        return torch.cat([params[n].grad.reshape(-1) for n in engine.names])  # type: ignore[union-attr]

    def ray(v: Tensor) -> float:
        return float(v @ hess @ v / (v @ v))

    g = grad_of(batches)
    assert record["along_gradient"] == pytest.approx(ray(g), rel=1e-10)
    assert record["per_batch"] == pytest.approx([ray(grad_of([b])) for b in batches], rel=1e-10)
    d = OptimizerModel.from_checkpoint(ckpt, engine).step(g, theta)
    assert (record["optimizer"], record["step_source"]) == ("adam", "optimizer_state")
    assert record["along_step"] == pytest.approx(ray(d), rel=1e-10)
    assert record["predicted_change"] == pytest.approx(float(g @ d + 0.5 * d @ hess @ d), rel=1e-10)
