"""Start the worker processes: one Celery node per GPU, or one node with a process per CPU core."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

from obstacle.errors import DeviceError
from obstacle.platform.celery_app import QUEUE, SUPERVISOR_PID_ENV
from obstacle.workers.runtime import visible_gpus
from obstacle.workers.settings import WorkerSettings

__all__ = ["run_worker"]


def _stop_when_orphaned(poll_s: float = 1.0) -> None:
    """A worker started by ``obstacle serve`` runs in its own session, so it outlives a serve that
    was SIGKILLed or crashed; left alone it would go on taking tasks with nobody watching it (and
    holding its GPU). When its parent is no longer that serve, it shuts down warm: it takes no new
    task, and one in flight is finished or, if it is killed first, redelivered to another worker."""
    value = os.environ.get(SUPERVISOR_PID_ENV)
    if not value or not value.isdigit():
        return
    supervisor = int(value)
    if os.getppid() != supervisor:  # started by hand with the variable set: not supervised
        return

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(poll_s)
        print(
            f"obstacle: worker: its supervisor (obstacle serve, pid {supervisor}) is gone; "
            "stopping (warm shutdown)",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def _celery_args(*, pool: str, concurrency: int, loglevel: str, name: str) -> list[str]:
    return [
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        f"--queues={QUEUE}",
        f"--hostname={name}",
        "--without-gossip",
        "--without-mingle",
    ]


def run_worker(
    settings: WorkerSettings, *, concurrency: int | None, pool: str, loglevel: str
) -> int:
    """Run until stopped; returns the exit status."""
    settings.require_broker_url()
    _stop_when_orphaned()
    gpus = visible_gpus() if settings.device != "cpu" else []
    if settings.device == "cuda" and not gpus:
        raise DeviceError(
            "OBSTACLE_DEVICE=cuda but no GPU is visible (nvidia-smi, CUDA_VISIBLE_DEVICES); "
            "set OBSTACLE_DEVICE=auto to run on the CPU."
        )
    if gpus:
        return _run_gpu_nodes(gpus, loglevel=loglevel)
    from obstacle.workers.app import app

    processes = concurrency if concurrency is not None else os.cpu_count() or 1
    app.worker_main(
        argv=_celery_args(
            pool=pool,
            concurrency=processes,
            loglevel=loglevel,
            name=f"obstacle-cpu-{os.getpid()}@%h",
        )
    )
    return 0


def _run_gpu_nodes(gpus: list[str], *, loglevel: str) -> int:
    """One node per GPU, each with one pool process that initialises CUDA itself (no fork after)."""
    children = []
    for index, gpu in enumerate(gpus):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "OBSTACLE_DEVICE": "cuda"}
        args = _celery_args(
            pool="prefork",
            concurrency=1,
            loglevel=loglevel,
            name=f"obstacle-gpu{index}-{os.getpid()}@%h",
        )
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "obstacle.workers.app", *args], env=env
            )
        )

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)
