"""Send analysis tasks to the workers by name (no worker code, no torch, in the service)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import redis

from obstacle.service.settings import CommonSettings
from obstacle.workers.celery_app import ANALYZE_CHECKPOINT, create_celery

__all__ = ["TaskQueue"]


class TaskQueue:
    def __init__(self, settings: CommonSettings) -> None:
        self.broker_url = settings.require_broker_url()
        self.celery = create_celery(settings)

    def enqueue_analysis(self, analysis_id: uuid.UUID, steps: Iterable[int]) -> None:
        """One task per checkpoint; the last to finish queues the run-level task."""
        with self.celery.producer_or_acquire() as producer:
            for step in steps:
                self.celery.send_task(
                    ANALYZE_CHECKPOINT, args=[str(analysis_id), int(step)], producer=producer
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
