"""Settings of the HTTP service: the shared part (``obstacle.platform.settings``) plus upload limits.

OBSTACLE_MAX_CHECKPOINT_BYTES, OBSTACLE_MAX_PROBE_BYTES           upload size limits
OBSTACLE_MAX_TRAIN_LOG_BYTES    size limit of a run's train_log.jsonl (default 64 MiB)
OBSTACLE_MAX_REQUEST_BYTES      body size limit of every other request (JSON; default 1 MiB)
OBSTACLE_MAX_HEADER_BYTES       request line and headers together (default 64 KiB; else 431)
OBSTACLE_HEADER_TIMEOUT_S       a request's headers must arrive within this (default 10 s; else 408)
OBSTACLE_BODY_IDLE_TIMEOUT_S    a body that sends nothing this long is cut off (default 30 s; 408)
OBSTACLE_KEEP_ALIVE_TIMEOUT_S   an idle keep-alive connection is closed after this (default 5 s)

Sizes are checked from Content-Length before a byte of the body is read (413), and counted while
a chunked body streams; a request to /v1 without a valid token is answered 401 before its body is
read (``obstacle.service.limits``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from obstacle.platform.settings import CommonSettings, ConfigurationError, GiB, MiB

KiB = 1024

__all__ = ["CommonSettings", "ConfigurationError", "Settings"]


class Settings(CommonSettings):
    """The HTTP service's settings."""

    max_checkpoint_bytes: int = Field(default=4 * GiB, ge=1)
    max_probe_bytes: int = Field(default=2 * GiB, ge=1)
    max_train_log_bytes: int = Field(default=64 * MiB, ge=1)
    max_request_bytes: int = Field(default=1 * MiB, ge=1)
    max_header_bytes: int = Field(default=64 * KiB, ge=1 * KiB)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_idle_timeout_s: float = Field(default=30.0, gt=0)
    keep_alive_timeout_s: int = Field(default=5, ge=1)
    upload_tmp_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    @property
    def resolved_upload_tmp_dir(self) -> Path:
        """Where uploads are spooled while they are hashed and validated."""
        return self.upload_tmp_dir if self.upload_tmp_dir is not None else self.data_dir / "tmp"
