"""Settings of the HTTP service: the shared part (``obstacle.platform.settings``) plus upload limits.

OBSTACLE_MAX_CHECKPOINT_BYTES, OBSTACLE_MAX_PROBE_BYTES           upload size limits
OBSTACLE_MAX_TRAIN_LOG_BYTES    size limit of a run's train_log.jsonl (default 64 MiB)
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from obstacle.platform.settings import CommonSettings, ConfigurationError, GiB, MiB

__all__ = ["CommonSettings", "ConfigurationError", "Settings"]


class Settings(CommonSettings):
    """The HTTP service's settings."""

    max_checkpoint_bytes: int = Field(default=4 * GiB, ge=1)
    max_probe_bytes: int = Field(default=2 * GiB, ge=1)
    max_train_log_bytes: int = Field(default=64 * MiB, ge=1)
    upload_tmp_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    @property
    def resolved_upload_tmp_dir(self) -> Path:
        """Where uploads are spooled while they are hashed and validated."""
        return self.upload_tmp_dir if self.upload_tmp_dir is not None else self.data_dir / "tmp"
