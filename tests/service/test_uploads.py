"""``receive_upload``: the body spooled to a file, checked against a SHA-256 declared before it
(``X-Content-SHA256: <hex>``) or after it (``trailing``: the body's last 64 bytes), however the
server's reads happen to cut it into chunks."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from obstacle.service.problems import ProblemError
from obstacle.service.uploads import TRAILING, ReceivedUpload, receive_upload

PAYLOAD = os.urandom(3 * 64 + 5)


async def _chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _cut(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def receive(
    parts: Iterable[bytes],
    tmp_path: Path,
    *,
    declared: str | None = TRAILING,
    limit: int = 1 << 30,
    content_length: str | None = None,
) -> ReceivedUpload:
    return asyncio.run(
        receive_upload(
            _chunks(parts),
            what="checkpoint",
            limit=limit,
            declared_sha256=declared,
            content_length=content_length,
            tmp_dir=tmp_path / "spool",
        )
    )


def trailed(payload: bytes) -> bytes:
    return payload + hashlib.sha256(payload).hexdigest().encode()


@pytest.mark.parametrize("size", [1, 7, 63, 64, 65, 128, 200, 10_000])
def test_a_trailing_checksum_is_held_back_however_the_body_is_cut(
    tmp_path: Path, size: int
) -> None:
    upload = receive(_cut(trailed(PAYLOAD), size), tmp_path)
    assert upload.path.read_bytes() == PAYLOAD, "the 64 digest bytes are not stored"
    assert upload.size == len(PAYLOAD)
    assert upload.sha256 == hashlib.sha256(PAYLOAD).hexdigest()


def test_a_large_body_in_the_servers_chunks_is_stored_whole(tmp_path: Path) -> None:
    payload = os.urandom(9 << 20)  # several of the spool's batches
    body = trailed(payload)
    upload = receive(_cut(body, 256 << 10), tmp_path, content_length=str(len(body)))
    with upload.path.open("rb") as handle:
        assert hashlib.file_digest(handle, "sha256").hexdigest() == upload.sha256
    assert upload.sha256 == hashlib.sha256(payload).hexdigest() and upload.size == len(payload)


def test_the_header_may_say_trailing_in_any_case(tmp_path: Path) -> None:
    upload = receive([trailed(b"abc")], tmp_path, declared=" Trailing ")
    assert upload.path.read_bytes() == b"abc"


def test_a_trailing_checksum_of_other_bytes_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    body = PAYLOAD + hashlib.sha256(b"other").hexdigest().encode()
    with pytest.raises(ProblemError) as refused:
        receive(_cut(body, 50), tmp_path)
    assert refused.value.status == 422 and refused.value.slug == "checksum-mismatch"
    assert list((tmp_path / "spool").iterdir()) == []


@pytest.mark.parametrize(
    "body",
    [b"", b"abc", PAYLOAD, PAYLOAD + b"z" * 64],
    ids=["empty", "shorter than a digest", "no digest", "not hex"],
)
def test_a_body_without_its_trailing_checksum_is_refused_with_the_rule(
    tmp_path: Path, body: bytes
) -> None:
    with pytest.raises(ProblemError) as refused:
        receive(_cut(body, 40) or [b""], tmp_path)
    assert refused.value.status == 422
    assert "must end with the 64 hex digits" in refused.value.detail
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_digest_alone_is_an_empty_upload(tmp_path: Path) -> None:
    with pytest.raises(ProblemError) as refused:
        receive([trailed(b"")], tmp_path)
    assert refused.value.status == 422 and refused.value.slug == "empty-upload"


def test_the_limit_counts_the_upload_not_its_trailing_digest(tmp_path: Path) -> None:
    limit = len(PAYLOAD)
    body = trailed(PAYLOAD)
    upload = receive(_cut(body, 30), tmp_path, limit=limit, content_length=str(len(body)))
    assert upload.size == limit
    longer = trailed(PAYLOAD + b"x")
    with pytest.raises(ProblemError) as streamed:
        receive(_cut(longer, 30), tmp_path, limit=limit)
    assert streamed.value.status == 413
    with pytest.raises(ProblemError) as declared:
        receive([], tmp_path, limit=limit, content_length=str(len(longer)))
    assert declared.value.status == 413 and f"{limit + 1} bytes" in declared.value.detail


@pytest.mark.parametrize("declared", [None, "", "trailer", "0" * 63])
def test_a_missing_or_malformed_declaration_names_both_forms(
    tmp_path: Path, declared: str | None
) -> None:
    with pytest.raises(ProblemError) as refused:
        receive([trailed(PAYLOAD)], tmp_path, declared=declared)
    assert refused.value.status == 400 and "'trailing'" in refused.value.detail


def test_a_checksum_in_the_header_still_checks_the_whole_body(tmp_path: Path) -> None:
    upload = receive(_cut(PAYLOAD, 10), tmp_path, declared=hashlib.sha256(PAYLOAD).hexdigest())
    assert upload.path.read_bytes() == PAYLOAD
    with pytest.raises(ProblemError) as refused:
        receive([PAYLOAD], tmp_path, declared=hashlib.sha256(b"x").hexdigest())
    assert refused.value.slug == "checksum-mismatch"


def test_the_spool_starts_the_writeback_of_every_byte_as_it_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fsyncs what it acknowledges; started batch by batch, that flush overlaps the
    rest of the body instead of following its last byte (bench/upload_stream.py)."""
    from obstacle.service import uploads

    real = uploads._start_writeback
    if sys.platform.startswith("linux"):
        assert real is not None, "Linux has sync_file_range"
    ranges: list[tuple[int, int]] = []

    def record(fd: int, offset: int, nbytes: int) -> None:
        ranges.append((offset, nbytes))
        if real is not None:
            real(fd, offset, nbytes)

    monkeypatch.setattr(uploads, "_start_writeback", record)
    payload = os.urandom(9 << 20)
    upload = receive(_cut(trailed(payload), 1 << 20), tmp_path)
    assert upload.path.read_bytes() == payload
    assert len(ranges) >= 3, "one range per batch of the spool"
    ends = [0] + [offset + nbytes for offset, nbytes in ranges]
    assert [offset for offset, _ in ranges] == ends[:-1], "contiguous, in order"
    assert ends[-1] == len(payload), "up to the last byte, not the trailing digest"
