"""The tasks' bookkeeping, in-process on both databases: each checkpoint counted once, a group
delivered again finishing each step once, the run-level task queued once, a checkpoint that keeps
killing workers given up while its group goes on, a dead analysis failed with its reason. (Whole
analyses through worker processes run in tests/workers/test_end_to_end.py and test_warm_start.py.)"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from conftest_services import Tenant, make_settings, upload_run
from obstacle.platform.db import create_db_engine, session_factory
from obstacle.platform.models import Analysis, Checkpoint, CheckpointResult
from obstacle.platform.store import ArtifactStore
from obstacle.service.app import create_app
from obstacle.service.settings import Settings
from obstacle.workers import jobs
from obstacle.workers.rundir import RunDirectories
from obstacle.workers.time_limits import FinalizeLimit


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
    """The analyses whose run-level task was queued, in order, and the limit each was given."""

    def __init__(self) -> None:
        super().__init__()
        self.limits: list[FinalizeLimit] = []

    def __call__(self, analysis_id: uuid.UUID, limit: FinalizeLimit) -> None:
        self.append(analysis_id)
        self.limits.append(limit)


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
        send_finalize=sent,
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

    jobs.record_checkpoint_errors(ctx, analysis_id, [10, 15], "broken")
    assert sent == [analysis_id]  # the last checkpoint queued the run-level task, once
    jobs.record_checkpoint_errors(ctx, analysis_id, [15], "again")
    jobs._maybe_finalize(ctx, analysis_id)
    assert sent == [analysis_id]
    jobs._maybe_finalize(ctx, analysis_id, resend=True)  # a redelivered task re-sends it
    assert sent == [analysis_id, analysis_id]
    body = client.get(f"/v1/analyses/{analysis_id}", headers=tenant.headers).json()
    assert body["state"] == "finalizing"
    assert body["progress"] == {"done": 3, "total": 3, "running": 0, "failed": 2}
    assert [e["message"] for e in body["errors"]] == ["step 10: broken", "step 15: broken"]


def test_a_redelivered_group_finishes_each_step_once(
    queued: tuple[TestClient, uuid.UUID], context: tuple[jobs.Context, Finalizations]
) -> None:
    _, analysis_id = queued
    ctx, sent = context
    # The first delivery finished step 5, then its worker died while on step 10.
    jobs._claim(ctx, analysis_id, 5)
    jobs._finish(ctx, analysis_id, 5, record={"step": 5, "delivery": 1}, error=None)
    jobs._claim(ctx, analysis_id, 10)

    jobs.analyze_checkpoints(ctx, analysis_id, [5, 10, 15])  # delivered again
    after = rows(ctx, analysis_id)
    assert {s: r.state for s, r in after.items()} == {5: "done", 10: "done", 15: "done"}
    assert after[5].record == {"step": 5, "delivery": 1}  # not analysed again
    assert {s: r.attempts for s, r in after.items()} == {5: 1, 10: 2, 15: 1}
    for step in (10, 15):
        record = after[step].record or {}
        assert record["step"] == step and record["details"]["lanczos"]["matvecs"] > 0
    assert sent == [analysis_id]
    # Priced from the two steps this delivery measured (step 5's record counts no passes).
    assert sent.limits[0].predicted_s is not None and sent.limits[0].predicted_s > 0
    # In process there is no visibility timeout, so no cap: the floor or three times the prediction.
    assert sent.limits[0].seconds == max(240, math.ceil(3 * sent.limits[0].predicted_s))

    jobs.analyze_checkpoints(ctx, analysis_id, [5, 10, 15])  # and again, once all had finished
    again = rows(ctx, analysis_id)
    assert {s: (r.attempts, r.finished_at, r.record) for s, r in again.items()} == {
        s: (r.attempts, r.finished_at, r.record) for s, r in after.items()
    }
    assert sent == [analysis_id, analysis_id]  # it re-sends the run-level task, which is idempotent


def test_a_checkpoint_that_keeps_killing_its_worker_is_given_up_and_its_group_goes_on(
    queued: tuple[TestClient, uuid.UUID],
    context: tuple[jobs.Context, Finalizations],
    tenant: Tenant,
) -> None:
    _, analysis_id = queued
    ctx, sent = context
    for _ in range(ctx.max_attempts):  # each delivery's worker died on this checkpoint
        jobs._claim(ctx, analysis_id, 10)
    jobs.analyze_checkpoints(ctx, analysis_id, [5, 10, 15])
    found = rows(ctx, analysis_id)
    assert found[10].state == "error" and found[10].attempts == 3
    assert "lost 2 times" in (found[10].error or "")
    assert found[5].state == found[15].state == "done"
    assert sent == [analysis_id]


def test_a_group_records_a_failing_step_and_goes_on(
    queued: tuple[TestClient, uuid.UUID], context: tuple[jobs.Context, Finalizations]
) -> None:
    _, analysis_id = queued
    ctx, sent = context
    with ctx.sessions() as session:  # step 10's checkpoint is gone: the battery cannot load it
        run_id = session.get(Analysis, analysis_id).run_id  # type: ignore[union-attr]
        session.execute(
            delete(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step == 10)
        )
        session.commit()
    jobs.analyze_checkpoints(ctx, analysis_id, [5, 10, 15])
    found = rows(ctx, analysis_id)
    assert {s: r.state for s, r in found.items()} == {5: "done", 10: "error", 15: "done"}
    assert (found[10].error or "").startswith("step 10: ") and "no checkpoint" in (
        found[10].error or ""
    )
    assert sent == [analysis_id]


def test_a_retried_attempt_is_not_counted_as_lost(
    queued: tuple[TestClient, uuid.UUID], context: tuple[jobs.Context, Finalizations]
) -> None:
    _, analysis_id = queued
    ctx, _ = context
    jobs._claim(ctx, analysis_id, 10)
    jobs.release_claims(ctx, analysis_id, [5, 10, 15])
    assert jobs._claim(ctx, analysis_id, 10) == 1


def test_an_analysis_whose_checkpoints_all_failed_is_failed_with_the_reasons(
    queued: tuple[TestClient, uuid.UUID],
    context: tuple[jobs.Context, Finalizations],
    tenant: Tenant,
) -> None:
    client, analysis_id = queued
    ctx, sent = context
    jobs.record_checkpoint_errors(ctx, analysis_id, [5, 10, 15], "out of memory")
    jobs.finalize_analysis(ctx, sent[0])
    body = client.get(f"/v1/analyses/{analysis_id}", headers=tenant.headers).json()
    assert body["state"] == "failed" and body["finished_at"]
    assert "no checkpoint could be analysed" in body["errors"][-1]["message"]
    assert "step 15: out of memory" in body["errors"][-1]["message"]
    jobs.finalize_analysis(ctx, analysis_id)  # again: a finished analysis is left alone
    jobs.analyze_checkpoints(ctx, analysis_id, [5])
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
    jobs.analyze_checkpoints(ctx, analysis_id, [5, 10, 15])
    jobs.record_checkpoint_errors(ctx, analysis_id, [5], "late")
    jobs.finalize_analysis(ctx, analysis_id)
    assert rows(ctx, analysis_id) == {} and sent == []


def test_a_worker_memory_budget_too_small_is_each_step_s_error_naming_what_to_lower(
    queued: tuple[TestClient, uuid.UUID], context: tuple[jobs.Context, Finalizations]
) -> None:
    _, analysis_id = queued
    ctx, sent = context
    ctx.memory_budget = "1KB"  # OBSTACLE_MEMORY_BUDGET: no plan fits, refused before any work
    jobs.analyze_checkpoints(ctx, analysis_id, [5, 10, 15])
    found = rows(ctx, analysis_id)
    assert {r.state for r in found.values()} == {jobs.ERROR}
    for row in found.values():
        assert "memory budget is 1000 B (requested)" in (row.error or "")
        assert "--memory-budget" in (row.error or "")
    assert sent == [analysis_id]


def test_worker_memory_budget_setting_is_validated() -> None:
    from obstacle.workers.settings import WorkerSettings

    assert WorkerSettings(memory_budget="20GiB").memory_budget == "20GiB"
    with pytest.raises(ValueError, match=r"OBSTACLE_MEMORY_BUDGET.*must be a size such as 8GiB"):
        WorkerSettings(memory_budget="lots")


def test_a_group_that_would_run_past_its_budget_hands_the_rest_to_a_new_task(
    queued: tuple[TestClient, uuid.UUID], context: tuple[jobs.Context, Finalizations]
) -> None:
    _, analysis_id = queued
    ctx, sent = context
    handed: list[tuple[uuid.UUID, list[int]]] = []
    ctx.send_group = lambda ident, steps: handed.append((ident, steps))
    # Any budget the first checkpoint used up: it runs (a task always makes progress), the rest go.
    jobs.analyze_checkpoints(ctx, analysis_id, [5, 10, 15], budget_s=1e-6)
    assert handed == [(analysis_id, [10, 15])]
    assert {s: r.state for s, r in rows(ctx, analysis_id).items()} == {5: "done"}
    assert sent == []  # the new task queues the run-level task when it is done
    jobs.analyze_checkpoints(ctx, analysis_id, [10, 15], budget_s=None)  # the new task, unbounded
    assert {s: r.state for s, r in rows(ctx, analysis_id).items()} == {
        5: "done",
        10: "done",
        15: "done",
    }
    assert handed == [(analysis_id, [10, 15])] and sent == [analysis_id]
