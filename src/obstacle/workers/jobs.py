"""What the two tasks do, in short database transactions around the battery calls.

    analyze_checkpoints(analysis, steps)   for each step in order: claim the (analysis, step) row →
        │                                  battery → done | error; one SequenceAnalyzer spans the
        │                                  group, so Lanczos starts warm from the previous step
        └─ the last group to finish moves the analysis to ``finalizing`` and queues
    finalize_analysis(analysis)            summarize_run → verdict + report → ``succeeded``

The service cuts an analysis's checkpoints into ordered groups, one task each, of at most
``OBSTACLE_CHECKPOINTS_PER_TASK`` (a typical analysis is one group). Groups of one analysis may run
at once on different workers, each warm-started within itself; a step that fails is recorded and
its group goes on with the next.

Idempotent: a (analysis, step) row goes ``running`` → ``done``/``error`` once (a conditional
UPDATE), so a group delivered twice (a worker died, a visibility timeout passed) skips the steps
already finished and goes on with the rest. Progress is the number of finished rows, read from the
database, so no counter can drift. Claiming a step again after its worker died counts an attempt; a
checkpoint that killed its worker ``max_task_attempts`` times is recorded as an error instead of
killing workers forever.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from obstacle.errors import ObstacleError
from obstacle.platform.db import SessionFactory, session_scope
from obstacle.platform.keys import report_prefix
from obstacle.platform.models import (
    Analysis,
    AnalysisState,
    Checkpoint,
    CheckpointResult,
    Probe,
    Run,
    utcnow,
)
from obstacle.platform.store import ArtifactStore
from obstacle.workers.rundir import CheckpointFiles, ProbeFiles, RunDirectories, TrainLogFile
from obstacle.workers.time_limits import DEFAULT_LIMIT, FinalizeLimit, finalize_time_limit

__all__ = [
    "Context",
    "analyze_checkpoints",
    "fail_analysis",
    "finalize_analysis",
    "record_checkpoint_errors",
    "release_claims",
]

logger = logging.getLogger("obstacle.workers")

DONE, ERROR, RUNNING = "done", "error", "running"

#: A group hands its remaining steps to a new task when this × its slowest checkpoint so far would
#: end past its soft time limit.
HANDOFF_MARGIN = 1.25


@dataclass
class Context:
    """What a worker process holds: database, store, run directories, device, how to queue."""

    sessions: SessionFactory
    store: ArtifactStore
    run_dirs: RunDirectories
    device: str
    max_attempts: int
    send_finalize: Callable[[uuid.UUID, FinalizeLimit], None]  # queue the run-level task
    permanent_errors: tuple[type[BaseException], ...] = (ObstacleError,)
    timeouts: tuple[type[BaseException], ...] = ()
    memory_budget: str | None = None  # OBSTACLE_MEMORY_BUDGET; None: what the device has free
    heartbeat_s: float = 30.0  # how often the analysis worked on is touched (stall detection)
    finalize_time_limit_s: int = 240  # OBSTACLE_FINALIZE_TIME_LIMIT_S: the run level's least limit
    # Queue a group's remaining steps as a task of their own (None: a group never hands off).
    send_group: Callable[[uuid.UUID, list[int]], None] | None = None
    # No task limit above it (time_limits.limit_cap of the visibility timeout); None: no cap.
    time_limit_cap_s: int | None = None


@dataclass(frozen=True)
class _Job:
    analysis_id: uuid.UUID
    run_id: uuid.UUID
    preset: str
    target_loss: float | None
    steps: list[int]
    probe: ProbeFiles
    checkpoints: dict[int, CheckpointFiles]
    train_log: TrainLogFile | None


def _load_job(
    ctx: Context, analysis_id: uuid.UUID, *, steps: list[int] | None = None
) -> _Job | None:
    """The analysis, or None if it is gone or finished; with ``steps``, only the checkpoints that
    group's task needs (its own and the first, θ₀), not all of them."""
    with session_scope(ctx.sessions) as session:
        analysis = session.get(Analysis, analysis_id)
        if analysis is None or analysis.state in AnalysisState.TERMINAL:
            return None
        probe = session.get(Probe, analysis.run_id)
        run = session.get(Run, analysis.run_id)
        if probe is None or run is None:  # the run was deleted with its probe
            return None
        wanted = analysis.steps if steps is None else [min(analysis.steps), *steps]
        rows = session.scalars(
            select(Checkpoint).where(
                Checkpoint.run_id == analysis.run_id, Checkpoint.step.in_(wanted)
            )
        ).all()
        return _Job(
            analysis_id=analysis.id,
            run_id=analysis.run_id,
            preset=analysis.preset,
            target_loss=analysis.target_loss,
            steps=sorted(int(s) for s in analysis.steps),
            probe=ProbeFiles(store_prefix=probe.store_prefix, content_hash=probe.content_hash),
            checkpoints={
                c.step: CheckpointFiles(
                    c.step, c.store_key, c.sha256, c.optimizer_store_key, c.optimizer_sha256
                )
                for c in rows
            },
            train_log=TrainLogFile(run.train_log_store_key, run.train_log_sha256)
            if run.train_log_store_key is not None and run.train_log_sha256 is not None
            else None,
        )


