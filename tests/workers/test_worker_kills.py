"""A real prefork worker whose pool process is SIGKILLed 3 times during analyses (started as
needed so that one always runs): every analysis completes exactly once, none lost, none duplicated (bench/worker_kills.py does it 20 times)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest_services import (
    OBSTACLE_CLI,
    WORKER_READY,
    Process,
    make_settings,
    make_tenant,
    service_env,
    upload_run,
)
from obstacle.platform.db import create_db_engine, session_factory
from obstacle.service.app import create_app
from workers.worker_kills import kill_during_analyses

KILLS = 3


@pytest.mark.slow
def test_sigkilled_pool_processes_lose_and_duplicate_nothing(
    sqlite_database_url: str,
    redis_url: str,
    tmp_path: Path,
    tiny_run: Path,
    processes: Callable[..., Process],
) -> None:
    settings = make_settings(sqlite_database_url, redis_url, tmp_path, checkpoints_per_task=3)
    tenant = make_tenant(sqlite_database_url)
    # Attempts are counted per killed checkpoint; allow more than the kills so none is given up.
    env = service_env(settings, OBSTACLE_MAX_TASK_ATTEMPTS=str(KILLS + 2))
    argv = [*OBSTACLE_CLI, "worker", "--pool", "prefork", "--concurrency", "1"]
    worker = processes(argv, env, "worker")
    engine = create_db_engine(sqlite_database_url)
    try:
        with TestClient(create_app(settings)) as client:
            run_id = upload_run(client, tiny_run, tenant.headers)
            worker.wait_for(WORKER_READY, timeout=90)

            def submit() -> uuid.UUID:
                started = client.post(
                    f"/v1/runs/{run_id}/analyses", json={"preset": "quick"}, headers=tenant.headers
                )
                assert started.status_code == 202, started.text
                return uuid.UUID(started.json()["id"])

            outcome = kill_during_analyses(
                session_factory(engine),
                worker.popen.pid,
                submit,
                [5, 10, 15],
                kills=KILLS,
                timeout_s=540,
            )
    finally:
        engine.dispose()
    assert outcome.failures == [], f"{outcome.failures}; worker log:\n{worker.text()[-3000:]}"
    assert outcome.submitted >= 2
    assert (outcome.completed, outcome.lost, outcome.duplicated) == (outcome.submitted, 0, 0)
    assert len(outcome.recoveries_s) == KILLS
