"""Token isolation, for every route: another project's resources are 404 (never 403), no token 401."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest_services import Tenant, make_settings, make_tenant, sha_headers, upload_run
from obstacle.artifacts.bundle import pack_probe
from obstacle.artifacts.layout import PROBE_DIR, checkpoint_filename, optimizer_filename
from obstacle.service.app import create_app

# (method, route template) -> how to call it on tenant A's resources
ROUTES = {
    ("get", "/v1/runs/{run_id}"): None,
    ("delete", "/v1/runs/{run_id}"): None,
    ("put", "/v1/runs/{run_id}/probe"): "probe",
    ("get", "/v1/runs/{run_id}/probe"): None,
    ("get", "/v1/runs/{run_id}/checkpoints"): None,
    ("get", "/v1/runs/{run_id}/checkpoints/{step}"): None,
    ("put", "/v1/runs/{run_id}/checkpoints/{step}"): "checkpoint",
    ("put", "/v1/runs/{run_id}/checkpoints/{step}/optimizer"): "optimizer",
    ("put", "/v1/runs/{run_id}/train-log"): "train_log",
    ("post", "/v1/runs/{run_id}/analyses"): "analysis",
    ("get", "/v1/runs/{run_id}/analyses"): None,
    ("get", "/v1/analyses/{analysis_id}"): None,
    ("get", "/v1/analyses/{analysis_id}/report.html"): None,
    ("get", "/v1/analyses/{analysis_id}/plots/{name}"): None,
}
# Routes that hold no per-resource data: listed here so that a new route must be classified.
PROJECT_WIDE = {("get", "/v1/runs"), ("post", "/v1/runs")}
PUBLIC = {("get", "/healthz"), ("get", "/metrics")}


# One app, two projects and one uploaded run per database for the whole module: the requests
# below change nothing of tenant A's (the test asserts it), so they can share them.


@pytest.fixture(scope="module")
def client(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = make_settings(database_url, redis_url, tmp_path_factory.mktemp("isolation"))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def tenant(database_url: str) -> Tenant:
    return make_tenant(database_url, "alpha")


@pytest.fixture(scope="module")
def other_tenant(database_url: str) -> Tenant:
    return make_tenant(database_url, "beta")


@pytest.fixture(scope="module")
def world(client: TestClient, tenant: Tenant, tiny_run: Path) -> dict[str, str]:
    run_id = upload_run(client, tiny_run, tenant.headers)
    analysis = client.post(
        f"/v1/runs/{run_id}/analyses", json={"preset": "quick"}, headers=tenant.headers
    )
    assert analysis.status_code == 202
    return {
        "run_id": run_id,
        "analysis_id": analysis.json()["id"],
        "step": "10",
        "name": "interpolation.png",
    }


def call(
    client: TestClient,
    method: str,
    template: str,
    ids: dict[str, str],
    headers: dict[str, str],
    run: Path,
):  # type: ignore[no-untyped-def]
    url = template.format(**ids)
    kind = ROUTES.get((method, template))
    if kind == "probe":
        body = pack_probe(run / PROBE_DIR)
        return client.put(url, content=body, headers=sha_headers(body, headers))
    if kind in ("checkpoint", "optimizer"):
        name = checkpoint_filename(10) if kind == "checkpoint" else optimizer_filename(10)
        body = (run / "checkpoints" / name).read_bytes()
        return client.put(url, content=body, headers=sha_headers(body, headers))
    if kind == "train_log":
        body = b'{"step": 1, "lr": 0.1, "loss": 0.5}\n'
        return client.put(url, content=body, headers=sha_headers(body, headers))
    if kind == "analysis":
        return client.post(url, json={}, headers=headers)
    return client.request(method.upper(), url, headers=headers)


def test_every_route_is_classified(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operations = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert operations == set(ROUTES) | PROJECT_WIDE | PUBLIC


@pytest.mark.parametrize(("method", "template"), sorted(ROUTES))
def test_another_projects_resource_is_not_found(
    method: str,
    template: str,
    client: TestClient,
    tenant: Tenant,
    other_tenant: Tenant,
    world: dict[str, str],
    tiny_run: Path,
) -> None:
    response = call(client, method, template, world, other_tenant.headers, tiny_run)
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/problem+json"
    # The same answer as for an id that exists nowhere: existence does not leak.
    nowhere = {**world, "run_id": str(uuid.uuid4()), "analysis_id": str(uuid.uuid4())}
    unknown = call(client, method, template, nowhere, other_tenant.headers, tiny_run)
    assert unknown.status_code == 404
    assert unknown.json()["title"] == response.json()["title"]
    # and tenant A's run is untouched
    mine = client.get(f"/v1/runs/{world['run_id']}", headers=tenant.headers).json()
    assert mine["num_checkpoints"] == 3 and mine["train_log"] is None


@pytest.mark.parametrize(("method", "template"), sorted(set(ROUTES) | PROJECT_WIDE))
def test_no_token_or_an_unknown_token_is_401(
    method: str, template: str, client: TestClient, world: dict[str, str], tiny_run: Path
) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer obst_not-a-real-token"},
        {"Authorization": "Basic abc"},
    ):
        response = call(client, method, template, world, headers, tiny_run)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "obstacle token create" in response.json()["detail"]


def test_runs_are_listed_per_project(
    client: TestClient, tenant: Tenant, other_tenant: Tenant, world: dict[str, str]
) -> None:
    theirs = client.get("/v1/runs", headers=other_tenant.headers).json()
    assert world["run_id"] not in [r["id"] for r in theirs["data"]]
    created = client.post("/v1/runs", json={"name": "b"}, headers=other_tenant.headers).json()
    assert client.get(f"/v1/runs/{created['id']}", headers=tenant.headers).status_code == 404
    mine = client.get("/v1/runs", headers=tenant.headers).json()
    assert [r["id"] for r in mine["data"]] == [world["run_id"]]
