"""`obstacle serve`, `obstacle worker`, `obstacle token create` (the `serve` run itself: tests/workers)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest_services import OBSTACLE_CLI, Process, make_settings
from obstacle.cli import app
from obstacle.service.app import create_app

runner = CliRunner(env={"COLUMNS": "200"})


def test_help_explains_the_commands() -> None:
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for command in ("serve", "worker", "token"):
        assert command in top.output
    serve = runner.invoke(app, ["serve", "--help"])
    assert serve.exit_code == 0
    assert (
        "embedded Redis" in serve.output
        and "--api-only" in serve.output
        and "OBSTACLE_BROKER_URL" in serve.output
    )
    worker = runner.invoke(app, ["worker", "--help"])
    assert worker.exit_code == 0 and "CUDA" in worker.output
    token = runner.invoke(app, ["token", "create", "--help"])
    assert token.exit_code == 0 and "--project" in token.output


def test_token_create_gives_a_working_token(
    database_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSTACLE_DATABASE_URL", database_url)
    result = runner.invoke(app, ["token", "create", "--project", "cli-project", "--label", "ci"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[0]
    assert token.startswith("obst_") and len(token) > 40
    with TestClient(create_app(make_settings(database_url, redis_url, tmp_path))) as client:
        response = client.get("/v1/runs", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200


def test_a_bad_configuration_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBSTACLE_VISIBILITY_TIMEOUT_S", "30")
    monkeypatch.setenv("OBSTACLE_CHECKPOINT_TIME_LIMIT_S", "60")
    for command in (["serve"], ["worker"], ["token", "create", "--project", "x"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert (
            "OBSTACLE_CHECKPOINT_TIME_LIMIT_S=60 × OBSTACLE_CHECKPOINTS_PER_TASK=20 = 1200 s (a "
            "task's limit) must be below OBSTACLE_VISIBILITY_TIMEOUT_S=30" in result.output
        )
    monkeypatch.delenv("OBSTACLE_VISIBILITY_TIMEOUT_S")
    monkeypatch.delenv("OBSTACLE_CHECKPOINT_TIME_LIMIT_S")
    monkeypatch.setenv("OBSTACLE_PORT", "not-a-port")
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2 and "OBSTACLE_PORT" in result.output


def test_api_only_and_worker_need_a_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OBSTACLE_BROKER_URL", raising=False)
    monkeypatch.setenv("OBSTACLE_DATA_DIR", str(tmp_path))
    for command in (["serve", "--api-only"], ["worker"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "OBSTACLE_BROKER_URL is not set" in result.output


def _token(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OBSTACLE_CLI, "token", "create", "--project", "elsewhere", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_serve_and_token_share_one_data_dir_rule(
    tmp_path: Path, redis_url: str, processes: Callable[..., Process]
) -> None:
    """A token created from another directory reaches the server's database when it names the
    same data directory (flag or OBSTACLE_DATA_DIR); both commands print the directory they use."""
    server_cwd, other_cwd = tmp_path / "server", tmp_path / "elsewhere"
    server_cwd.mkdir()
    other_cwd.mkdir()
    data_dir = (server_cwd / "service-data").resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSTACLE_")}
    serve_env = {**env, "OBSTACLE_BROKER_URL": redis_url}
    argv = [*OBSTACLE_CLI, "serve", "--api-only", "--port", "0", "--data-dir", "service-data"]
    api = processes(argv, serve_env, "api", cwd=server_cwd)
    base = api.wait_for(r"API listening on (http://[0-9.]+:\d+)", timeout=90).group(1)
    assert f"data directory {data_dir} (--data-dir)" in api.text()

    by_env = _token(other_cwd, {**env, "OBSTACLE_DATA_DIR": str(data_dir)})
    assert f"data directory {data_dir} (OBSTACLE_DATA_DIR)" in by_env.stderr
    by_flag = _token(other_cwd, env, "--data-dir", "../server/service-data")
    assert f"data directory {data_dir} (--data-dir)" in by_flag.stderr
    # The default is said, with how to change it: a token made here goes to another database.
    default = _token(other_cwd, env)
    assert f"data directory {other_cwd.resolve() / 'obstacle-data'} (default" in default.stderr
    assert "OBSTACLE_DATA_DIR" in default.stderr

    deadline = time.monotonic() + 30
    while httpx.get(f"{base}/healthz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, api.text()
        time.sleep(0.2)
    for created, accepted in ((by_env, 200), (by_flag, 200), (default, 401)):
        token = created.stdout.strip()
        answer = httpx.get(f"{base}/v1/runs", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == accepted, answer.text
