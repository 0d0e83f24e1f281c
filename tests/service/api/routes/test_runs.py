"""Runs: create, list, read, delete (with their files)."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from conftest_services import Tenant, make_settings, upload_run
from obstacle.platform.store import ArtifactStore
from obstacle.service.app import create_app
from obstacle.service.settings import Settings


def test_create_read_and_list_runs(client: TestClient, tenant: Tenant) -> None:
    created = client.post(
        "/v1/runs", json={"name": "resnet-a", "meta": {"lr": 0.1}}, headers=tenant.headers
    )
    assert created.status_code == 201
    run = created.json()
    assert run["name"] == "resnet-a" and run["meta"] == {"lr": 0.1}
    assert run["probe"] is None and run["num_checkpoints"] == 0

    read = client.get(f"/v1/runs/{run['id']}", headers=tenant.headers)
    assert read.status_code == 200 and read.json() == run

    client.post("/v1/runs", json={"name": "resnet-b"}, headers=tenant.headers)
    listed = client.get("/v1/runs", headers=tenant.headers).json()
    assert listed["count"] == 2
    assert [r["name"] for r in listed["data"]] == ["resnet-b", "resnet-a"]  # newest first
    page = client.get("/v1/runs?offset=1&limit=1", headers=tenant.headers).json()
    assert [r["name"] for r in page["data"]] == ["resnet-a"] and page["count"] == 2


def test_a_run_needs_a_name(client: TestClient, tenant: Tenant) -> None:
    response = client.post("/v1/runs", json={"name": ""}, headers=tenant.headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "name" in response.json()["detail"]


def test_an_unknown_field_is_refused(client: TestClient, tenant: Tenant) -> None:
    response = client.post("/v1/runs", json={"name": "x", "colour": "red"}, headers=tenant.headers)
    assert response.status_code == 422
    assert "colour" in response.json()["detail"]


def test_a_run_with_its_uploads(client: TestClient, tenant: Tenant, tiny_run: Path) -> None:
    run_id = upload_run(client, tiny_run, tenant.headers)
    run = client.get(f"/v1/runs/{run_id}", headers=tenant.headers).json()
    assert run["num_checkpoints"] == 3
    assert run["probe"]["num_parameters"] == 4 * 6 + 6 + 6 * 2 + 2
    assert run["probe"]["num_batches"] == 4


def test_deleting_a_run_removes_its_rows_and_files(
    client: TestClient, tenant: Tenant, tiny_run: Path, settings: Settings
) -> None:
    run_id = upload_run(client, tiny_run, tenant.headers)
    store = ArtifactStore(settings.resolved_artifact_url)
    assert store.list_keys(f"runs/{run_id}")

    deleted = client.delete(f"/v1/runs/{run_id}", headers=tenant.headers)
    assert deleted.status_code == 200 and run_id in deleted.json()["message"]
    assert client.get(f"/v1/runs/{run_id}", headers=tenant.headers).status_code == 404
    assert client.get(f"/v1/runs/{run_id}/checkpoints", headers=tenant.headers).status_code == 404
    assert store.list_keys(f"runs/{run_id}") == []
    assert client.delete(f"/v1/runs/{run_id}", headers=tenant.headers).status_code == 404


def test_uploads_work_with_any_fsspec_store(
    database_url: str, redis_url: str, tmp_path: Path, tenant: Tenant, tiny_run: Path
) -> None:
    url = f"memory://obstacle-{uuid.uuid4().hex}"
    settings = make_settings(database_url, redis_url, tmp_path, artifact_url=url)
    with TestClient(create_app(settings)) as client:
        run_id = upload_run(client, tiny_run, tenant.headers)
        keys = ArtifactStore(url).list_keys(f"runs/{run_id}")
        assert len(keys) == 3 + 3 + 3  # probe files, checkpoints, optimizer states
        assert client.delete(f"/v1/runs/{run_id}", headers=tenant.headers).status_code == 200
        assert ArtifactStore(url).list_keys(f"runs/{run_id}") == []
