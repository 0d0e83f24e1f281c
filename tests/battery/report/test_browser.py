"""The report opened in real headless Chromium (Debian's), offline: it loads, shows the verdict,
every image decodes, nothing is logged as an error and nothing is fetched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image as mpimg

from obstacle.battery.report import render_report

CHROMIUM = Path("/usr/bin/chromium")
# a closed network: no first-run, component, sync or QUIC traffic; no GPU in CI containers
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Report = dict[str, Any]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the HTML report must be checked in a real browser. "
            "Run `apt-get install -y chromium` (scripts/bootstrap does it as root) and rerun."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def open_report(browser: Any, report: Report, tmp_path: Path) -> tuple[Any, list[str]]:
    """Render, open it from disk, and collect console errors, page errors and any request made."""
    html = render_report(report, tmp_path / "report")
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    problems: list[str] = []
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on(
        "request",
        lambda r: (
            problems.append(f"fetched {r.url}")
            if not r.url.startswith(("file:", "data:"))
            else None
        ),
    )
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(html.as_uri(), wait_until="load")
    return page, problems


def assert_nonblank_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    pixels = np.asarray(mpimg.imread(path))
    assert pixels.shape[0] > 900 and pixels.shape[1] == 1360
    assert float(pixels[..., :3].std()) > 0.05, "the screenshot is blank"


@pytest.mark.parametrize(
    ("fixture", "headline", "images"),
    [("saddle_with_barrier", "Saddle point", 5), ("divergence", "Divergence", 2)],
)
def test_report_opens_in_chromium(
    browser: Any, fixture: str, headline: str, images: int, tmp_path: Path, request: Any
) -> None:
    page, problems = open_report(browser, request.getfixturevalue(fixture), tmp_path)
    try:
        shot = tmp_path / "screenshot.png"
        page.screenshot(path=str(shot), full_page=True)
        assert_nonblank_png(shot)

        loaded = page.eval_on_selector_all(
            "img", "imgs => imgs.map(i => ({complete: i.complete, width: i.naturalWidth}))"
        )
        assert len(loaded) == images
        assert all(i["complete"] and i["width"] > 0 for i in loaded), loaded

        primary = page.locator("#primary")
        assert primary.is_visible()
        assert primary.inner_text() == headline
        box = primary.bounding_box()
        assert box is not None and box["y"] < 900, "the verdict is not in the first screen"
        assert page.get_by_text("Ruled out", exact=True).is_visible()
        assert problems == []
    finally:
        page.close()
