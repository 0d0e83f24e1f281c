"""The worker's Celery app: ``celery -A obstacle.workers.app worker`` (or ``obstacle worker``).

Reads ``OBSTACLE_*`` settings at import; the tasks are in ``obstacle.workers.tasks``.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init

from obstacle._hugepages import use_huge_pages
from obstacle.platform.celery_app import create_celery
from obstacle.workers.settings import WorkerSettings

__all__ = ["app", "settings"]

use_huge_pages()  # inherited by the pool processes, which import torch after the fork
settings = WorkerSettings()
app = create_celery(settings, include=["obstacle.workers.tasks"])


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _configure_pool_process(**_: Any) -> None:
    # In each pool process as it starts: pick the device and set torch's threads before any work.
    from obstacle.workers.runtime import select_device

    select_device(settings.device)
