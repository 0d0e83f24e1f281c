"""The artifact store over fsspec: a local directory (file://) and memory://."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from obstacle.service.store import ArtifactStore


@pytest.fixture(params=["file", "memory", "path"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "memory":
        return ArtifactStore(f"memory://obstacle-test-{uuid.uuid4().hex}")
    if request.param == "file":
        return ArtifactStore(f"file://{tmp_path / 'store'}")
    return ArtifactStore(str(tmp_path / "store"))


def test_put_get_list_delete(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"weights" * 1000)
    store.put_file(source, "runs/a/checkpoints/000000005/abc.safetensors")
    store.put_bytes(b"<html>", "runs/a/analyses/x/report.html")
    assert store.exists("runs/a/checkpoints/000000005/abc.safetensors")
    assert store.list_keys("runs/a") == [
        "runs/a/analyses/x/report.html",
        "runs/a/checkpoints/000000005/abc.safetensors",
    ]
    target = tmp_path / "out" / "copy.bin"
    store.get_file("runs/a/checkpoints/000000005/abc.safetensors", target)
    assert target.read_bytes() == source.read_bytes()
    assert list(target.parent.iterdir()) == [target], "no partial download is left beside it"
    with store.open("runs/a/analyses/x/report.html") as handle:
        assert handle.read() == b"<html>"
    assert store.read_bytes("runs/a/analyses/x/report.html") == b"<html>"

    store.delete("runs/a/analyses/x/report.html")
    assert not store.exists("runs/a/analyses/x/report.html")
    store.delete_prefix("runs/a")
    assert store.list_keys("runs/a") == [] and store.list_keys() == []
    store.delete_prefix("runs/never")  # deleting what is not there is fine


def test_a_write_leaves_no_partial_file(store: ArtifactStore, tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError):
        store.put_file(missing, "runs/a/file")
    assert store.list_keys("runs") == []


@pytest.mark.parametrize("key", ["", "/abs", "runs/../../etc/passwd", "a/../b"])
def test_keys_cannot_leave_the_root(store: ArtifactStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid artifact key"):
        store.exists(key)
