"""Stall detection: an analysis whose worker heartbeats is left alone however long it runs; once the
heartbeats stop (the worker died) the service's background sweep marks it failed with the reason
within OBSTACLE_ANALYSIS_STALL_TIMEOUT_S and one sweep interval, without anyone reading it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest_services import Tenant, make_settings, upload_run
from obstacle.platform.db import create_db_engine, session_factory
from obstacle.platform.models import Analysis
from obstacle.platform.store import ArtifactStore
from obstacle.service.app import create_app
from obstacle.service.settings import Settings
from obstacle.workers import jobs
from obstacle.workers.rundir import RunDirectories

STALL_S = 3


def _state(ctx: jobs.Context, analysis_id: uuid.UUID) -> tuple[str, str | None]:
    with ctx.sessions() as session:
        analysis = session.get(Analysis, analysis_id)
        assert analysis is not None
        return analysis.state, analysis.error


@pytest.fixture
def stalled_service(
    database_url: str, redis_url: str, tmp_path: Path
) -> Iterator[tuple[Settings, jobs.Context]]:
    """Settings with a STALL_S stall timeout and a worker context heartbeating at its rate."""
    settings = make_settings(
        database_url,
        redis_url,
        tmp_path,
        analysis_stall_timeout_s=STALL_S,
        checkpoints_per_task=1,
        checkpoint_time_limit_s=1,
        finalize_time_limit_s=1,
    )
    engine = create_db_engine(database_url)
    store = ArtifactStore(settings.resolved_artifact_url)
    yield (
        settings,
        jobs.Context(
            sessions=session_factory(engine),
            store=store,
            run_dirs=RunDirectories(store, tmp_path / "cache"),
            device="cpu",
            max_attempts=2,
            send_finalize=lambda _ident, _limit: None,
            heartbeat_s=settings.stall_heartbeat_s,
        ),
    )
    engine.dispose()


def test_a_heartbeating_analysis_lives_and_a_silent_one_fails_within_the_timeout(
    stalled_service: tuple[Settings, jobs.Context], tenant: Tenant, tiny_run: Path
) -> None:
    settings, ctx = stalled_service
    with TestClient(create_app(settings)) as client:  # its lifespan runs the sweep
        run_id = upload_run(client, tiny_run, tenant.headers)
        started = client.post(f"/v1/runs/{run_id}/analyses", json={}, headers=tenant.headers)
        analysis_id = uuid.UUID(started.json()["id"])
        assert jobs._claim(ctx, analysis_id, 5) == 1  # a worker took a checkpoint

        # Twice the timeout at work, heartbeating: not a stall.
        with jobs._heartbeat(ctx, analysis_id):
            time.sleep(2 * STALL_S)
            assert _state(ctx, analysis_id) == ("running", None)

        # The worker dies: nothing touches the analysis any more, and nobody reads it.
        silent_at = time.monotonic()
        while _state(ctx, analysis_id)[0] != "failed":
            assert time.monotonic() - silent_at < STALL_S + settings.stall_heartbeat_s + 5
            time.sleep(0.1)
        waited = time.monotonic() - silent_at
        _, error = _state(ctx, analysis_id)
        read = client.get(f"/v1/analyses/{analysis_id}", headers=tenant.headers).json()
    assert waited >= STALL_S - 1, waited  # not before the timeout
    assert error is not None and "no worker made progress" in error
    assert "OBSTACLE_ANALYSIS_STALL_TIMEOUT_S" in error
    assert read["state"] == "failed" and read["errors"][-1]["message"] == error


def test_a_queued_analysis_waits_behind_a_busy_worker_and_fails_once_no_worker_works(
    stalled_service: tuple[Settings, jobs.Context], tenant: Tenant, tiny_run: Path
) -> None:
    """A deep queue is not a stall: while a worker heartbeats another analysis the queued one is
    left alone past the timeout; when no worker makes progress on anything, it is failed too."""
    settings, ctx = stalled_service
    with TestClient(create_app(settings)) as client:
        run_id = upload_run(client, tiny_run, tenant.headers)
        ids = [
            uuid.UUID(
                client.post(f"/v1/runs/{run_id}/analyses", json={}, headers=tenant.headers)
                .raise_for_status()
                .json()["id"]
            )
            for _ in range(2)
        ]
        busy, queued = ids
        assert jobs._claim(ctx, busy, 5) == 1
        with jobs._heartbeat(ctx, busy):
            time.sleep(2 * STALL_S)
            assert _state(ctx, busy) == ("running", None)
            assert _state(ctx, queued) == ("queued", None)
            read = client.get(f"/v1/analyses/{queued}", headers=tenant.headers).json()
            assert read["state"] == "queued"
        silent_at = time.monotonic()
        while _state(ctx, queued)[0] != "failed":
            assert time.monotonic() - silent_at < STALL_S + settings.stall_heartbeat_s + 5
            time.sleep(0.1)
        assert _state(ctx, busy)[0] == "failed"
