"""Concurrent uploads of the same object over real HTTP end in 200/201/409, never a 500 (issue 13)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest_services import Tenant, make_settings, make_tenant
from obstacle.artifacts.bundle import pack_probe
from obstacle.artifacts.layout import PROBE_DIR, list_checkpoints
from obstacle.platform.store import ArtifactStore
from service.live import serving

CONCURRENT = 4


Live = tuple[str, Tenant, ArtifactStore]


@pytest.fixture(scope="module")
def live(
    postgresql_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """The service over real HTTP, a project's token, and the store the service writes."""
    data_dir = tmp_path_factory.mktemp("races")
    settings = make_settings(postgresql_database_url, redis_url, data_dir)
    with serving(settings, data_dir) as (base, _):
        store = ArtifactStore(settings.resolved_artifact_url)
        yield base, make_tenant(postgresql_database_url), store


def _all_at_once(base: str, path: str, bodies: list[bytes], tenant: Tenant) -> list[httpx.Response]:
    def put(body: bytes) -> httpx.Response:
        headers = {**tenant.headers, "X-Content-SHA256": hashlib.sha256(body).hexdigest()}
        with httpx.Client(base_url=base, timeout=120) as client:
            return client.put(path, content=body, headers=headers)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(put, bodies))


def _statuses(responses: list[httpx.Response]) -> Counter[int]:
    for response in responses:
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["detail"]
    return Counter(r.status_code for r in responses)


def _new_run(base: str, tenant: Tenant) -> str:
    response = httpx.post(f"{base}/v1/runs", json={"name": "race"}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


def test_the_same_probe_uploaded_concurrently_is_stored_once(live: Live, tiny_run: Path) -> None:
    base, tenant, _ = live
    bundle = pack_probe(tiny_run / PROBE_DIR)
    for _ in range(3):
        run_id = _new_run(base, tenant)
        responses = _all_at_once(base, f"/v1/runs/{run_id}/probe", [bundle] * CONCURRENT, tenant)
        assert _statuses(responses) == {201: 1, 200: CONCURRENT - 1}
        assert len({r.json()["sha256"] for r in responses}) == 1


def test_different_probes_uploaded_concurrently_give_one_winner_and_conflicts(
    live: Live, tiny_run: Path, other_model_run: Path
) -> None:
    base, tenant, _ = live
    bundles = [pack_probe(tiny_run / PROBE_DIR), pack_probe(other_model_run / PROBE_DIR)]
    for _ in range(3):  # the losers' clean-up raced (a 500) in about one round in three
        run_id = _new_run(base, tenant)
        responses = _all_at_once(base, f"/v1/runs/{run_id}/probe", bundles * 2, tenant)
        statuses = _statuses(responses)
        assert statuses[201] == 1 and statuses[200] == 1 and statuses[409] == 2, statuses


def test_the_same_checkpoint_uploaded_concurrently_is_stored_once(
    live: Live, tiny_run: Path
) -> None:
    base, tenant, _ = live
    run_id = _new_run(base, tenant)
    bundle = pack_probe(tiny_run / PROBE_DIR)
    assert _statuses(_all_at_once(base, f"/v1/runs/{run_id}/probe", [bundle], tenant)) == {201: 1}
    for step, path in list_checkpoints(tiny_run):
        data = path.read_bytes()
        url = f"/v1/runs/{run_id}/checkpoints/{step}"
        responses = _all_at_once(base, url, [data] * CONCURRENT, tenant)
        assert _statuses(responses) == {201: 1, 200: CONCURRENT - 1}
    listed = httpx.get(f"{base}/v1/runs/{run_id}/checkpoints", headers=tenant.headers).json()
    assert listed["count"] == len(list_checkpoints(tiny_run))


def test_a_run_deleted_under_its_uploads_answers_4xx_and_keeps_no_file(
    live: Live, tiny_run: Path
) -> None:
    # Each upload ends before the run's deletion (201: the deletion takes its file), or meets a
    # run that is gone (404, or 409 once its probe is gone); one whose file went in after the
    # deletion's clean-up removes it when its row is refused.
    base, tenant, store = live
    bundle = pack_probe(tiny_run / PROBE_DIR)
    checkpoints = [(step, path.read_bytes()) for step, path in list_checkpoints(tiny_run)]
    for _ in range(3):
        run_id = _new_run(base, tenant)
        assert _statuses(_all_at_once(base, f"/v1/runs/{run_id}/probe", [bundle], tenant)) == {
            201: 1
        }

        def put(url: str, data: bytes) -> httpx.Response:
            headers = {**tenant.headers, "X-Content-SHA256": hashlib.sha256(data).hexdigest()}
            with httpx.Client(base_url=base, timeout=120) as client:
                return client.put(url, content=data, headers=headers)

        with ThreadPoolExecutor(len(checkpoints) + 1) as pool:
            uploads = [
                pool.submit(put, f"/v1/runs/{run_id}/checkpoints/{step}", data)
                for step, data in checkpoints
            ]
            deleted = pool.submit(httpx.delete, f"{base}/v1/runs/{run_id}", headers=tenant.headers)
            responses = [future.result() for future in uploads]
        assert deleted.result().status_code == 200, deleted.result().text
        statuses = _statuses(responses)
        assert set(statuses) <= {201, 404, 409}, [r.text for r in responses]
        assert store.list_keys(f"runs/{run_id}") == []
