"""The tasks' bookkeeping, in-process on both databases: each checkpoint counted once, the
run-level task queued once, a checkpoint that keeps killing workers given up, a dead analysis
failed with its reason. (The battery itself runs in tests/workers/test_end_to_end.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest_services import Tenant, make_settings, upload_run
from obstacle.service.app import create_app
from obstacle.service.db import create_db_engine, session_factory
from obstacle.service.models import Analysis, CheckpointResult
from obstacle.service.settings import Settings
from obstacle.service.store import ArtifactStore
from obstacle.workers import jobs
from obstacle.workers.rundir import RunDirectories


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, redis_url, tmp_path)


@pytest.fixture
def queued(
    settings: Settings, tenant: Tenant, tiny_run: Path
) -> Iterator[tuple[TestClient, uuid.UUID]]:
    with TestClient(create_app(settings)) as client:
        run_id = upload_run(client, tiny_run, tenant.headers)
        analysis = client.post(
            f"/v1/runs/{run_id}/analyses", json={}, headers=tenant.headers
        ).json()
        yield client, uuid.UUID(analysis["id"])


class Finalizations(list[uuid.UUID]):
    pass


@pytest.fixture
def context(settings: Settings, tmp_path: Path) -> Iterator[tuple[jobs.Context, Finalizations]]:
    engine = create_db_engine(settings.resolved_database_url)
    store = ArtifactStore(settings.resolved_artifact_url)
    sent = Finalizations()
    ctx = jobs.Context(
        sessions=session_factory(engine),
        store=store,
        run_dirs=RunDirectories(store, tmp_path / "cache"),
        device="cpu",
        max_attempts=2,
        send_finalize=sent.append,
    )
    yield ctx, sent
    engine.dispose()


def rows(ctx: jobs.Context, analysis_id: uuid.UUID) -> dict[int, CheckpointResult]:
    with ctx.sessions() as session:
        found = session.scalars(
            select(CheckpointResult).where(CheckpointResult.analysis_id == analysis_id)
        )
        return {r.step: r for r in found}


def test_a_checkpoint_is_written_once_and_the_run_level_task_queued_once(
    queued: tuple[TestClient, uuid.UUID],
    context: tuple[jobs.Context, Finalizations],
    tenant: Tenant,
) -> None:
    client, analysis_id = queued
    ctx, sent = context
    assert jobs._claim(ctx, analysis_id, 5) == 1
    assert jobs._claim(ctx, analysis_id, 5) == 2  # delivered again while it ran: one more attempt
    assert jobs._finish(ctx, analysis_id, 5, record={"step": 5}, error=None)
    assert not jobs._finish(ctx, analysis_id, 5, record={"step": 5, "late": True}, error=None)
    assert jobs._claim(ctx, analysis_id, 5) is None  # finished: nothing to do
    assert rows(ctx, analysis_id)[5].record == {"step": 5}

    progress = client.get(f"/v1/analyses/{analysis_id}", headers=tenant.headers).json()
    assert progress["state"] == "running" and progress["progress"]["done"] == 1

    for step in (10, 15):
        jobs.record_checkpoint_error(ctx, analysis_id, step, f"step {step}: broken")
    assert sent == [analysis_id]  # the last checkpoint queued the run-level task, once
    jobs.record_checkpoint_error(ctx, analysis_id, 15, "again")
    jobs._maybe_finalize(ctx, analysis_id)
    assert sent == [analysis_id]
    jobs._maybe_finalize(ctx, analysis_id, resend=True)  # a redelivered task re-sends it
    assert sent == [analysis_id, analysis_id]
    body = client.get(f"/v1/analyses/{analysis_id}", headers=tenant.headers).json()
    assert body["state"] == "finalizing"
    assert body["progress"] == {"done": 3, "total": 3, "running": 0, "failed": 2}
    assert [e["step"] for e in body["errors"]] == [10, 15]


def test_a_checkpoint_that_keeps_killing_its_worker_is_given_up(
    queued: tuple[TestClient, uuid.UUID],
    context: tuple[jobs.Context, Finalizations],
    tenant: Tenant,
) -> None:
    _, analysis_id = queued
    ctx, _ = context
    for _ in range(ctx.max_attempts):  # each delivery's worker died before it finished
        jobs._claim(ctx, analysis_id, 10)
    jobs.analyze_checkpoint(ctx, analysis_id, 10)
    row = rows(ctx, analysis_id)[10]
    assert row.state == "error" and row.attempts == 3
    assert "lost 2 times" in (row.error or "")


def test_a_retried_attempt_is_not_counted_as_lost(
    queued: tuple[TestClient, uuid.UUID], context: tuple[jobs.Context, Finalizations]
) -> None:
    _, analysis_id = queued
    ctx, _ = context
    jobs._claim(ctx, analysis_id, 10)
    jobs.release_claim(ctx, analysis_id, 10)
    assert jobs._claim(ctx, analysis_id, 10) == 1


def test_an_analysis_whose_checkpoints_all_failed_is_failed_with_the_reasons(
    queued: tuple[TestClient, uuid.UUID],
    context: tuple[jobs.Context, Finalizations],
    tenant: Tenant,
) -> None:
    client, analysis_id = queued
    ctx, sent = context
    for step in (5, 10, 15):
        jobs.record_checkpoint_error(ctx, analysis_id, step, f"step {step}: out of memory")
    jobs.finalize_analysis(ctx, sent[0])
    body = client.get(f"/v1/analyses/{analysis_id}", headers=tenant.headers).json()
    assert body["state"] == "failed" and body["finished_at"]
    assert "no checkpoint could be analysed" in body["errors"][-1]["message"]
    assert "step 15: out of memory" in body["errors"][-1]["message"]
    jobs.finalize_analysis(ctx, analysis_id)  # again: a finished analysis is left alone
    jobs.analyze_checkpoint(ctx, analysis_id, 5)
    assert (
        client.get(f"/v1/analyses/{analysis_id}", headers=tenant.headers).json()["state"]
        == "failed"
    )


def test_tasks_of_a_deleted_run_do_nothing(
    queued: tuple[TestClient, uuid.UUID],
    context: tuple[jobs.Context, Finalizations],
    tenant: Tenant,
) -> None:
    client, analysis_id = queued
    ctx, sent = context
    with ctx.sessions() as session:
        run_id = session.get(Analysis, analysis_id).run_id  # type: ignore[union-attr]
    assert client.delete(f"/v1/runs/{run_id}", headers=tenant.headers).status_code == 200
    jobs.analyze_checkpoint(ctx, analysis_id, 5)
    jobs.finalize_analysis(ctx, analysis_id)
    assert rows(ctx, analysis_id) == {} and sent == []
