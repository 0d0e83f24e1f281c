"""Scenarios labelled ``saddle_point``: a plateau at a critical point with a clearly negative Hessian eigenvalue."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .reference import (
    DTYPE,
    Batch,
    LossFn,
    Problem,
    Saved,
    nearest,
    plateau_span,
    saddle_facts,
    trajectory,
)
from .registry import Episode, ScenarioInfo, scenario, scenario_info
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


def saddle_data(
    gen: torch.Generator,
    n: int = 64,
    *,
    curvature: float = SADDLE_CURVATURE,
    offset: tuple[float, float] = (1.0, -0.5),
) -> Batch:
    """n inputs in R⁴ and the outputs of a random 4-3-2 tanh teacher, offset by ``offset``.

    At a tanh MLP's origin (after its output bias fits the mean) λmin = −σmax(C), C the
    cross-covariance of the centred targets with x; the targets are scaled so that σmax(C) is
    ``curvature`` at every seed, which fixes how fast gradient descent leaves the saddle.
    """
    x = torch.randn(n, 4, generator=gen, dtype=DTYPE)
    teacher = mlp(4, 3, 2)
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(1.5 * torch.randn(p.shape, generator=gen, dtype=DTYPE))
        signal = teacher(x) - teacher(x).mean(dim=0)
        cross = torch.linalg.matrix_norm(signal.T @ x / len(x), ord=2)
        y = curvature / cross * signal + torch.tensor(offset, dtype=DTYPE)
    return x, y


def tiny_tanh_mlp(gen: torch.Generator, scale: float, hidden: int = 8) -> nn.Sequential:
    """A 4-hidden-2 tanh MLP with every parameter drawn from N(0, scale²): next to the origin."""
    model = mlp(4, hidden, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, scale, generator=gen)
    return model


@scenario("saddle_point", "tanh_mlp")
def build_saddle_point_tanh_mlp(run_dir: Path, seed: int) -> ScenarioInfo:
    """Saddle: a tanh MLP from tiny initialization (1e-6). The output bias fits the mean at once;
    the weights sit at the origin, a saddle whose negative curvature the signal has yet to grow."""
    gen = seeded(seed)
    x, y = saddle_data(gen)
    model = tiny_tanh_mlp(gen, 1e-6)
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


@scenario("saddle_point", "tanh_mlp_late_escape")
def build_saddle_point_tanh_mlp_late_escape(run_dir: Path, seed: int) -> ScenarioInfo:
    """Saddle escaped late: the tanh MLP of ``tanh_mlp`` from init 1e-8 and run for 300 steps.

    The output bias fits the mean in ~25 steps (the gradient norm collapses), then the loss sits
    flat at the origin's saddle until the weights, growing ×(1 + lr·0.7) a step, leave it at ~222
    (≈74% of the run; in log(1/init), so within a few steps at every seed). A verdict that reads
    only the end sees the loss falling and calls it healthy; the run lost most of its budget.
    """
    gen = seeded(seed)
    x, y = saddle_data(gen)
    model = tiny_tanh_mlp(gen, 1e-8)
    batches = split(x, y, 4)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lr, steps = 0.1, 300
    save_at = schedule(steps, 20)
    trace = train(
        run_dir,
        model,
        F.mse_loss,
        full_batch_sampler((x, y)),
        torch.optim.SGD(model.parameters(), lr=lr),
        steps=steps,
        save_at=save_at,
        lr=lr,
        watch=(x, y),
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    # The exact loss curve: the plateau through 40% of the run (within 1% of its level there),
    # and the step it is left.
    start, end = plateau_span(trace.watched, int(0.4 * steps))
    assert end is not None, f"seed {seed}: no escape in {steps} steps"
    facts |= episode_facts(problem, saved, start, end)
    facts["loss_last_over_plateau"] = facts["loss_last"] / trace.watched[start]
    return scenario_info(
        "saddle_point",
        "tanh_mlp_late_escape",
        optimizer="SGD (full-batch GD)",
        description="tanh MLP from init 1e-8: the gradient collapses once the bias fits the mean, the "
        "loss is flat (within 1%) at a saddle (λmin ≈ −0.7, escape direction descends) from step "
        "≈25 to ≈222 of 300, then escapes: the loss is falling fast at the end",
        target_loss=None,
        batch_size=64,
        lr=lr,
        steps=save_at,
        episodes=(Episode("saddle_point", start, end),),
        facts=facts,
    )


def episode_facts(problem: Problem, saved: list[Saved], start: int, end: int) -> dict[str, float]:
    """A saddle episode's steps and what shows it: at the checkpoint nearest its middle the Hessian's negative eigenvalue, the gradient against it, the
    descent along its eigenvector, and how far the gradient norm fell from step 0."""
    steps = [s.step for s in saved]
    middle = saved[nearest(steps, (start + end) / 2)]
    at_middle = saddle_facts(problem, middle.flat, alpha=0.1)
    return {
        "plateau_start": float(start),
        "plateau_end": float(end),
        "plateau_share": (end - start) / steps[-1],
        "plateau_checkpoint": float(middle.step),
        "grad_norm_first": float(problem.grad(saved[0].flat).norm()),
    } | {f"plateau_{k}": v for k, v in at_middle.items()}


@scenario("saddle_point", "linear_factorization")
def build_saddle_point_linear_factorization(run_dir: Path, seed: int) -> ScenarioInfo:
    """Saddle (held out): a two-layer linear net W2·W1 (5→6→3, no biases) from init 1e-6; the
    origin is a strict saddle (λmin = −σmax of the input-output cross-covariance) and 120 steps of
    full-batch GD do not leave it."""
    gen = seeded(seed)
    x = torch.randn(48, 5, generator=gen, dtype=DTYPE)
    y = x @ torch.randn(5, 3, generator=gen, dtype=DTYPE) + 0.1 * torch.randn(
        48, 3, generator=gen, dtype=DTYPE
    )
    model = nn.Sequential(nn.Linear(5, 6, bias=False), nn.Linear(6, 3, bias=False)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1e-6, generator=gen)
    batches = split(x, y, 4)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lr, steps = 0.02, 120
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
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= saddle_facts(problem, saved[-1].flat, alpha=0.1)
    facts["least_squares_loss"] = float(F.mse_loss(x @ torch.linalg.lstsq(x, y).solution, y))
    facts["plateau_change_last_half"] = (
        abs(facts["loss_last"] - facts["loss_mid"]) / facts["loss_mid"]
    )
    return scenario_info(
        "saddle_point",
        "linear_factorization",
        optimizer="SGD (full-batch GD)",
        description="two-layer linear net from init 1e-6: the loss is flat far above the least-squares "
        "loss, ‖∇J‖ ≈ 0, λmin = −λmax < 0 and the loss falls along its eigenvector",
        target_loss=None,
        batch_size=48,
        lr=lr,
        steps=save_at,
        facts=facts,
    )
