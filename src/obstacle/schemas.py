"""The service's API bodies, in one module that the service and the client both import.

Pydantic only: no torch, fastapi or sqlalchemy, so the client install (and the torch-free service
image) can import it. The service answers with these models (``obstacle.service.schemas``
re-exports them) and the client parses the answers into the same classes (``obstacle.client``
names them ``RunInfo``, ``AnalysisStatus``, ...), so the two cannot drift apart.

Bodies are split per resource into Create (in) and Public (out). ``Report`` is a typed view of the
battery's JSON report (schema ``obstacle.report/1``), the same whether it was computed here
(``obstacle.analyze``) or by the service.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    WithJsonSchema,
    field_validator,
)

__all__ = [
    "FINISHED_STATES",
    "PRESETS",
    "SHA256_HEADER",
    "SHA256_TRAILING",
    "SHA256_TRAILING_BYTES",
    "AnalysesPublic",
    "AnalysisCreate",
    "AnalysisOptions",
    "AnalysisPublic",
    "CheckpointErrorPublic",
    "CheckpointPublic",
    "CheckpointsPublic",
    "Evidence",
    "Health",
    "Id",
    "Message",
    "ObstacleFinding",
    "OptimizerStatePublic",
    "Preset",
    "ProbePublic",
    "Progress",
    "Report",
    "RuledOut",
    "RunCreate",
    "RunPublic",
    "RunsPublic",
    "TrainLogPublic",
    "Verdict",
]

PRESETS = ("quick", "standard", "full")
Preset = Literal["quick", "standard", "full"]
FINISHED_STATES = ("succeeded", "failed")

# An upload's integrity: the header carries the body's SHA-256 as 64 hex digits, or
# SHA256_TRAILING, and then the body ends with those digits (the client hashes while it sends).
SHA256_HEADER = "X-Content-SHA256"
SHA256_TRAILING = "trailing"
SHA256_TRAILING_BYTES = 64


def _id_text(value: object) -> object:
    return str(value) if isinstance(value, uuid.UUID) else value


#: A resource id: a UUID on the wire, a ``str`` in Python (the service passes ``uuid.UUID``).
Id = Annotated[str, BeforeValidator(_id_text), WithJsonSchema({"type": "string", "format": "uuid"})]


class _Parsed(BaseModel):
    """A response body; ``from_json`` parses the service's JSON (unknown fields are ignored)."""

    @classmethod
    def from_json(cls, data: Any) -> Self:
        return cls.model_validate(data)


class Message(BaseModel):
    message: str


# --- runs -------------------------------------------------------------------------------------


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="A name for people; not unique.")
    meta: dict[str, Any] = Field(
        default_factory=dict, description="Free-form JSON kept with the run."
    )


class ProbePublic(_Parsed):
    sha256: str = Field(
        description="SHA-256 of the uploaded bundle; the same bytes again is a no-op."
    )
    content_hash: str = Field(description="SHA-256 over program.pt2 then data.safetensors.")
    size_bytes: int
    num_parameters: int
    num_batches: int
    batch_size: int
    model_class: str
    loss_class: str
    torch_version: str
    created_at: datetime


class TrainLogPublic(_Parsed):
    sha256: str = Field(
        description="SHA-256 of the uploaded train_log.jsonl; the same bytes again is a no-op."
    )
    size_bytes: int
    entries: int = Field(description="Its {step, lr, loss} lines (blank lines not counted).")


class RunPublic(_Parsed):
    id: Id
    name: str
    meta: dict[str, Any]
    created_at: datetime
    probe: ProbePublic | None
    num_checkpoints: int
    train_log: TrainLogPublic | None = Field(
        description="The uploaded training log (PUT /v1/runs/{id}/train-log); null if none."
    )

    @property
    def train_log_sha256(self) -> str | None:
        """SHA-256 of the uploaded training log; None if none."""
        return self.train_log.sha256 if self.train_log is not None else None


class RunsPublic(_Parsed):
    data: list[RunPublic]
    count: int


# --- checkpoints ------------------------------------------------------------------------------


class OptimizerStatePublic(_Parsed):
    class_name: str = Field(description="The optimizer the checkpoint's header names.")
    sha256: str | None = Field(description="SHA-256 of its uploaded state; null until uploaded.")
    size_bytes: int | None


class CheckpointPublic(_Parsed):
    step: int
    sha256: str
    size_bytes: int
    lr: float
    train_loss: float | None
    nonfinite: list[str] = Field(
        description=(
            "Tensors holding NaN or Inf (and 'train_loss' when the logged loss is not finite). "
            "Accepted, because a diverging run has them: the analysis reports divergence."
        )
    )
    optimizer: OptimizerStatePublic | None
    created_at: datetime

    @property
    def optimizer_sha256(self) -> str | None:
        """SHA-256 of the uploaded optimizer state; None until it is uploaded."""
        return self.optimizer.sha256 if self.optimizer is not None else None


