"""``FileBody``: a file sent as a request body in chunks, never read whole into memory.

The service checks every upload against its SHA-256, which a ``FileBody`` gets one of two ways:

- :meth:`FileBody.streamed` hashes the file while sending it and appends the digest to the body
  (``X-Content-SHA256: trailing``): one pass over the file, which is read from disk once.
- :meth:`FileBody.from_path` hashes it in a pass of its own first, for a caller that needs the
  SHA-256 before deciding whether to send (``obstacle upload`` skips what the service holds).

Each send opens the file again, so a retried request starts over (and hashes anew), and a file
that shrank since the body was made stops the send instead of sending a short body.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from obstacle.errors import InputError
from obstacle.schemas import SHA256_HEADER, SHA256_TRAILING, SHA256_TRAILING_BYTES

__all__ = ["CHUNK_BYTES", "TRAILING", "FileBody"]

# Large enough that the per-chunk Python overhead vanishes next to hashing and the socket; no
# larger, because httpcore copies what the socket has not taken yet (``buffer[n:]``) after every
# send, which costs more the larger the chunk (a whole file as one bytes object: quadratic).
CHUNK_BYTES = 1 << 20

#: ``X-Content-SHA256`` for a body that ends with the 64 hex digits of its own SHA-256.
TRAILING = SHA256_TRAILING


@dataclass(frozen=True)
class FileBody:
    """A file to upload: ``path``, its ``size``, and its ``sha256`` if it was hashed beforehand.

    ``sha256`` None: the file is hashed while it is sent and the digest trails the body.
    ``on_sent``, if given, is called with the bytes of this file sent so far (from 0 again when
    a retry starts over). Make one with :meth:`streamed` or :meth:`from_path`.
    """

    path: Path
    size: int
    sha256: str | None
    on_sent: Callable[[int], None] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def streamed(
        cls, path: str | os.PathLike[str], *, on_sent: Callable[[int], None] | None = None
    ) -> FileBody:
        """The file at ``path``, to be hashed while it is sent; InputError if it cannot be read."""
        target = Path(path)
        with _open(target) as handle:
            size = os.fstat(handle.fileno()).st_size
        return cls(path=target, size=size, sha256=None, on_sent=on_sent)

    @classmethod
    def from_path(
        cls, path: str | os.PathLike[str], *, on_sent: Callable[[int], None] | None = None
    ) -> FileBody:
        """Hash the file at ``path`` in one chunked pass; InputError if it cannot be read."""
        target = Path(path)
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray(CHUNK_BYTES)
        view = memoryview(buffer)
        with _open(target) as handle:
            try:
                while read := handle.readinto(buffer):
                    digest.update(view[:read])
                    size += read
            except OSError as exc:
                raise _unreadable(target, exc) from None
        return cls(path=target, size=size, sha256=digest.hexdigest(), on_sent=on_sent)

    def headers(self, content_type: str) -> dict[str, str]:
        """Content-Type, Content-Length (so the body is not chunk-encoded) and X-Content-SHA256."""
        trailing = self.sha256 is None
        return {
            "Content-Type": content_type,
            "Content-Length": str(self.size + (SHA256_TRAILING_BYTES if trailing else 0)),
            SHA256_HEADER: TRAILING if self.sha256 is None else self.sha256,
        }

    def chunks(self) -> Iterator[bytes]:
        """The file's first ``size`` bytes, read anew on every call (then the trailing digest)."""
        digest = hashlib.sha256() if self.sha256 is None else None
        sent = 0
        if self.on_sent is not None:
            self.on_sent(0)
        with _open(self.path) as handle:
            while sent < self.size:
                try:
                    chunk = handle.read(min(CHUNK_BYTES, self.size - sent))
                except OSError as exc:
                    raise _unreadable(self.path, exc) from None
                if not chunk:
                    raise InputError(
                        f"{self.path}: shrank from {self.size} to {sent} bytes while it was being "
                        "uploaded. Upload it again once nothing writes to it any more."
                    )
                if digest is not None:
                    digest.update(chunk)
                yield chunk
                sent += len(chunk)
                if self.on_sent is not None:
                    self.on_sent(sent)
        if digest is not None:
            yield digest.hexdigest().encode("ascii")


def _open(path: Path) -> io.BufferedReader:
    try:
        return path.open("rb")
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: OSError) -> InputError:
    return InputError(f"{path}: cannot be read ({exc.strerror or exc}).")
