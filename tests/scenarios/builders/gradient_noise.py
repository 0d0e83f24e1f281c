"""Scenarios labelled ``gradient_noise``: small batches with label noise; the loss floats on a noise floor far above the
full-batch run's, the full-batch step goes downhill while minibatch steps go uphill."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .recurrent import RecurrentRegressor, memory_task
from .reference import (
    DTYPE,
    Batch,
    late_step_facts,
    noise_facts,
    run_batch_facts,
    sharpness_facts,
    trajectory,
)
from .registry import ScenarioInfo, scenario, scenario_info
from .training import (
    capture,
    flat_params,
    gradient_descent,
    mlp,
    random_minibatches,
    schedule,
    seeded,
    split,
    stream,
    train,
)

NOISE_LR_LINEAR = 0.1
NOISE_LR_MLP = 0.3
NOISE_LR_ADAM = 0.03


def _noise_run(
    run_dir: Path,
    model: nn.Module,
    data: Batch,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    *,
    lr: float,
    steps: int,
    batch_size: int,
    seed: int,
    probe_batch: int | None = None,
    checkpoints: int = 10,
) -> tuple[list[int], dict[str, float]]:
    """Minibatch training on ``data`` (= the probe's K batches, of ``probe_batch`` examples each,
    the run's own batch size unless given); facts over the last half of the run, at the run's batch
    size, and the same run with full-batch gradients as the reference of what the noise costs."""
    probe_batch = probe_batch or batch_size
    batches = split(data[0], data[1], data[0].shape[0] // probe_batch)
    start = copy.deepcopy(model)
    problem = capture(run_dir, model, F.mse_loss, batches)
    save_at = schedule(steps, checkpoints)
    trace = train(
        run_dir,
        model,
        F.mse_loss,
        random_minibatches(data, batch_size, stream(seed, 4)),
        make_optimizer(model),
        steps=steps,
        save_at=save_at,
        lr=lr,
        watch=data,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    late = [s for s in saved if s.step >= steps // 2]
    facts |= late_step_facts(problem, late)
    draws = stream(seed, 6)
    per = [run_batch_facts(problem, s, data, batch_size, draws) for s in late]
    facts["late_b_noise_min"] = min(p["b_noise"] for p in per)
    facts["late_run_batch_uphill_fraction"] = float(
        np.mean([p["run_batch_uphill_fraction"] for p in per])
    )
    facts["late_run_batch_dJ_mean"] = float(np.mean([p["run_batch_dJ_mean"] for p in per]))
    # The exact loss curve (the whole training set at every step), not a few noisy checkpoints.
    curve = trace.watched
    half, three_quarters = steps // 2, (3 * steps) // 4
    facts["late_loss_mean"] = float(np.mean(curve[half:]))
    facts["plateau_ratio"] = float(
        np.mean(curve[half:three_quarters]) / np.mean(curve[three_quarters:])
    )
    facts |= noise_facts(problem, saved[-1].flat)
    facts |= sharpness_facts(problem, saved[-1])
    reference = gradient_descent(start, F.mse_loss, data, make_optimizer, steps)
    facts["full_batch_run_loss"] = problem.value(flat_params(reference))
    facts["floor_over_full_batch"] = facts["late_loss_mean"] / facts["full_batch_run_loss"]
    return save_at, facts


@scenario("gradient_noise", "linear_regression")
def build_gradient_noise_linear_regression(run_dir: Path, seed: int) -> ScenarioInfo:
    """Noise: linear regression with label noise, SGD on minibatches of 2 at a large (but stable,
    lr·λmax < 2) learning rate: the loss floats on a floor set by the gradient noise."""
    gen = seeded(seed)
    x = torch.randn(16, 8, generator=gen, dtype=DTYPE)
    w = torch.randn(8, 1, generator=gen, dtype=DTYPE)
    y = x @ w + 0.5 * torch.randn(16, 1, generator=gen, dtype=DTYPE)
    model = nn.Linear(8, 1).double()
    lr = NOISE_LR_LINEAR
    save_at, facts = _noise_run(
        run_dir,
        model,
        (x, y),
        lambda m: torch.optim.SGD(m.parameters(), lr=lr),
        lr=lr,
        steps=600,
        batch_size=2,
        seed=seed,
    )
    design = torch.cat([x, torch.ones(16, 1, dtype=DTYPE)], dim=1)
    facts["least_squares_loss"] = float(
        F.mse_loss(design @ torch.linalg.lstsq(design, y).solution, y)
    )
    return scenario_info(
        "gradient_noise",
        "linear_regression",
        optimizer="SGD, batch 2",
        description="batch 2 with label noise: full-batch steps downhill at every late checkpoint, "
        "about half the minibatch steps uphill (on average they gain nothing), lr·λmax ≈ 0.5, "
        "loss floor ≈3× the least-squares loss the full-batch run reaches",
        target_loss=None,
        batch_size=2,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


def _noisy_wave(gen: torch.Generator, n: int = 32) -> Batch:
    """n inputs in R³ and sin(x·w) with label noise of standard deviation 0.5."""
    x = torch.randn(n, 3, generator=gen, dtype=DTYPE)
    w = torch.randn(3, 1, generator=gen, dtype=DTYPE)
    return x, torch.sin(x @ w) + 0.5 * torch.randn(n, 1, generator=gen, dtype=DTYPE)


@scenario("gradient_noise", "tanh_mlp")
def build_gradient_noise_tanh_mlp(run_dir: Path, seed: int) -> ScenarioInfo:
    """Noise: a tanh MLP with label noise, SGD on minibatches of 4."""
    gen = seeded(seed)
    data = _noisy_wave(gen)
    model = mlp(3, 8, 1)
    lr = NOISE_LR_MLP
    save_at, facts = _noise_run(
        run_dir,
        model,
        data,
        lambda m: torch.optim.SGD(m.parameters(), lr=lr),
        lr=lr,
        steps=1000,
        batch_size=4,
        seed=seed,
    )
    return scenario_info(
        "gradient_noise",
        "tanh_mlp",
        optimizer="SGD, batch 4",
        description="batch 4 with label noise: full-batch steps downhill, minibatch steps often uphill, "
        "lr·λmax < 2, loss floor many times the full-batch run's",
        target_loss=None,
        batch_size=4,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("gradient_noise", "tanh_mlp_adam")
def build_gradient_noise_tanh_mlp_adam(run_dir: Path, seed: int) -> ScenarioInfo:
    """Noise under Adam (β1 = 0, so each step is its own minibatch's): batch 4 with label noise."""
    gen = seeded(seed)
    data = _noisy_wave(gen)
    model = mlp(3, 8, 1)
    lr = NOISE_LR_ADAM
    save_at, facts = _noise_run(
        run_dir,
        model,
        data,
        lambda m: torch.optim.Adam(m.parameters(), lr=lr, betas=(0.0, 0.999)),
        lr=lr,
        steps=1000,
        batch_size=4,
        seed=seed,
    )
    return scenario_info(
        "gradient_noise",
        "tanh_mlp_adam",
        optimizer="Adam(lr=0.03, betas=(0, 0.999)), batch 4",
        description="Adam on batch 4 with label noise: the Adam step from the full gradient goes downhill "
        "at every late checkpoint, from a minibatch gradient often uphill; preconditioned sharpness "
        "below its threshold 2; loss floor many times the full-batch run's",
        target_loss=None,
        batch_size=4,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


BATCH2_LR = 0.2


@scenario("gradient_noise", "tanh_mlp_batch2")
def build_gradient_noise_tanh_mlp_batch2(run_dir: Path, seed: int) -> ScenarioInfo:
    """Noise at the run's own batch size: a tanh MLP trained with SGD on minibatches of 2 at a
    high constant lr, with label noise; the probe holds 4 batches of 32, as a user's would.

    At the probe's batch of 32 the gradient noise looks mild (few of those steps go uphill); at
    the run's batch of 2, B_noise = tr(Σ)/|ḡ|² is far above 2 and the steps gain nothing on
    average. The checkpoints record batch_size=2, so the noise can be judged where it acts.
    """
    gen = seeded(seed)
    data = _noisy_wave(gen, n=128)
    model = mlp(3, 16, 1)
    lr = BATCH2_LR
    save_at, facts = _noise_run(
        run_dir,
        model,
        data,
        lambda m: torch.optim.SGD(m.parameters(), lr=lr),
        lr=lr,
        steps=1500,
        batch_size=2,
        probe_batch=32,
        seed=seed,
    )
    return scenario_info(
        "gradient_noise",
        "tanh_mlp_batch2",
        optimizer="SGD, batch 2",
        description="batch 2 at lr 0.2 with label noise, probe batches of 32: full-batch steps "
        "downhill, batch-2 steps uphill about half the time (B_noise ≫ 2), lr·λmax < 2, and a floor "
        "well above the full-batch run's loss",
        target_loss=None,
        batch_size=2,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


LSTM_LR = 0.1


@scenario("gradient_noise", "lstm")
def build_gradient_noise_lstm(run_dir: Path, seed: int) -> ScenarioInfo:
    """Noise: an LSTM (hidden 6, 223 parameters) on a fading-memory regression with label noise,
    SGD on minibatches of 2, trained in float32 as a user would; probe batches of 16."""
    gen = seeded(seed)
    data = memory_task(gen, 64, noise=0.5)
    model = RecurrentRegressor(nn.LSTM, 6)
    lr = LSTM_LR
    save_at, facts = _noise_run(
        run_dir,
        model,
        data,
        lambda m: torch.optim.SGD(m.parameters(), lr=lr),
        lr=lr,
        steps=1000,
        batch_size=2,
        probe_batch=16,
        seed=seed,
    )
    return scenario_info(
        "gradient_noise",
        "lstm",
        optimizer="SGD, batch 2, float32",
        description="LSTM at batch 2 with label noise: full-batch steps downhill, batch-2 steps "
        "uphill about half the time, lr·λmax < 2, a floor well above the full-batch run's loss",
        target_loss=None,
        batch_size=2,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("gradient_noise", "relu_mlp")
def build_gradient_noise_relu_mlp(run_dir: Path, seed: int) -> ScenarioInfo:
    """Noise (held out): a ReLU MLP with label noise, SGD on minibatches of 2."""
    gen = seeded(seed)
    data = _noisy_wave(gen)
    model = mlp(3, 12, 1, act=nn.ReLU)
    lr = 0.15
    save_at, facts = _noise_run(
        run_dir,
        model,
        data,
        lambda m: torch.optim.SGD(m.parameters(), lr=lr),
        lr=lr,
        steps=1000,
        batch_size=2,
        seed=seed,
    )
    return scenario_info(
        "gradient_noise",
        "relu_mlp",
        optimizer="SGD, batch 2",
        description="ReLU MLP at batch 2 with label noise: full-batch steps downhill, minibatch steps "
        "uphill about half the time, lr·λmax < 2, a floor well above the full-batch run's loss",
        target_loss=None,
        batch_size=2,
        lr=lr,
        steps=save_at,
        facts=facts,
    )
