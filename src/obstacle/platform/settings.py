"""Settings the service and the workers share, read from ``OBSTACLE_*`` environment variables.

Validated once at start-up: a value that would be unsafe is refused with an error naming the
variable to set. The workers read the same shared part (``CommonSettings``) plus their own
(``obstacle.workers.settings``); the service adds its own (``obstacle.service.settings``).

    OBSTACLE_ENVIRONMENT            local (default) | production
    OBSTACLE_DATA_DIR               local directory for the default database, artifacts, temp files;
                                    default ./obstacle-data of the current directory
    OBSTACLE_DATABASE_URL           SQLAlchemy URL; default sqlite:///DATA_DIR/obstacle.db
    OBSTACLE_BROKER_URL             redis://host:port/db; unset: `obstacle serve` starts its own Redis
    OBSTACLE_ARTIFACT_URL           any fsspec URL (s3://bucket/prefix, file:///srv/x); default DATA_DIR/artifacts
    OBSTACLE_VISIBILITY_TIMEOUT_S   seconds before Redis hands an unacknowledged task to another worker
    OBSTACLE_CHECKPOINTS_PER_TASK   checkpoints one task analyses in order, Lanczos warm-started
                                    along them (default 20: a typical analysis is one task)
    OBSTACLE_CHECKPOINT_TIME_LIMIT_S   time per checkpoint: a task's hard limit is this × the
                                    checkpoints per task; a group whose next checkpoint would end
                                    past it hands the rest to a new task instead of failing them
    OBSTACLE_FINALIZE_TIME_LIMIT_S  the run-level task's least hard limit (default 240); it gets
                                    3 × what its checkpoints' measured cost predicts when that is
                                    more, up to 0.9 × the visibility timeout (a 25M-parameter model
                                    on a CPU core needs minutes)
    OBSTACLE_ANALYSIS_STALL_TIMEOUT_S  an analysis no worker has touched this long is marked
                                    failed (default 600): a worker heartbeats the analysis every
                                    min(30 s, a quarter of this) while it works on it, so a dead
                                    worker, or none at all, is noticed in minutes. A queued
                                    analysis waits its turn while workers make progress on others;
                                    it is failed only when no worker progressed on anything
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEFAULT_DATA_DIR",
    "CommonSettings",
    "ConfigurationError",
    "GiB",
    "MiB",
    "load_or_exit",
]

S = TypeVar("S")

#: Where ``obstacle serve`` and ``obstacle token create`` keep the data when neither
#: ``--data-dir`` nor OBSTACLE_DATA_DIR names a directory (relative to the current directory).
DEFAULT_DATA_DIR = "obstacle-data"

MiB = 1024**2
GiB = 1024**3


class ConfigurationError(RuntimeError):
    """A required setting is missing or unsafe; the message names the variable."""


class CommonSettings(BaseSettings):
    """What the service and the workers share: where the database, broker and artifacts are."""

    model_config = SettingsConfigDict(env_prefix="OBSTACLE_", extra="ignore", frozen=True)

    environment: Literal["local", "production"] = "local"
    # Relative to the current directory unless absolute; made absolute at load time, so every
    # process started from here (worker, token) uses the same directory.
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    database_url: str | None = None
    broker_url: str | None = None
    artifact_url: str | None = None

    # A task must finish inside the visibility timeout or Redis hands it to a second worker while
    # the first runs, so the timeout exceeds the longest task (a group of checkpoints). A task whose
    # worker died comes back only after it: smaller groups allow a shorter timeout.
    visibility_timeout_s: int = Field(default=5400, ge=1)
    checkpoints_per_task: int = Field(default=20, ge=1)
    checkpoint_time_limit_s: int = Field(default=240, ge=1)
    finalize_time_limit_s: int = Field(default=240, ge=1)
    # Workers heartbeat an analysis while they work on it (every stall_heartbeat_s), so a long
    # group of checkpoints does not count as a stall: only a worker that is gone, or never came.
    analysis_stall_timeout_s: int = Field(default=600, ge=1)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("broker_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        # Any other text makes the worker retry a connection forever instead of saying why.
        if value is not None and not value.startswith(("redis://", "rediss://", "redis+socket://")):
            raise ValueError(
                f"must be a Redis URL such as redis://host:6379/0 (or rediss://); got {value!r}."
            )
        return value

    @property
    def stall_heartbeat_s(self) -> float:
        """How often a worker touches the analysis it works on: four times per stall timeout, at
        most every 30 s."""
        return max(0.25, min(30.0, self.analysis_stall_timeout_s / 4))

    @property
    def group_time_limit_s(self) -> int:
        """The hard time limit of a task that analyses a group of checkpoints."""
        return self.checkpoint_time_limit_s * self.checkpoints_per_task

    @model_validator(mode="after")
    def _check_safe(self) -> Self:
        group = (
            f"OBSTACLE_CHECKPOINT_TIME_LIMIT_S={self.checkpoint_time_limit_s}"
            if self.checkpoints_per_task == 1
            else f"OBSTACLE_CHECKPOINT_TIME_LIMIT_S={self.checkpoint_time_limit_s} × "
            f"OBSTACLE_CHECKPOINTS_PER_TASK={self.checkpoints_per_task} "
            f"= {self.group_time_limit_s} s (a task's limit)"
        )
        limits = {
            group: self.group_time_limit_s,
            f"OBSTACLE_FINALIZE_TIME_LIMIT_S={self.finalize_time_limit_s}": self.finalize_time_limit_s,
        }
        # The stall timeout must exceed one checkpoint's and the run-level task's limits (not a
        # whole group's: the worker heartbeats along it), so that one long step with a starved
        # heartbeat does not fail an analysis that is still within its limits.
        for name, limit in (
            (
                f"OBSTACLE_CHECKPOINT_TIME_LIMIT_S={self.checkpoint_time_limit_s}",
                self.checkpoint_time_limit_s,
            ),
            (
                f"OBSTACLE_FINALIZE_TIME_LIMIT_S={self.finalize_time_limit_s}",
                self.finalize_time_limit_s,
            ),
        ):
            if limit >= self.analysis_stall_timeout_s:
                raise ValueError(
                    f"OBSTACLE_ANALYSIS_STALL_TIMEOUT_S={self.analysis_stall_timeout_s} must exceed "
                    f"{name}: an analysis would be failed while a task of it is still within its "
                    "time limit. Raise the stall timeout (default 600) or lower the limit."
                )
        for name, limit in limits.items():
            if limit >= self.visibility_timeout_s:
                raise ValueError(
                    f"{name} must be below OBSTACLE_VISIBILITY_TIMEOUT_S={self.visibility_timeout_s}: "
                    "otherwise Redis hands a task that is still running to a second worker. Lower the "
                    "limit or the checkpoints per task, or raise the timeout."
                )
        if self.environment == "production":
            if self.database_url is None or self.database_url.startswith("sqlite"):
                raise ValueError(
                    "OBSTACLE_DATABASE_URL must name a PostgreSQL database when "
                    "OBSTACLE_ENVIRONMENT=production (SQLite is for one machine); "
                    "e.g. postgresql+psycopg://user:password@host/obstacle."
                )
            if "changethis" in self.database_url:
                raise ValueError(
                    "OBSTACLE_DATABASE_URL still holds the placeholder password 'changethis'; "
                    "set POSTGRES_PASSWORD (docker compose) or the URL to a real secret."
                )
            if self.broker_url is None:
                raise ValueError(
                    "OBSTACLE_BROKER_URL must be set when OBSTACLE_ENVIRONMENT=production; the embedded "
                    "Redis is for `obstacle serve` on one machine. E.g. redis://redis:6379/0."
                )
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside the data directory."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'obstacle.db').resolve()}"

    @cached_property
    def resolved_artifact_url(self) -> str:
        """The artifact store URL, defaulting to a directory inside the data directory."""
        if self.artifact_url is not None:
            return self.artifact_url
        return str((self.data_dir / "artifacts").resolve())

    def require_broker_url(self) -> str:
        """The broker URL, or a ConfigurationError that says how to set it."""
        if self.broker_url is None:
            raise ConfigurationError(
                "OBSTACLE_BROKER_URL is not set. Point it at a Redis (redis://host:6379/0), or run "
                "`obstacle serve` without it to start an embedded Redis."
            )
        return self.broker_url


def load_or_exit(cls: type[S], **values: Any) -> S:
    """Settings from the environment (``values``, e.g. a command-line flag, take precedence), or a
    message naming each bad variable and exit 2."""
    import typer
    from pydantic import ValidationError

    try:
        return cls(**values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = "_".join(str(p) for p in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"  OBSTACLE_{where}: {message}" if where else f"  {message}")
        typer.echo("obstacle: the configuration is invalid:\n" + "\n".join(lines), err=True)
        raise typer.Exit(2) from None
