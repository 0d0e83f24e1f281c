"""Scenarios labelled ``divergence``: the learning rate is far too large; the loss explodes, then turns inf/NaN."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .reference import DTYPE, logged_losses, trajectory
from .registry import ScenarioInfo, scenario, scenario_info
from .training import (
    capture,
    flat_params,
    full_batch_sampler,
    mlp,
    schedule,
    seeded,
    split,
    train,
    wave_1d,
)


@scenario("divergence", "tanh_mlp")
def build_divergence_tanh_mlp(run_dir: Path, seed: int) -> ScenarioInfo:
    """Divergence: a tanh MLP regression with momentum SGD at lr·λmax ≈ 4.8 > 2(1+μ) from the
    start; the loss grows geometrically, overflows, and parameters become NaN. Checkpoints keep
    being written after the blow-up (non-finite values are evidence)."""
    seeded(seed)
    data = wave_1d()
    model = mlp(1, 16, 1)
    batches = split(data[0], data[1], 4)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lr, steps = 0.5, 200
    save_at = schedule(steps, 10)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    train(
        run_dir,
        model,
        F.mse_loss,
        full_batch_sampler(data),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts["sharpness_first"] = lr * problem.lambda_max(saved[0].flat)
    facts["logged_nonfinite_fraction"] = float(
        np.mean([not math.isfinite(v) for v in logged_losses(run_dir)])
    )
    return scenario_info(
        "divergence",
        "tanh_mlp",
        optimizer="SGD(momentum=0.9), full batch",
        description="lr 0.5 with momentum: lr·λmax ≈ 4.8 > 3.8 at the start, the loss explodes "
        "past 1e100 and the parameters end NaN",
        target_loss=None,
        batch_size=64,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("divergence", "linear_regression")
def build_divergence_linear_regression(run_dir: Path, seed: int) -> ScenarioInfo:
    """Divergence: least squares with plain GD at lr = 2.6/λmax: the error along the top
    eigenvector is multiplied by |1 − 2.6| = 1.6 per step; the loss explodes (finite, ×1e24)."""
    gen = seeded(seed)
    x = torch.randn(32, 4, generator=gen, dtype=DTYPE)
    y = x @ torch.randn(4, 1, generator=gen, dtype=DTYPE) + 0.1 * torch.randn(
        32, 1, generator=gen, dtype=DTYPE
    )
    model = nn.Linear(4, 1).double()
    batches = split(x, y, 4)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lam = problem.lambda_max(flat_params(model))
    lr, steps = 2.6 / lam, 60
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
    _, facts = trajectory(problem, run_dir, save_at)
    facts["sharpness"] = lr * lam
    facts["loss_last_over_first"] = facts["loss_last"] / facts["loss_first"]
    facts["param_norm_growth"] = facts["param_norm_last"] / facts["param_norm_first"]
    return scenario_info(
        "divergence",
        "linear_regression",
        optimizer="SGD (full-batch GD)",
        description="convex least squares at lr·λmax = 2.6 > 2: the loss grows ×2.56 per step to "
        "≈1e24× its start while staying finite; parameters grow ×1e11",
        target_loss=None,
        batch_size=32,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


class RandomFeatures(nn.Module):
    """A fixed random tanh layer (buffers, not trained) and a trained linear readout: the loss is
    quadratic in the trained parameters, as in least squares, but over nonlinear features."""

    weight: Tensor
    bias: Tensor

    def __init__(self, gen: torch.Generator, inputs: int, features: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.randn(features, inputs, generator=gen, dtype=DTYPE))
        self.register_buffer("bias", torch.randn(features, generator=gen, dtype=DTYPE))
        self.readout = nn.Linear(features, 1).double()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.readout(torch.tanh(x @ self.weight.T + self.bias))
        return out


@scenario("divergence", "random_features")
def build_divergence_random_features(run_dir: Path, seed: int) -> ScenarioInfo:
    """Divergence (held out): a random-features model (32 fixed tanh features, trained readout)
    with plain GD at lr = 2.6/λmax: the error along the top eigenvector grows ×1.6 a step."""
    gen = seeded(seed)
    x = torch.randn(32, 4, generator=gen, dtype=DTYPE)
    y = torch.sin(x.sum(dim=1, keepdim=True)) + 0.1 * torch.randn(32, 1, generator=gen, dtype=DTYPE)
    model = RandomFeatures(gen, 4, 32)
    batches = split(x, y, 4)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lam = problem.lambda_max(flat_params(model))
    lr, steps = 2.6 / lam, 60
    save_at = schedule(steps, 8)
    train(
        run_dir,
        model,
        F.mse_loss,
        full_batch_sampler((x, y)),
        torch.optim.SGD(model.parameters(), lr=lr),
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    _, facts = trajectory(problem, run_dir, save_at)
    facts["sharpness"] = lr * lam
    facts["loss_last_over_first"] = facts["loss_last"] / facts["loss_first"]
    return scenario_info(
        "divergence",
        "random_features",
        optimizer="SGD (full-batch GD)",
        description="a random-features model at lr·λmax = 2.6 > 2: the loss grows ×2.56 a step to "
        "≈1e24× its start while staying finite",
        target_loss=None,
        batch_size=32,
        lr=lr,
        steps=save_at,
        facts=facts,
    )
