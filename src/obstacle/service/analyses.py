"""Analyses on the service side: create and queue one, read its state and progress, and fail
the stalled ones.

Stall detection: a worker touches an analysis's ``updated_at`` when it claims or finishes a
checkpoint and, between, every ``stall_heartbeat_s`` (obstacle.workers.jobs). An analysis untouched
for OBSTACLE_ANALYSIS_STALL_TIMEOUT_S has no live worker (it died, or none runs) and is marked
failed with that reason (a queued one only when no worker made progress on anything in that
time: behind a busy worker it waits its turn): by ``StallSweeper``, which the app runs in the background four times per
timeout (at most every 30 s), and on every read.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from obstacle.platform.db import SessionFactory, session_scope
from obstacle.platform.models import (
    Analysis,
    AnalysisState,
    Checkpoint,
    CheckpointResult,
    Probe,
    utcnow,
)
from obstacle.service.ingest import no_probe
from obstacle.service.problems import ProblemError
from obstacle.service.queue import TaskQueue
from obstacle.service.schemas import AnalysisCreate, AnalysisPublic, CheckpointErrorPublic, Progress

__all__ = ["StallSweeper", "create_analysis", "fail_stalled", "public_analysis"]

logger = logging.getLogger("obstacle.service")


def _stall_reason(stall_timeout_s: int) -> str:
    return (
        f"no worker made progress on this analysis for {stall_timeout_s} s "
        "(OBSTACLE_ANALYSIS_STALL_TIMEOUT_S): its worker died, or no worker runs "
        "(`obstacle worker`; under `obstacle serve`, GET /healthz says whether its worker is up). "
        "Start the analysis again."
    )


def _workers_at_work(session: Session, cutoff: datetime) -> bool:
    """Whether some worker made progress since ``cutoff``: it heartbeats what it runs, or it just
    finished an analysis and is taking the next one from the queue."""
    busy = select(Analysis.id).where(
        or_(
            and_(
                Analysis.state.in_((AnalysisState.RUNNING, AnalysisState.FINALIZING)),
                Analysis.updated_at >= cutoff,
            ),
            and_(Analysis.state == AnalysisState.SUCCEEDED, Analysis.finished_at >= cutoff),
        )
    )
    return session.execute(busy.limit(1)).first() is not None


def _stalled(session: Session, cutoff: datetime) -> ColumnElement[bool]:
    """Unfinished and untouched since ``cutoff``. A queued analysis waiting behind others while
    workers are at work is not stalled: it has no worker yet, and its turn comes."""
    untouched = and_(Analysis.state.not_in(AnalysisState.TERMINAL), Analysis.updated_at < cutoff)
    if _workers_at_work(session, cutoff):
        return and_(untouched, Analysis.state != AnalysisState.QUEUED)
    return untouched


def fail_stalled(sessions: SessionFactory, *, stall_timeout_s: int) -> int:
    """Mark failed every stalled analysis (untouched for ``stall_timeout_s``); how many."""
    cutoff = utcnow() - timedelta(seconds=stall_timeout_s)
    with session_scope(sessions) as session:
        done = session.execute(
            update(Analysis)
            .where(_stalled(session, cutoff))
            .values(
                state=AnalysisState.FAILED,
                error=_stall_reason(stall_timeout_s),
                updated_at=utcnow(),
                finished_at=utcnow(),
            )
        )
        return int(getattr(done, "rowcount", 0) or 0)


class StallSweeper:
    """Runs ``fail_stalled`` four times per stall timeout (at most every 30 s) in the background of
    the app, from ``start()`` until ``await stop()`` (which lets a sweep under way finish, so no
    database connection outlives the engine)."""

    def __init__(self, sessions: SessionFactory, *, stall_timeout_s: int) -> None:
        self.sessions = sessions
        self.stall_timeout_s = stall_timeout_s
        self.interval_s = max(0.25, min(30.0, stall_timeout_s / 4))
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stall-sweeper")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
                return
            except TimeoutError:
                pass
            try:
                failed = await run_in_threadpool(
                    fail_stalled, self.sessions, stall_timeout_s=self.stall_timeout_s
                )
            except Exception as exc:  # the database is away: /healthz says so; try again later
                logger.warning("the stall sweep failed: %s: %s", type(exc).__name__, exc)
                continue
            if failed:
                logger.warning("%d stalled analyses marked failed", failed)


def create_analysis(
    sessions: SessionFactory, queue: TaskQueue, run_id: uuid.UUID, body: AnalysisCreate
) -> Analysis:
    """Record the analysis of the run's checkpoints (or ``options.steps``) and queue its tasks."""
    with session_scope(sessions) as session:
        if session.get(Probe, run_id) is None:
            raise no_probe(run_id)
        checkpoints = {
            c.step: c
            for c in session.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id))
        }
        steps = sorted(set(body.options.steps)) if body.options.steps else sorted(checkpoints)
        if not steps:
            raise ProblemError(
                409,
                f"Run {run_id} has no checkpoints to analyse. Upload some with "
                f"PUT /v1/runs/{run_id}/checkpoints/{{step}} first.",
                slug="no-checkpoints",
                title="The run has no checkpoints",
            )
        unknown = [s for s in steps if s not in checkpoints]
        if unknown:
            raise ProblemError(
                422,
                f"options.steps names steps {unknown} that run {run_id} has no checkpoint for; "
                f"it has {sorted(checkpoints)[:20]}{'…' if len(checkpoints) > 20 else ''}.",
                slug="invalid-request",
                title="The request is invalid",
            )
        lacking = [
            s
            for s in steps
            if checkpoints[s].optimizer_class and not checkpoints[s].optimizer_sha256
        ]
        if lacking:
            raise ProblemError(
                409,
                f"The checkpoints at steps {lacking} name an optimizer whose state was not uploaded; the "
                f"battery needs it to take the optimizer's real step. Upload it with "
                f"PUT /v1/runs/{run_id}/checkpoints/{{step}}/optimizer.",
                slug="optimizer-state-missing",
                title="Optimizer state is missing",
            )
        analysis = Analysis(
            run_id=run_id,
            preset=body.preset,
            target_loss=body.target_loss,
            options=body.options.model_dump(mode="json", exclude_none=True),
            steps=steps,
        )
        session.add(analysis)
    try:
        queue.enqueue_analysis(analysis.id, steps)
    except Exception as exc:
        reason = (
            f"the broker could not be reached to queue the analysis ({type(exc).__name__}: {exc})"
        )
        _fail(sessions, analysis.id, reason)
        raise ProblemError(
            503,
            f"The analysis could not be queued: {reason}. Retry later; the operator should check "
            "OBSTACLE_BROKER_URL and GET /healthz.",
            slug="broker-unavailable",
            title="The task broker is unavailable",
        ) from exc
    return analysis


