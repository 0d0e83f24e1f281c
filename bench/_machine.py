"""The one line every benchmark prints about the machine it ran on."""

from __future__ import annotations

import os
import platform

import torch


def describe_machine(*extra: str) -> str:
    """CPU model, cores available, torch and its thread count, python; then ``extra`` parts."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    parts = [
        f"machine: {cpu}; {cores} cores available{gpu}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op thread(s); python {platform.python_version()}",
        *extra,
    ]
    return "; ".join(parts)
