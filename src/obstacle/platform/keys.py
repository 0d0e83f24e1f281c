"""Where each file lives in the artifact store; every key of a run is below ``runs/<run_id>/``.

    runs/<run>/probe/<bundle sha256>/{manifest.json, program.pt2, data.safetensors}
    runs/<run>/checkpoints/<step:09d>/<sha256>.safetensors         (and .optim.safetensors)
    runs/<run>/train_log/<sha256>.jsonl                            the current one is on the run row
    runs/<run>/analyses/<analysis>/{report.html, plots/*.png}

Content-addressed where bytes could differ, so a key never receives other bytes.
"""

from __future__ import annotations

import uuid

__all__ = [
    "checkpoint_key",
    "optimizer_key",
    "probe_prefix",
    "report_prefix",
    "run_prefix",
    "train_log_key",
]


def run_prefix(run_id: uuid.UUID) -> str:
    return f"runs/{run_id}"


def probe_prefix(run_id: uuid.UUID, bundle_sha256: str) -> str:
    return f"{run_prefix(run_id)}/probe/{bundle_sha256}"


def checkpoint_key(run_id: uuid.UUID, step: int, sha256: str) -> str:
    return f"{run_prefix(run_id)}/checkpoints/{step:09d}/{sha256}.safetensors"


def optimizer_key(run_id: uuid.UUID, step: int, sha256: str) -> str:
    return f"{run_prefix(run_id)}/checkpoints/{step:09d}/{sha256}.optim.safetensors"


def train_log_key(run_id: uuid.UUID, sha256: str) -> str:
    return f"{run_prefix(run_id)}/train_log/{sha256}.jsonl"


def report_prefix(run_id: uuid.UUID, analysis_id: uuid.UUID) -> str:
    return f"{run_prefix(run_id)}/analyses/{analysis_id}"
