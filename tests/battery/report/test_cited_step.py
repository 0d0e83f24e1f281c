"""One decision of where an obstacle shows: every section and plot cites the verdict's step.

A saddle run and a run with two episodes (a saddle, then a noise floor) are trained and analysed;
every "at step N" said of the saddle — its evidence and suggestion in the text report, the
ruled-out line that names it, the HTML's verdict section and the negative-curvature caption, the
titles and labels of the plots — must be the verdict's ``shown_at_step``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from matplotlib.figure import Figure

from obstacle.battery.analysis import analyze
from obstacle.battery.commands import format_summary
from obstacle.battery.report import plot_negative_curvature, plot_time_series, render_html
from scenarios.builders import SCENARIOS

AT_STEP = re.compile(r"at step (\d+)")


@pytest.fixture(
    scope="module",
    params=["saddle_point/tanh_mlp", "saddle_point/tanh_mlp_then_noise_floor"],
)
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("cited") / "run"
    info = SCENARIOS[request.param](run, 0)
    return analyze(Path(run), preset="standard", target_loss=info.target_loss)


def _saddle(report: Any) -> dict[str, Any]:
    obstacle: dict[str, Any] = next(
        o for o in report["verdict"]["obstacles"] if o["kind"] == "saddle_point"
    )
    return obstacle


def _text_about_the_saddle(report: Any) -> list[str]:
    lines = format_summary(report).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  saddle_point ("))
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("    "):
            break
        block.append(line)
    ruled_out = [line for line in lines if "saddle" in line and line.startswith("    - ")]
    return [report["verdict"]["summary"], *block, *ruled_out]


def _figure_text(fig: Figure) -> list[str]:
    texts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        texts.append(ax.get_title(loc="left"))
        texts.extend(str(line.get_label()) for line in ax.get_lines())
    return texts


def test_every_section_and_plot_cites_the_saddle_at_the_verdicts_step(report: Any) -> None:
    saddle = _saddle(report)
    shown = saddle["shown_at_step"]
    assert isinstance(shown, int)

    text = _text_about_the_saddle(report)
    cited_in_text = {int(s) for line in text for s in AT_STEP.findall(line)}
    assert cited_in_text == {shown}, text
    assert f"saddle_point (confidence {saddle['confidence']:.2f}), shown at step {shown};" in (
        format_summary(report)
    )

    html = render_html(report)
    verdict_section = html[html.index('id="verdict"') : html.index('id="ruled-out"')]
    figure = re.search(r'<figure id="plot-negative_curvature">.*?</figure>', html, flags=re.S)
    assert figure is not None
    ruled_out = re.findall(r"<li>.*?</li>", html[html.index('id="ruled-out"') :], flags=re.S)
    about_saddle = [li for li in ruled_out if "saddle" in li]
    cited_in_html = {
        int(s)
        for part in [verdict_section, figure.group(0), *about_saddle]
        for s in AT_STEP.findall(part)
    }
    assert cited_in_html == {shown}

    curvature = plot_negative_curvature(report)
    series = plot_time_series(report)
    assert curvature is not None and series is not None
    # the time series marks every obstacle; the saddle's mark is the one that names it
    about_saddle_in_plots = _figure_text(curvature) + [
        t for t in _figure_text(series) if "saddle" in t
    ]
    cited_in_plots = {int(s) for t in about_saddle_in_plots for s in AT_STEP.findall(t)}
    assert cited_in_plots == {shown}
    assert f"saddle point shown at step {shown}" in _figure_text(series)
