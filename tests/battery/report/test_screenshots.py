"""scripts/screenshots: its generator trains one obstacle's run, renders the report and takes a
non-blank 1200-pixel-wide screenshot in headless Chromium."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "screenshots"
SHOTS = SCRIPT.parent.parent / "docs" / "screenshots"


def _script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("obstacle_screenshots", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_generator_writes_a_non_blank_screenshot_of_one_obstacle(tmp_path: Path) -> None:
    script = _script()
    target = tmp_path / "divergence.png"
    with script.chromium() as browser:
        report = script.screenshot("divergence", target, browser)
    assert report["verdict"]["primary"] == "divergence"
    with Image.open(target) as image:
        assert image.width == script.WIDTH
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    assert pixels.std() > 10  # text and plots, not a blank page
    # the page's orange verdict bar and heading are in the shot (Okabe–Ito vermillion #D55E00)
    vermillion = (abs(rgb - np.array([0xD5, 0x5E, 0x00])).sum(axis=2) < 40).sum()
    assert vermillion > 500


def test_one_checked_in_screenshot_per_obstacle() -> None:
    script = _script()
    assert sorted(p.stem for p in SHOTS.glob("*.png")) == sorted(script.RUNS)
    for png in SHOTS.glob("*.png"):
        with Image.open(png) as image:
            assert image.width == script.WIDTH
        assert png.stat().st_size < 400_000
