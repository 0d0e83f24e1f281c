"""Send analysis tasks to the workers by name (no worker code, no torch, in the service)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable

import redis

from obstacle.platform.celery_app import ANALYZE_CHECKPOINTS, create_celery
from obstacle.platform.settings import CommonSettings

__all__ = ["TaskQueue", "ordered_groups"]


def ordered_groups(steps: Iterable[int], per_task: int) -> list[list[int]]:
    """The steps in increasing order, cut into as few consecutive groups of at most ``per_task`` as
    possible, of sizes as even as possible (so their tasks take about as long)."""
    ordered = sorted({int(s) for s in steps})
    if not ordered:
        return []
    count = -(-len(ordered) // per_task)  # ceil
    bounds = [len(ordered) * i // count for i in range(count + 1)]
    return [ordered[start:stop] for start, stop in itertools.pairwise(bounds)]


class TaskQueue:
    def __init__(self, settings: CommonSettings) -> None:
        self.broker_url = settings.require_broker_url()
        self.checkpoints_per_task = settings.checkpoints_per_task
        self.celery = create_celery(settings)

    def enqueue_analysis(self, analysis_id: uuid.UUID, steps: Iterable[int]) -> None:
        """One task per ordered group of checkpoints (``OBSTACLE_CHECKPOINTS_PER_TASK``), which one
        worker analyses in order, warm-started; the last group to finish queues the run-level task."""
        with self.celery.producer_or_acquire() as producer:
            for group in ordered_groups(steps, self.checkpoints_per_task):
                self.celery.send_task(
                    ANALYZE_CHECKPOINTS, args=[str(analysis_id), group], producer=producer
                )

    def ping(self) -> None:
        """Raise if the broker cannot be reached."""
        client = redis.Redis.from_url(self.broker_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()

    def close(self) -> None:
        self.celery.close()
