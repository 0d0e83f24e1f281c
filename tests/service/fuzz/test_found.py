"""What the OpenAPI fuzz suite found, kept as plain regression tests."""

from __future__ import annotations

from fastapi.testclient import TestClient

from conftest_services import Tenant


def test_an_offset_past_the_databases_integers_is_a_422(client: TestClient, tenant: Tenant) -> None:
    # It was an OverflowError from the database driver: a 500 and a dropped connection.
    for offset in (2**63, 5908722711109455993, 10**40):
        response = client.get(f"/v1/runs?offset={offset}", headers=tenant.headers)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "offset" in response.json()["detail"]
    assert client.get("/v1/runs?offset=1000000000", headers=tenant.headers).status_code == 200
