"""Small real models, probes and runs shared by the tests (no mocks: everything is torch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import obstacle
from obstacle.battery.engine import LossEngine
from obstacle.battery.probe import Probe


class Shift(nn.Module):
    """``θ - c`` for a batch of centres ``c``: with :class:`QuadraticLoss` a closed-form quadratic."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dim))

    def forward(self, c: Tensor) -> Tensor:
        return self.theta.unsqueeze(0) - c


class QuadraticLoss(nn.Module):
    """J(θ) = mean_i ½ (θ - c_i)ᵀ A (θ - c_i): Hessian A, gradient A(θ - c̄)."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)

    def forward(self, diff: Tensor, _target: Tensor) -> Tensor:
        return 0.5 * ((diff @ self.a) * diff).sum(dim=1).mean()


def quadratic_probe(a: Tensor, centres: list[Tensor]) -> tuple[Shift, Probe]:
    """A probe whose batch k has centres ``centres[k]`` (shape (B, P)); Hessian exactly ``a``."""
    dim = a.shape[0]
    model = Shift(dim).double()
    batches = [(c.double(), torch.zeros(c.shape[0], dtype=torch.float64)) for c in centres]
    probe = Probe.capture(model, QuadraticLoss(a.double()), batches)
    return model, probe


def quadratic_engine(a: Tensor, centres: list[Tensor]) -> tuple[LossEngine, Shift]:
    model, probe = quadratic_probe(a, centres)
    return LossEngine.create(probe, dtype="float64"), model


def tiny_mlp(seed: int = 0, *, inputs: int = 5, hidden: int = 8, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, classes)).double()


def classification_batches(
    k: int = 4, b: int = 8, inputs: int = 5, classes: int = 3, seed: int = 0
) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(b, inputs, generator=g, dtype=torch.float64),
            torch.randint(0, classes, (b,), generator=g),
        )
        for _ in range(k)
    ]


def full_hessian(
    model: nn.Module, loss_fn: nn.Module | object, batches: list[tuple[Tensor, ...]]
) -> Tensor:
    """The exact Hessian of mean_k loss_fn(model(x_k), y_k) in float64 (reference for tests)."""
    params = dict(model.named_parameters())
    names = list(params)
    sizes = [p.numel() for p in params.values()]
    shapes = [p.shape for p in params.values()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params.values()]).double()

    def objective(flat: Tensor) -> Tensor:
        chunks = torch.split(flat, sizes)
        tensors = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        losses = [
            loss_fn(torch.func.functional_call(model, tensors, b[:-1]), b[-1]) for b in batches
        ]  # type: ignore[operator]
        return torch.stack(losses).mean()

    return torch.autograd.functional.hessian(objective, flat0)


def write_run(
    run_dir: Path,
    model: nn.Module,
    loss_fn: object,
    batches: list[tuple[Tensor, ...]],
    *,
    steps: int = 5,
    lr: float = 0.1,
    every: int = 1,
    validation: tuple[Tensor, ...] | None = None,
) -> Path:
    """Train ``model`` with plain SGD on the batches and save a probe and checkpoints."""
    probe = Probe.capture(model, loss_fn, batches, validation=validation)  # type: ignore[arg-type]
    probe.save(run_dir)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps + 1):
        if step % every == 0:
            obstacle.save_checkpoint(run_dir, model, step=step, lr=lr)
        x, y = batches[step % len(batches)][:-1], batches[step % len(batches)][-1]
        model.train()
        loss = loss_fn(model(*x), y)  # type: ignore[operator]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return run_dir


def calls(cost: dict[str, int]) -> dict[str, int]:
    """The call counts of a record's ``cost`` (without the single-batch pass counts)."""
    return {k: cost[k] for k in ("loss_evals", "grad_evals", "hvp_evals")}


def quadratic_context(
    engine: LossEngine,
    theta: Tensor,
    *,
    step: int = 1,
    lr: float = 0.1,
    optimizer: object = None,
    theta0: Tensor | None = None,
    **options: object,
) -> object:
    """A CheckpointContext for a :class:`Shift` model at ``theta`` (state dict ``{"theta": θ}``)."""
    from obstacle.battery.checkpoint import Checkpoint
    from obstacle.battery.quantities.base import CheckpointContext

    state = {"theta": theta}
    checkpoint = Checkpoint(step=step, lr=lr, train_loss=None, state=state, optimizer=optimizer)  # type: ignore[arg-type]
    return CheckpointContext(
        engine=engine,
        theta=engine.flatten(state),
        checkpoint=checkpoint,
        theta0=theta0,
        options=dict(options),
    )


def status_bytes(field: str, pid: int | str = "self") -> int:
    """A memory field of ``/proc/PID/status`` in bytes (``VmRSS``: resident now, ``VmHWM``: peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak_rss(pid: int | str = "self") -> int:
    """Reset a process's peak RSS (``VmHWM``) to its RSS now and return that RSS in bytes; skips
    the test where the kernel does not allow it (``/proc/PID/clear_refs``)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError as exc:
        pytest.skip(f"cannot reset the peak RSS of process {pid} ({exc})")
    return status_bytes("VmRSS", pid)