def _fail(sessions: SessionFactory, analysis_id: uuid.UUID, reason: str) -> None:
    with session_scope(sessions) as session:
        session.execute(
            update(Analysis)
            .where(Analysis.id == analysis_id, Analysis.state.not_in(AnalysisState.TERMINAL))
            .values(
                state=AnalysisState.FAILED, error=reason, updated_at=utcnow(), finished_at=utcnow()
            )
        )


def public_analysis(
    session: Session, analysis: Analysis, *, stall_timeout_s: int
) -> AnalysisPublic:
    """The analysis as the API shows it; one that made no progress for too long is marked failed."""
    cutoff = utcnow() - timedelta(seconds=stall_timeout_s)
    if (
        analysis.state not in AnalysisState.TERMINAL
        and analysis.updated_at < cutoff
        and (analysis.state != AnalysisState.QUEUED or not _workers_at_work(session, cutoff))
    ):
        reason = _stall_reason(stall_timeout_s)
        done = session.execute(
            update(Analysis)
            .where(Analysis.id == analysis.id, Analysis.updated_at == analysis.updated_at)
            .values(
                state=AnalysisState.FAILED, error=reason, updated_at=utcnow(), finished_at=utcnow()
            )
        )
        session.commit()
        if getattr(done, "rowcount", 0):
            session.refresh(analysis)
    results = session.execute(
        select(CheckpointResult.step, CheckpointResult.state, CheckpointResult.error)
        .where(CheckpointResult.analysis_id == analysis.id)
        .order_by(CheckpointResult.step)
    ).all()
    errors = [
        CheckpointErrorPublic(step=r.step, message=r.error or "")
        for r in results
        if r.state == "error"
    ]
    if analysis.error:
        errors.append(CheckpointErrorPublic(step=None, message=analysis.error))
    progress = Progress(
        done=sum(r.state in ("done", "error") for r in results),
        total=len(analysis.steps),
        running=sum(r.state == "running" for r in results),
        failed=sum(r.state == "error" for r in results),
    )
    return AnalysisPublic(
        id=str(analysis.id),
        run_id=str(analysis.run_id),
        state=analysis.state,  # type: ignore[arg-type]
        preset=analysis.preset,  # type: ignore[arg-type]
        target_loss=analysis.target_loss,
        steps=analysis.steps,
        progress=progress,
        errors=errors,
        report=analysis.report if analysis.state == AnalysisState.SUCCEEDED else None,
        report_files=analysis.report_files,
        created_at=analysis.created_at,
        updated_at=analysis.updated_at,
        finished_at=analysis.finished_at,
    )
