"""The Celery tasks: they take ids, have names and time limits, and are idempotent.

The work is in ``obstacle.workers.jobs``; here: retries for transient failures (database, broker,
artifact store unreachable), and what to record when the retries are spent.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import suppress
from functools import cache
from typing import Any

import redis.exceptions
import sqlalchemy.exc
from celery.exceptions import SoftTimeLimitExceeded

from obstacle.errors import ObstacleError
from obstacle.platform.celery_app import ANALYZE_CHECKPOINTS, FINALIZE_ANALYSIS
from obstacle.platform.db import create_db_engine, session_factory
from obstacle.platform.store import ArtifactStore
from obstacle.workers import jobs
from obstacle.workers.app import app, settings
from obstacle.workers.rundir import RunDirectories
from obstacle.workers.runtime import select_device
from obstacle.workers.time_limits import DEFAULT_LIMIT, FinalizeLimit, limit_cap, soft_limit

__all__ = ["TRANSIENT", "analyze_checkpoints", "finalize_analysis"]

# Worth a retry: the service around the computation was briefly unreachable.
TRANSIENT: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)
MAX_RETRIES = 5

logger = logging.getLogger("obstacle.workers")


@cache
def context() -> jobs.Context:
    """This process's database engine, store and run directories (made after the fork)."""
    engine = create_db_engine(settings.resolved_database_url)
    store = ArtifactStore(settings.resolved_artifact_url)
    return jobs.Context(
        sessions=session_factory(engine),
        store=store,
        run_dirs=RunDirectories(store, settings.resolved_cache_dir),
        device=select_device(settings.device),
        memory_budget=settings.memory_budget,
        heartbeat_s=settings.stall_heartbeat_s,
        max_attempts=settings.max_task_attempts,
        send_finalize=_send_finalize,
        send_group=lambda analysis_id, steps: analyze_checkpoints.delay(str(analysis_id), steps),
        finalize_time_limit_s=settings.finalize_time_limit_s,
        time_limit_cap_s=limit_cap(settings.visibility_timeout_s),
        permanent_errors=(ObstacleError,),
        timeouts=(SoftTimeLimitExceeded,),
    )


def _send_finalize(analysis_id: uuid.UUID, limit: FinalizeLimit) -> None:
    # The limit is the message's own (Celery keeps it across a redelivery), not the task's default.
    finalize_analysis.apply_async(
        (str(analysis_id),),
        {"limit": limit.describe()},
        time_limit=limit.seconds,
        soft_time_limit=soft_limit(limit.seconds),
    )


def _soft_limit(task: Any) -> float | None:
    """The running task's soft time limit: its message's, else the task's own."""
    limits = getattr(task.request, "timelimit", None) or (None, None)
    soft = limits[1] if len(limits) > 1 and limits[1] else task.soft_time_limit
    return float(soft) if soft else None


def _retry_delay(retries: int) -> int:
    return int(min(60, 2**retries))


@app.task(  # type: ignore[untyped-decorator]
    name=ANALYZE_CHECKPOINTS,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    # The group's budget: OBSTACLE_CHECKPOINT_TIME_LIMIT_S per checkpoint it may hold.
    soft_time_limit=soft_limit(settings.group_time_limit_s),
    time_limit=settings.group_time_limit_s,
    max_retries=MAX_RETRIES,
)
def analyze_checkpoints(self: Any, analysis_id: str, steps: list[int]) -> None:
    """The battery on an ordered group of an analysis's checkpoints, warm-started along it; the last
    group to finish queues ``finalize_analysis``."""
    ident, group = uuid.UUID(analysis_id), [int(step) for step in steps]
    try:
        jobs.analyze_checkpoints(context(), ident, group, budget_s=_soft_limit(self))
    except TRANSIENT as exc:
        if self.request.retries < MAX_RETRIES:
            with suppress(*TRANSIENT):
                jobs.release_claims(context(), ident, group)
            raise self.retry(exc=exc, countdown=_retry_delay(self.request.retries)) from exc
        reason = f"gave up after {MAX_RETRIES} retries ({type(exc).__name__}: {exc})"
        jobs.record_checkpoint_errors(context(), ident, group, reason)
    except Exception as exc:  # not the battery's (it is caught inside): fetching files, a bug
        logger.exception("analyze_checkpoints(%s, %s) failed", analysis_id, group)
        reason = f"the worker failed around the battery ({type(exc).__name__}: {exc})"
        jobs.record_checkpoint_errors(context(), ident, group, reason)


@app.task(  # type: ignore[untyped-decorator]
    name=FINALIZE_ANALYSIS,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=soft_limit(settings.finalize_time_limit_s),
    time_limit=settings.finalize_time_limit_s,
    max_retries=MAX_RETRIES,
)
def finalize_analysis(self: Any, analysis_id: str, limit: str = DEFAULT_LIMIT) -> None:
    """The run-level tests, the verdict and the report of an analysis; ``limit`` describes the
    time limit it was queued with."""
    ident = uuid.UUID(analysis_id)
    try:
        jobs.finalize_analysis(context(), ident, time_limit=limit)
    except TRANSIENT as exc:
        if self.request.retries < MAX_RETRIES:
            raise self.retry(exc=exc, countdown=_retry_delay(self.request.retries)) from exc
        jobs.fail_analysis(
            context(),
            ident,
            f"the run-level task gave up after {MAX_RETRIES} retries ({type(exc).__name__}: {exc})",
        )
    except Exception as exc:
        logger.exception("finalize_analysis(%s) failed", analysis_id)
        jobs.fail_analysis(
            context(), ident, f"the run-level task failed ({type(exc).__name__}: {exc})"
        )