def _claim(ctx: Context, analysis_id: uuid.UUID, step: int) -> int | None:
    """Count an attempt at (analysis, step); None if it is already finished."""
    try:
        with session_scope(ctx.sessions) as session:
            session.add(
                CheckpointResult(analysis_id=analysis_id, step=step, state=RUNNING, attempts=1)
            )
        attempts = 1
    except IntegrityError:
        with session_scope(ctx.sessions) as session:
            session.execute(
                update(CheckpointResult)
                .where(
                    CheckpointResult.analysis_id == analysis_id,
                    CheckpointResult.step == step,
                    CheckpointResult.state == RUNNING,
                )
                .values(attempts=CheckpointResult.attempts + 1, started_at=utcnow())
            )
            row = session.get(CheckpointResult, (analysis_id, step))
            if row is None or row.state != RUNNING:
                return None
            attempts = row.attempts
    with session_scope(ctx.sessions) as session:
        session.execute(
            update(Analysis)
            .where(
                Analysis.id == analysis_id,
                Analysis.state.in_((AnalysisState.QUEUED, AnalysisState.RUNNING)),
            )
            .values(state=AnalysisState.RUNNING, updated_at=utcnow())
        )
    return attempts


def _finish(
    ctx: Context,
    analysis_id: uuid.UUID,
    step: int,
    *,
    record: dict[str, Any] | None,
    error: str | None,
) -> bool:
    """Move the row from running to done/error; False if another delivery finished it first."""
    with session_scope(ctx.sessions) as session:
        result = session.execute(
            update(CheckpointResult)
            .where(
                CheckpointResult.analysis_id == analysis_id,
                CheckpointResult.step == step,
                CheckpointResult.state == RUNNING,
            )
            .values(
                state=DONE if error is None else ERROR,
                record=record,
                error=error,
                finished_at=utcnow(),
            )
        )
        session.execute(
            update(Analysis).where(Analysis.id == analysis_id).values(updated_at=utcnow())
        )
        return bool(getattr(result, "rowcount", 0))


