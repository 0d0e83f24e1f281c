"""The artifact store over fsspec: a local directory (file://) and memory://."""

from __future__ import annotations

import os
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from obstacle.platform.store import ArtifactStore


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


@pytest.mark.parametrize("link", [False, True])
def test_a_write_leaves_no_partial_file(store: ArtifactStore, tmp_path: Path, link: bool) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError):
        store.put_file(missing, "runs/a/file", link=link)
    assert store.list_keys("runs") == []


def test_a_linked_file_is_stored_without_a_copy(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "upload-spool"
    source.write_bytes(b"weights" * 1000)
    source.chmod(0o600)  # as uploads are spooled
    store.put_file(source, "runs/a/ckpt.safetensors", link=True)
    if store.url.startswith("memory://"):
        assert store.read_bytes("runs/a/ckpt.safetensors") == source.read_bytes()
        return
    stored = tmp_path / "store" / "runs" / "a" / "ckpt.safetensors"
    assert stored.samefile(source), "a local store on the same filesystem takes a hardlink"
    assert stored.stat().st_mode & 0o777 == 0o644, "readable by workers, as a copy would be"
    source.unlink()  # the upload's spool file is removed after the request
    assert stored.read_bytes() == b"weights" * 1000
    assert store.list_keys("runs") == ["runs/a/ckpt.safetensors"], "no partial file is left"


def test_a_reader_gets_a_link_from_a_local_store(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"weights" * 1000)
    store.put_file(source, "runs/a/ckpt.safetensors")
    cached = tmp_path / "cache" / "blob.safetensors"
    store.get_file("runs/a/ckpt.safetensors", cached, link=True)
    assert cached.read_bytes() == b"weights" * 1000
    assert list(cached.parent.iterdir()) == [cached], "no partial download is left beside it"
    if not store.url.startswith("memory://"):
        assert cached.samefile(tmp_path / "store" / "runs" / "a" / "ckpt.safetensors")
    cached.unlink()  # evicting the worker's copy leaves the store's file
    assert store.read_bytes("runs/a/ckpt.safetensors") == b"weights" * 1000


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a second filesystem (/dev/shm)")
def test_a_file_on_another_filesystem_is_copied(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    with tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="obstacle-test-") as handle:
        handle.write(b"weights" * 1000)
        handle.flush()
        if os.stat(handle.name).st_dev == tmp_path.stat().st_dev:
            pytest.skip("/dev/shm is on the same filesystem as the test's directory")
        store.put_file(handle.name, "runs/a/ckpt.safetensors", link=True)
    stored = tmp_path / "store" / "runs" / "a" / "ckpt.safetensors"
    assert stored.read_bytes() == b"weights" * 1000 and stored.stat().st_nlink == 1


@pytest.mark.parametrize("key", ["", "/abs", "runs/../../etc/passwd", "a/../b"])
def test_keys_cannot_leave_the_root(store: ArtifactStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid artifact key"):
        store.exists(key)


@pytest.mark.parametrize("how", ["copy", "link", "bytes"])
def test_a_local_store_flushes_the_file_before_its_move_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """What the service acknowledges survives a crash: fsync the bytes, then the new name."""
    store = ArtifactStore(str(tmp_path / "store"))
    flushed: list[tuple[str, bool]] = []  # (the path the fd had when flushed, still partial)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        flushed.append((path, ".partial-" in path))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    source = tmp_path / "upload-spool"
    source.write_bytes(b"weights" * 1000)
    key = "runs/a/checkpoints/000000005/abc.safetensors"
    if how == "bytes":
        store.put_bytes(b"weights" * 1000, key)
    else:
        store.put_file(source, key, link=how == "link")
    final = tmp_path / "store" / key
    assert final.read_bytes() == b"weights" * 1000
    assert len(flushed) == 2, flushed
    (file_path, was_partial), (dir_path, _) = flushed
    assert was_partial and Path(file_path).parent == final.parent, "flushed before the move"
    assert Path(dir_path) == final.parent, "then the directory that holds the new name"


def test_a_remote_store_is_not_flushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(f"memory://obstacle-test-{uuid.uuid4().hex}")
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    store.put_bytes(b"x", "runs/a/x")
    assert calls == [] and store.read_bytes("runs/a/x") == b"x"


@pytest.mark.parametrize("link", [False, True])
def test_concurrent_writes_and_deletes_of_one_prefix_never_raise(
    store: ArtifactStore, tmp_path: Path, link: bool
) -> None:
    # Uploads that lose a race delete what they wrote while others still write the same keys (the
    # same bytes: keys carry the SHA-256), and a run's deletion removes its prefix under uploads in
    # flight. Neither may fail a request: the database decides who keeps a file.
    sources = []
    for i in range(3):
        source = tmp_path / f"member-{i}"
        source.write_bytes(bytes([i]) * 4096)
        sources.append(source)
    rounds = 60

    def writer(_: int) -> None:
        for _ in range(rounds):
            for i, source in enumerate(sources):
                store.put_file(source, f"runs/r/probe/abc/member-{i}", link=link)
            store.delete_prefix("runs/r/probe/abc")
            store.delete("runs/r/probe/abc/member-0")

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(writer, range(6)))  # re-raises the first exception of any thread
    store.delete_prefix("runs/r")
    assert store.list_keys("runs") == []
    assert all(source.exists() for source in sources)  # the spooled files are the caller's
