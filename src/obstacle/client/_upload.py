"""``upload_run_dir``: send a run directory to the service, resuming where an earlier try stopped.

The run is found again by its name and the SHA-256 of its probe bundle (kept in the run's
``meta``), the service lists the SHA-256 of every checkpoint it holds
(``GET /v1/runs/{id}/checkpoints``), and only the files it lacks — or holds other bytes for — are
sent. Probe bundles pack deterministically, so the same directory always finds the same run.
``train_log.jsonl`` is sent last, unless the run already holds one with the same SHA-256; a log
that grew since replaces the run's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from obstacle.artifacts.layout import (
    PROBE_DIR,
    PROBE_MANIFEST,
    TRAIN_LOG,
    list_checkpoints,
    optimizer_filename,
)
from obstacle.client._client import Client, read_bytes
from obstacle.client._models import RunInfo, UploadResult
from obstacle.client._progress import progress_bar
from obstacle.client._run import probe_bundle
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
    is none), so running it again after an interruption sends only what is missing.
    """
    path = Path(run_dir)
    checkpoints = _checkpoints(path)
    bundle = probe_bundle(path)
    bundle_sha = hashlib.sha256(bundle).hexdigest()
    name = name or path.resolve().name
    if run_id is not None:
        info = client.get_run(run_id)
        if info.probe is not None and info.probe.sha256 != bundle_sha:
            raise InputError(
                f"run {run_id} already holds another probe (SHA-256 {info.probe.sha256[:16]}…) than "
                f"{path / PROBE_DIR} ({bundle_sha[:16]}…). Upload without --run to create a new run."
            )
    else:
        info = _find_run(client, name, bundle_sha) or RunInfo.from_json(
            client._json(
                "POST",
                "/v1/runs",
                json={"name": name, "meta": {"source": SOURCE, "probe_sha256": bundle_sha}},
            )
        )
    probe_uploaded = False
    if info.probe is None:
        probe_uploaded = client.put_probe(info.id, bundle)
    remote = {c.step: c for c in client.list_checkpoints(info.id)}
    uploaded: list[int] = []
    skipped: list[int] = []
    bar = progress_bar(progress, desc=f"uploading {name}", unit="ckpt", total=len(checkpoints))
    try:
        for done, (step, file) in enumerate(checkpoints, start=1):
            data = read_bytes(file)
            have = remote.get(step)
            if have is not None and have.sha256 == hashlib.sha256(data).hexdigest():
                skipped.append(step)
                optimizer_sha = have.optimizer_sha256
            else:
                client.put_checkpoint(info.id, step, data)
                uploaded.append(step)
                optimizer_sha = None
            optim_file = file.with_name(optimizer_filename(step))
            if optim_file.is_file():
                optim = read_bytes(optim_file)
                if optimizer_sha != hashlib.sha256(optim).hexdigest():
                    client.put_optimizer_state(info.id, step, optim)
            if bar is not None:
                bar.update_to(done)
    finally:
        if bar is not None:
            bar.close()
    train_log_uploaded = False
    if (path / TRAIN_LOG).is_file():
        log = read_bytes(path / TRAIN_LOG)
        if info.train_log_sha256 != hashlib.sha256(log).hexdigest():
            client.put_train_log(info.id, log)
            train_log_uploaded = True
    return UploadResult(
        run=client.get_run(info.id),
        uploaded=uploaded,
        skipped=skipped,
        probe_uploaded=probe_uploaded,
        train_log_uploaded=train_log_uploaded,
    )


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
