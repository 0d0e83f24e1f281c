"""Scenarios labelled ``local_minimum``: converged (‖∇J‖≈0, Hessian ≥ 0) above the target, with a better minimum elsewhere."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .reference import DTYPE, hessian_facts, trajectory
from .registry import ScenarioInfo, scenario, scenario_info
from .training import capture, flat_params, full_batch_sampler, schedule, seeded, split, train

DOUBLE_WELL_TILT = 0.3


class DoubleWell(nn.Module):
    """Two parameters (a, b) scaled by the inputs; with :func:`double_well_loss` the loss is
    ≈ (a² − 1)² + 0.3·a + ½b² + ½: an asymmetric double well in a, a bowl in b."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor([a], dtype=DTYPE))
        self.b = nn.Parameter(torch.tensor([b], dtype=DTYPE))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.cat([self.a, self.b])


def double_well_loss(out: Tensor, target: Tensor) -> Tensor:
    """mean of (u² − t)² + tilt·u + ½v² + ½ over the batch, (u, v) the model's two outputs."""
    u, v = out[:, 0], out[:, 1]
    return ((u**2 - target) ** 2 + DOUBLE_WELL_TILT * u + 0.5 * v**2 + 0.5).mean()


@scenario("local_minimum", "double_well")
def build_local_minimum_double_well(run_dir: Path, seed: int) -> ScenarioInfo:
    """Local minimum: GD started (a ≈ 1.6) in the basin of the worse well of an asymmetric double well."""
    gen = seeded(seed)
    x = 1 + 0.05 * torch.randn(32, 2, generator=gen, dtype=DTYPE)
    t = torch.ones(32, dtype=DTYPE)
    batches = split(x, t, 4)
    # The start follows the seed too, well inside the worse basin (a > 0).
    a0 = 1.6 + 0.1 * float(torch.randn(1, generator=gen, dtype=DTYPE))
    model = DoubleWell(a0, 1.0)
    problem = capture(run_dir, model, double_well_loss, batches)
    lr, steps = 0.1, 300
    save_at = schedule(steps, 8)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train(
        run_dir,
        model,
        double_well_loss,
        full_batch_sampler((x, t)),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= hessian_facts(problem, saved[-1].flat)
    # The other well, reached by the same GD from the mirrored start −a0.
    other = DoubleWell(-a0, 1.0)
    other_opt = torch.optim.SGD(other.parameters(), lr=lr)
    for _ in range(steps):
        other_opt.zero_grad()
        double_well_loss(other(x), t).backward()
        other_opt.step()
    facts["other_minimum_loss"] = problem.value(flat_params(other))
    facts["other_minimum_grad_norm"] = float(problem.grad(flat_params(other)).norm())
    target = 0.5
    return scenario_info(
        "local_minimum",
        "double_well",
        optimizer="SGD (full-batch GD)",
        description="asymmetric double well started in the worse basin: GD converged (‖∇J‖≈0, both "
        "Hessian eigenvalues > 0) at loss ≈0.80 while the other well reaches ≈0.21 < target 0.5",
        target_loss=target,
        batch_size=32,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


class Sine(nn.Module):
    """sin as an activation (a one-unit periodic network: fitting a frequency is multimodal)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


def _sine_unit(w: float) -> nn.Sequential:
    """x ↦ 0.5·sin(w·x), as Linear → Sine → Linear with all four parameters trainable."""
    inner, outer = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        inner.weight.fill_(w)
        inner.bias.fill_(0.0)
        outer.weight.fill_(0.5)
        outer.bias.fill_(0.0)
    return nn.Sequential(inner, Sine(), outer).double()


@scenario("local_minimum", "sine_unit")
def build_local_minimum_sine_unit(run_dir: Path, seed: int) -> ScenarioInfo:
    """Local minimum: a one-unit sine network started at the wrong frequency (≈0.8) converges to a
    spurious minimum (the classic multimodal frequency fit); from w = 2 it fits the data."""
    gen = seeded(seed)
    x = torch.linspace(-3, 3, 64, dtype=DTYPE).reshape(-1, 1)
    y = torch.sin(2.5 * x + 0.3) + 0.05 * torch.randn(64, 1, generator=gen, dtype=DTYPE)
    order = torch.randperm(64, generator=gen)
    x, y = x[order], y[order]
    batches = split(x, y, 4)
    model = _sine_unit(0.8 + 0.05 * float(torch.randn(1, generator=gen, dtype=DTYPE)))
    problem = capture(run_dir, model, F.mse_loss, batches)
    lr, steps = 0.08, 1600
    save_at = schedule(steps, 8)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
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
    other = _sine_unit(2.0)
    other_opt = torch.optim.SGD(other.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        other_opt.zero_grad()
        F.mse_loss(other(x), y).backward()
        other_opt.step()
    facts["other_minimum_loss"] = problem.value(flat_params(other))
    facts["other_minimum_grad_norm"] = float(problem.grad(flat_params(other)).norm())
    target = 0.1
    return scenario_info(
        "local_minimum",
        "sine_unit",
        optimizer="SGD(momentum=0.9), full batch",
        description="one sine unit fitting sin(2.5x+0.3) from frequency 0.8: converged to a spurious "
        "minimum (‖∇J‖≈0, Hessian positive definite) at loss ≈0.49 > target 0.1, while the same run "
        "from frequency 2.0 reaches ≈0.003",
        target_loss=target,
        batch_size=64,
        lr=lr,
        steps=save_at,
        facts=facts,
    )
