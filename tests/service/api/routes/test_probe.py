"""PUT /v1/runs/{id}/probe: the bundle is validated before anything is stored."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest_services import Tenant, make_settings, sha_headers
from obstacle.artifacts.bundle import pack_probe
from obstacle.artifacts.layout import PROBE_DATA, PROBE_DIR, PROBE_MANIFEST, PROBE_PROGRAM
from obstacle.platform.store import ArtifactStore
from obstacle.service.app import create_app
from obstacle.service.settings import Settings
from service.bundles import (
    modified_safetensors,
    probe_files,
    rehash,
    with_pickled_sample_inputs,
    zip_bundle,
)


@pytest.fixture
def run_id(client: TestClient, tenant: Tenant) -> str:
    response = client.post("/v1/runs", json={"name": "probe-test"}, headers=tenant.headers)
    return str(response.json()["id"])


def put(client: TestClient, run_id: str, body: bytes, tenant: Tenant) -> object:
    return client.put(
        f"/v1/runs/{run_id}/probe", content=body, headers=sha_headers(body, tenant.headers)
    )


def assert_nothing_stored(
    client: TestClient, run_id: str, tenant: Tenant, settings: Settings
) -> None:
    assert client.get(f"/v1/runs/{run_id}/probe", headers=tenant.headers).status_code == 404
    assert ArtifactStore(settings.resolved_artifact_url).list_keys(f"runs/{run_id}") == []
    assert list(settings.resolved_upload_tmp_dir.iterdir()) == []


def test_upload_then_the_same_bytes_again_is_a_no_op(
    client: TestClient, tenant: Tenant, run_id: str, tiny_run: Path, settings: Settings
) -> None:
    bundle = pack_probe(tiny_run / PROBE_DIR)
    assert bundle == pack_probe(tiny_run / PROBE_DIR), "packing must be deterministic"
    first = client.put(
        f"/v1/runs/{run_id}/probe", content=bundle, headers=sha_headers(bundle, tenant.headers)
    )
    assert first.status_code == 201, first.text
    assert first.json()["sha256"] == hashlib.sha256(bundle).hexdigest()
    keys = ArtifactStore(settings.resolved_artifact_url).list_keys(f"runs/{run_id}")
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == sorted(
        [PROBE_DATA, PROBE_MANIFEST, PROBE_PROGRAM]
    )

    again = client.put(
        f"/v1/runs/{run_id}/probe", content=bundle, headers=sha_headers(bundle, tenant.headers)
    )
    assert again.status_code == 200 and again.json() == first.json()
    assert client.get(f"/v1/runs/{run_id}/probe", headers=tenant.headers).json() == first.json()
    assert ArtifactStore(settings.resolved_artifact_url).list_keys(f"runs/{run_id}") == keys


def test_a_different_probe_for_the_same_run_is_a_conflict(
    client: TestClient, tenant: Tenant, run_id: str, tiny_run: Path, other_model_run: Path
) -> None:
    assert put(client, run_id, pack_probe(tiny_run / PROBE_DIR), tenant).status_code == 201  # type: ignore[attr-defined]
    response = put(client, run_id, pack_probe(other_model_run / PROBE_DIR), tenant)
    assert response.status_code == 409  # type: ignore[attr-defined]
    assert "new run" in response.json()["detail"]  # type: ignore[attr-defined]


def test_checksum_is_required_and_checked(
    client: TestClient, tenant: Tenant, run_id: str, tiny_run: Path, settings: Settings
) -> None:
    bundle = pack_probe(tiny_run / PROBE_DIR)
    missing = client.put(f"/v1/runs/{run_id}/probe", content=bundle, headers=tenant.headers)
    assert missing.status_code == 400 and "X-Content-SHA256" in missing.json()["detail"]
    malformed = client.put(
        f"/v1/runs/{run_id}/probe",
        content=bundle,
        headers={**tenant.headers, "X-Content-SHA256": "abc"},
    )
    assert malformed.status_code == 400
    wrong = client.put(
        f"/v1/runs/{run_id}/probe",
        content=bundle,
        headers={**tenant.headers, "X-Content-SHA256": hashlib.sha256(b"other").hexdigest()},
    )
    assert wrong.status_code == 422
    assert wrong.json()["type"] == "urn:obstacle:problem:checksum-mismatch"
    assert_nothing_stored(client, run_id, tenant, settings)


def test_an_oversized_bundle_is_refused_while_streaming(
    database_url: str, redis_url: str, tmp_path: Path, tenant: Tenant, tiny_run: Path
) -> None:
    small = make_settings(database_url, redis_url, tmp_path, max_probe_bytes=1000)
    bundle = pack_probe(tiny_run / PROBE_DIR)
    with TestClient(create_app(small)) as client:
        run_id = client.post("/v1/runs", json={"name": "big"}, headers=tenant.headers).json()["id"]
        declared = put(client, run_id, bundle, tenant)
        assert declared.status_code == 413  # type: ignore[attr-defined]
        assert "OBSTACLE_MAX_PROBE_BYTES" in declared.json()["detail"]  # type: ignore[attr-defined]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
            for i in range(0, len(bundle), 256):
                yield bundle[i : i + 256]

        streamed = client.put(
            f"/v1/runs/{run_id}/probe",
            content=chunks(),
            headers=sha_headers(bundle, tenant.headers),
        )
        assert streamed.status_code == 413
        assert_nothing_stored(client, run_id, tenant, small)


CORRUPTIONS = {
    "not a zip": lambda files, good, marker: b"PK\x03\x04 this is not really a zip archive" * 20,
    "truncated": lambda files, good, marker: good[: len(good) // 2],
    "member missing": lambda files, good, marker: zip_bundle(
        {k: v for k, v in files.items() if k != PROBE_DATA}
    ),
    "extra member": lambda files, good, marker: zip_bundle({**files, "notes.txt": b"hello"}),
    "path traversal": lambda files, good, marker: zip_bundle(
        files, names={PROBE_DATA: "../../data.safetensors"}
    ),
    "manifest not json": lambda files, good, marker: zip_bundle(
        {**files, PROBE_MANIFEST: b"{not json"}
    ),
    "manifest hash forged": lambda files, good, marker: zip_bundle(
        {**files, PROBE_DATA: files[PROBE_DATA][:-8] + b"\x00" * 8}
    ),
    "data truncated": lambda files, good, marker: zip_bundle(
        rehash({**files, PROBE_DATA: files[PROBE_DATA][:-9]})
    ),
    "data with NaN": lambda files, good, marker: zip_bundle(
        rehash(
            {
                **files,
                PROBE_DATA: modified_safetensors(
                    files[PROBE_DATA], {"batch_1.0": np.full((16, 4), np.nan)}
                ),
            }
        )
    ),
    "program carries a pickle": lambda files, good, marker: zip_bundle(
        rehash({**files, PROBE_PROGRAM: with_pickled_sample_inputs(files[PROBE_PROGRAM], marker)})
    ),
    "program not an archive": lambda files, good, marker: zip_bundle(
        rehash({**files, PROBE_PROGRAM: b"\x80\x04K\x01."})
    ),
}

EXPECTED = {
    "not a zip": "not a readable zip",
    "truncated": "not a readable zip",
    "member missing": "exactly",
    "extra member": "exactly",
    "path traversal": "exactly",
    "manifest not json": "manifest",
    "manifest hash forged": "content_hash",
    "data truncated": "data.safetensors",
    "data with NaN": "batch_1.0",
    "program carries a pickle": "sample_inputs",
    "program not an archive": "program.pt2",
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_bad_bundle_gets_a_clear_4xx_and_leaves_nothing(
    case: str,
    client: TestClient,
    tenant: Tenant,
    run_id: str,
    tiny_run: Path,
    settings: Settings,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned"
    files = probe_files(tiny_run)
    body = CORRUPTIONS[case](files, pack_probe(tiny_run / PROBE_DIR), marker)
    response = client.put(
        f"/v1/runs/{run_id}/probe", content=body, headers=sha_headers(body, tenant.headers)
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert (
        problem["status"] == 422
        and problem["title"]
        and problem["type"].startswith("urn:obstacle:problem:")
    )
    assert EXPECTED[case] in problem["detail"], problem["detail"]
    assert "/tmp" not in problem["detail"], "the detail must not leak server paths"
    assert not marker.exists(), "nothing from the upload may run"
    assert_nothing_stored(client, run_id, tenant, settings)
    if case == "program carries a pickle":
        assert problem["type"] == "urn:obstacle:problem:unsafe-program"