class CheckpointsPublic(_Parsed):
    data: list[CheckpointPublic]
    count: int


# --- analyses ---------------------------------------------------------------------------------


class AnalysisOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[int] | None = Field(
        default=None,
        min_length=1,
        description="Analyse only these uploaded checkpoint steps (default: every one uploaded so far).",
    )


class AnalysisCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: Preset = Field(default="standard", description="Cost preset of the battery.")
    target_loss: float | None = Field(
        default=None,
        description="The loss the run needs to reach; a run stuck above it is flagged.",
    )
    options: AnalysisOptions = Field(default_factory=AnalysisOptions)

    @field_validator("target_loss")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"target_loss must be a finite number; got {value}")
        return value


class Progress(_Parsed):
    done: int = Field(description="Checkpoints analysed (successfully or with an error).")
    total: int
    running: int
    failed: int


class CheckpointErrorPublic(_Parsed):
    step: int | None
    message: str


class AnalysisPublic(_Parsed):
    id: Id
    run_id: Id
    state: Literal["queued", "running", "finalizing", "succeeded", "failed"]
    preset: Preset
    target_loss: float | None
    steps: list[int]
    progress: Progress
    errors: list[CheckpointErrorPublic]
    report: dict[str, Any] | None = Field(
        description="The JSON report once the state is succeeded."
    )
    report_files: list[str] = Field(
        description="Files of the HTML report, below /v1/analyses/{id}/."
    )
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        """True once the analysis has succeeded or failed."""
        return self.state in FINISHED_STATES


class AnalysesPublic(_Parsed):
    data: list[AnalysisPublic]
    count: int


# --- operations -------------------------------------------------------------------------------


class Health(_Parsed):
    status: Literal["ok", "unavailable"]
    database: str
    broker: str
    worker: str | None = Field(
        default=None,
        description="Under `obstacle serve`: its embedded worker, 'ok' or why it cannot take tasks.",
    )


# --- the report -------------------------------------------------------------------------------
# A typed view of the battery's report: the verdict's stable core is typed, the rest (per-checkpoint
# records, run-level tests, facts) stays JSON. Extra keys are kept, so a newer battery's report
# still parses and ``to_json()`` gives back every key.


class Evidence(BaseModel):
    """One line of evidence: the test that measured it and what it showed."""

    model_config = ConfigDict(extra="allow", frozen=True)

    test: str
    statement: str


class ObstacleFinding(BaseModel):
    """An obstacle found on the run's timeline, with its confidence and evidence."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str
    confidence: float
    steps: list[int] = Field(default_factory=list)
    evidence: list[Evidence] = Field(default_factory=list)
    suggestion: str = ""


class RuledOut(BaseModel):
    """An obstacle the battery looked for and did not find, and why."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str
    reason: str
    confidence: float | None = None


class Verdict(BaseModel):
    """Which obstacle held the run back (``primary``, or ``healthy``), and what was ruled out."""

    model_config = ConfigDict(extra="allow", frozen=True)

    primary: str
    confidence: float
    summary: str
    obstacles: list[ObstacleFinding] = Field(default_factory=list)
    ruled_out: list[RuledOut] = Field(default_factory=list)
    target_loss: float | None = None

    def finding(self, kind: str) -> ObstacleFinding | None:
        """The obstacle ``kind`` if it was found, else None."""
        return next((o for o in self.obstacles if o.kind == kind), None)


class Report(BaseModel):
    """A run's report: the verdict (typed) and the raw records it was judged on.

    ``obstacle.analyze(run_dir)`` returns one; ``AnalysisResult.report`` is the service's.
    """

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    schema_: str = Field(default="", alias="schema")
    verdict: Verdict
    run: dict[str, Any] = Field(default_factory=dict)
    checkpoints: list[dict[str, Any]] = Field(default_factory=list)
    facts: dict[str, Any] = Field(default_factory=dict)
    _json: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """The report from its JSON (as ``obstacle analyze --json`` writes it)."""
        report = cls.model_validate(data)
        report._json = data
        return report

    def to_json(self) -> dict[str, Any]:
        """The report as JSON, exactly as it was computed (every key, untyped)."""
        return self._json or self.model_dump(mode="json", by_alias=True)

    @property
    def primary(self) -> str:
        """The primary obstacle's label, or ``healthy``."""
        return self.verdict.primary

    @property
    def summary(self) -> str:
        """The verdict in one sentence."""
        return self.verdict.summary

    def save_json(self, path: str | Path) -> Path:
        """Write the JSON report to ``path``."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")
        return target

    def save_html(self, path: str | Path) -> Path:
        """Write the self-contained HTML report to ``path`` (needs the ``battery`` extra)."""
        from obstacle.battery.report import render_report

        target = Path(path)
        files = target.parent / f"{target.stem}_files"
        files.mkdir(parents=True, exist_ok=True)
        return render_report(self.to_json(), files).replace(target)
