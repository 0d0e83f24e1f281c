"""What the client returns: the service's bodies (the shared ``obstacle.schemas`` models under the
client's names) and the results built from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obstacle.schemas import (
    AnalysisPublic,
    CheckpointPublic,
    ProbePublic,
    Progress,
    Report,
    RunPublic,
)

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

#: The service's bodies, parsed into the classes the service answers with (``obstacle.schemas``):
#: one definition for both sides. Unknown fields are ignored, so a newer service still parses.
ProbeInfo = ProbePublic
RunInfo = RunPublic
CheckpointInfo = CheckpointPublic
AnalysisStatus = AnalysisPublic


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

    @property
    def report(self) -> Report:
        """The typed report (the same class ``obstacle.analyze`` returns)."""
        return Report.from_json(self.report_json)

    def save_html(self, path: str | Path) -> Path:
        """Write the self-contained HTML report to ``path`` (fetched from the service)."""
        target = Path(path)
        if self._client is None:
            return self.report.save_html(target)
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
