"""Settings: validated at start-up, unsafe values refused with the variable named."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from obstacle.service.settings import ConfigurationError, Settings


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'obstacle.db'}"
    assert settings.resolved_artifact_url == str(tmp_path.resolve() / "artifacts")
    assert settings.broker_url is None
    with pytest.raises(ConfigurationError, match="OBSTACLE_BROKER_URL"):
        settings.require_broker_url()


def test_read_from_obstacle_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBSTACLE_BROKER_URL", "redis://broker:6379/2")
    monkeypatch.setenv("OBSTACLE_MAX_CHECKPOINT_BYTES", "1234")
    monkeypatch.setenv("OBSTACLE_ARTIFACT_URL", "memory://artifacts")
    settings = Settings()
    assert settings.require_broker_url() == "redis://broker:6379/2"
    assert settings.max_checkpoint_bytes == 1234
    assert settings.resolved_artifact_url == "memory://artifacts"


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        (
            {"visibility_timeout_s": 60, "checkpoint_time_limit_s": 60},
            "OBSTACLE_CHECKPOINT_TIME_LIMIT_S",
        ),
        (
            {
                "visibility_timeout_s": 600,
                "checkpoint_time_limit_s": 60,
                "checkpoints_per_task": 10,
            },
            "OBSTACLE_CHECKPOINTS_PER_TASK=10 = 600 s",
        ),
        (
            {"visibility_timeout_s": 600, "checkpoints_per_task": 2, "finalize_time_limit_s": 900},
            "OBSTACLE_FINALIZE_TIME_LIMIT_S",
        ),
        ({"environment": "production", "broker_url": "redis://r"}, "OBSTACLE_DATABASE_URL"),
        (
            {
                "environment": "production",
                "broker_url": "redis://r",
                "database_url": "sqlite:///x.db",
            },
            "OBSTACLE_DATABASE_URL",
        ),
        (
            {
                "environment": "production",
                "broker_url": "redis://r",
                "database_url": "postgresql+psycopg://obstacle:changethis@db/obstacle",
            },
            "changethis",
        ),
        (
            {"environment": "production", "database_url": "postgresql+psycopg://o:s@db/o"},
            "OBSTACLE_BROKER_URL",
        ),
        ({"max_checkpoint_bytes": 0}, "max_checkpoint_bytes"),
        ({"checkpoints_per_task": 0}, "checkpoints_per_task"),
        ({"analysis_stall_timeout_s": 100}, "OBSTACLE_ANALYSIS_STALL_TIMEOUT_S"),
    ],
)
def test_unsafe_values_are_refused_naming_the_variable(
    values: dict[str, object], variable: str
) -> None:
    with pytest.raises(ValidationError, match=variable):
        Settings(**values)  # type: ignore[arg-type]


def test_production_with_real_services_is_accepted() -> None:
    settings = Settings(
        environment="production",
        database_url="postgresql+psycopg://obstacle:s3cret@db/obstacle",
        broker_url="redis://redis:6379/0",
        artifact_url="s3://bucket/obstacle",
    )
    assert settings.environment == "production"
