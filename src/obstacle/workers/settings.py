"""Settings of a worker, read from ``OBSTACLE_*`` environment variables (see obstacle.platform.settings).

OBSTACLE_DEVICE             auto (default: CUDA when present, else CPU) | cpu | cuda
OBSTACLE_WORKER_CACHE_DIR   where a worker keeps probes and materialised run directories
OBSTACLE_MAX_TASK_ATTEMPTS  a checkpoint whose worker died this many times is recorded as failed
OBSTACLE_MEMORY_BUDGET      memory the battery may plan an analysis to, e.g. 20GiB (default: what
                            the device has free when the analysis starts)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from obstacle.platform.settings import CommonSettings

__all__ = ["WorkerSettings"]


class WorkerSettings(CommonSettings):
    """A worker's settings: the shared ones plus the device and its local cache."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    worker_cache_dir: Path | None = None
    max_task_attempts: int = Field(default=3, ge=1)
    memory_budget: str | None = None

    @field_validator("memory_budget")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            from obstacle.battery.memory import parse_size

            try:
                parse_size(value)
            except ValueError as exc:
                raise ValueError(f"OBSTACLE_MEMORY_BUDGET: {exc}") from None
        return value

    @property
    def resolved_cache_dir(self) -> Path:
        base = (
            self.worker_cache_dir
            if self.worker_cache_dir is not None
            else self.data_dir / "worker-cache"
        )
        return base.resolve()
