"""PUT /v1/runs/{id}/train-log: every line is checked; other bytes replace the log as it grows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest_services import Tenant, make_settings, sha_headers
from obstacle.platform.store import ArtifactStore
from obstacle.service.app import create_app
from obstacle.service.settings import Settings

LOG = b"".join(
    json.dumps({"step": s, "lr": 0.1, "loss": 1.0 / s}).encode() + b"\n" for s in range(1, 6)
)


@pytest.fixture
def run_id(client: TestClient, tenant: Tenant) -> str:
    response = client.post("/v1/runs", json={"name": "log-test"}, headers=tenant.headers)
    return str(response.json()["id"])


def put(client: TestClient, run_id: str, body: bytes, tenant: Tenant):  # type: ignore[no-untyped-def]
    return client.put(
        f"/v1/runs/{run_id}/train-log", content=body, headers=sha_headers(body, tenant.headers)
    )


def stored(settings: Settings, run_id: str) -> list[str]:
    return ArtifactStore(settings.resolved_artifact_url).list_keys(f"runs/{run_id}")


def test_upload_then_the_same_bytes_again_is_a_no_op(
    client: TestClient, tenant: Tenant, run_id: str, settings: Settings
) -> None:
    assert client.get(f"/v1/runs/{run_id}", headers=tenant.headers).json()["train_log"] is None
    first = put(client, run_id, LOG, tenant)
    assert first.status_code == 201, first.text
    sha = hashlib.sha256(LOG).hexdigest()
    assert first.json() == {"sha256": sha, "size_bytes": len(LOG), "entries": 5}
    keys = stored(settings, run_id)
    assert keys == [f"runs/{run_id}/train_log/{sha}.jsonl"]

    again = put(client, run_id, LOG, tenant)
    assert again.status_code == 200 and again.json() == first.json()
    assert stored(settings, run_id) == keys
    run = client.get(f"/v1/runs/{run_id}", headers=tenant.headers).json()
    assert run["train_log"] == first.json()
    assert list(settings.resolved_upload_tmp_dir.iterdir()) == []


def test_a_grown_log_replaces_the_old_one(
    client: TestClient, tenant: Tenant, run_id: str, settings: Settings
) -> None:
    assert put(client, run_id, LOG, tenant).status_code == 201
    # A diverged step, as Python's json writes it, and an entry without lr: both accepted.
    grown = LOG + b'{"step": 6, "lr": 0.1, "loss": NaN}\n\n{"step": 7, "loss": Infinity}\n'
    replaced = put(client, run_id, grown, tenant)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["entries"] == 7
    sha = hashlib.sha256(grown).hexdigest()
    assert stored(settings, run_id) == [f"runs/{run_id}/train_log/{sha}.jsonl"]
    run = client.get(f"/v1/runs/{run_id}", headers=tenant.headers).json()
    assert run["train_log"]["sha256"] == sha


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        (b"not json", "must be a JSON object"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"lr": 0.1, "loss": 1.0}', "'step' must be an int >= 0"),
        (b'{"step": -1, "lr": 0.1, "loss": 1.0}', "'step' must be an int >= 0"),
        (b'{"step": 2.5, "lr": 0.1, "loss": 1.0}', "'step' must be an int >= 0"),
        (b'{"step": true, "lr": 0.1, "loss": 1.0}', "'step' must be an int >= 0"),
        (b'{"step": 6, "lr": 0.1}', "'loss' is required"),
        (b'{"step": 6, "lr": 0.1, "loss": "1.0"}', "'loss' must be a number"),
        (b'{"step": 6, "lr": NaN, "loss": 1.0}', "'lr' must be a finite number >= 0"),
        (b'{"step": 6, "lr": -0.1, "loss": 1.0}', "'lr' must be a finite number >= 0"),
        (b'{"step": 6, "lr": 0.1, "loss": 1.0, "\xff": 1}', "must be UTF-8"),
    ],
)
def test_a_malformed_line_is_refused_naming_it(
    client: TestClient, tenant: Tenant, run_id: str, settings: Settings, line: bytes, rule: str
) -> None:
    response = put(client, run_id, LOG + line + b"\n", tenant)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:obstacle:problem:invalid-train-log"
    assert "line 6:" in problem["detail"] and rule in problem["detail"]
    assert stored(settings, run_id) == []
    assert client.get(f"/v1/runs/{run_id}", headers=tenant.headers).json()["train_log"] is None


def test_a_malformed_log_leaves_the_previous_one(
    client: TestClient, tenant: Tenant, run_id: str
) -> None:
    first = put(client, run_id, LOG, tenant).json()
    assert put(client, run_id, b"\n  \n", tenant).status_code == 422  # no entries
    assert client.get(f"/v1/runs/{run_id}", headers=tenant.headers).json()["train_log"] == first


def test_checksum_is_required_and_checked(
    client: TestClient, tenant: Tenant, run_id: str, settings: Settings
) -> None:
    url = f"/v1/runs/{run_id}/train-log"
    missing = client.put(url, content=LOG, headers=tenant.headers)
    assert missing.status_code == 400 and "X-Content-SHA256" in missing.json()["detail"]
    wrong = client.put(
        url,
        content=LOG,
        headers={**tenant.headers, "X-Content-SHA256": hashlib.sha256(b"other").hexdigest()},
    )
    assert wrong.status_code == 422
    assert wrong.json()["type"] == "urn:obstacle:problem:checksum-mismatch"
    assert stored(settings, run_id) == []


def test_an_oversized_log_is_refused(
    database_url: str, redis_url: str, tmp_path: Path, tenant: Tenant
) -> None:
    small = make_settings(database_url, redis_url, tmp_path, max_train_log_bytes=100)
    with TestClient(create_app(small)) as client:
        run_id = client.post("/v1/runs", json={"name": "big"}, headers=tenant.headers).json()["id"]
        response = put(client, run_id, LOG, tenant)
        assert response.status_code == 413
        assert "OBSTACLE_MAX_TRAIN_LOG_BYTES" in response.json()["detail"]
        assert stored(small, run_id) == []


def test_another_projects_run_is_not_found(
    client: TestClient, tenant: Tenant, other_tenant: Tenant, run_id: str, settings: Settings
) -> None:
    response = put(client, run_id, LOG, other_tenant)
    assert response.status_code == 404
    assert stored(settings, run_id) == []


def test_deleting_the_run_deletes_its_log(
    client: TestClient, tenant: Tenant, run_id: str, settings: Settings
) -> None:
    assert put(client, run_id, LOG, tenant).status_code == 201
    assert client.delete(f"/v1/runs/{run_id}", headers=tenant.headers).status_code == 200
    assert stored(settings, run_id) == []
