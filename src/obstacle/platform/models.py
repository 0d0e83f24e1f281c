"""Database tables (SQLAlchemy 2). The Alembic migrations under ``migrations/`` create them.

    projects ─┬─ api_tokens            a token is scoped to one project; only its SHA-256 is stored
              └─ runs ─┬─ (train log)   optional; its file's key on the run row, replaced as it grows
                       ├─ probes        one per run, inserted only after the validator accepted it
                       ├─ checkpoints   one per (run, step); content-addressed files in the store
                       └─ analyses ─── checkpoint_results   one per (analysis, step), done once

Rows reference files in the artifact store by key. A row is committed only after its file is in
place, so a row always points at complete, validated bytes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Analysis",
    "AnalysisState",
    "ApiToken",
    "Base",
    "Checkpoint",
    "CheckpointResult",
    "Probe",
    "Project",
    "Run",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The uploaded train_log.jsonl, all four set together or none (obstacle.service.train_log).
    train_log_sha256: Mapped[str | None] = mapped_column(String(64))
    train_log_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    train_log_entries: Mapped[int | None] = mapped_column(BigInteger)
    train_log_store_key: Mapped[str | None] = mapped_column(String(500))


class Probe(Base):
    __tablename__ = "probes"

    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    # SHA-256 over program.pt2 then data.safetensors, recomputed here (the manifest's claim is checked).
    content_hash: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]]
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    store_prefix: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    store_key: Mapped[str] = mapped_column(String(500))
    lr: Mapped[float] = mapped_column(Float)
    train_loss: Mapped[float | None] = mapped_column(Float)
    # Names of tensors holding NaN/Inf ("train_loss" when the logged loss is not finite).
    nonfinite: Mapped[list[Any]] = mapped_column(default=list)
    # The optimizer class the checkpoint's header names; its state is a second upload.
    optimizer_class: Mapped[str | None] = mapped_column(String(200))
    optimizer_sha256: Mapped[str | None] = mapped_column(String(64))
    optimizer_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    optimizer_store_key: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AnalysisState:
    QUEUED = "queued"
    RUNNING = "running"
    FINALIZING = "finalizing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TERMINAL = (SUCCEEDED, FAILED)


class Analysis(Base):
    __tablename__ = "analyses"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    preset: Mapped[str] = mapped_column(String(20))
    target_loss: Mapped[float | None] = mapped_column(Float)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The checkpoint steps present when the analysis was created: later uploads do not join it.
    steps: Mapped[list[Any]]
    state: Mapped[str] = mapped_column(String(20), default=AnalysisState.QUEUED)
    error: Mapped[str | None] = mapped_column(Text)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    report_files: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class CheckpointResult(Base):
    """One checkpoint's share of an analysis: ``running`` → ``done`` | ``error``, exactly once."""

    __tablename__ = "checkpoint_results"

    analysis_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("analyses.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(20), default="running")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    record: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
