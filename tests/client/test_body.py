"""``FileBody``: hashed in a pass of its own (``from_path``) or while it is sent (``streamed``, the
digest trailing the body), and the file read anew, in chunks, for every send."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from obstacle.client._body import CHUNK_BYTES, FileBody
from obstacle.errors import InputError


def test_size_and_sha256_are_those_of_the_file(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 12345)
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(data)
    body = FileBody.from_path(path)
    assert body.size == len(data)
    assert body.sha256 == hashlib.sha256(data).hexdigest()
    assert body.headers("application/octet-stream") == {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(len(data)),
        "X-Content-SHA256": body.sha256,
    }


def test_every_send_reads_the_file_again_in_chunks(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 7)
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(data)
    seen: list[int] = []
    body = FileBody.from_path(path, on_sent=seen.append)
    first = list(body.chunks())
    assert [len(c) for c in first] == [CHUNK_BYTES, CHUNK_BYTES, 7]
    assert b"".join(first) == data
    assert seen == [0, CHUNK_BYTES, 2 * CHUNK_BYTES, len(data)]
    seen.clear()
    assert b"".join(body.chunks()) == data, "a retry starts over from the first byte"
    assert seen[0] == 0 and seen[-1] == len(data)


def test_an_empty_file_is_an_empty_body(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    body = FileBody.from_path(path)
    assert body.size == 0 and list(body.chunks()) == []


_MAKERS = {"hashed before": FileBody.from_path, "hashed while sent": FileBody.streamed}


def _trailed(body: FileBody, payload: bytes) -> bytes:
    """What ``body`` sends for ``payload``: with its digest after it if it is hashed while sent."""
    return (
        payload
        if body.sha256 is not None
        else payload + hashlib.sha256(payload).hexdigest().encode()
    )


@pytest.mark.parametrize("make", _MAKERS.values(), ids=_MAKERS.keys())
def test_a_file_that_shrank_stops_the_send(
    tmp_path: Path, make: Callable[[Path], FileBody]
) -> None:
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(b"x" * 1000)
    body = make(path)
    path.write_bytes(b"x" * 10)
    with pytest.raises(InputError, match=r"shrank from 1000 to 10 bytes"):
        list(body.chunks())


@pytest.mark.parametrize("make", _MAKERS.values(), ids=_MAKERS.keys())
def test_a_file_that_grew_sends_only_what_was_there_when_the_body_was_made(
    tmp_path: Path, make: Callable[[Path], FileBody]
) -> None:
    path = tmp_path / "train_log.jsonl"
    path.write_bytes(b"a" * 100)
    body = make(path)
    with path.open("ab") as handle:
        handle.write(b"b" * 100)
    assert b"".join(body.chunks()) == _trailed(body, b"a" * 100)


def test_an_unreadable_file_is_an_input_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(InputError, match=r"missing\.safetensors: cannot be read"):
        FileBody.from_path(missing)
    with pytest.raises(InputError, match="cannot be read"):
        FileBody.from_path(tmp_path)  # a directory


def test_a_streamed_body_is_hashed_while_it_is_sent_and_ends_with_its_digest(
    tmp_path: Path,
) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 99)
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(data)
    seen: list[int] = []
    body = FileBody.streamed(path, on_sent=seen.append)
    assert body.size == len(data) and body.sha256 is None, "nothing is read before sending"
    assert body.headers("application/octet-stream") == {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(len(data) + 64),
        "X-Content-SHA256": "trailing",
    }
    chunks = list(body.chunks())
    assert [len(c) for c in chunks] == [CHUNK_BYTES, CHUNK_BYTES, 99, 64]
    assert b"".join(chunks) == data + hashlib.sha256(data).hexdigest().encode()
    assert seen == [0, CHUNK_BYTES, 2 * CHUNK_BYTES, len(data)], "the bar counts the file's bytes"
    assert b"".join(body.chunks()) == b"".join(chunks), "a retry reads and hashes it again"


def test_a_streamed_body_of_an_unreadable_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.safetensors: cannot be read"):
        FileBody.streamed(tmp_path / "missing.safetensors")
