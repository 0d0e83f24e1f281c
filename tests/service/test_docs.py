"""/docs and /redoc work offline: every asset comes from the service itself (issue 13)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest_services import make_settings
from service.live import serving

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def base(
    sqlite_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("docs")
    with serving(make_settings(sqlite_database_url, redis_url, data_dir), data_dir) as (url, _):
        yield url


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_page_names_no_other_host_and_its_assets_are_served(base: str, page: str) -> None:
    html = httpx.get(f"{base}{page}", timeout=30)
    assert html.status_code == 200
    assert re.findall(r"(?:https?:)?//[\w.-]+", html.text) == []
    assets = [a or b for a, b in ASSET.findall(html.text)]
    assert any(a.endswith(".js") for a in assets), assets
    for asset in assets:
        assert asset.startswith("/"), asset
        response = httpx.get(f"{base}{asset}", timeout=30)
        assert response.status_code == 200, asset
        assert len(response.content) > 0


def test_swagger_ui_renders_every_route_without_the_network(base: str) -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `apt-get install -y chromium`"
    from playwright.sync_api import sync_playwright

    paths = set(httpx.get(f"{base}/openapi.json", timeout=30).json()["paths"])
    requested: list[str] = []
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page: Any = browser.new_page()
            page.on("request", lambda r: requested.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/docs")
            page.wait_for_selector(".opblock", timeout=30_000)
            shown = set(page.locator(".opblock-summary-path").all_inner_texts())
        finally:
            browser.close()
    assert errors == []
    assert [url for url in requested if not url.startswith(base)] == []
    assert {p.replace("\u200b", "") for p in shown} == paths
