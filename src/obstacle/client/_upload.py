"""``upload_run_dir``: send a run directory to the service, resuming where an earlier try stopped.

The run is found again by its name and the SHA-256 of its probe bundle (kept in the run's
``meta``), the service lists the SHA-256 of every checkpoint it holds
(``GET /v1/runs/{id}/checkpoints``), and only the files it lacks — or holds other bytes for — are
sent. Probe bundles pack deterministically, so the same directory always finds the same run.
``train_log.jsonl`` is sent last, unless the run already holds one with the same SHA-256; a log
that grew since replaces the run's.

A file is hashed beforehand only where the service holds a version of it to compare with; the
others are hashed while they are sent (the digest trails the body), so each is read once.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from obstacle.artifacts.layout import (
    PROBE_DIR,
    PROBE_MANIFEST,
    TRAIN_LOG,
    list_checkpoints,
    optimizer_filename,
)
from obstacle.client._body import FileBody
from obstacle.client._client import Client
from obstacle.client._models import RunInfo, UploadResult
from obstacle.client._progress import Bar, progress_bar
from obstacle.client._run import packed_probe
from obstacle.errors import InputError, RunDirectoryError

__all__ = ["upload_run_dir"]

SOURCE = "obstacle upload"
_PAGE = 1000


def upload_run_dir(
    client: Client,
    run_dir: str | Path,
    *,
    name: str | None = None,
    run_id: str | None = None,
    progress: bool | None = None,
) -> UploadResult:
    """Upload ``run_dir`` (written by ``Probe.save`` and ``save_checkpoint``); resumable.

    Without ``run_id`` the run is the project's run with this name and probe (created if there
    is none), so running it again after an interruption sends only what is missing. Every file
    is sent from disk in chunks and read once, unless the service holds a version of it to
    compare with first; the progress bar counts the bytes sent.
    """
    path = Path(run_dir)
    checkpoints = _checkpoints(path)
    name = name or path.resolve().name
    bar: Bar | None = None
    try:
        with packed_probe(path) as bundle_file:
            bundle = FileBody.from_path(bundle_file)  # its SHA-256 finds the run
            assert bundle.sha256 is not None  # from_path hashes
            info = _target_run(client, path, bundle.sha256, name=name, run_id=run_id)
            total = _local_bytes(path, checkpoints) + (bundle.size if info.probe is None else 0)
            bar = progress_bar(
                progress, desc=f"uploading {name}", unit="B", unit_scale=True, total=total
            )
            sending = _BytesSent(bar)
            probe_uploaded = False
            if info.probe is None:
                probe_uploaded = client.put_probe(info.id, sending.track(bundle, "probe"))
                sending.sent(bundle)
        uploaded, skipped = _send_checkpoints(client, info.id, checkpoints, sending)
        train_log_uploaded = _send_train_log(client, info, path / TRAIN_LOG, sending)
    finally:
        if bar is not None:
            bar.close()
    return UploadResult(
        run=client.get_run(info.id),
        uploaded=uploaded,
        skipped=skipped,
        probe_uploaded=probe_uploaded,
        train_log_uploaded=train_log_uploaded,
    )


def _target_run(
    client: Client, path: Path, bundle_sha: str, *, name: str, run_id: str | None
) -> RunInfo:
    if run_id is not None:
        info = client.get_run(run_id)
        if info.probe is not None and info.probe.sha256 != bundle_sha:
            raise InputError(
                f"run {run_id} already holds another probe (SHA-256 {info.probe.sha256[:16]}…) than "
                f"{path / PROBE_DIR} ({bundle_sha[:16]}…). Upload without --run to create a new run."
            )
        return info
    return _find_run(client, name, bundle_sha) or RunInfo.from_json(
        client._json(
            "POST",
            "/v1/runs",
            json={"name": name, "meta": {"source": SOURCE, "probe_sha256": bundle_sha}},
        )
    )


def _send_checkpoints(
    client: Client, run_id: str, checkpoints: list[tuple[int, Path]], sending: _BytesSent
) -> tuple[list[int], list[int]]:
    """Send the checkpoints (and optimizer states) the service lacks; (uploaded, skipped) steps."""
    remote = {c.step: c for c in client.list_checkpoints(run_id)}
    uploaded: list[int] = []
    skipped: list[int] = []
    for step, file in checkpoints:
        have = remote.get(step)
        body = sending.body(
            file, f"step {step}", compare_with=None if have is None else have.sha256
        )
        if have is not None and have.sha256 == body.sha256:
            sending.skipped(body)
            skipped.append(step)
            optimizer_sha = have.optimizer_sha256
        else:
            client.put_checkpoint(run_id, step, sending.track(body, f"step {step}"))
            sending.sent(body)
            uploaded.append(step)
            optimizer_sha = None
        optim_file = file.with_name(optimizer_filename(step))
        if optim_file.is_file():
            optim = sending.body(optim_file, f"step {step} optimizer", compare_with=optimizer_sha)
            if optimizer_sha is not None and optimizer_sha == optim.sha256:
                sending.skipped(optim)
            else:
                client.put_optimizer_state(
                    run_id, step, sending.track(optim, f"step {step} optimizer")
                )
                sending.sent(optim)
    return uploaded, skipped


def _send_train_log(client: Client, info: RunInfo, log_file: Path, sending: _BytesSent) -> bool:
    """Send ``train_log.jsonl`` unless the run holds the same bytes; whether it was sent."""
    if not log_file.is_file():
        return False
    log = sending.body(log_file, TRAIN_LOG, compare_with=info.train_log_sha256)
    if info.train_log_sha256 is not None and info.train_log_sha256 == log.sha256:
        sending.skipped(log)
        return False
    client.put_train_log(info.id, sending.track(log, TRAIN_LOG))
    sending.sent(log)
    return True


def _local_bytes(path: Path, checkpoints: list[tuple[int, Path]]) -> int:
    """The bytes of every file the upload may send (the bar's total before skips)."""
    files = [file for _, file in checkpoints]
    files += [file.with_name(optimizer_filename(step)) for step, file in checkpoints]
    files.append(path / TRAIN_LOG)
    return sum(file.stat().st_size for file in files if file.is_file())


class _BytesSent:
    """Moves the bar (if any) by the bytes sent; a file the service already holds leaves its total."""

    def __init__(self, bar: Bar | None) -> None:
        self.bar = bar
        self.done = 0

    def body(self, path: Path, what: str, *, compare_with: str | None) -> FileBody:
        """``path`` hashed now if the service holds a version to compare with, else while sent."""
        if compare_with is None:
            return FileBody.streamed(path)
        if self.bar is not None:
            self.bar.update_to(self.done, note=f"hashing {what}")
        return FileBody.from_path(path)

    def track(self, body: FileBody, what: str) -> FileBody:
        """``body``, reporting to the bar while it is sent (from its start again on a retry)."""
        bar, base = self.bar, self.done
        if bar is None:
            return body
        return replace(body, on_sent=lambda sent: bar.update_to(base + sent, note=what))

    def sent(self, body: FileBody) -> None:
        self.done += body.size
        if self.bar is not None:
            self.bar.update_to(self.done)

    def skipped(self, body: FileBody) -> None:
        if self.bar is not None and self.bar.total is not None:
            self.bar.update_to(self.done, total=max(self.done, self.bar.total - body.size))


def _checkpoints(path: Path) -> list[tuple[int, Path]]:
    if not (path / PROBE_DIR / PROBE_MANIFEST).is_file():
        raise RunDirectoryError(
            f"{path}: not a run directory (no {PROBE_DIR}/{PROBE_MANIFEST}). Write one with "
            "obstacle.Probe.capture(...).save(run_dir) and obstacle.save_checkpoint(run_dir, ...)."
        )
    found = list_checkpoints(path)
    legacy = [p.name for _, p in found if p.suffix == ".pt"]
    if legacy:
        raise RunDirectoryError(
            f"{path}: legacy .pt checkpoints cannot be uploaded ({', '.join(legacy[:3])}). Re-save "
            "them with obstacle.save_checkpoint, which writes safetensors."
        )
    if not found:
        raise RunDirectoryError(
            f"{path}: no checkpoints in checkpoints/. Save some with obstacle.save_checkpoint."
        )
    return found


def _find_run(client: Client, name: str, bundle_sha: str) -> RunInfo | None:
    offset = 0
    while True:
        page = client.list_runs(offset=offset, limit=_PAGE)
        for run in page:
            if run.name == name and run.meta.get("probe_sha256") == bundle_sha:
                return run
        if len(page) < _PAGE:
            return None
        offset += _PAGE
