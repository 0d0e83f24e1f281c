"""The Dockerfile and docker-compose.yml stay in step with the commands and the settings.

(No Docker engine runs here: this checks what can be checked without one.)
"""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from obstacle.cli import app
from obstacle.service.settings import Settings
from obstacle.workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
KNOWN = {
    f"OBSTACLE_{name.upper()}" for name in {*Settings.model_fields, *WorkerSettings.model_fields}
}


def test_every_obstacle_variable_they_set_is_a_setting() -> None:
    for name in ("Dockerfile", "docker-compose.yml"):
        used = set(re.findall(r"\bOBSTACLE_[A-Z0-9_]+", (ROOT / name).read_text()))
        assert used, name
        assert used <= KNOWN, f"{name} sets unknown variables {sorted(used - KNOWN)}"


def test_the_compose_defaults_are_valid_settings() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    defaults = dict(re.findall(r"\bOBSTACLE_([A-Z0-9_]+): \$\{OBSTACLE_\1:-([^}]*)\}", compose))
    assert "VISIBILITY_TIMEOUT_S" in defaults
    values = {name.lower(): value for name, value in defaults.items()}
    Settings(**values)
    WorkerSettings(**values)


def test_their_commands_exist() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    commands = re.findall(r'^CMD \["obstacle", (.*)\]$', dockerfile, flags=re.MULTILINE)
    assert commands == ['"serve", "--api-only"', '"worker"']
    runner = CliRunner()
    for command in commands:
        args = [part.strip().strip('"') for part in command.split(",")]
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, result.output
    assert {"service", "worker"} <= set(
        re.findall(r"^FROM .* AS (\w+)$", dockerfile, flags=re.MULTILINE)
    )
    compose = (ROOT / "docker-compose.yml").read_text()
    for service in ("api:", "worker:", "redis:", "postgres:"):
        assert f"\n  {service}" in compose
    assert "target: service" in compose and "target: worker" in compose


def test_the_workers_have_a_real_health_check() -> None:
    """compose and the worker image ping the worker's own node (tests/workers/test_health_check.py
    runs that command against a real worker)."""
    compose = (ROOT / "docker-compose.yml").read_text()
    for service in ("worker", "worker-gpu"):
        block = compose.split(f"\n  {service}:\n", 1)[1].split("\n\n", 1)[0]
        assert "healthcheck:" in block, f"{service} has no health check"
    assert '["CMD", "python", "-m", "obstacle.workers.health"]' in compose
    dockerfile = (ROOT / "Dockerfile").read_text()
    worker_stage = dockerfile.split("AS worker", 1)[1]
    assert 'CMD ["python", "-m", "obstacle.workers.health"]' in worker_stage
