"""The self-contained HTML report: verdict first, plots inlined, the table, escaping, no fetches."""

from __future__ import annotations

import base64
import math
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import obstacle.battery.report as report_api
from obstacle.battery.report import format_number, render_html, render_report
from obstacle.errors import InputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Report = dict[str, Any]


class Page(HTMLParser):
    """What a test needs from the page: every tag with its attributes, and the table's cells."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[tuple[str, list[tuple[str, str]]]] = []  # (row class, [(cell class, text)])
        self.headers: list[str] = []
        self._in_table = False
        self._cell: list[str] | None = None
        self._cell_cls = ""
        self._header: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "table" and "checkpoints" in (attributes.get("class") or ""):
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append((attributes.get("class") or "", []))
        elif self._in_table and tag == "td":
            self._cell, self._cell_cls = [], attributes.get("class") or ""
        elif self._in_table and tag == "th":
            self._header = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1][1].append((self._cell_cls, "".join(self._cell).strip()))
            self._cell = None
        elif tag == "th" and self._header is not None:
            self.headers.append("".join(self._header).strip())
            self._header = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._header is not None:
            self._header.append(data)

    def attribute(self, name: str) -> list[str]:
        return [v for _, attrs in self.tags for k, v in attrs.items() if k == name and v]

    @property
    def body_rows(self) -> list[tuple[str, list[tuple[str, str]]]]:
        return [row for row in self.rows if row[1]]  # the header row has no td

    def column(self, header: str) -> list[tuple[str, str]]:
        i = self.headers.index(header)
        return [cells[i] for _, cells in self.body_rows]


def text_of(html: str) -> str:
    """Visible-ish text with tags removed and whitespace collapsed."""
    import html as html_module

    return " ".join(html_module.unescape(re.sub(r"<[^>]+>", " ", html)).split())


# ----------------------------------------------------------------------------- verdict first


def test_verdict_comes_first_with_its_evidence(saddle_page: tuple[Report, str]) -> None:
    report, html = saddle_page
    verdict = report["verdict"]
    text = text_of(html)
    assert verdict["primary"] in text and "Saddle point" in text
    assert "86% confidence" in text
    assert verdict["summary"] in text
    primary = verdict["obstacles"][0]
    for evidence in primary["evidence"]:
        assert evidence["statement"] in text
        if "unit" not in evidence:
            assert format_number(evidence["value"]) in text
    assert primary["suggestion"] in text

    for ruled_out in verdict["ruled_out"]:
        assert ruled_out["reason"] in text
        assert ruled_out["kind"] in text
    other = verdict["obstacles"][1]
    assert "Gradient noise" in text and "31%" in text and other["suggestion"] in text
    # the verdict precedes the plots, which precede the table
    assert html.index('id="primary"') < html.index('id="plots"') < html.index('id="checkpoints"')


def test_evidence_values_read_as_their_sentences_do(saddle_page: tuple[Report, str]) -> None:
    """A fraction is a percentage and a ratio a multiple in the evidence table and lists, as in
    the sentence beside it; a value without a unit is a plain number."""
    _, html = saddle_page
    text = text_of(html)
    assert "1.6×" in text and "1.55" not in text  # ratio
    assert "(34%)" in text and "(0.34)" not in text  # fraction, in the other obstacles' list
    assert format_number(-0.0075) in text  # no unit: as measured


def test_plots_are_inline_png_data_uris_with_captions(saddle_page: tuple[Report, str]) -> None:
    _, html = saddle_page
    page = Page(html)
    sources = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(sources) == 5
    for src in sources:
        assert src is not None and src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert html.count("<figcaption>") == 5
    # the saddle verdict leads with the slice, which names the checkpoint it was drawn at
    assert html.index('id="plot-negative_curvature"') < html.index('id="plot-interpolation"')
    assert "Drawn at step 0, the checkpoint with the strongest saddle evidence" in text_of(html)


def test_page_is_self_contained(saddle_page: tuple[Report, str]) -> None:
    _, html = saddle_page
    page = Page(html)
    assert "http://" not in html and "https://" not in html
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "iframe", "object")]
    assert all(src.startswith("data:") for src in page.attribute("src"))
    assert page.attribute("href") == []
    assert "default-src 'none'" in html  # the CSP forbids every fetch


def test_checkpoint_table_has_a_row_per_checkpoint(saddle_page: tuple[Report, str]) -> None:
    report, html = saddle_page
    page = Page(html)
    assert len(page.body_rows) == len(report["checkpoints"])
    assert page.column("step") == [("", str(c["step"])) for c in report["checkpoints"]]
    assert page.column("λmin")[3] == ("", format_number(report["checkpoints"][3]["lambda_min"]))
    # rows where the primary obstacle shows are marked
    implicated = {str(s) for s in report["verdict"]["obstacles"][0]["steps"]}
    marked = {cells[0][1] for cls, cells in page.body_rows if "row-implicated" in cls}
    assert marked == implicated


# ----------------------------------------------------------------------------- degenerate runs


def test_diverging_run_flags_non_finite_rows_and_missing_plots(divergence: Report) -> None:
    html = render_html(divergence)
    page = Page(html)
    text = text_of(html)
    assert "Divergence" in text and "99% confidence" in text
    classes = [cls for cls, _ in page.body_rows]
    assert classes[:5] == ["", "", "", "", ""]
    assert all("row-nonfinite" in cls for cls in classes[5:])
    assert page.column("finite")[5] == ("nonfinite badge", "non-finite")
    assert page.column("loss")[6] == ("null", "—")
    assert page.column("lr·λmax")[0] == ("warn", "4.5")  # above the threshold 2
    assert page.column("full step uphill")[0] == ("warn", "yes")
    for title in ("Loss landscape", "Loss along the most negative curvature", "Hessian spectral"):
        assert re.search(title + r"[^<]*</strong>: not drawn", html)
    assert len([t for t, _ in page.tags if t == "img"]) == 2  # time series and interpolation
    assert "1,234,567" in text  # parameters


def test_single_checkpoint(single_checkpoint: Report) -> None:
    html = render_html(single_checkpoint)
    page = Page(html)
    assert len(page.body_rows) == 1
    assert (
        "Loss on the straight line from the first to the last checkpoint</strong>: not drawn"
        in html
    )
    assert len([t for t, _ in page.tags if t == "img"]) == 2  # slice and time series


def test_no_validation_data_drops_the_validation_column(no_validation: Report) -> None:
    page = Page(render_html(no_validation))
    assert "validation" not in page.headers
    assert "loss" in page.headers


def test_all_null_report_still_renders(all_null: Report) -> None:
    html = render_html(all_null)
    page = Page(html)
    text = text_of(html)
    assert "No verdict recorded" in text
    assert "unnamed run" in text
    assert page.headers[0] == "step" and len(page.body_rows) == 3
    assert all(cell == ("null", "—") for _, cells in page.body_rows for cell in cells[1:])


def test_in_process_non_finite_floats_are_flagged(saddle: Report) -> None:
    saddle["checkpoints"][2]["loss"] = math.nan  # a dict straight from the battery, before JSON
    saddle["checkpoints"][3]["grad_norm"] = math.inf
    page = Page(render_html(saddle))
    assert page.column("loss")[2] == ("nonfinite", "NaN")
    assert page.column("‖g‖")[3] == ("nonfinite", "+∞")


# ----------------------------------------------------------------------------- safety


def test_hostile_text_is_escaped(all_null: Report) -> None:
    all_null["run"]["name"] = "<script>alert('run')</script>"
    all_null["verdict"] = {
        "primary": "<img src=x onerror=alert(1)>",
        "obstacles": [
            {
                "kind": "<img src=x onerror=alert(1)>",
                "confidence": 0.5,
                "evidence": [
                    {"test": "<b>t</b>", "statement": '"><script>x()</script>', "value": 1}
                ],
                "suggestion": "<iframe>",
            }
        ],
        "ruled_out": [{"kind": "healthy", "reason": "</li><script>y()</script>"}],
    }
    html = render_html(all_null)
    page = Page(html)
    assert not [tag for tag, _ in page.tags if tag in ("script", "iframe", "b")]
    assert [tag for tag, _ in page.tags].count("img") == 1  # only the time-series plot
    assert "&lt;script&gt;alert(&#39;run&#39;)&lt;/script&gt;" in html
    assert "&lt;iframe&gt;" in html


def test_input_that_is_not_a_report_is_refused() -> None:
    with pytest.raises(InputError, match=r"must be a dict .* Got list instead"):
        render_html([])  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"'schema' must be 'obstacle.report/1'. Got 'other/2'"):
        render_html({"schema": "other/2"})


# ----------------------------------------------------------------------------- files


def test_render_report_writes_the_page_and_one_png_per_drawn_plot(
    saddle: Report, single_checkpoint: Report, tmp_path: Path
) -> None:
    page = render_report(saddle, tmp_path / "out")
    assert page == tmp_path / "out" / "report.html"
    pngs = sorted(p.name for p in (tmp_path / "out" / "plots").glob("*.png"))
    assert pngs == sorted(
        f"{n}.png"
        for n in ("interpolation", "subspace", "negative_curvature", "time_series", "spectrum")
    )
    html = page.read_text(encoding="utf-8")
    for png in (tmp_path / "out" / "plots").glob("*.png"):
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert base64.b64encode(data).decode() in html  # the same image, inlined

    # a later render of a run with fewer plots leaves no stale PNG behind
    render_report(single_checkpoint, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "plots").iterdir()) == [
        "captions.txt",
        "negative_curvature.png",
        "time_series.png",
    ]
    # the text report's captions: one line per plot, with what a healthy run shows
    captions = (tmp_path / "out" / "plots" / "captions.txt").read_text(encoding="utf-8")
    lines = captions.splitlines()
    assert sorted(line.split(" ")[0] for line in lines) == [
        "interpolation",
        "negative_curvature.png",
        "spectrum",
        "subspace",
        "time_series.png",
    ]
    assert all("Healthy:" in line for line in lines if ".png" in line)
    assert "interpolation — not drawn: needs at least two checkpoints." in lines


def test_every_plot_caption_says_what_a_healthy_run_looks_like(saddle: Report) -> None:
    html = render_html(saddle)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html, flags=re.S)
    assert len(captions) == 5
    for caption in captions:
        healthy = re.search(r'<span class="healthy">(.*?)</span>', caption, flags=re.S)
        assert healthy is not None and healthy.group(1).startswith("Healthy: ")


# ----------------------------------------------------------------------------- numbers, imports


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "—"),
        (True, "yes"),
        (False, "no"),
        (1400, "1400"),
        (0.0, "0"),
        (2.0, "2"),
        (0.693147, "0.693"),
        (-0.0599, "−0.0599"),
        (123.456, "123"),
        (999.7, "1,000"),
        (2070.0, "2,070"),
        (1.86e6, "1.86e6"),
        (2.1e-4, "2.1e-4"),
        (-3.33e-5, "−3.33e-5"),
        (math.nan, "n/a"),
        (math.inf, "∞"),
        (-math.inf, "−∞"),
    ],
)
def test_format_number(value: Any, text: str) -> None:
    assert format_number(value) == text


def test_public_names() -> None:
    public = {n for n in dir(report_api) if not n.startswith("_")}
    modules = {"html", "plots"}
    assert set(report_api.__all__) == public - modules


def test_rendering_imports_neither_torch_nor_pyplot() -> None:
    code = (
        "import sys\n"
        "from obstacle.battery.report import render_html\n"
        "render_html({'schema': 'obstacle.report/1', 'checkpoints': [{'step': 0, 'loss': 1.0}]})\n"
        "bad = [m for m in ('torch', 'matplotlib.pyplot') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_an_ended_episode_is_shown_with_its_steps_share_and_escape() -> None:
    from obstacle.battery.verdict import judge

    loss = [1.0] * 12 + [0.6, 0.3, 0.2, 0.15]
    records: list[dict[str, Any]] = [
        {
            "step": 10 * i,
            "lr": 0.1,
            "loss": loss[i],
            "finite": True,
            "grad_norm": 1e-4 if i < 12 else 0.5,
            "param_norm": 3.0,
            "lambda_min": -1.0 if i < 12 else 0.01,
            "lambda_max": 2.0,
            "lr_lambda_max": 0.2,
            "stability_threshold": 2.0,
            "escape_delta": -0.05 if i < 12 else 0.0,
            "full_step_uphill": False,
        }
        for i in range(16)
    ]
    verdict = judge(records)
    episode = verdict["episodes"][0]
    text = text_of(render_html({"verdict": verdict, "checkpoints": records}))
    assert f"steps {episode['start_step']}–{episode['end_step']}" in text
    assert episode["ended_by"] in text and "of the run" in text
