"""Runs with more than one phase on their timeline: an obstacle that ends and a healthy descent
after it, and two obstacles one after the other. Each expects its episodes (kind, steps) from the
exact loss curve; the label is the obstacle that cost the most steps."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .reference import (
    DTYPE,
    hessian_facts,
    late_step_facts,
    plateau_span,
    run_batch_facts,
    sharpness_facts,
    trajectory,
)
from .registry import Episode, ScenarioInfo, scenario, scenario_info
from .saddle_point import episode_facts, saddle_data
from .training import (
    capture,
    flat_params,
    full_batch_sampler,
    gradient_descent,
    random_minibatches,
    schedule,
    seeded,
    split,
    stream,
    train,
)


@scenario("saddle_point", "linear_net_then_converges")
def build_saddle_point_linear_net_then_converges(run_dir: Path, seed: int) -> ScenarioInfo:
    """A saddle that ends, then a healthy descent: a two-layer linear net W2·W1 (4→8→4) from
    init 1e-4 on whitened inputs and a noiseless rank-2 teacher with both singular values 2.

    The origin is a saddle (λmin = −2); both modes grow ×(1 + 2·lr) a step, so the plateau ends
    at ≈66 of 160 steps at every seed (log of the init), and GD then converges to zero loss:
    nothing holds the run back after step ≈80.
    """
    gen = seeded(seed)
    x = torch.randn(64, 4, generator=gen, dtype=DTYPE)
    x = x - x.mean(dim=0)
    evals, evecs = torch.linalg.eigh(x.T @ x / len(x))
    x = x @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T  # whitened: xᵀx/n = I exactly
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=DTYPE))
    r, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=DTYPE))
    y = x @ (2.0 * q[:, :2] @ r[:, :2].T).T
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.Linear(8, 4, bias=False)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1e-4, generator=gen)
    problem = capture(run_dir, model, F.mse_loss, split(x, y, 4))
    lr, steps = 0.1, 160
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
    start, end = plateau_span(trace.watched, int(0.2 * steps))
    assert end is not None, f"seed {seed}: no escape in {steps} steps"
    facts |= episode_facts(problem, saved, start, end)
    after = [problem.value(s.flat) for s in saved if s.step >= end]
    facts["descent_decreasing_pairs"] = float(
        np.mean([b < a for a, b in itertools.pairwise(after)])
    )
    facts["loss_last_over_plateau"] = facts["loss_last"] / trace.watched[start]
    facts |= hessian_facts(problem, saved[-1].flat)
    return scenario_info(
        "saddle_point",
        "linear_net_then_converges",
        optimizer="SGD (full-batch GD)",
        description="two-layer linear net from init 1e-4: the loss is flat (within 1%) at the "
        "origin's saddle (λmin ≈ −2) for the first ≈40% of the run, then falls at every checkpoint "
        "to ≈1e-10 (a minimum: ‖∇J‖ ≈ 0, no negative curvature)",
        target_loss=None,
        batch_size=64,
        lr=lr,
        steps=save_at,
        episodes=(Episode("saddle_point", start, end),),
        facts=facts,
    )


# The noise floor's side of the two-obstacle run: batch 2 at a large constant lr, label noise.
FLOOR_LR = 0.6
FLOOR_LABEL_NOISE = 0.3
FLOOR_INIT = 1e-60
FLOOR_STEPS = 650
FLOOR_BATCH = 2


@scenario("saddle_point", "tanh_mlp_then_noise_floor")
def build_saddle_point_tanh_mlp_then_noise_floor(run_dir: Path, seed: int) -> ScenarioInfo:
    """Two obstacles: a bias-free tanh MLP (4-8-2) from init 1e-12 sits on the origin's saddle
    for over half the run, escapes, and lands on a noise floor (batch 2, lr 0.7, label noise)
    that holds it until the end.

    Without biases every minibatch gradient vanishes with the weights, so the plateau is exactly
    flat whatever the noise; after the escape the noise sets the loss. The saddle cost the most
    steps, so it is the label; the floor is still there at the last checkpoint.
    """
    gen = seeded(seed)
    x, y = saddle_data(gen, offset=(0.0, 0.0))
    y = y + FLOOR_LABEL_NOISE * torch.randn(y.shape, generator=gen, dtype=DTYPE)
    model = nn.Sequential(
        nn.Linear(4, 8, bias=False), nn.Tanh(), nn.Linear(8, 2, bias=False)
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, FLOOR_INIT, generator=gen)
    start_model = copy.deepcopy(model)
    problem = capture(run_dir, model, F.mse_loss, split(x, y, 4))
    lr, steps, batch_size = FLOOR_LR, FLOOR_STEPS, FLOOR_BATCH
    save_at = schedule(steps, 20)
    trace = train(
        run_dir,
        model,
        F.mse_loss,
        random_minibatches((x, y), batch_size, stream(seed, 4)),
        torch.optim.SGD(model.parameters(), lr=lr),
        steps=steps,
        save_at=save_at,
        lr=lr,
        watch=(x, y),
    )
    curve = trace.watched
    saved, facts = trajectory(problem, run_dir, save_at)
    start, end = plateau_span(curve, int(0.2 * steps))
    assert end is not None, f"seed {seed}: no escape in {steps} steps"
    facts |= episode_facts(problem, saved, start, end)
    # The floor: its level is the mean loss over the last quarter; it starts at the first step
    # after the escape from which the next 25 steps average within 25% of that level.
    level = float(np.mean(curve[(3 * steps) // 4 :]))
    floor = next(t for t in range(end, steps) if np.mean(curve[t : t + 25]) <= 1.25 * level)
    middle = (floor + steps) // 2
    facts["floor_start"] = float(floor)
    facts["floor_share"] = (steps - floor) / steps
    facts["floor_level"] = level
    facts["floor_plateau_ratio"] = float(np.mean(curve[floor:middle]) / np.mean(curve[middle:]))
    late = [s for s in saved if s.step >= floor]
    facts |= late_step_facts(problem, late)
    per = [run_batch_facts(problem, s, (x, y), batch_size, stream(seed, 6)) for s in late]
    facts["late_b_noise_min"] = min(p["b_noise"] for p in per)
    facts["late_run_batch_uphill_fraction"] = float(
        np.mean([p["run_batch_uphill_fraction"] for p in per])
    )
    facts["late_run_batch_dJ_mean"] = float(np.mean([p["run_batch_dJ_mean"] for p in per]))
    facts |= sharpness_facts(problem, saved[-1])
    reference = gradient_descent(
        start_model, F.mse_loss, (x, y), lambda m: torch.optim.SGD(m.parameters(), lr=lr), steps
    )
    facts["full_batch_run_loss"] = problem.value(flat_params(reference))
    facts["floor_over_full_batch"] = level / facts["full_batch_run_loss"]
    return scenario_info(
        "saddle_point",
        "tanh_mlp_then_noise_floor",
        optimizer="SGD, batch 2",
        description="bias-free tanh MLP from init 1e-12: the loss is exactly flat at the origin's "
        "saddle for over half the run, then drops onto a noise floor (full-batch steps downhill, "
        "batch-2 steps uphill a third of the time or more, B_noise > 2) well above what "
        "full-batch GD reaches, still there at the end",
        target_loss=None,
        batch_size=batch_size,
        lr=lr,
        steps=save_at,
        episodes=(
            Episode("saddle_point", start, end),
            Episode("gradient_noise", floor, None),
        ),
        facts=facts,
    )
