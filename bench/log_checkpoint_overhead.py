"""How much does ``Run.log_checkpoint`` slow a training loop? (issue 7: no more than the copy)

Trains a small MLP for ``--steps`` steps, checkpointing 50 times, twice: once copying the weights
only (the snapshot ``log_checkpoint`` takes in the caller's thread), once through
``Run.log_checkpoint`` against a real local service (``obstacle serve`` started here, with its
own data directory and token). Prints both wall times, their ratio, and the machine.

    python bench/log_checkpoint_overhead.py [--steps 2000] [--hidden 512]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from _machine import describe_machine
from _service import serve
from torch import nn

import obstacle
from obstacle.client import Client

CHECKPOINTS = 50


def _model(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(128, 64, generator=g), torch.randint(0, 10, (128,), generator=g))
        for _ in range(4)
    ]


def train(steps: int, hidden: int, checkpoint: object) -> float:
    """Wall seconds of ``steps`` SGD steps calling ``checkpoint(step, model, opt, loss)`` 50 times."""
    model, batches = _model(hidden), _batches()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    every = max(1, steps // CHECKPOINTS)
    start = time.perf_counter()
    for step in range(steps):
        x, y = batches[step % len(batches)]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if step % every == 0 and step // every < CHECKPOINTS:
            checkpoint(step, model, opt, loss.item())  # type: ignore[operator]
        opt.step()
    return time.perf_counter() - start


def _copy_only(step: int, model: nn.Module, opt: torch.optim.Optimizer, loss: float) -> None:
    {k: v.detach().clone() for k, v in model.state_dict().items()}
    {
        id(p): {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
        for p, s in opt.state.items()
    }


def _pin_apart(server_pid: int) -> None:
    """With two or more cores, the service (and its children) on the last, training on the rest.

    The question is what ``log_checkpoint`` costs the training process; a service sharing the
    training core would bill its own ingest work to the client.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return
    os.sched_setaffinity(server_pid, {cores[-1]})
    os.sched_setaffinity(0, set(cores[:-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = sum(p.numel() for p in _model(args.hidden).parameters())
    print(describe_machine())
    print(f"model: MLP with {params} parameters; {args.steps} steps; {CHECKPOINTS} checkpoints")

    with tempfile.TemporaryDirectory(prefix="obstacle-bench-") as tmp:
        process, url, token = serve(Path(tmp), on_start=_pin_apart)
        try:
            train(min(args.steps, 100), args.hidden, _copy_only)  # warm up
            copy_s = train(args.steps, args.hidden, _copy_only)
            print(f"snapshot copy only:   {copy_s:8.2f} s")

            probe = obstacle.Probe.capture(
                _model(args.hidden), nn.CrossEntropyLoss(), _batches()[:2]
            )
            with Client(url, token) as client, client.create_run("bench", probe=probe) as run:

                def log(
                    step: int, model: nn.Module, opt: torch.optim.Optimizer, loss: float
                ) -> None:
                    run.log_checkpoint(step, model, lr=0.01, train_loss=loss, optimizer=opt)

                log_s = train(args.steps, args.hidden, log)
                flush_start = time.perf_counter()
                run.flush()
                flush_s = time.perf_counter() - flush_start
                uploaded = len(run.uploaded_steps)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(
        f"Run.log_checkpoint:   {log_s:8.2f} s  (then flush: {flush_s:.2f} s, {uploaded} uploaded)"
    )
    print(f"ratio log/copy:       {log_s / copy_s:8.3f}")


if __name__ == "__main__":
    main()