@contextmanager
def _heartbeat(ctx: Context, analysis_id: uuid.UUID) -> Iterator[None]:
    """Touch the analysis's ``updated_at`` every ``ctx.heartbeat_s`` while the body runs, so the
    service's stall detector sees a live worker however long a checkpoint or a group takes."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(ctx.heartbeat_s):
            try:
                with session_scope(ctx.sessions) as session:
                    session.execute(
                        update(Analysis)
                        .where(
                            Analysis.id == analysis_id,
                            Analysis.state.not_in(AnalysisState.TERMINAL),
                        )
                        .values(updated_at=utcnow())
                    )
            except Exception as exc:  # the database is briefly away: the next beat may pass
                logger.warning("heartbeat of analysis %s failed: %s", analysis_id, exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-{analysis_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def analyze_checkpoints(
    ctx: Context, analysis_id: uuid.UUID, steps: list[int], *, budget_s: float | None = None
) -> None:
    """An ordered group of an analysis's checkpoints, warm-started along it; safe to run again.

    ``budget_s`` is the task's soft time limit. Once a checkpoint is done here, a step that its
    slowest checkpoint says would end past it is not started: the rest of the group goes to a new
    task (``ctx.send_group``) with a time limit of its own. A long sequence of a large model is
    then split over tasks instead of failing its last checkpoints; only the warm start is lost at
    the cut.
    """
    with _heartbeat(ctx, analysis_id):
        _analyze_checkpoints(ctx, analysis_id, steps, budget_s)


def _analyze_checkpoints(
    ctx: Context, analysis_id: uuid.UUID, steps: list[int], budget_s: float | None
) -> None:
    started = time.monotonic()
    job = _load_job(ctx, analysis_id, steps=steps)
    if job is None:
        return
    group = sorted(set(steps) & set(job.steps))
    run_dir: Path | None = None
    sequence: list[Any] = []  # the group's SequenceAnalyzer, made for the first step that runs

    def record(directory: Path, step: int) -> Any:
        if not sequence:
            battery = _battery()
            sequence.append(
                battery.SequenceAnalyzer(
                    directory,
                    preset=job.preset,
                    device=ctx.device,
                    memory_budget=ctx.memory_budget,
                )
            )
        return sequence[0].record(step)

    redelivered = False
    slowest = 0.0  # seconds of the slowest checkpoint analysed by this task
    for index, step in enumerate(group):
        elapsed = time.monotonic() - started
        if (
            slowest > 0
            and budget_s is not None
            and ctx.send_group is not None
            and elapsed + HANDOFF_MARGIN * slowest > budget_s
        ):
            logger.info(
                "analysis %s: steps %s handed to a new task: %.0f s of this task's %.0f s are spent "
                "and its slowest checkpoint took %.0f s",
                analysis_id,
                group[index:],
                elapsed,
                budget_s,
                slowest,
            )
            ctx.send_group(analysis_id, group[index:])
            return
        attempts = _claim(ctx, analysis_id, step)
        if attempts is None:  # finished by an earlier delivery of this group
            redelivered = True
            continue
        if attempts > ctx.max_attempts:
            lost = (
                f"step {step}: its worker was lost {attempts - 1} times (killed, or out of memory) "
                "while analysing this checkpoint; it was given up. Try a cheaper preset or a bigger "
                "worker."
            )
            _finish(ctx, analysis_id, step, record=None, error=lost)
            continue
        if run_dir is None:
            needed = sorted({job.steps[0], *group})
            run_dir = ctx.run_dirs.prepare(
                job.probe, [job.checkpoints[s] for s in needed if s in job.checkpoints]
            )
        begun = time.monotonic()
        try:
            result, error = _run_battery(ctx, partial(record, run_dir, step), what=f"step {step}")
        except ctx.timeouts:
            # The hard limit follows shortly: record why this step was not analysed, and hand the
            # rest to a new task (or, without one, record them too).
            reason = (
                f"its task ran over its time limit ({budget_s or 0:.0f} s, soft) on step {step}, "
                "the task's first checkpoint or one much slower than those before it; use a cheaper "
                "preset, or raise OBSTACLE_CHECKPOINT_TIME_LIMIT_S (a task may run this × "
                "OBSTACLE_CHECKPOINTS_PER_TASK)"
            )
            _finish(ctx, analysis_id, step, record=None, error=f"step {step}: {reason}")
            rest = group[index + 1 :]
            if rest and ctx.send_group is not None:
                ctx.send_group(analysis_id, rest)
            else:
                record_checkpoint_errors(ctx, analysis_id, rest, reason)
            return
        slowest = max(slowest, time.monotonic() - begun)
        _finish(ctx, analysis_id, step, record=result, error=error)
    # A redelivered group whose steps had finished: its worker may have died before queueing the
    # run-level task, so queue it again if every step is done.
    _maybe_finalize(ctx, analysis_id, resend=redelivered)


def release_claims(ctx: Context, analysis_id: uuid.UUID, steps: list[int]) -> None:
    """Un-count the attempt at the running step of a group that is retried after a transient failure
    (not a lost worker)."""
    with session_scope(ctx.sessions) as session:
        session.execute(
            update(CheckpointResult)
            .where(
                CheckpointResult.analysis_id == analysis_id,
                CheckpointResult.step.in_(steps),
                CheckpointResult.state == RUNNING,
                CheckpointResult.attempts > 0,
            )
            .values(attempts=CheckpointResult.attempts - 1)
        )


def record_checkpoint_errors(
    ctx: Context, analysis_id: uuid.UUID, steps: list[int], reason: str
) -> None:
    """Record the group's unfinished checkpoints as not analysable, ``step N: reason`` each (the
    task's retries are spent, or it failed around the battery), and move the analysis on."""
    with session_scope(ctx.sessions) as session:
        analysis = session.get(Analysis, analysis_id)
        if analysis is None or analysis.state in AnalysisState.TERMINAL:
            return
        mine = sorted(set(steps) & set(analysis.steps))
    for step in mine:
        if _claim(ctx, analysis_id, step) is not None:
            _finish(ctx, analysis_id, step, record=None, error=f"step {step}: {reason}")
    _maybe_finalize(ctx, analysis_id)


