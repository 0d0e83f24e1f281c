"""The Celery application: Redis broker, late acknowledgement, every task bounded in time.

Importable without torch (the service uses it to send tasks by name). Results live in the
database, so there is no result backend.

With Redis, a task whose worker died (SIGKILL, lost host) is handed out again only once the
broker's visibility timeout (``OBSTACLE_VISIBILITY_TIMEOUT_S``) has passed, and a task still running
then would be handed to a second worker. So each task's time limit is below that timeout (a group of
checkpoints: ``OBSTACLE_CHECKPOINT_TIME_LIMIT_S`` × ``OBSTACLE_CHECKPOINTS_PER_TASK``; checked at
start-up), and the sweep that puts abandoned tasks back runs every few seconds rather than kombu's
default of every ~100 s.
"""

from __future__ import annotations

from celery import Celery

from obstacle.platform.settings import CommonSettings

__all__ = [
    "ANALYZE_CHECKPOINTS",
    "FINALIZE_ANALYSIS",
    "QUEUE",
    "SUPERVISOR_PID_ENV",
    "create_celery",
    "ping_workers",
    "transport_options",
]

ANALYZE_CHECKPOINTS = "obstacle.analyze_checkpoints"
FINALIZE_ANALYSIS = "obstacle.finalize_analysis"
QUEUE = "obstacle"

#: Set by ``obstacle serve`` for the worker it supervises: the worker stops when that process is gone.
SUPERVISOR_PID_ENV = "OBSTACLE_SUPERVISOR_PID"


def transport_options(settings: CommonSettings) -> dict[str, object]:
    timeout = settings.visibility_timeout_s
    return {
        "visibility_timeout": timeout,
        # Sweep for abandoned tasks often enough that one comes back soon after its timeout.
        "unacked_restore_interval": max(1, min(10, timeout // 4)),
        "unacked_restore_throttle": 1,
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "health_check_interval": 25,
    }


def create_celery(settings: CommonSettings, *, include: list[str] | None = None) -> Celery:
    """A Celery app configured from ``settings`` (which must name the broker)."""
    app = Celery(
        "obstacle", broker=settings.require_broker_url(), include=include, set_as_current=False
    )
    app.conf.update(
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        worker_prefetch_multiplier=1,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


def ping_workers(app: Celery, *, timeout: float = 2.0) -> list[str]:
    """The names of the worker nodes that answer a remote-control ping within ``timeout`` seconds
    (``celery inspect ping``); each node is named ``obstacle-<cpu|gpuN>-<pid>@<host>``."""
    replies = app.control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)
