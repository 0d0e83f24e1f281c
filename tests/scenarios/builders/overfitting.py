"""Scenarios labelled ``overfitting``: a large model on a small subset; training loss falls while validation loss rises."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .reference import DTYPE, Batch, Problem, Saved, accuracy, trajectory
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


def _overfit_facts(problem: Problem, saved: list[Saved], steps: Sequence[int]) -> dict[str, float]:
    assert problem.validation is not None
    val = [problem.val_loss(s.flat) for s in saved]
    train_losses = [problem.value(s.flat) for s in saved]
    best = int(np.argmin(val))
    late = [i for i, s in enumerate(steps) if s >= steps[-1] / 2]
    return {
        "val_best_step": float(steps[best]),
        "val_rise_last_half": val[late[-1]] / val[late[0]],
        "train_fall_last_half": train_losses[late[-1]] / train_losses[late[0]],
        "val_increasing_pairs_last_half": float(
            np.mean([val[j] > val[i] for i, j in itertools.pairwise(late)])
        ),
    }


@scenario("overfitting", "mlp_digits")
def build_overfitting_mlp_digits(run_dir: Path, seed: int) -> ScenarioInfo:
    """Overfitting: a 4.8k-parameter MLP memorizes 48 digits, 30% of them relabelled at random,
    with Adam; 256 held-out digits (true labels) validate."""
    gen = seeded(seed)
    (x, y), val = digits_split(gen, images=False, train=48, val=256)
    flip = torch.rand(48, generator=gen) < 0.3
    y = y.clone()
    y[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=gen)
    model = mlp(64, 64, 10)
    batches = split(x, y, 6)
    problem = capture(run_dir, model, F.cross_entropy, batches, validation=val)
    lr, steps = 0.01, 400
    save_at = schedule(steps, 10)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train(
        run_dir,
        model,
        F.cross_entropy,
        random_minibatches((x, y), 8, stream(seed, 5)),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= _overfit_facts(problem, saved, save_at)
    facts["train_accuracy"] = accuracy(problem, saved[-1].flat, (x, y))
    facts["val_accuracy"] = accuracy(problem, saved[-1].flat, val)
    return scenario_info(
        "overfitting",
        "mlp_digits",
        optimizer="Adam(lr=0.01), batch 8",
        description="4,810 parameters memorize 48 digits (30% mislabelled): over the last half the "
        "training loss keeps falling while the held-out loss climbs far above its minimum",
        target_loss=None,
        batch_size=8,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("overfitting", "tanh_mlp_regression")
def build_overfitting_tanh_mlp_regression(run_dir: Path, seed: int) -> ScenarioInfo:
    """Overfitting: a wide tanh MLP interpolating 16 noisy samples of a sine; 128 fresh samples
    from the same noisy function validate."""
    gen = seeded(seed)

    def sample(n: int) -> Batch:
        x = 6 * torch.rand(n, 1, generator=gen, dtype=DTYPE) - 3
        return x, torch.sin(x) + 0.3 * torch.randn(n, 1, generator=gen, dtype=DTYPE)

    train_set, val = sample(16), sample(128)
    model = mlp(1, 64, 1)
    batches = split(train_set[0], train_set[1], 4)
    problem = capture(run_dir, model, F.mse_loss, batches, validation=val)
    lr, steps = 0.01, 2000
    save_at = schedule(steps, 10)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train(
        run_dir,
        model,
        F.mse_loss,
        full_batch_sampler(train_set),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
        log_every=5,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= _overfit_facts(problem, saved, save_at)
    facts["noise_variance"] = 0.09
    return scenario_info(
        "overfitting",
        "tanh_mlp_regression",
        optimizer="Adam(lr=0.01), full batch",
        description="193 parameters on 16 noisy points: the training loss falls below the noise "
        "variance 0.09 while the validation loss climbs over the last half",
        target_loss=None,
        batch_size=16,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("overfitting", "cnn_digits")
def build_overfitting_cnn_digits(run_dir: Path, seed: int) -> ScenarioInfo:
    """Overfitting (held out): a small CNN memorizes 48 digit images, 30% relabelled at random,
    with Adam; 256 held-out digits (true labels) validate."""
    gen = seeded(seed)
    (x, y), val = digits_split(gen, images=True, train=48, val=256)
    flip = torch.rand(48, generator=gen) < 0.3
    y = y.clone()
    y[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=gen)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 10)).double()
    batches = split(x, y, 6)
    problem = capture(run_dir, model, F.cross_entropy, batches, validation=val)
    lr, steps = 0.01, 400
    save_at = schedule(steps, 10)
    train(
        run_dir,
        model,
        F.cross_entropy,
        random_minibatches((x, y), 8, stream(seed, 5)),
        torch.optim.Adam(model.parameters(), lr=lr),
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= _overfit_facts(problem, saved, save_at)
    return scenario_info(
        "overfitting",
        "cnn_digits",
        optimizer="Adam(lr=0.01), batch 8",
        description="a CNN memorizes 48 digits (30% mislabelled): over the last half the training "
        "loss keeps falling while the held-out loss climbs above its minimum",
        target_loss=None,
        batch_size=8,
        lr=lr,
        steps=save_at,
        facts=facts,
    )
