"""Fixtures of the worker tests: see tests/conftest_services.py."""

from __future__ import annotations

from conftest_services import *  # noqa: F403
