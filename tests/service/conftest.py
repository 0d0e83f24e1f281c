"""Fixtures of the service tests: see tests/conftest_services.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from conftest_services import *  # noqa: F403
from obstacle.service.app import create_app
from obstacle.service.settings import Settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client
