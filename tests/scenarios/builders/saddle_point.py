"""Scenarios labelled ``saddle_point``: a plateau at a critical point with a clearly negative Hessian eigenvalue."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .reference import DTYPE, Batch, LossFn, saddle_facts, trajectory
from .registry import ScenarioInfo, scenario, scenario_info
from .training import capture, flat_params, full_batch_sampler, mlp, schedule, seeded, split, train


def _continue(
    model: nn.Module, loss_fn: LossFn, data: Batch, *, lr: float, steps: int
) -> nn.Module:
    """A copy of ``model`` trained ``steps`` more full-batch GD steps (what staying the course gives)."""
    clone = copy.deepcopy(model)
    opt = torch.optim.SGD(clone.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(clone(*data[:-1]), data[-1]).backward()
        opt.step()
    return clone


@scenario("saddle_point", "deep_linear")
def build_saddle_point_deep_linear(run_dir: Path, seed: int) -> ScenarioInfo:
    """Saddle: a three-layer linear network W3·W2·W1 from small initialization (Saxe et al. 2014).

    The origin is a saddle of deep linear regression; from scale 0.01 full-batch GD spends its
    whole run on the plateau there, far above the least-squares loss the network can represent.
    """
    gen = seeded(seed)
    x = torch.randn(32, 4, generator=gen, dtype=DTYPE)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=DTYPE))
    teacher = q @ torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=DTYPE))
    y = x @ teacher.T + 0.05 * torch.randn(32, 4, generator=gen, dtype=DTYPE)
    model = nn.Sequential(
        nn.Linear(4, 8, bias=False), nn.Linear(8, 8, bias=False), nn.Linear(8, 4, bias=False)
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.01, generator=gen)
    batches = split(x, y, 4)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lr, steps = 0.05, 200
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
    facts |= saddle_facts(problem, saved[-1].flat, alpha=0.1)
    solution = torch.linalg.lstsq(x, y).solution
    facts["least_squares_loss"] = float(F.mse_loss(x @ solution, y))
    facts["plateau_change_last_half"] = (
        abs(facts["loss_last"] - facts["loss_mid"]) / facts["loss_mid"]
    )
    return scenario_info(
        "saddle_point",
        "deep_linear",
        optimizer="SGD (full-batch GD)",
        description="3-layer linear net from scale 0.01: loss flat at ≈3.77 (least squares: 0.002), "
        "‖∇J‖ small, λmin ≈ −0.15 < 0 with |λmin| > λmax, and the loss falls along its eigenvector",
        target_loss=None,
        batch_size=32,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


SADDLE_CURVATURE = 0.7


@scenario("saddle_point", "tanh_mlp")
def build_saddle_point_tanh_mlp(run_dir: Path, seed: int) -> ScenarioInfo:
    """Saddle: a tanh MLP from tiny initialization (1e-6). The output bias fits the mean at once;
    the weights sit at the origin, a saddle whose negative curvature the signal has yet to grow."""
    gen = seeded(seed)
    x = torch.randn(64, 4, generator=gen, dtype=DTYPE)
    teacher = mlp(4, 3, 2)
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(1.5 * torch.randn(p.shape, generator=gen, dtype=DTYPE))
        signal = teacher(x) - teacher(x).mean(dim=0)
        # At the origin λmin = −σmax(C), C = the cross-covariance of the centred targets with x:
        # fixing it fixes how fast GD leaves the saddle, so every seed is still on it at the end.
        cross = torch.linalg.matrix_norm(signal.T @ x / len(x), ord=2)
        y = SADDLE_CURVATURE / cross * signal + torch.tensor([1.0, -0.5], dtype=DTYPE)
    model = mlp(4, 8, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1e-6, generator=gen)
    batches = split(x, y, 4)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lr, steps = 0.1, 100
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
    facts |= saddle_facts(problem, saved[-1].flat, alpha=0.1)
    facts["plateau_change_last_half"] = (
        abs(facts["loss_last"] - facts["loss_mid"]) / facts["loss_mid"]
    )
    escaped = _continue(model, F.mse_loss, (x, y), lr=lr, steps=400)
    facts["loss_after_400_more_steps"] = problem.value(flat_params(escaped))
    return scenario_info(
        "saddle_point",
        "tanh_mlp",
        optimizer="SGD (full-batch GD)",
        description="tanh MLP from init 1e-6: after the bias fits the mean the loss is flat (≈0.46 at seed 0), "
        "‖∇J‖≈0.01, λmin ≈ −0.69 against λmax ≈ 1, the loss falls along its eigenvector, and 400 "
        "more steps of the same run escape far below the plateau",
        target_loss=None,
        batch_size=64,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


# --------------------------------------------------------------------------------------------
# poor_conditioning: the step overshoots the sharpest direction (lr·λmax at or above its
# stability threshold): full-batch steps go uphill and the loss oscillates without diverging
