"""Accept a run's ``train_log.jsonl``: validate every line without torch, store it, point the run at it.

Each line is a JSON object (blank lines are skipped, other keys are ignored, as
``obstacle.battery.sequence.read_train_log`` does):

- ``step``: an int ≥ 0;
- ``loss``: required; a number or null. NaN and ±Infinity (what Python's ``json`` writes for them)
  are accepted: a diverging run logs them, and the analysis counts only the finite losses;
- ``lr``: optional; null or a finite number ≥ 0.

Unlike a probe or a checkpoint, the log grows while training goes on, so other bytes replace the
log the run holds (200), which lets a client upload it again after every resume. The same bytes
again change nothing (200); the first log is a 201. The new file is stored under its SHA-256
before the run row points at it, and the file it replaced is deleted after, so a reader always
finds a complete log. An analysis reads the log the run holds when its run-level task runs.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

from sqlalchemy import update

from obstacle.artifacts.untrusted_json import JsonLimits, JsonRuleError, load_bounded_json
from obstacle.platform.db import SessionFactory, session_scope
from obstacle.platform.keys import train_log_key
from obstacle.platform.models import Run
from obstacle.platform.store import ArtifactStore
from obstacle.service.problems import ProblemError
from obstacle.service.uploads import ReceivedUpload

__all__ = ["LINE_LIMITS", "MAX_LINE_BYTES", "check_train_log", "ingest_train_log"]

MAX_LINE_BYTES = 64 * 1024
# Python's json.dumps writes NaN and Infinity for a diverged loss, so the log may hold them.
LINE_LIMITS = JsonLimits(max_bytes=MAX_LINE_BYTES, max_depth=16, allow_nonfinite=True)


def _invalid(number: int, rule: str, line: bytes) -> ProblemError:
    shown = line.strip()[:80].decode("utf-8", errors="replace")
    return ProblemError(
        422,
        f"The train log, line {number}: {rule}; got {shown!r}. Write the log with "
        'obstacle.battery.checkpoint.append_train_log (one {"step", "lr", "loss"} object per line).',
        slug="invalid-train-log",
        title="The train log is invalid",
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _rule_broken(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return "each line must be a JSON object"
    step = entry.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return "'step' must be an int >= 0"
    if "loss" not in entry:
        return "'loss' is required (a number, NaN/Infinity for a diverged step, or null)"
    loss = entry["loss"]
    if loss is not None and not _is_number(loss):
        return "'loss' must be a number, NaN/Infinity or null"
    lr = entry.get("lr")
    if lr is not None and not (_is_number(lr) and math.isfinite(lr) and lr >= 0):
        return "'lr' must be a finite number >= 0, or null"
    return None


def check_train_log(path: Path) -> int:
    """The number of entries of the JSONL file at ``path``; a 422 naming the first bad line.

    Each line goes through ``obstacle.artifacts.untrusted_json`` (``LINE_LIMITS``): at most
    ``MAX_LINE_BYTES``, bounded nesting and number lengths, no duplicate keys.
    """
    entries = 0
    with path.open("rb") as handle:
        for number, line in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(line) > MAX_LINE_BYTES:
                raise _invalid(
                    number,
                    f"a line is at most {MAX_LINE_BYTES} bytes (append_train_log writes under 100)",
                    line[:80],
                )
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                raise _invalid(number, "the log must be UTF-8 text", line) from None
            if not text.strip():
                continue
            try:
                entry = load_bounded_json(text, LINE_LIMITS)
            except JsonRuleError as exc:
                bounds = f"each line must be a JSON object within bounds; the line {exc.problem}"
                raise _invalid(number, bounds, line) from None
            rule = _rule_broken(entry)
            if rule is not None:
                raise _invalid(number, rule, line)
            entries += 1
    if entries == 0:
        raise _invalid(1, "the log holds no entries (only blank lines)", b"")
    return entries


def ingest_train_log(
    sessions: SessionFactory, store: ArtifactStore, run_id: uuid.UUID, upload: ReceivedUpload
) -> tuple[Run, bool]:
    """Validate the log and make it the run's; ``created`` is True if the run had none."""
    with session_scope(sessions) as session:
        run = session.get(Run, run_id)
    if run is None:
        raise _run_gone(run_id)
    if run.train_log_sha256 == upload.sha256:
        return run, False
    entries = check_train_log(upload.path)
    key = train_log_key(run_id, upload.sha256)
    store.put_file(upload.path, key, link=True)
    previous = run.train_log_sha256
    with session_scope(sessions) as session:
        # Only over the log this upload replaces: of two concurrent uploads, one wins.
        same_as_read = (
            Run.train_log_sha256.is_(None) if previous is None else Run.train_log_sha256 == previous
        )
        updated = session.execute(
            update(Run)
            .where(Run.id == run_id, same_as_read)
            .values(
                train_log_sha256=upload.sha256,
                train_log_size_bytes=upload.size,
                train_log_entries=entries,
                train_log_store_key=key,
            )
        )
        won = bool(getattr(updated, "rowcount", 0))
        current = session.get(Run, run_id, populate_existing=True)
    if current is None:
        store.delete(key)
        raise _run_gone(run_id)
    if won:
        if run.train_log_store_key is not None:
            store.delete(run.train_log_store_key)
        return current, previous is None
    if current.train_log_sha256 == upload.sha256:  # the same bytes, sent twice at once
        return current, False
    store.delete(key)
    raise ProblemError(
        409,
        f"Another train log was uploaded to run {run_id} while this one was received; nothing of "
        "this upload was kept. Send the log again (the newest one is kept).",
        slug="concurrent-upload",
        title="The train log changed during the upload",
    )


def _run_gone(run_id: uuid.UUID) -> ProblemError:
    return ProblemError(
        404, f"Run {run_id} was deleted during the upload.", slug="not-found", title="Not found"
    )
