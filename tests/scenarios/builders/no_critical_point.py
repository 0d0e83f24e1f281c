"""Scenarios labelled ``no_critical_point``: logistic loss on separable data has no minimum; ‖θ‖ grows without bound
while the loss creeps toward 0 and the curvature fades (Soudry et al. 2018)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from .reference import DTYPE, Batch, Problem, Saved, nearest, step_reconstruction_error, trajectory
from .registry import ScenarioInfo, scenario, scenario_info
from .training import bce_logits, capture, full_batch_sampler, mlp, seeded, split, train

SEPARABLE_SCHEDULE = [0, 10, 100, 300, 1000, 1500, 2000, 2500, 2999, 3000]


def _separable_facts(problem: Problem, saved: list[Saved], data: Batch) -> dict[str, float]:
    mid = nearest([s.step for s in saved], saved[-1].step / 2)
    with torch.no_grad():
        logits = functional_call(
            problem.model, problem.unflatten(saved[-1].flat), (data[0],)
        ).squeeze(1)
    margins = (2 * data[1] - 1) * logits
    return {
        "min_margin": float(margins.min()),
        "grad_norm_mid": float(problem.grad(saved[mid].flat).norm()),
        "grad_norm_last": float(problem.grad(saved[-1].flat).norm()),
        "lambda_max_mid": problem.lambda_max(saved[mid].flat),
        "lambda_max_last": problem.lambda_max(saved[-1].flat),
        "norm_growth_last_half": float(saved[-1].flat.norm() / saved[mid].flat.norm()),
        "step_reconstruction_error": step_reconstruction_error(problem, saved[-2], saved[-1]),
    }


@scenario("no_critical_point", "logistic_regression")
def build_no_critical_point_logistic_regression(run_dir: Path, seed: int) -> ScenarioInfo:
    """No critical point: linear logistic regression on linearly separable blobs, GD, no decay."""
    gen = seeded(seed)
    labels = (torch.arange(64) % 2).to(DTYPE)
    centres = torch.tensor([[-1.5, -0.5], [1.5, 0.5]], dtype=DTYPE)
    x = centres[labels.long()] + 0.6 * torch.randn(64, 2, generator=gen, dtype=DTYPE)
    model = nn.Linear(2, 1).double()
    batches = split(x, labels, 4)
    problem = capture(run_dir, model, bce_logits, batches)
    lr, steps = 1.0, 3000
    save_at = SEPARABLE_SCHEDULE
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train(
        run_dir,
        model,
        bce_logits,
        full_batch_sampler((x, labels)),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
        log_every=5,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= _separable_facts(problem, saved, (x, labels))
    return scenario_info(
        "no_critical_point",
        "logistic_regression",
        optimizer="SGD (full-batch GD)",
        description="separable data under logistic loss: every training margin > 0, the loss keeps "
        "creeping toward 0 while ‖θ‖ keeps growing (~log t) and λmax fades: no minimum to reach",
        target_loss=None,
        batch_size=64,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("no_critical_point", "relu_mlp")
def build_no_critical_point_relu_mlp(run_dir: Path, seed: int) -> ScenarioInfo:
    """No critical point: a ReLU MLP separates XOR-like blobs; with logistic loss and no weight decay
    its loss keeps falling only by growing the weights."""
    gen = seeded(seed)
    corners = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]], dtype=DTYPE)
    which = torch.arange(64) % 4
    x = corners[which] + 0.25 * torch.randn(64, 2, generator=gen, dtype=DTYPE)
    labels = (which >= 2).to(DTYPE)
    model = mlp(2, 8, 1, act=nn.ReLU)
    batches = split(x, labels, 4)
    problem = capture(run_dir, model, bce_logits, batches)
    lr, steps = 0.1, 3000
    save_at = SEPARABLE_SCHEDULE
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    train(
        run_dir,
        model,
        bce_logits,
        full_batch_sampler((x, labels)),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
        log_every=5,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= _separable_facts(problem, saved, (x, labels))
    return scenario_info(
        "no_critical_point",
        "relu_mlp",
        optimizer="SGD(momentum=0.9), full batch",
        description="XOR blobs separated by a ReLU MLP under logistic loss: margins > 0, loss creeping "
        "toward 0, ‖θ‖ growing and curvature fading; the infimum is at infinity",
        target_loss=None,
        batch_size=64,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("no_critical_point", "tanh_mlp")
def build_no_critical_point_tanh_mlp(run_dir: Path, seed: int) -> ScenarioInfo:
    """No critical point (held out): a tanh MLP separating two interleaved half-moons under
    logistic loss, full-batch GD with momentum and no weight decay."""
    gen = seeded(seed)
    angle = torch.pi * torch.rand(64, generator=gen, dtype=DTYPE)
    labels = (torch.arange(64) % 2).to(DTYPE)
    moon = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    x = torch.where(labels[:, None] == 1, torch.tensor([1.0, 0.3]) - moon, moon)
    x = x + 0.05 * torch.randn(64, 2, generator=gen, dtype=DTYPE)
    model = mlp(2, 8, 1)
    batches = split(x, labels, 4)
    problem = capture(run_dir, model, bce_logits, batches)
    lr, steps = 0.1, 3000
    save_at = SEPARABLE_SCHEDULE
    train(
        run_dir,
        model,
        bce_logits,
        full_batch_sampler((x, labels)),
        torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
        steps=steps,
        save_at=save_at,
        lr=lr,
        log_every=5,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= _separable_facts(problem, saved, (x, labels))
    return scenario_info(
        "no_critical_point",
        "tanh_mlp",
        optimizer="SGD(momentum=0.9), full batch",
        description="half-moons separated by a tanh MLP under logistic loss: margins > 0, the loss "
        "creeping toward 0 while ‖θ‖ grows and the curvature fades",
        target_loss=None,
        batch_size=64,
        lr=lr,
        steps=save_at,
        facts=facts,
    )
