"""Request and response bodies, split per resource into Create (in) and Public (out)."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PRESETS = ("quick", "standard", "full")
Preset = Literal["quick", "standard", "full"]


class Message(BaseModel):
    message: str


# --- runs -------------------------------------------------------------------------------------


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="A name for people; not unique.")
    meta: dict[str, Any] = Field(
        default_factory=dict, description="Free-form JSON kept with the run."
    )


class ProbePublic(BaseModel):
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


class TrainLogPublic(BaseModel):
    sha256: str = Field(
        description="SHA-256 of the uploaded train_log.jsonl; the same bytes again is a no-op."
    )
    size_bytes: int
    entries: int = Field(description="Its {step, lr, loss} lines (blank lines not counted).")


class RunPublic(BaseModel):
    id: uuid.UUID
    name: str
    meta: dict[str, Any]
    created_at: datetime
    probe: ProbePublic | None
    num_checkpoints: int
    train_log: TrainLogPublic | None = Field(
        description="The uploaded training log (PUT /v1/runs/{id}/train-log); null if none."
    )


class RunsPublic(BaseModel):
    data: list[RunPublic]
    count: int


# --- checkpoints ------------------------------------------------------------------------------


class OptimizerStatePublic(BaseModel):
    class_name: str = Field(description="The optimizer the checkpoint's header names.")
    sha256: str | None = Field(description="SHA-256 of its uploaded state; null until uploaded.")
    size_bytes: int | None


class CheckpointPublic(BaseModel):
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


class CheckpointsPublic(BaseModel):
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


class Progress(BaseModel):
    done: int = Field(description="Checkpoints analysed (successfully or with an error).")
    total: int
    running: int
    failed: int


class CheckpointErrorPublic(BaseModel):
    step: int | None
    message: str


class AnalysisPublic(BaseModel):
    id: uuid.UUID
    run_id: uuid.UUID
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


class AnalysesPublic(BaseModel):
    data: list[AnalysisPublic]
    count: int


# --- operations -------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str
    broker: str
