"""One schema module for the API's bodies: the service answers with it, the client parses with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import obstacle.client
import obstacle.schemas
from conftest_services import make_settings
from obstacle.service.app import create_app


def test_every_answer_of_the_service_is_a_shared_schema(tmp_path: Path) -> None:
    app = create_app(make_settings("sqlite://", "redis://127.0.0.1:6379/15", tmp_path))
    answered = {}
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                if status.startswith("2") and "$ref" in schema:
                    answered[f"{method.upper()} {path}"] = schema["$ref"].rsplit("/", 1)[1]
    assert answered["GET /v1/runs/{run_id}"] == "RunPublic"
    assert answered["GET /v1/analyses/{analysis_id}"] == "AnalysisPublic"
    for operation, name in answered.items():
        assert name in obstacle.schemas.__all__, (operation, name)
    # The client's result types are those very classes, so the two sides cannot drift apart.
    for name in ("RunInfo", "ProbeInfo", "CheckpointInfo", "AnalysisStatus", "Progress"):
        client_type = getattr(obstacle.client, name)
        assert client_type.__module__ == "obstacle.schemas", name
        assert getattr(obstacle.schemas, client_type.__name__) is client_type
    assert obstacle.client.RunInfo.__name__ in answered.values()
    assert obstacle.client.AnalysisStatus.__name__ in answered.values()


def test_the_schema_module_needs_only_pydantic() -> None:
    code = (
        "import sys, obstacle.schemas\n"
        "heavy = {'torch', 'fastapi', 'sqlalchemy', 'celery', 'httpx', 'starlette'}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_uuid_from_the_service_is_a_str_for_the_client() -> None:
    import uuid
    from datetime import UTC, datetime

    run_id = uuid.uuid4()
    body = obstacle.schemas.RunPublic(
        id=str(run_id),
        name="r",
        meta={},
        created_at=datetime.now(UTC),
        probe=None,
        num_checkpoints=0,
        train_log=None,
    )
    assert obstacle.schemas.RunPublic.model_validate({**body.model_dump(), "id": run_id}).id == str(
        run_id
    )
    parsed = obstacle.client.RunInfo.from_json({**body.model_dump(mode="json"), "added": 1})
    assert parsed.id == str(run_id) and parsed.train_log_sha256 is None
    schema = obstacle.schemas.RunPublic.model_json_schema()
    assert schema["properties"]["id"]["type"] == "string"
    assert schema["properties"]["id"]["format"] == "uuid"
