"""``FileBody``: a file sent as a request body in chunks, never read whole into memory.

Its size and SHA-256 (which the service checks the body against) come from one chunked pass over
the file when it is made. Each send opens the file again, so a retried request starts over, and
a file that shrank since it was hashed stops the send instead of sending a short body.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from obstacle.errors import InputError

__all__ = ["CHUNK_BYTES", "FileBody"]

# Large enough that the per-chunk Python overhead vanishes next to hashing and the socket; no
# larger, because httpcore copies what the socket has not taken yet (``buffer[n:]``) after every
# send, which costs more the larger the chunk (a whole file as one bytes object: quadratic).
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class FileBody:
    """A file to upload: ``path``, its ``size`` and ``sha256`` when it was hashed.

    ``on_sent``, if given, is called with the bytes of this file sent so far (from 0 again when
    a retry starts over). Make one with :meth:`from_path`.
    """

    path: Path
    size: int
    sha256: str
    on_sent: Callable[[int], None] | None = field(default=None, compare=False, repr=False)

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
        return {
            "Content-Type": content_type,
            "Content-Length": str(self.size),
            "X-Content-SHA256": self.sha256,
        }

    def chunks(self) -> Iterator[bytes]:
        """The file's first ``size`` bytes, read anew on every call."""
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
                yield chunk
                sent += len(chunk)
                if self.on_sent is not None:
                    self.on_sent(sent)


def _open(path: Path) -> io.BufferedReader:
    try:
        return path.open("rb")
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: OSError) -> InputError:
    return InputError(f"{path}: cannot be read ({exc.strerror or exc}).")
