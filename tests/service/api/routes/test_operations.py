"""GET /healthz, GET /metrics, the OpenAPI document and errors as problem documents."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from conftest_services import Tenant, make_settings
from obstacle.service.app import create_app
from obstacle.service.embedded import free_port


def test_healthz_reports_database_and_broker(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}


def test_healthz_is_503_naming_what_is_down(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    with TestClient(create_app(settings)) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert (
        body["status"] == "unavailable"
        and body["database"] == "ok"
        and "unreachable" in body["broker"]
    )


def test_metrics_count_requests_by_route_template(client: TestClient, tenant: Tenant) -> None:
    run = client.post("/v1/runs", json={"name": "m"}, headers=tenant.headers).json()
    client.get(f"/v1/runs/{run['id']}", headers=tenant.headers)
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'obstacle_http_requests_total{method="POST",route="/v1/runs",status="201"} 1.0' in text
    assert 'route="/v1/runs/{run_id}"' in text and run["id"] not in text
    assert 'obstacle_upload_bytes_total{route="/v1/runs"}' in text
    assert 'obstacle_analyses{state="queued"}' in text


def test_openapi_is_served_and_every_route_has_a_response_model(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operations = [
        (path, method, op) for path, item in spec["paths"].items() for method, op in item.items()
    ]
    assert len(operations) >= 14
    for path, method, op in operations:
        success = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        assert success, f"{method.upper()} {path} documents no success response"
        for code, response in success.items():
            content = response.get("content", {})
            assert content, f"{method.upper()} {path} {code} has no content"
            for media, schema in content.items():
                assert schema.get("schema"), f"{method.upper()} {path} {code} {media} has no schema"
                if media == "application/json":
                    assert "$ref" in schema["schema"], (
                        f"{method.upper()} {path} {code} has no response model"
                    )
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


def test_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    missing = client.get("/v1/nothing")
    assert (
        missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    )
    assert "/openapi.json" in missing.json()["detail"]
    wrong = client.patch("/v1/runs")
    assert wrong.status_code == 405 and "PATCH" in wrong.json()["detail"]
