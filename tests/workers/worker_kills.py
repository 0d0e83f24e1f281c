"""Kill a real worker's pool process with SIGKILL during analyses and count what comes out.

Shared by tests/workers/test_worker_kills.py (3 kills) and bench/worker_kills.py (20 kills). The
worker is ``obstacle worker --pool prefork``: its main process outlives the kill, sees the lost
child, rejects the task back to the queue (``reject_on_worker_lost``) and forks a new child.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from obstacle.platform.db import SessionFactory
from obstacle.platform.models import Analysis, CheckpointResult


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


@dataclass
class Outcome:
    submitted: int
    completed: int = 0  # succeeded, each step done once, each in the report once
    lost: int = 0  # not succeeded in time, or a step missing
    duplicated: int = 0  # a step twice in the report
    recoveries_s: list[float] = field(default_factory=list)  # kill → the killed step finished
    failures: list[str] = field(default_factory=list)


def _rows(sessions: SessionFactory, analyses: list[uuid.UUID]) -> list[CheckpointResult]:
    """The step rows of ``analyses`` only: the database may be shared with other tests, whose rows
    (a step left running by a worker another test killed) must not be taken for ours."""
    with sessions() as session:
        return list(
            session.scalars(
                select(CheckpointResult).where(CheckpointResult.analysis_id.in_(analyses))
            )
        )


def _finished(sessions: SessionFactory, analyses: list[uuid.UUID]) -> bool:
    with sessions() as session:
        states = [session.get(Analysis, a).state for a in analyses]  # type: ignore[union-attr]
    return all(s in ("succeeded", "failed") for s in states)


def kill_during_analyses(
    sessions: SessionFactory,
    worker_pid: int,
    submit: Callable[[], uuid.UUID],
    steps: list[int],
    *,
    kills: int,
    timeout_s: float,
    log: Callable[[str], None] = lambda _line: None,
) -> Outcome:
    """SIGKILL the worker's pool process ``kills`` times, each while it analyses a checkpoint and
    only after the previous kill's checkpoint finished; ``submit`` starts an analysis whenever all
    are done, so there is always one to kill during. Then wait for every analysis to finish."""
    analyses = [submit(), submit()]
    deadline = time.monotonic() + timeout_s
    killed = 0
    recoveries: list[float] = []
    while killed < kills and time.monotonic() < deadline:
        if _finished(sessions, analyses):
            analyses.append(submit())
        running = [r for r in _rows(sessions, analyses) if r.state == "running"]
        pool = children(worker_pid)
        if not running or not pool:
            time.sleep(0.05)
            continue
        target = (running[0].analysis_id, running[0].step)
        for child in pool:
            os.kill(child, signal.SIGKILL)
        killed_at = time.monotonic()
        killed += 1
        log(f"kill {killed}: pool process(es) {pool} while step {target[1]} ran")
        while time.monotonic() < deadline:  # recovered: the killed step finished
            with sessions() as session:
                row = session.get(CheckpointResult, target)
                if row is not None and row.state != "running":
                    recoveries.append(time.monotonic() - killed_at)
                    break
            time.sleep(0.1)
    outcome = Outcome(submitted=len(analyses), recoveries_s=recoveries)
    if killed < kills:
        outcome.failures.append(f"only {killed} of {kills} kills happened within {timeout_s} s")
    while time.monotonic() < deadline and not _finished(sessions, analyses):
        time.sleep(0.2)
    with sessions() as session:
        for ident in analyses:
            analysis = session.get(Analysis, ident)
            assert analysis is not None
            reported = [c["step"] for c in (analysis.report or {}).get("checkpoints", [])]
            rows = session.scalars(
                select(CheckpointResult).where(CheckpointResult.analysis_id == ident)
            ).all()
            done = sorted(r.step for r in rows if r.state == "done")
            if len(reported) != len(set(reported)):
                outcome.duplicated += 1
                outcome.failures.append(f"{ident}: steps reported twice: {reported}")
            elif analysis.state == "succeeded" and done == steps and sorted(reported) == steps:
                outcome.completed += 1
            else:
                outcome.lost += 1
                outcome.failures.append(
                    f"{ident}: {analysis.state} ({analysis.error}); done {done}; reported {reported}"
                )
    return outcome
