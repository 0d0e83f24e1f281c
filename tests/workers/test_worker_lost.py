"""A worker SIGKILLed in the middle of a group: the next worker finishes the group, each checkpoint
finished once (the ones done before the kill are not analysed again)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest_services import Process, Tenant, make_settings, poll, start_worker, upload_run
from obstacle.platform.db import SessionFactory, create_db_engine, session_factory
from obstacle.platform.models import CheckpointResult
from obstacle.service.app import create_app


def results(sessions: SessionFactory, analysis_id: uuid.UUID) -> dict[int, CheckpointResult]:
    with sessions() as session:
        found = session.scalars(
            select(CheckpointResult).where(CheckpointResult.analysis_id == analysis_id)
        )
        return {r.step: r for r in found}


@pytest.mark.slow
def test_a_killed_workers_group_is_redelivered_and_each_checkpoint_finished_once(
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    tenant: Tenant,
    tiny_run: Path,
    processes: Callable[..., Process],
) -> None:
    # A short visibility timeout, so the lost task comes back within seconds (tasks stay below it:
    # the group of 3 checkpoints has 3 × 1 s).
    settings = make_settings(
        database_url,
        redis_url,
        tmp_path,
        visibility_timeout_s=4,
        checkpoints_per_task=3,
        checkpoint_time_limit_s=1,
        finalize_time_limit_s=3,
    )
    engine = create_db_engine(database_url)
    sessions = session_factory(engine)
    with TestClient(create_app(settings)) as client:
        run_id = upload_run(client, tiny_run, tenant.headers)
        first = start_worker(processes, settings, "worker-a")
        analysis = client.post(
            f"/v1/runs/{run_id}/analyses", json={"preset": "quick"}, headers=tenant.headers
        )
        analysis_id = uuid.UUID(analysis.json()["id"])

        # Kill it once one checkpoint of its group is done and the next is running.
        deadline = time.monotonic() + 60
        seen: dict[int, CheckpointResult] = {}
        while time.monotonic() < deadline:
            seen = results(sessions, analysis_id)
            states = [r.state for r in seen.values()]
            if "done" in states and "running" in states:
                break
            time.sleep(0.02)
        first.kill()  # SIGKILL in the middle of the battery: no acknowledgement, no cleanup
        killed_at = time.monotonic()
        done = {s: r.finished_at for s, r in seen.items() if r.state == "done"}
        running = [s for s, r in seen.items() if r.state == "running"]
        assert done and running, f"{seen}; worker log:\n{first.text()[-3000:]}"

        start_worker(processes, settings, "worker-b")
        result = poll(client, str(analysis_id), tenant.headers, timeout=90)

    assert result["state"] == "succeeded", result
    assert result["progress"] == {"done": 3, "total": 3, "running": 0, "failed": 0}
    assert [c["step"] for c in result["report"]["checkpoints"]] == [5, 10, 15]
    rows = results(sessions, analysis_id)
    engine.dispose()
    assert sorted(rows) == [5, 10, 15] and all(r.state == "done" for r in rows.values())
    assert {s: rows[s].finished_at for s in done} == done  # finished before the kill: not redone
    attempts = {s: r.attempts for s, r in rows.items()}
    assert attempts == {s: 2 if s in running else 1 for s in rows}, attempts
    assert time.monotonic() - killed_at < 60
