"""The workers' probe cache is keyed by everything that defines the probe: two projects that upload
the same program and data with different manifests each get their own probe's result."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from conftest_services import Tenant, make_settings, upload_run
from obstacle.artifacts.layout import PROBE_DIR, PROBE_MANIFEST
from obstacle.platform.db import create_db_engine, session_factory
from obstacle.platform.models import CheckpointResult
from obstacle.platform.store import ArtifactStore
from obstacle.service.app import create_app
from obstacle.workers import jobs
from obstacle.workers.rundir import RunDirectories


def _with_batch_size(run_dir: Path, dest: Path, batch_size: int) -> Path:
    """A copy of ``run_dir`` whose manifest declares another batch size; program and data as they
    were (the probe's content hash covers only those two)."""
    shutil.copytree(run_dir, dest)
    path = dest / PROBE_DIR / PROBE_MANIFEST
    manifest = json.loads(path.read_text())
    manifest["batch_size"] = batch_size
    path.write_text(json.dumps(manifest))
    return dest


def test_same_program_different_manifests_get_their_own_probe(
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    tenant: Tenant,
    other_tenant: Tenant,
    tiny_run: Path,
) -> None:
    settings = make_settings(database_url, redis_url, tmp_path)
    other_run = _with_batch_size(tiny_run, tmp_path / "other-run", batch_size=3)
    engine = create_db_engine(database_url)
    store = ArtifactStore(settings.resolved_artifact_url)
    # One context, as one worker process holds it: the same run directories and battery cache.
    ctx = jobs.Context(
        sessions=session_factory(engine),
        store=store,
        run_dirs=RunDirectories(store, tmp_path / "cache"),
        device="cpu",
        max_attempts=2,
        send_finalize=lambda _ident, _limit: None,
    )
    batch_sizes: dict[str, int] = {}
    try:
        with TestClient(create_app(settings)) as client:
            for who, run_dir in ((tenant, tiny_run), (other_tenant, other_run)):
                run_id = upload_run(client, run_dir, who.headers)
                started = client.post(
                    f"/v1/runs/{run_id}/analyses",
                    json={"preset": "quick", "options": {"steps": [5]}},
                    headers=who.headers,
                )
                assert started.status_code == 202, started.text
                analysis_id = uuid.UUID(started.json()["id"])
                jobs.analyze_checkpoints(ctx, analysis_id, [5])
                with ctx.sessions() as session:
                    row = session.get(CheckpointResult, (analysis_id, 5))
                    assert row is not None and row.state == "done", row and row.error
                    assert row.record is not None
                    batch_sizes[who.project] = row.record["probe_batch_size"]
    finally:
        engine.dispose()
    assert batch_sizes == {tenant.project: 16, other_tenant.project: 3}, batch_sizes
    probes = sorted(p.name for p in (tmp_path / "cache").glob("*/probes/*") if p.is_dir())
    assert len(probes) == 2, probes  # one cached probe per manifest, not one per program
