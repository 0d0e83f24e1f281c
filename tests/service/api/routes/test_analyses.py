"""POST /v1/runs/{id}/analyses and GET /v1/analyses/{id}, without a worker (see tests/workers)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest_services import Tenant, make_settings, sha_headers, upload_run
from obstacle.artifacts.bundle import pack_probe
from obstacle.artifacts.layout import PROBE_DIR, checkpoint_filename
from obstacle.service.app import create_app
from obstacle.service.embedded import free_port


def test_start_an_analysis_and_read_its_progress(
    client: TestClient, tenant: Tenant, tiny_run: Path
) -> None:
    run_id = upload_run(client, tiny_run, tenant.headers)
    started = client.post(
        f"/v1/runs/{run_id}/analyses",
        json={"preset": "quick", "target_loss": 0.1},
        headers=tenant.headers,
    )
    assert started.status_code == 202, started.text
    analysis = started.json()
    assert started.headers["location"] == f"/v1/analyses/{analysis['id']}"
    assert (
        analysis["state"] == "queued"
        and analysis["preset"] == "quick"
        and analysis["target_loss"] == 0.1
    )
    assert analysis["steps"] == [5, 10, 15]
    assert analysis["progress"] == {"done": 0, "total": 3, "running": 0, "failed": 0}
    assert analysis["report"] is None and analysis["errors"] == []

    read = client.get(f"/v1/analyses/{analysis['id']}", headers=tenant.headers)
    assert read.status_code == 200 and read.json()["id"] == analysis["id"]
    listed = client.get(f"/v1/runs/{run_id}/analyses", headers=tenant.headers).json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == analysis["id"]
    report = client.get(f"/v1/analyses/{analysis['id']}/report.html", headers=tenant.headers)
    assert report.status_code == 409 and "queued" in report.json()["detail"]

    subset = client.post(
        f"/v1/runs/{run_id}/analyses", json={"options": {"steps": [15, 5]}}, headers=tenant.headers
    ).json()
    assert subset["steps"] == [5, 15] and subset["preset"] == "standard"


def test_an_analysis_needs_a_probe_and_checkpoints(
    client: TestClient, tenant: Tenant, tiny_run: Path
) -> None:
    run = client.post("/v1/runs", json={"name": "empty"}, headers=tenant.headers).json()
    no_probe = client.post(f"/v1/runs/{run['id']}/analyses", json={}, headers=tenant.headers)
    assert no_probe.status_code == 409 and "probe" in no_probe.json()["detail"]
    bundle = pack_probe(tiny_run / PROBE_DIR)
    client.put(
        f"/v1/runs/{run['id']}/probe", content=bundle, headers=sha_headers(bundle, tenant.headers)
    )
    no_checkpoints = client.post(f"/v1/runs/{run['id']}/analyses", json={}, headers=tenant.headers)
    assert no_checkpoints.status_code == 409 and "no checkpoints" in no_checkpoints.json()["detail"]


def test_an_analysis_needs_the_optimizer_state_its_checkpoints_name(
    client: TestClient, tenant: Tenant, tiny_run: Path
) -> None:
    run = client.post("/v1/runs", json={"name": "no-optim"}, headers=tenant.headers).json()
    bundle = pack_probe(tiny_run / PROBE_DIR)
    client.put(
        f"/v1/runs/{run['id']}/probe", content=bundle, headers=sha_headers(bundle, tenant.headers)
    )
    data = (tiny_run / "checkpoints" / checkpoint_filename(5)).read_bytes()
    client.put(
        f"/v1/runs/{run['id']}/checkpoints/5",
        content=data,
        headers=sha_headers(data, tenant.headers),
    )
    response = client.post(f"/v1/runs/{run['id']}/analyses", json={}, headers=tenant.headers)
    assert response.status_code == 409 and "/optimizer" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"preset": "cheap"}, "preset"),
        ({"target_loss": "low"}, "target_loss"),
        ({"options": {"colour": "red"}}, "colour"),
        ({"options": {"steps": [7]}}, "[7]"),
    ],
)
def test_a_bad_analysis_request_is_a_422(
    body: dict[str, object], expected: str, client: TestClient, tenant: Tenant, tiny_run: Path
) -> None:
    run_id = upload_run(client, tiny_run, tenant.headers)
    response = client.post(f"/v1/runs/{run_id}/analyses", json=body, headers=tenant.headers)
    assert response.status_code == 422 and expected in response.json()["detail"]
    assert client.get(f"/v1/runs/{run_id}/analyses", headers=tenant.headers).json()["count"] == 0


def test_a_non_finite_target_loss_is_a_422(
    client: TestClient, tenant: Tenant, tiny_run: Path
) -> None:
    run_id = upload_run(client, tiny_run, tenant.headers)
    response = client.post(
        f"/v1/runs/{run_id}/analyses",
        content=b'{"target_loss": NaN}',
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422 and "finite" in response.json()["detail"]


def test_an_analysis_no_worker_takes_is_marked_failed_with_the_reason(
    database_url: str, redis_url: str, tmp_path: Path, tenant: Tenant, tiny_run: Path
) -> None:
    settings = make_settings(
        database_url,
        redis_url,
        tmp_path,
        analysis_stall_timeout_s=2,
        checkpoints_per_task=1,
        checkpoint_time_limit_s=1,
        finalize_time_limit_s=1,
    )
    with TestClient(create_app(settings)) as client:
        run_id = upload_run(client, tiny_run, tenant.headers)
        analysis = client.post(
            f"/v1/runs/{run_id}/analyses", json={}, headers=tenant.headers
        ).json()
        time.sleep(2.2)
        read = client.get(f"/v1/analyses/{analysis['id']}", headers=tenant.headers).json()
    assert read["state"] == "failed" and read["finished_at"] is not None
    assert "no worker made progress" in read["errors"][-1]["message"]


def test_an_unreachable_broker_is_a_503_and_the_analysis_is_failed(
    database_url: str, redis_url: str, tmp_path: Path, tenant: Tenant, tiny_run: Path
) -> None:
    up = make_settings(database_url, redis_url, tmp_path)
    with TestClient(create_app(up)) as client:
        run_id = upload_run(client, tiny_run, tenant.headers)
    down = make_settings(database_url, f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    with TestClient(create_app(down)) as client:
        response = client.post(f"/v1/runs/{run_id}/analyses", json={}, headers=tenant.headers)
        assert response.status_code == 503 and "OBSTACLE_BROKER_URL" in response.json()["detail"]
        listed = client.get(f"/v1/runs/{run_id}/analyses", headers=tenant.headers).json()
    assert [a["state"] for a in listed["data"]] == ["failed"]
    assert "broker" in listed["data"][0]["errors"][0]["message"]
