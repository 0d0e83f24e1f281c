"""Training the scenario runs: seeds, data, the loop that writes checkpoints and the log, the probe.

Every random choice of a scenario follows its seed: :func:`seeded` seeds torch's global RNG (the
model's initialization) and returns the data's generator; :func:`stream` gives the other
generators (minibatch order, probe order) their own seeded streams, equal to the fixed seeds the
suite used before it had seeds when ``seed`` is 0.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import obstacle
from obstacle.battery.checkpoint import append_train_log

from .reference import DTYPE, Batch, LossFn, Problem


def seeded(seed: int) -> torch.Generator:
    """Seed torch's global RNG (model initialization) and return a generator for the data."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def stream(seed: int, base: int) -> torch.Generator:
    """A generator of its own for one use (``base`` names the use), different for every seed."""
    return torch.Generator().manual_seed(base + 1000 * seed)


def schedule(steps: int, count: int = 8) -> list[int]:
    """``count`` checkpoint steps spread over [0, steps], ending with the pair steps−1, steps."""
    spread = np.unique(np.linspace(0, steps - 1, count - 1).round().astype(int))
    return sorted({int(s) for s in spread} | {steps - 1, steps})


@dataclass
class Trace:
    """The losses a training run went through, one per step 0..steps."""

    minibatch: list[float] = field(default_factory=list)
    watched: list[float] = field(default_factory=list)  # on ``watch``, when one was given


def train(
    run_dir: Path,
    model: nn.Module,
    loss_fn: LossFn,
    sample: Callable[[int], Batch],
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    save_at: Sequence[int],
    lr: float,
    log_every: int = 1,
    watch: Batch | None = None,
) -> Trace:
    """Take ``steps`` optimizer steps on ``sample(t)``; checkpoint θ_t (and the optimizer) at ``save_at``.

    The checkpoint of step t holds the parameters after t updates; its train loss is the loss of
    the minibatch about to be used at step t, and its batch size that minibatch's size (the run's
    own batch). Non-finite losses are kept (divergence is evidence). With ``watch`` (the full
    training set), the loss on it at every θ_t is returned too: the exact loss curve of a minibatch run.
    """
    wanted = set(save_at)
    has_state = bool(optimizer.defaults.get("momentum")) or "betas" in optimizer.defaults
    trace = Trace()
    for t in range(steps + 1):
        batch = sample(t)
        loss = loss_fn(model(*batch[:-1]), batch[-1])
        value = loss.detach().item()
        trace.minibatch.append(value)
        if watch is not None:
            with torch.no_grad():
                trace.watched.append(loss_fn(model(*watch[:-1]), watch[-1]).item())
        if t in wanted:
            obstacle.save_checkpoint(
                run_dir,
                model,
                step=t,
                lr=lr,
                train_loss=value,
                optimizer=optimizer if has_state else None,
                batch_size=len(batch[-1]),
            )
        if t % log_every == 0:
            append_train_log(run_dir, step=t, lr=lr, loss=value)
        if t < steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return trace


def capture(
    run_dir: Path,
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    validation: Batch | None = None,
) -> Problem:
    """Save the probe and return the same loss as a (float64) :class:`Problem` for the exact facts."""
    obstacle.Probe.capture(model, loss_fn, list(batches), validation=validation).save(run_dir)
    return Problem(model, loss_fn, batches, validation)


def split(x: Tensor, y: Tensor, k: int) -> list[Batch]:
    """Cut (x, y) into k equal batches in order."""
    b = x.shape[0] // k
    return [(x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]) for i in range(k)]


def random_minibatches(data: Batch, size: int, gen: torch.Generator) -> Callable[[int], Batch]:
    """``sample(t)``: a minibatch of ``size`` examples drawn without replacement from ``gen``."""
    n = data[0].shape[0]

    def sample(_t: int) -> Batch:
        idx = torch.randperm(n, generator=gen)[:size]
        return tuple(part[idx] for part in data)

    return sample


def full_batch_sampler(data: Batch) -> Callable[[int], Batch]:
    return lambda _t: data


def gradient_descent(
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    steps: int,
) -> nn.Module:
    """``model`` trained ``steps`` full-batch steps in place (a reference run: nothing saved)."""
    opt = make_optimizer(model)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(*data[:-1]), data[-1]).backward()
        opt.step()
    return model


def flat_params(model: nn.Module) -> Tensor:
    """θ of ``model`` flattened, in float64."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(DTYPE)


def mlp(*sizes: int, act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """A float64 MLP with ``act`` between its linear layers."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(act())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers).double()


@functools.lru_cache(maxsize=1)
def digits() -> tuple[Tensor, Tensor]:
    """sklearn's bundled 8×8 digits (no download): images scaled to [0, 1], labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.images / 16.0, dtype=DTYPE), torch.tensor(data.target)


def digits_split(
    gen: torch.Generator, *, images: bool, train: int, val: int
) -> tuple[Batch, Batch]:
    """``train`` and ``val`` digits drawn without overlap (flattened, or as 1×8×8 images)."""
    x, y = digits()
    x = x.unsqueeze(1) if images else x.reshape(len(x), -1)
    order = torch.randperm(len(x), generator=gen)
    tr, va = order[:train], order[train : train + val]
    return (x[tr], y[tr]), (x[va], y[va])


def wave_1d() -> Batch:
    """64 points of sin(2x) + 0.3x on [−2, 2]."""
    x = torch.linspace(-2, 2, 64, dtype=DTYPE).reshape(-1, 1)
    return x, torch.sin(2 * x) + 0.3 * x


def wave_2d(gen: torch.Generator) -> Batch:
    """64 random points of sin(2x₁)·cos(x₂) on [−2, 2]²."""
    x = 4 * torch.rand(64, 2, generator=gen, dtype=DTYPE) - 2
    return x, torch.sin(2 * x[:, :1]) * torch.cos(x[:, 1:])


def bce_logits(out: Tensor, target: Tensor) -> Tensor:
    """Binary logistic loss on a (B, 1) logit and (B,) labels in {0, 1}."""
    return F.binary_cross_entropy_with_logits(out.squeeze(1), target)
