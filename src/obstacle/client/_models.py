"""What the client returns: typed, read-only views of the service's JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from obstacle.client._client import Client

__all__ = [
    "AnalysisResult",
    "AnalysisStatus",
    "CheckpointInfo",
    "ProbeInfo",
    "Progress",
    "RunInfo",
    "UploadResult",
]

FINISHED_STATES = ("succeeded", "failed")


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None


@dataclass(frozen=True)
class ProbeInfo:
    """The run's uploaded probe bundle."""

    sha256: str
    content_hash: str
    size_bytes: int
    num_parameters: int
    num_batches: int
    batch_size: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeInfo:
        return cls(
            sha256=str(data["sha256"]),
            content_hash=str(data["content_hash"]),
            size_bytes=int(data["size_bytes"]),
            num_parameters=int(data["num_parameters"]),
            num_batches=int(data["num_batches"]),
            batch_size=int(data["batch_size"]),
        )


@dataclass(frozen=True)
class RunInfo:
    """A run on the service: its probe, how many checkpoints it has, its train log's hash."""

    id: str
    name: str
    meta: dict[str, Any]
    created_at: datetime | None
    probe: ProbeInfo | None
    num_checkpoints: int
    train_log_sha256: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunInfo:
        probe = data.get("probe")
        train_log = data.get("train_log")
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            meta=dict(data.get("meta") or {}),
            created_at=_time(data.get("created_at")),
            probe=ProbeInfo.from_json(probe) if probe else None,
            num_checkpoints=int(data.get("num_checkpoints", 0)),
            train_log_sha256=str(train_log["sha256"]) if train_log else None,
        )


@dataclass(frozen=True)
class CheckpointInfo:
    """One uploaded checkpoint: its step, hash, and its optimizer state's hash if uploaded."""

    step: int
    sha256: str
    size_bytes: int
    lr: float
    train_loss: float | None
    nonfinite: list[str]
    optimizer_sha256: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointInfo:
        optimizer = data.get("optimizer") or {}
        loss = data.get("train_loss")
        return cls(
            step=int(data["step"]),
            sha256=str(data["sha256"]),
            size_bytes=int(data["size_bytes"]),
            lr=float(data["lr"]),
            train_loss=None if loss is None else float(loss),
            nonfinite=[str(n) for n in data.get("nonfinite") or []],
            optimizer_sha256=optimizer.get("sha256"),
        )


@dataclass(frozen=True)
class Progress:
    """Checkpoints analysed so far out of ``total``."""

    done: int
    total: int
    running: int
    failed: int


@dataclass(frozen=True)
class AnalysisStatus:
    """An analysis as the service reports it while it runs and once it has finished."""

    id: str
    run_id: str
    state: str
    preset: str
    target_loss: float | None
    steps: list[int]
    progress: Progress
    errors: list[tuple[int | None, str]]
    report: dict[str, Any] | None
    report_files: list[str]
    created_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        """True once the analysis has succeeded or failed."""
        return self.state in FINISHED_STATES

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AnalysisStatus:
        progress = data.get("progress") or {}
        return cls(
            id=str(data["id"]),
            run_id=str(data["run_id"]),
            state=str(data["state"]),
            preset=str(data.get("preset", "")),
            target_loss=data.get("target_loss"),
            steps=[int(s) for s in data.get("steps") or []],
            progress=Progress(
                done=int(progress.get("done", 0)),
                total=int(progress.get("total", 0)),
                running=int(progress.get("running", 0)),
                failed=int(progress.get("failed", 0)),
            ),
            errors=[(e.get("step"), str(e.get("message", ""))) for e in data.get("errors") or []],
            report=data.get("report"),
            report_files=[str(f) for f in data.get("report_files") or []],
            created_at=_time(data.get("created_at")),
            finished_at=_time(data.get("finished_at")),
        )


@dataclass(frozen=True)
class AnalysisResult:
    """A finished analysis: the verdict, the whole JSON report, and the HTML report on demand."""

    status: AnalysisStatus
    report_json: dict[str, Any]
    _client: Client | None = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        return self.status.id

    @property
    def verdict(self) -> dict[str, Any]:
        """``{"primary", "confidence", "obstacles", "ruled_out", "summary"}``."""
        verdict: dict[str, Any] = self.report_json["verdict"]
        return verdict

    def save_html(self, path: str | Path) -> Path:
        """Write the self-contained HTML report to ``path`` (fetched from the service)."""
        target = Path(path)
        if self._client is None:
            from obstacle.battery.report import render_report

            files = target.parent / f"{target.stem}_files"
            files.mkdir(parents=True, exist_ok=True)
            return render_report(self.report_json, files).replace(target)
        html = self._client.report_html(self.status.id)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(html, encoding="utf-8")
        return target


@dataclass(frozen=True)
class UploadResult:
    """What ``upload_run_dir`` did: the run, and which steps it sent or found already there."""

    run: RunInfo
    uploaded: list[int]
    skipped: list[int]
    probe_uploaded: bool
    train_log_uploaded: bool = False
