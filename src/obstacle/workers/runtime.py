"""The device a worker process computes on, and torch's threads there.

CPU workers run one process per core with one intra-op thread each (set in every pool process
when it starts, before any work). CUDA workers run one process per GPU (``obstacle worker``
starts one Celery node per GPU with CUDA_VISIBLE_DEVICES set), and nothing forks after CUDA is
initialised: a pool process initialises CUDA itself, its parent never touches it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache

from obstacle.errors import DeviceError

__all__ = ["select_device", "visible_gpus"]


@cache
def select_device(requested: str) -> str:
    """``cuda`` or ``cpu`` for OBSTACLE_DEVICE=auto|cpu|cuda; configures torch's threads on CPU."""
    import torch

    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise DeviceError(
            "OBSTACLE_DEVICE=cuda but this worker sees no CUDA device; set OBSTACLE_DEVICE=auto or cpu, "
            "or check the GPU runtime (nvidia-smi, CUDA_VISIBLE_DEVICES)."
        )
    device = "cuda" if requested != "cpu" and available else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)
    return device


def visible_gpus() -> list[str]:
    """The CUDA devices of this host (CUDA_VISIBLE_DEVICES entries), found without torch or CUDA.

    The launcher starts pool processes afterwards, so it must stay free of CUDA (and of torch's
    thread pools): it honours CUDA_VISIBLE_DEVICES, else asks ``nvidia-smi``.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [
        str(i) for i, line in enumerate(ln for ln in listing.splitlines() if ln.startswith("GPU "))
    ]