def _run_battery(ctx: Context, call: Callable[[], Any], *, what: str) -> tuple[Any, str | None]:
    """The battery's result, or the reason it failed; the task's time limit propagates."""
    try:
        return call(), None
    except ctx.timeouts:
        raise
    except ctx.permanent_errors as exc:
        return None, f"{what}: {exc}"
    except Exception as exc:  # a bug or a numerical failure: record it, do not retry forever
        logger.error("battery failed on %s:\n%s", what, traceback.format_exc())
        return None, f"{what}: {type(exc).__name__}: {exc}"


def _maybe_finalize(ctx: Context, analysis_id: uuid.UUID, *, resend: bool = False) -> None:
    """Queue the run-level task once every checkpoint has finished, with a time limit that follows
    the cost its checkpoints measured (see ``obstacle.workers.time_limits``)."""
    with session_scope(ctx.sessions) as session:
        analysis = session.get(Analysis, analysis_id)
        if analysis is None or analysis.state in AnalysisState.TERMINAL:
            return
        finished = session.scalar(
            select(func.count())
            .select_from(CheckpointResult)
            .where(
                CheckpointResult.analysis_id == analysis_id,
                CheckpointResult.state.in_((DONE, ERROR)),
            )
        )
        if (finished or 0) < len(analysis.steps):
            return
        claimed = session.execute(
            update(Analysis)
            .where(
                Analysis.id == analysis_id,
                Analysis.state.in_((AnalysisState.QUEUED, AnalysisState.RUNNING)),
            )
            .values(state=AnalysisState.FINALIZING, updated_at=utcnow())
        )
        won = bool(getattr(claimed, "rowcount", 0))
        if not (won or resend):
            return
        preset = analysis.preset
        measured = session.execute(
            select(
                CheckpointResult.started_at, CheckpointResult.finished_at, CheckpointResult.record
            )
            .where(CheckpointResult.analysis_id == analysis_id, CheckpointResult.state == DONE)
            .order_by(CheckpointResult.step)
        ).all()
    limit = finalize_time_limit(
        preset=preset,
        checkpoints=[
            ((finished - started).total_seconds(), record or {})
            for started, finished, record in measured
            if started is not None and finished is not None
        ],
        floor_s=ctx.finalize_time_limit_s,
        cap_s=ctx.time_limit_cap_s,
    )
    logger.info("analysis %s: run-level task queued, time limit %s", analysis_id, limit.describe())
    ctx.send_finalize(analysis_id, limit)


def finalize_analysis(
    ctx: Context, analysis_id: uuid.UUID, *, time_limit: str = DEFAULT_LIMIT
) -> None:
    """The run-level tests, the verdict and the report; safe to run more than once.
    ``time_limit`` says what the task's limit is, for the message if it runs over."""
    with _heartbeat(ctx, analysis_id):
        _finalize_analysis(ctx, analysis_id, time_limit)


