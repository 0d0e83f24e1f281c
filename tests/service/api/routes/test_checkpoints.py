"""PUT /v1/runs/{id}/checkpoints/{step} (and /optimizer): checked against the probe, idempotent."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest_services import Tenant, make_settings, sha_headers
from obstacle.artifacts.bundle import pack_probe
from obstacle.artifacts.layout import PROBE_DIR, checkpoint_filename, optimizer_filename
from obstacle.platform.store import ArtifactStore
from obstacle.service.app import create_app
from obstacle.service.settings import Settings
from service.bundles import modified_safetensors, tensors


def checkpoint(run_dir: Path, step: int) -> bytes:
    return (run_dir / "checkpoints" / checkpoint_filename(step)).read_bytes()


def optimizer_state(run_dir: Path, step: int) -> bytes:
    return (run_dir / "checkpoints" / optimizer_filename(step)).read_bytes()


@pytest.fixture
def run_id(client: TestClient, tenant: Tenant, tiny_run: Path) -> str:
    run = client.post("/v1/runs", json={"name": "ckpt-test"}, headers=tenant.headers).json()
    bundle = pack_probe(tiny_run / PROBE_DIR)
    response = client.put(
        f"/v1/runs/{run['id']}/probe", content=bundle, headers=sha_headers(bundle, tenant.headers)
    )
    assert response.status_code == 201
    return str(run["id"])


def put(
    client: TestClient,
    run_id: str,
    step: int,
    body: bytes,
    tenant: Tenant,
    query: str = "",
    suffix: str = "",
):  # type: ignore[no-untyped-def]
    url = f"/v1/runs/{run_id}/checkpoints/{step}{suffix}{query}"
    return client.put(url, content=body, headers=sha_headers(body, tenant.headers))


def assert_no_checkpoint(
    client: TestClient, run_id: str, step: int, tenant: Tenant, settings: Settings
) -> None:
    assert (
        client.get(f"/v1/runs/{run_id}/checkpoints/{step}", headers=tenant.headers).status_code
        == 404
    )
    assert (
        ArtifactStore(settings.resolved_artifact_url).list_keys(f"runs/{run_id}/checkpoints") == []
    )
    assert list(settings.resolved_upload_tmp_dir.iterdir()) == []


def test_upload_is_idempotent_and_immutable(
    client: TestClient, tenant: Tenant, run_id: str, tiny_run: Path
) -> None:
    data = checkpoint(tiny_run, 5)
    first = put(client, run_id, 5, data, tenant)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["step"] == 5 and body["lr"] == 0.1 and body["train_loss"] is not None
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["nonfinite"] == []
    assert body["optimizer"] == {"class_name": "SGD", "sha256": None, "size_bytes": None}

    again = put(client, run_id, 5, data, tenant)
    assert again.status_code == 200 and again.json() == body

    changed = modified_safetensors(data, {"0.bias": tensors(data)["0.bias"] + 1.0})
    conflict = put(client, run_id, 5, changed, tenant)
    assert conflict.status_code == 409
    assert conflict.json()["type"] == "urn:obstacle:problem:already-uploaded"
    assert client.get(f"/v1/runs/{run_id}/checkpoints/5", headers=tenant.headers).json() == body


def test_listing_and_optimizer_state(
    client: TestClient, tenant: Tenant, run_id: str, tiny_run: Path
) -> None:
    early = put(client, run_id, 10, optimizer_state(tiny_run, 10), tenant, suffix="/optimizer")
    assert early.status_code == 404 and "upload it first" in early.json()["detail"]
    for step in (5, 10):
        assert put(client, run_id, step, checkpoint(tiny_run, step), tenant).status_code == 201
    state = optimizer_state(tiny_run, 10)
    attached = put(client, run_id, 10, state, tenant, suffix="/optimizer")
    assert attached.status_code == 201, attached.text
    assert attached.json()["optimizer"]["sha256"] == hashlib.sha256(state).hexdigest()
    assert put(client, run_id, 10, state, tenant, suffix="/optimizer").status_code == 200
    conflict = put(client, run_id, 10, optimizer_state(tiny_run, 5), tenant, suffix="/optimizer")
    assert conflict.status_code == 409
    misplaced = put(client, run_id, 5, state, tenant, suffix="/optimizer")
    assert (
        misplaced.status_code == 422 and "step 10" in misplaced.json()["detail"]
    )  # its header says 10

    listed = client.get(f"/v1/runs/{run_id}/checkpoints", headers=tenant.headers).json()
    assert listed["count"] == 2 and [c["step"] for c in listed["data"]] == [5, 10]
    assert listed["data"][0]["optimizer"]["sha256"] is None
    assert (
        client.get(f"/v1/runs/{run_id}/checkpoints/15", headers=tenant.headers).status_code == 404
    )


def test_a_checkpoint_needs_the_probe_first(
    client: TestClient, tenant: Tenant, tiny_run: Path
) -> None:
    run = client.post("/v1/runs", json={"name": "no-probe"}, headers=tenant.headers).json()
    response = put(client, run["id"], 5, checkpoint(tiny_run, 5), tenant)
    assert response.status_code == 409 and "probe" in response.json()["detail"]


def test_weights_with_nan_are_accepted_and_flagged(
    client: TestClient, tenant: Tenant, run_id: str, tiny_run: Path
) -> None:
    """A diverging run has non-finite weights: that is evidence, so it is kept (and flagged)."""
    data = checkpoint(tiny_run, 15)
    weights = tensors(data)["2.weight"].copy()
    weights[0, 0] = np.nan
    weights[1, 1] = np.inf
    diverged = modified_safetensors(data, {"2.weight": weights}, train_loss="nan")
    response = put(client, run_id, 15, diverged, tenant)
    assert response.status_code == 201, response.text
    assert response.json()["nonfinite"] == ["2.weight", "train_loss"]
    assert response.json()["train_loss"] is None


def test_lr_from_the_query_when_the_header_lacks_it(
    client: TestClient, tenant: Tenant, run_id: str, tiny_run: Path
) -> None:
    bare = modified_safetensors(checkpoint(tiny_run, 5), lr=None, train_loss=None)
    missing = put(client, run_id, 5, bare, tenant)
    assert missing.status_code == 422 and "?lr=" in missing.json()["detail"]
    given = put(client, run_id, 5, bare, tenant, query="?lr=0.05&train_loss=0.7")
    assert (
        given.status_code == 201
        and given.json()["lr"] == 0.05
        and given.json()["train_loss"] == 0.7
    )


BAD = {
    "empty": (lambda d: b"", "", "empty"),
    "not safetensors": (lambda d: b"\xff" * 64, "", "safetensors"),
    "truncated": (lambda d: d[:-10], "", "truncated"),
    "trailing bytes": (lambda d: d + b"\x00" * 4, "", "trailing"),
    "mis-shaped": (
        lambda d: modified_safetensors(d, {"0.weight": np.zeros((3, 4))}),
        "",
        "0.weight: shape [3, 4] (probe expects [6, 4])",
    ),
    "missing tensor": (lambda d: _without(d, "2.bias"), "", "missing: 2.bias"),
    "step mismatch": (lambda d: modified_safetensors(d, step="99"), "", "step 99"),
    "lr conflict": (lambda d: d, "?lr=0.5", "lr=0.1"),
    "negative lr": (lambda d: modified_safetensors(d, lr="-1.0"), "", "'lr' parameter"),
    "optimizer header malformed": (
        lambda d: modified_safetensors(d, optimizer="{"),
        "",
        "'optimizer'",
    ),
}


def _without(data: bytes, name: str) -> bytes:
    from safetensors.numpy import save

    kept = {k: v for k, v in tensors(data).items() if k != name}
    header_len = int.from_bytes(data[:8], "little")
    import json

    return save(kept, metadata=json.loads(data[8 : 8 + header_len])["__metadata__"])


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_checkpoint_gets_a_clear_4xx_and_leaves_nothing(
    case: str, client: TestClient, tenant: Tenant, run_id: str, tiny_run: Path, settings: Settings
) -> None:
    change, query, expected = BAD[case]
    body = change(checkpoint(tiny_run, 5))
    response = put(client, run_id, 5, body, tenant, query=query)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert expected in response.json()["detail"], response.json()["detail"]
    assert "/tmp" not in response.json()["detail"]
    assert_no_checkpoint(client, run_id, 5, tenant, settings)


def test_an_oversized_checkpoint_is_refused(
    database_url: str, redis_url: str, tmp_path: Path, tenant: Tenant, tiny_run: Path
) -> None:
    small = make_settings(database_url, redis_url, tmp_path, max_checkpoint_bytes=100)
    with TestClient(create_app(small)) as client:
        run = client.post("/v1/runs", json={"name": "small"}, headers=tenant.headers).json()
        bundle = pack_probe(tiny_run / PROBE_DIR)
        client.put(
            f"/v1/runs/{run['id']}/probe",
            content=bundle,
            headers=sha_headers(bundle, tenant.headers),
        )
        response = put(client, run["id"], 5, checkpoint(tiny_run, 5), tenant)
        assert (
            response.status_code == 413
            and "OBSTACLE_MAX_CHECKPOINT_BYTES" in response.json()["detail"]
        )
        assert_no_checkpoint(client, run["id"], 5, tenant, small)


def test_a_step_must_be_a_non_negative_int(
    client: TestClient, tenant: Tenant, run_id: str, tiny_run: Path
) -> None:
    for step in ("-1", "five"):
        data = checkpoint(tiny_run, 5)
        response = client.put(
            f"/v1/runs/{run_id}/checkpoints/{step}",
            content=data,
            headers=sha_headers(data, tenant.headers),
        )
        assert response.status_code == 422 and "step" in response.json()["detail"]
