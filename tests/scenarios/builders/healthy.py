"""Scenarios labelled ``healthy``: sensible training that makes steady progress, or has converged with no target."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .recurrent import RecurrentRegressor, memory_task
from .reference import (
    DTYPE,
    accuracy,
    hessian_facts,
    late_step_facts,
    sharpness_facts,
    step_facts,
    trajectory,
)
from .registry import ScenarioInfo, scenario, scenario_info
from .training import (
    capture,
    digits_split,
    full_batch_sampler,
    mlp,
    random_minibatches,
    schedule,
    seeded,
    split,
    stream,
    train,
)


def _healthy_digits(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    lr: float,
    images: bool,
    seed: int,
) -> tuple[list[int], dict[str, float]]:
    """Train on 1,400 digits in minibatches of 32; probe: 4 of those batches, 256 held out."""
    gen = stream(seed, 1)
    train_set, val = digits_split(gen, images=images, train=1400, val=256)
    batches = [
        (train_set[0][i * 32 : (i + 1) * 32], train_set[1][i * 32 : (i + 1) * 32]) for i in range(4)
    ]
    problem = capture(run_dir, model, F.cross_entropy, batches, validation=val)
    steps = 240
    save_at = schedule(steps, 8)
    train(
        run_dir,
        model,
        F.cross_entropy,
        random_minibatches(train_set, 32, stream(seed, 2)),
        optimizer,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    last = saved[-1]
    facts |= step_facts(problem, last)
    facts |= late_step_facts(problem, [s for s in saved if s.step >= steps // 2])
    facts |= sharpness_facts(problem, last)
    facts["train_accuracy"] = accuracy(problem, last.flat, train_set)
    facts["val_accuracy"] = accuracy(problem, last.flat, val)
    return save_at, facts


@scenario("healthy", "mlp_digits")
def build_healthy_mlp_digits(run_dir: Path, seed: int) -> ScenarioInfo:
    """Healthy: a tanh MLP on sklearn digits, SGD with momentum, loss and validation still falling."""
    torch.manual_seed(seed)
    model = mlp(64, 32, 10)
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    steps, facts = _healthy_digits(run_dir, model, opt, lr=lr, images=False, seed=seed)
    return scenario_info(
        "healthy",
        "mlp_digits",
        optimizer="SGD(momentum=0.9)",
        description="sensible lr on digits: train and validation loss fall together, steps downhill, "
        "lr·λmax far below 2(1+μ), >90% train accuracy; nothing holds it back",
        target_loss=None,
        batch_size=32,
        lr=lr,
        steps=steps,
        facts=facts,
    )


@scenario("healthy", "cnn_digits")
def build_healthy_cnn_digits(run_dir: Path, seed: int) -> ScenarioInfo:
    """Healthy: a small CNN on 8×8 digits trained with Adam, steady progress."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(72, 10)
    ).double()
    lr = 0.01
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps, facts = _healthy_digits(run_dir, model, opt, lr=lr, images=True, seed=seed)
    return scenario_info(
        "healthy",
        "cnn_digits",
        optimizer="Adam(lr=0.01)",
        description="Adam at a sensible lr on digits: train and validation loss fall together, the "
        "Adam step goes downhill, preconditioned sharpness below its threshold, >90% accuracy",
        target_loss=None,
        batch_size=32,
        lr=lr,
        steps=steps,
        facts=facts,
    )


@scenario("healthy", "linear_regression")
def build_healthy_linear_regression(run_dir: Path, seed: int) -> ScenarioInfo:
    """Healthy: least squares converged to its unique minimum with full-batch GD; no target given.

    A converged minimum with no target loss is success, not a local minimum ("converged to a
    minimum at loss L"); minibatch gradients are noisy there but nothing is left to gain.
    """
    gen = seeded(seed)
    x = torch.randn(64, 5, generator=gen, dtype=DTYPE)
    w = torch.randn(5, 1, generator=gen, dtype=DTYPE)
    y = x @ w + 0.3 * torch.randn(64, 1, generator=gen, dtype=DTYPE)
    model = nn.Linear(5, 1).double()
    batches = split(x, y, 4)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lr, steps = 0.3, 150
    save_at = schedule(steps, 8)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train(
        run_dir,
        model,
        F.mse_loss,
        full_batch_sampler((x, y)),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= hessian_facts(problem, saved[-1].flat)
    design = torch.cat([x, torch.ones(64, 1, dtype=DTYPE)], dim=1)
    optimum = torch.linalg.lstsq(design, y).solution
    facts["least_squares_loss"] = float(F.mse_loss(design @ optimum, y))
    return scenario_info(
        "healthy",
        "linear_regression",
        optimizer="SGD (full-batch GD)",
        description="convex least squares, GD converged: ‖∇J‖≈0, Hessian positive definite, loss equals "
        "the closed-form optimum; a minimum with no target is a success",
        target_loss=None,
        batch_size=64,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("healthy", "gru")
def build_healthy_gru(run_dir: Path, seed: int) -> ScenarioInfo:
    """Healthy: a GRU (hidden 6, 169 parameters) learning a fading memory of 6-step sequences with
    Adam on minibatches of 32, trained in float32 as a user would; still making steady progress."""
    gen = seeded(seed)
    train_set = memory_task(gen, 512, noise=0.1)
    val = memory_task(gen, 128, noise=0.1)
    model = RecurrentRegressor(nn.GRU, 6)
    batches = split(train_set[0][:128], train_set[1][:128], 4)
    problem = capture(run_dir, model, F.mse_loss, batches, validation=val)
    lr, steps = 0.005, 300
    save_at = schedule(steps, 8)
    train(
        run_dir,
        model,
        F.mse_loss,
        random_minibatches(train_set, 32, stream(seed, 2)),
        torch.optim.Adam(model.parameters(), lr=lr),
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= step_facts(problem, saved[-1])
    facts |= late_step_facts(problem, [s for s in saved if s.step >= steps // 2])
    facts |= sharpness_facts(problem, saved[-1])
    return scenario_info(
        "healthy",
        "gru",
        optimizer="Adam(lr=0.005), batch 32, float32",
        description="GRU on a fading-memory regression: train and validation loss fall together at "
        "every checkpoint, the Adam step goes downhill from full and minibatch gradients alike, "
        "preconditioned sharpness far below its threshold",
        target_loss=None,
        batch_size=32,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("healthy", "relu_mlp_adamw")
def build_healthy_relu_mlp_adamw(run_dir: Path, seed: int) -> ScenarioInfo:
    """Healthy (held out): a ReLU MLP on digits trained with AdamW, loss and validation falling."""
    torch.manual_seed(seed)
    model = mlp(64, 32, 10, act=nn.ReLU)
    lr = 0.004
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps, facts = _healthy_digits(run_dir, model, opt, lr=lr, images=False, seed=seed)
    return scenario_info(
        "healthy",
        "relu_mlp_adamw",
        optimizer="AdamW(lr=0.004, weight_decay=0.01)",
        description="AdamW at a sensible lr on digits: train and validation loss fall together, the "
        "AdamW step goes downhill, preconditioned sharpness far below its threshold",
        target_loss=None,
        batch_size=32,
        lr=lr,
        steps=steps,
        facts=facts,
    )
