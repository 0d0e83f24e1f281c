"""The service never imports torch: not to start, not to validate and store an upload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from obstacle.artifacts.bundle import pack_probe
from obstacle.artifacts.layout import PROBE_DIR, checkpoint_filename, optimizer_filename

SERVE = """
import hashlib, json, sys
from fastapi.testclient import TestClient
from obstacle.service.app import create_app
from obstacle.service.auth import create_token
from obstacle.platform.db import create_db_engine, migrate, session_factory, session_scope
from obstacle.service.settings import Settings

data_dir, broker, bundle, checkpoint, optimizer = sys.argv[1:6]
settings = Settings(data_dir=data_dir, broker_url=broker)
engine = create_db_engine(settings.resolved_database_url)
migrate(engine)
with session_scope(session_factory(engine)) as session:
    token = create_token(session, project="no-torch")
auth = {"Authorization": f"Bearer {token}"}

def put(client, url, path):
    body = open(path, "rb").read()
    headers = {**auth, "X-Content-SHA256": hashlib.sha256(body).hexdigest()}
    return client.put(url, content=body, headers=headers).status_code

with TestClient(create_app(settings)) as client:
    run = client.post("/v1/runs", json={"name": "x"}, headers=auth).json()["id"]
    codes = [
        put(client, f"/v1/runs/{run}/probe", bundle),
        put(client, f"/v1/runs/{run}/checkpoints/10", checkpoint),
        put(client, f"/v1/runs/{run}/checkpoints/10/optimizer", optimizer),
        put(client, f"/v1/runs/{run}/checkpoints/11", checkpoint),
        client.post(f"/v1/runs/{run}/analyses", json={"options": {"steps": [10]}}, headers=auth).status_code,
        client.get("/healthz").status_code,
        client.get("/metrics").status_code,
        client.get("/openapi.json").status_code,
    ]
print(json.dumps({"codes": codes, "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}))
"""


def _run(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_the_service_handles_uploads_without_torch(
    tiny_run: Path, redis_url: str, tmp_path: Path
) -> None:
    bundle = tmp_path / "probe.zip"
    bundle.write_bytes(pack_probe(tiny_run / PROBE_DIR))
    checkpoint = tiny_run / "checkpoints" / checkpoint_filename(10)
    optimizer = tiny_run / "checkpoints" / optimizer_filename(10)
    out = json.loads(
        _run(SERVE, str(tmp_path / "data"), redis_url, str(bundle), str(checkpoint), str(optimizer))
    )
    assert out["codes"] == [201, 201, 201, 422, 202, 200, 200, 200]  # step 11 holds step 10's file
    assert out["torch"] == []


def test_the_command_line_and_the_task_module_load_without_torch_or_the_web_stack() -> None:
    code = (
        "import os, sys\n"
        "os.environ['OBSTACLE_BROKER_URL'] = 'redis://127.0.0.1:1/0'\n"
        "import obstacle.service.commands\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'fastapi', 'celery', 'uvicorn'})\n"
        "import obstacle.workers.tasks\n"
        "print(heavy, 'torch' in sys.modules)"
    )
    assert _run(code) == "[] False"
