"""`obstacle demo`: three small real training runs on bundled data, analysed end to end."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import obstacle
from obstacle.battery.analysis import Progress, analyze
from obstacle.battery.checkpoint import append_train_log
from obstacle.errors import InputError


def _digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float64) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    return x, y


def healthy_digits(run_dir: Path) -> None:
    """An MLP on scikit-learn's digits with SGD + momentum: steady progress, no obstacle."""
    torch.manual_seed(0)
    x, y = _digits()
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double()
    g = torch.Generator().manual_seed(0)
    probe_idx = torch.randperm(len(x), generator=g)[: 8 * 64].view(8, 64)
    batches = [(x[i], y[i]) for i in probe_idx]
    obstacle.Probe.capture(model, F.cross_entropy, batches).save(run_dir)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(121):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if step % 15 == 0:
            obstacle.save_checkpoint(
                run_dir, model, step=step, lr=0.05, train_loss=float(loss.detach()), optimizer=opt
            )
        append_train_log(run_dir, step=step, lr=0.05, loss=float(loss.detach()))
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()


def saddle_deep_linear(run_dir: Path) -> None:
    """A linear network with one hidden layer from a tiny initialisation (Saxe et al. 2014).

    The origin is a strict saddle: the Hessian there has eigenvalues ±σ_i of the input-output
    covariance, so the loss sits on a plateau until the weights grow out along its top mode.
    (With two hidden layers the origin is a degenerate saddle, flat to second order.)
    """
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = x @ w
    model = nn.Sequential(nn.Linear(6, 6, bias=False), nn.Linear(6, 4, bias=False)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e-4 / p.norm())
    batches = [(x[i * 64 : (i + 1) * 64], y[i * 64 : (i + 1) * 64]) for i in range(4)]
    obstacle.Probe.capture(model, F.mse_loss, batches).save(run_dir)
    lr = 0.02
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(61):
        loss = F.mse_loss(model(x), y)
        if step % 10 == 0:
            obstacle.save_checkpoint(
                run_dir, model, step=step, lr=lr, train_loss=float(loss.detach())
            )
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()


def divergent(run_dir: Path) -> None:
    """The digits MLP at a learning rate far too large: the loss blows up."""
    torch.manual_seed(2)
    x, y = _digits()
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double()
    batches = [(x[i * 64 : (i + 1) * 64], y[i * 64 : (i + 1) * 64]) for i in range(4)]
    obstacle.Probe.capture(model, F.cross_entropy, batches).save(run_dir)
    lr = 40.0
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for step in range(31):
        loss = F.cross_entropy(model(x[:256]), y[:256])
        if step % 5 == 0:
            obstacle.save_checkpoint(
                run_dir, model, step=step, lr=lr, train_loss=float(loss.detach()), optimizer=opt
            )
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()


DEMOS: dict[str, Callable[[Path], None]] = {
    "healthy-digits-mlp": healthy_digits,
    "saddle-deep-linear": saddle_deep_linear,
    "divergent-digits-mlp": divergent,
}


@dataclass(frozen=True)
class DemoRun:
    """One demo run, trained and analysed: what ``obstacle demo`` shows and writes."""

    name: str
    run_dir: Path  # the probe and checkpoints, as a user's training script leaves them
    report: dict[str, Any]  # the battery's report (schema obstacle.report/1)

    @property
    def verdict(self) -> str:
        """The obstacle the verdict names first (``healthy`` when none)."""
        return str(self.report["verdict"]["primary"])


def run_demo(name: str, out: Path, *, progress: Progress | None = None) -> DemoRun:
    """Train the demo run ``name`` into ``out/name`` (replacing an earlier one) and analyse it.

    The analysis is the standard preset in float64 on the CPU, as ``obstacle analyze`` would run
    it; ``progress`` receives the battery's progress calls.
    """
    build = DEMOS.get(name)
    if build is None:
        raise InputError(f"Unknown demo run {name!r}: choose one of {', '.join(DEMOS)}.")
    torch.set_num_threads(1)  # as `obstacle analyze` does: small models, one intra-op thread
    run_dir = out / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    build(run_dir)
    report = analyze(
        run_dir, preset="standard", device="cpu", dtype="float64", progress=progress, name=name
    )
    return DemoRun(name=name, run_dir=run_dir, report=report)
