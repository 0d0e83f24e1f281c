"""A worker SIGKILLed mid-analysis: the next worker finishes it, every checkpoint counted once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest_services import Process, Tenant, make_settings, poll, start_worker, upload_run
from obstacle.service.app import create_app
from obstacle.service.db import create_db_engine, session_factory
from obstacle.service.models import CheckpointResult


@pytest.mark.slow
def test_a_killed_workers_checkpoint_is_redelivered_and_counted_once(
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    tenant: Tenant,
    tiny_run: Path,
    processes: Callable[..., Process],
) -> None:
    # A short visibility timeout, so the lost task comes back within seconds (tasks stay below it).
    settings = make_settings(
        database_url,
        redis_url,
        tmp_path,
        visibility_timeout_s=4,
        checkpoint_time_limit_s=3,
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

        deadline = time.monotonic() + 60
        running: list[int] = []
        while not running and time.monotonic() < deadline:
            with sessions() as session:
                running = list(
                    session.scalars(
                        select(CheckpointResult.step).where(
                            CheckpointResult.analysis_id == analysis_id,
                            CheckpointResult.state == "running",
                        )
                    )
                )
            time.sleep(0.02)
        assert running, f"no checkpoint started; worker log:\n{first.text()[-3000:]}"
        first.kill()  # SIGKILL in the middle of the battery: no acknowledgement, no cleanup
        killed_at = time.monotonic()

        start_worker(processes, settings, "worker-b")
        result = poll(client, str(analysis_id), tenant.headers, timeout=90)

    assert result["state"] == "succeeded", result
    assert result["progress"] == {"done": 3, "total": 3, "running": 0, "failed": 0}
    assert [c["step"] for c in result["report"]["checkpoints"]] == [5, 10, 15]
    with sessions() as session:
        rows = session.scalars(
            select(CheckpointResult).where(CheckpointResult.analysis_id == analysis_id)
        ).all()
    engine.dispose()
    assert sorted(r.step for r in rows) == [5, 10, 15] and all(r.state == "done" for r in rows)
    attempts = {r.step: r.attempts for r in rows}
    assert attempts[running[0]] == 2, attempts  # the killed one ran again, once
    assert time.monotonic() - killed_at < 60
