"""Materialise a run directory on the worker from the artifact store, as the battery expects it.

    CACHE/<pid>/probes/<probe_key>/{manifest.json, program.pt2, data.safetensors}
    CACHE/<pid>/blobs/<sha256>.safetensors              checkpoint files, by content
    CACHE/<pid>/runs/<probe_key>/probe -> ../../probes/<probe_key>
    CACHE/<pid>/runs/<probe_key>/checkpoints/step_*.safetensors -> ../../../blobs/<sha256>...
    CACHE/<pid>/runs/<probe_key>/train_log.jsonl       the run's uploaded log, when it has one

``probe_key`` is a SHA-256 over everything that defines the probe: the manifest's bytes and the
content hash of program and data. The content hash alone covers only the program and the data,
and two projects can upload the same program and data with different manifests (another batch
size, say), which must not get each other's probe. The manifest is small, so it is fetched for
every task and hashed; the program and data are fetched once per key.

A probe keeps one run directory per worker process, so the battery's per-process probe cache
(keyed by run directory and content hash) loads each probe once, whichever run it came with.
Before each task the directory holds exactly the checkpoints that task needs (the
first one gives θ₀) and the log the task is given, nothing else; a process runs one task at a
time. Downloaded
probe files are checked against the content hash the service computed when it validated the
probe: a probe runs here only if it is byte for byte what the validator accepted. Files are
only read here, so a local store on the same filesystem hands them out as hardlinks (no copy of
a gigabyte checkpoint per worker); any other store streams them to disk, never into memory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from obstacle.artifacts.bundle import probe_content_hash
from obstacle.artifacts.layout import (
    CHECKPOINT_DIR,
    PROBE_DATA,
    PROBE_DIR,
    PROBE_MANIFEST,
    PROBE_PROGRAM,
    TRAIN_LOG,
    checkpoint_filename,
    optimizer_filename,
)
from obstacle.errors import ProbeError
from obstacle.platform.store import ArtifactStore

__all__ = ["CheckpointFiles", "ProbeFiles", "RunDirectories", "TrainLogFile", "probe_key"]


@dataclass(frozen=True)
class ProbeFiles:
    store_prefix: str
    content_hash: str


@dataclass(frozen=True)
class CheckpointFiles:
    step: int
    store_key: str
    sha256: str
    optimizer_store_key: str | None
    optimizer_sha256: str | None


@dataclass(frozen=True)
class TrainLogFile:
    store_key: str
    sha256: str


class RunDirectories:
    """This process's materialised run directories."""

    def __init__(self, store: ArtifactStore, cache_root: Path) -> None:
        self.store = store
        self.root = cache_root / str(os.getpid())
        _remove_dead_process_dirs(cache_root)

    def prepare(
        self,
        probe: ProbeFiles,
        checkpoints: Iterable[CheckpointFiles],
        train_log: TrainLogFile | None = None,
    ) -> Path:
        """The run directory holding the probe, exactly ``checkpoints``, and ``train_log`` if given."""
        wanted = list(checkpoints)
        probe_dir = self._probe(probe)
        run_dir = self.root / "runs" / probe_dir.name
        probe_link = run_dir / PROBE_DIR
        run_dir.mkdir(parents=True, exist_ok=True)
        if not probe_link.is_symlink() or probe_link.resolve() != probe_dir.resolve():
            _replace_link(probe_link, probe_dir)
        directory = run_dir / CHECKPOINT_DIR
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir()
        keep: set[Path] = set()
        for ck in wanted:
            blob = self._blob(ck.store_key, ck.sha256, ".safetensors")
            keep.add(blob)
            (directory / checkpoint_filename(ck.step)).symlink_to(blob)
            if ck.optimizer_store_key is not None and ck.optimizer_sha256 is not None:
                optim = self._blob(
                    ck.optimizer_store_key, ck.optimizer_sha256, ".optim.safetensors"
                )
                keep.add(optim)
                (directory / optimizer_filename(ck.step)).symlink_to(optim)
        log_path = run_dir / TRAIN_LOG
        log_path.unlink(missing_ok=True)  # another run with this probe may have left its log
        if train_log is not None:
            log = self._blob(train_log.store_key, train_log.sha256, ".jsonl")
            keep.add(log)
            log_path.symlink_to(log)
        self._evict(keep)
        return run_dir

    def _probe(self, probe: ProbeFiles) -> Path:
        """The probe's directory, named by its key (manifest and content hash)."""
        probes = self.root / "probes"
        probes.mkdir(parents=True, exist_ok=True)
        manifest = probes / f".{PROBE_MANIFEST}.fetching"
        self.store.get_file(f"{probe.store_prefix}/{PROBE_MANIFEST}", manifest, link=True)
        target = probes / probe_key(_sha256(manifest), probe.content_hash)
        if target.is_dir():
            manifest.unlink()
            return target
        staging = target.with_name(f".{target.name}.partial")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        manifest.replace(staging / PROBE_MANIFEST)
        for name in (PROBE_PROGRAM, PROBE_DATA):
            self.store.get_file(f"{probe.store_prefix}/{name}", staging / name, link=True)
        digest = probe_content_hash(staging)
        if digest != probe.content_hash:
            shutil.rmtree(staging)
            raise ProbeError(
                f"the probe files in the artifact store hash to {digest[:16]}…, not to the "
                f"{probe.content_hash[:16]}… the validator accepted; the store was changed. Upload the "
                "probe to a new run."
            )
        staging.rename(target)
        return target

    def _blob(self, key: str, sha256: str, suffix: str) -> Path:
        blob = self.root / "blobs" / f"{sha256}{suffix}"
        if not blob.exists():
            self.store.get_file(key, blob, link=True)
            if _sha256(blob) != sha256:
                blob.unlink()
                raise ProbeError(
                    f"{key}: the stored file does not match its recorded SHA-256; upload it again."
                )
        return blob

    def _evict(self, keep: set[Path]) -> None:
        blobs = self.root / "blobs"
        for path in blobs.iterdir() if blobs.exists() else ():
            if path not in keep:
                path.unlink(missing_ok=True)


def probe_key(manifest_sha256: str, content_hash: str) -> str:
    """The cache key of a probe: its manifest's SHA-256 and the content hash of program and data."""
    return hashlib.sha256(f"{manifest_sha256}:{content_hash}".encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _replace_link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        shutil.rmtree(link)
    link.symlink_to(target, target_is_directory=True)


def _remove_dead_process_dirs(cache_root: Path) -> None:
    """Caches of processes that are gone (killed workers) are removed."""
    if not cache_root.exists():
        return
    for child in cache_root.iterdir():
        if child.name.isdigit() and int(child.name) != os.getpid() and not _alive(int(child.name)):
            shutil.rmtree(child, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
