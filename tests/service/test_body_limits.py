"""Every upload route has its own body limit; everything else the small default (issue 13)."""

from __future__ import annotations

import uuid
from pathlib import Path

from obstacle.service.app import create_app
from obstacle.service.limits import body_limit
from obstacle.service.settings import Settings


def test_each_upload_route_is_limited_by_its_own_setting(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        broker_url="redis://127.0.0.1:6379/0",
        max_probe_bytes=11,
        max_checkpoint_bytes=22,
        max_train_log_bytes=33,
        max_request_bytes=44,
    )
    spec = create_app(settings).openapi()
    expected = {"application/zip": 11, "application/octet-stream": 22, "application/x-ndjson": 33}
    checked = 0
    for template, operations in spec["paths"].items():
        path = template.replace("{run_id}", str(uuid.uuid4())).replace("{step}", "5")
        path = path.replace("{analysis_id}", str(uuid.uuid4())).replace("{name}", "a.png")
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            media = next(iter(content), "application/json")
            limit = body_limit(settings, method.upper(), path)
            assert limit.limit == expected.get(media, 44), (method, template, limit)
            assert limit.setting.startswith("OBSTACLE_MAX_")
            checked += media in expected
    assert checked == 4  # probe, checkpoint, optimizer state, train log
