"""The battery's wall time against its own floor, and the HVP/gradient cost ratio.

The floor is what the battery's evaluations would cost with no overhead at all: its counts of
single-batch loss, gradient and Hessian-vector passes (``Cost.*_batches``) times the unit cost of
each, measured here in the same run on the same model. The ratio wall/floor says how much the
battery spends beyond the evaluations it needs (target ≤ 1.15 for ``standard`` on a ~100k-parameter
MLP). Not a test: run it and read it.

    python bench/battery_floor.py [--params 100000] [--checkpoints 4] [--preset standard]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _floor import unit_costs
from _machine import describe_machine
from torch import nn
from torch.nn import functional as F

import obstacle
from obstacle.battery.analysis import _quantities, _run_checkpoint, _Session
from obstacle.battery.presets import get_preset


def build_run(run_dir: Path, hidden: int, checkpoints: int) -> int:
    """An MLP on synthetic 10-class data, trained with SGD + momentum; returns its size."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8 * 128, 64, generator=g, dtype=torch.float64)
    w = torch.randn(64, 10, generator=g, dtype=torch.float64)
    y = (x @ w + 0.5 * torch.randn(len(x), 10, generator=g, dtype=torch.float64)).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 10),
    ).double()
    batches = [(x[i * 128 : (i + 1) * 128], y[i * 128 : (i + 1) * 128]) for i in range(8)]
    obstacle.Probe.capture(model, F.cross_entropy, batches).save(run_dir)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(checkpoints * 10):
        xb, yb = batches[step % 8]
        loss = F.cross_entropy(model(xb), yb)
        if step % 10 == 9:
            obstacle.save_checkpoint(run_dir, model, step=step, lr=0.05, optimizer=opt)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hidden", type=int, default=290, help="hidden width (290 → ~105k parameters)"
    )
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(describe_machine())

    run_dir = Path(tempfile.mkdtemp(prefix="obstacle-floor-"))
    n = build_run(run_dir, args.hidden, args.checkpoints)
    session = _Session(run_dir, get_preset(args.preset), args.device, args.dtype)
    engine = session.engine
    steps = sorted(session.paths)
    print(
        f"model: MLP with {n} parameters, {engine.num_batches} probe batches of {session.probe.manifest.batch_size}; "
        f"preset {args.preset}; {len(steps)} checkpoints; {args.device} {args.dtype}"
    )

    # Unit costs of one single-batch pass, measured on this model in this run.
    _, theta = session.theta(steps[-1])
    units = unit_costs(engine, theta)
    t_loss, t_grad, t_hvp, t_hvp_fresh = units.loss, units.grad, units.hvp, units.hvp_fresh
    print(
        f"unit costs per batch: loss {t_loss * 1e3:.2f} ms, gradient {t_grad * 1e3:.2f} ms, "
        f"HVP {t_hvp * 1e3:.2f} ms reusing the graph ({t_hvp_fresh * 1e3:.2f} ms building it each time)"
    )
    print(
        f"HVP/gradient cost ratio: {t_hvp / t_grad:.2f} (graph reused), {t_hvp_fresh / t_grad:.2f} (fresh graph)"
    )

    # The battery per checkpoint, then the run level, with its counts.
    _quantities(session.preset)  # import the quantity modules before timing
    before = engine.cost.copy()
    start = time.perf_counter()
    carry: dict[str, object] = {}
    for step in steps:
        _run_checkpoint(session, step, carry)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    used = engine.cost - before
    floor = units.floor(used)
    print(
        f"per-checkpoint battery: {wall:.2f} s wall for {used.loss_batches} loss, {used.grad_batches} gradient "
        f"and {used.hvp_batches} HVP single-batch passes"
    )
    print(f"floor (passes × unit costs): {floor:.2f} s")
    print(f"RATIO wall/floor = {wall / floor:.3f}  (target ≤ 1.15)")


if __name__ == "__main__":
    main()