def _finalize_analysis(ctx: Context, analysis_id: uuid.UUID, time_limit: str) -> None:
    job = _load_job(ctx, analysis_id)
    if job is None:
        return
    with session_scope(ctx.sessions) as session:
        rows = session.scalars(
            select(CheckpointResult)
            .where(CheckpointResult.analysis_id == analysis_id)
            .order_by(CheckpointResult.step)
        ).all()
        records = [r.record for r in rows if r.state == DONE and r.record is not None]
        errors = [r.error for r in rows if r.state == ERROR]
    if not records:
        fail_analysis(
            ctx,
            analysis_id,
            "no checkpoint could be analysed: " + "; ".join(e or "" for e in errors),
        )
        return
    done_steps = [int(r["step"]) for r in records]
    # θ₀ is the first checkpoint of the analysis even if its own record failed.
    needed = sorted({job.steps[0], *done_steps})
    try:
        run_dir = ctx.run_dirs.prepare(
            job.probe, [job.checkpoints[s] for s in needed], job.train_log
        )
    except FileNotFoundError:
        # A newer train log replaced (and deleted) the one read above: read the job again.
        job = _load_job(ctx, analysis_id)
        if job is None:
            return
        run_dir = ctx.run_dirs.prepare(
            job.probe, [job.checkpoints[s] for s in needed], job.train_log
        )
    try:
        report, error = _run_battery(
            ctx,
            lambda: _battery().summarize_run(
                run_dir,
                records,
                preset=job.preset,
                target_loss=job.target_loss,
                device=ctx.device,
                memory_budget=ctx.memory_budget,
            ),
            what="run-level analysis",
        )
    except ctx.timeouts:
        report, error = (
            None,
            (
                f"run-level analysis: over the task's time limit of {time_limit}; use a cheaper "
                "preset, or raise OBSTACLE_FINALIZE_TIME_LIMIT_S (and OBSTACLE_VISIBILITY_TIMEOUT_S "
                "if the limit was cut to it)"
            ),
        )
    if error is not None:
        fail_analysis(ctx, analysis_id, error)
        return
    files, drawing_error = _render_and_store(ctx, job, report)
    with session_scope(ctx.sessions) as session:
        session.execute(
            update(Analysis)
            .where(Analysis.id == analysis_id, Analysis.state.not_in(AnalysisState.TERMINAL))
            .values(
                state=AnalysisState.SUCCEEDED,
                report=report,
                report_files=files,
                error=drawing_error,
                updated_at=utcnow(),
                finished_at=utcnow(),
            )
        )
        gone = session.get(Analysis, analysis_id) is None
    if gone:  # the run was deleted meanwhile: its files went with it, so must the report's
        ctx.store.delete_prefix(report_prefix(job.run_id, job.analysis_id))


def _render_and_store(
    ctx: Context, job: _Job, report: dict[str, Any]
) -> tuple[list[str], str | None]:
    """Draw the HTML report and its plots into the store: (files, None) or ([], why not).

    The verdict stands without its drawing, so a plotting failure does not fail the analysis.
    """
    from obstacle.battery.report import render_report

    out = Path(tempfile.mkdtemp(prefix="report-"))
    try:
        try:
            render_report(report, out)
        except Exception as exc:
            logger.error(
                "the report of analysis %s could not be drawn:\n%s",
                job.analysis_id,
                traceback.format_exc(),
            )
            return (
                [],
                f"the HTML report could not be drawn ({type(exc).__name__}: {exc}); the JSON report is complete",
            )
        prefix = report_prefix(job.run_id, job.analysis_id)
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        for name in files:
            ctx.store.put_file(out / name, f"{prefix}/{name}")
        return files, None
    finally:
        shutil.rmtree(out, ignore_errors=True)


def fail_analysis(ctx: Context, analysis_id: uuid.UUID, reason: str) -> None:
    """Mark the analysis failed with ``reason`` (unless it already finished)."""
    with session_scope(ctx.sessions) as session:
        session.execute(
            update(Analysis)
            .where(Analysis.id == analysis_id, Analysis.state.not_in(AnalysisState.TERMINAL))
            .values(
                state=AnalysisState.FAILED, error=reason, updated_at=utcnow(), finished_at=utcnow()
            )
        )


def _battery() -> Any:
    from obstacle.battery import analysis

    return analysis
