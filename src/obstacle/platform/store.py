"""The artifact store: a local directory by default, any fsspec URL (``s3://…``) in production.

Files are written under a temporary name and moved to their final key, so a reader never sees a
partial file; keys are content-addressed where bytes can differ, so a final key never changes.
A local store flushes each file to disk before the move and its directory after, so a file the
database records (and the service has acknowledged) survives a crash of the machine.
A file that will never change again (an upload spooled to disk) can go into a local store on the
same filesystem as a hardlink, and a reader that never writes (a worker's cache) can get one out:
the bytes are not copied at all.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["ArtifactStore"]

# Tries of a write or a delete that a concurrent one on the same keys undid.
_RACE_ATTEMPTS = 20
# Where a local store moves a prefix it deletes (no key starts with it).
_TRASH = ".deleting"


class ArtifactStore:
    """Keys are ``/``-separated paths below the root of ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url
        fs, root = fsspec.core.url_to_fs(url)
        self.fs: Any = fs
        self.root = root.rstrip("/")
        self._local = isinstance(fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    def _path(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid artifact key {key!r}")
        return f"{self.root}/{key}"

    def put_file(self, local_path: str | Path, key: str, *, link: bool = False) -> None:
        """Copy ``local_path`` to ``key``: written beside it, then moved into place.

        ``link``: the caller never changes ``local_path`` again (it may delete it), so a local
        store on the same filesystem takes it as a hardlink instead of a copy; elsewhere, or
        where the filesystem refuses the link, the bytes are copied as without it.

        Concurrent writers of a key write the same bytes (keys carry the content's hash), and a
        concurrent ``delete_prefix`` (an upload that lost a race, a deleted run) may take the
        partial file or its directory away mid-write: the write then starts again. Whose file
        is kept is the database's decision, made after the write.
        """
        final, source = self._path(key), Path(local_path)
        _settled(
            lambda: self._put_file_once(source, final, link=link),
            # Its directory went away mid-write (and the file to write is still there).
            raced=lambda exc: (
                isinstance(exc, (FileNotFoundError, FileExistsError)) and source.exists()
            ),
        )

    def _put_file_once(self, local_path: Path, final: str, *, link: bool) -> None:
        partial = f"{final}.partial-{uuid.uuid4().hex}"
        parent = final.rsplit("/", 1)[0]
        if self._local:
            self.fs.makedirs(parent, exist_ok=True)
        try:
            # Spooled uploads are private (0600); a copy would get the usual 0644, and workers
            # running as another user of the same volume must be able to read the stored file.
            if not (link and self._local and _hardlink(local_path, Path(partial), 0o644)):
                self.fs.put_file(str(local_path), partial)
            self._flush(partial)
            self.fs.mv(partial, final)
            self._flush(parent)
        except BaseException:
            with suppress(FileNotFoundError):
                self.fs.rm(partial)
            raise

    def put_bytes(self, data: bytes, key: str) -> None:
        """Write ``data`` (small: reports, plots) to ``key``, through a temporary name."""
        final = self._path(key)
        partial = f"{final}.partial-{uuid.uuid4().hex}"
        if self._local:
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(partial, data)
        self._flush(partial)
        self.fs.mv(partial, final)
        self._flush(final.rsplit("/", 1)[0])

    def _flush(self, path: str) -> None:
        """fsync a local file or directory (the bytes, or the names in it); elsewhere nothing."""
        if not self._local:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get_file(self, key: str, local_path: str | Path, *, link: bool = False) -> None:
        """Download ``key`` to ``local_path`` (through a temporary name beside it).

        ``link``: the caller only reads ``local_path`` (or deletes it), so a local store on the
        same filesystem hands out a hardlink instead of a copy; elsewhere the bytes are copied.
        """
        target = Path(local_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        try:
            if not (link and self._local and _hardlink(Path(self._path(key)), partial)):
                self.fs.get_file(self._path(key), str(partial))
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)

    def open(self, key: str) -> IO[bytes]:
        handle: IO[bytes] = self.fs.open(self._path(key), "rb")
        return handle

    def read_bytes(self, key: str) -> bytes:
        data: bytes = self.fs.cat_file(self._path(key))
        return data

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def delete(self, key: str) -> None:
        """Remove ``key``; one already gone (a concurrent delete) is no error."""
        with suppress(FileNotFoundError):
            self.fs.rm(self._path(key))

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key below ``prefix``. Writes and deletes of the same keys may run at the
        same time (uploads racing, a run deleted under an upload): none of them fails for it."""
        path = self._path(prefix.rstrip("/"))
        if self._local:
            # Moved out of the key space in one rename, then removed where no one else writes.
            _remove_tree(path, trash=f"{self.root}/{_TRASH}")
            return

        def remove() -> None:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

        # A concurrent delete took part of it: go over the rest.
        _settled(remove, raced=lambda exc: isinstance(exc, FileNotFoundError))

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every file key below ``prefix`` (recursively), sorted."""
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not self.fs.exists(base):
            return []
        start = len(self.root) + 1
        found = self.fs.find(base)
        return sorted(str(p)[start:] for p in found)


def _remove_tree(path: str, *, trash: str) -> None:
    """Remove a local directory (or file) that others may write into or remove meanwhile.

    It is renamed into ``trash`` first, so no new path reaches it. A write whose path lookup
    passed it just before the rename can still land in it, or rename a file in it, while it is
    removed: the removal goes over it again.
    """
    os.makedirs(trash, exist_ok=True)
    doomed = os.path.join(trash, uuid.uuid4().hex)
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return  # not there, or a concurrent delete moved it first

    def remove() -> None:
        if os.path.isdir(doomed) and not os.path.islink(doomed):
            shutil.rmtree(doomed)
        elif os.path.lexists(doomed):
            os.unlink(doomed)

    _settled(
        remove,
        raced=lambda exc: isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOTEMPTY,
    )


def _settled(action: Callable[[], None], *, raced: Callable[[OSError], bool]) -> None:
    """Run ``action`` again while a concurrent write or delete of the same keys undoes it
    (``raced``), at most _RACE_ATTEMPTS times; any other error, or the last, is raised."""
    for attempt in range(1, _RACE_ATTEMPTS + 1):
        try:
            action()
            return
        except OSError as exc:
            if attempt == _RACE_ATTEMPTS or not raced(exc):
                raise


# Errors that mean "this filesystem (or pair of them) cannot hardlink": copy instead.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


def _hardlink(source: Path, target: Path, mode: int | None = None) -> bool:
    """Hardlink ``source`` at ``target`` (then chmod it to ``mode``); False if it cannot be linked."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise
    if mode is not None:
        os.chmod(target, mode)
    return True
