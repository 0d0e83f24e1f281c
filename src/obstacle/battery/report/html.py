"""The HTML report: one self-contained file, rendered from the report JSON with Jinja2.

The verdict comes first (primary obstacle, confidence, evidence with numbers, the suggestion, what
was ruled out and why, other obstacles present), then the plots with a caption saying what to look
for, then the per-checkpoint table. Images are inlined as base64 PNG data URIs and the CSS is
inline; a Content-Security-Policy forbids every fetch, so the file opens offline and cannot phone
home. Everything shown is read from the report; nothing is recomputed. Never imports torch.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from matplotlib.figure import Figure

from obstacle.battery.report.plots import (
    format_number,
    plot_interpolation,
    plot_negative_curvature,
    plot_spectrum,
    plot_subspace,
    plot_time_series,
    png_bytes,
    select_saddle_checkpoint,
)
from obstacle.battery.verdict.numbers import percent, times
from obstacle.errors import InputError

__all__ = ["LABELS", "PLOTS", "render_html", "render_report"]

SCHEMA = "obstacle.report/1"
# Plots are displayed slightly larger than their nominal size (96 px/inch) so 9-pt labels read
# comfortably; the PNGs are drawn at 130 dpi, so this still does not upscale them.
CSS_PX_PER_INCH = 112

Report = Mapping[str, Any]

# label → how a person reads it
LABELS = {
    "healthy": "Healthy",
    "local_minimum": "Local minimum",
    "saddle_point": "Saddle point",
    "poor_conditioning": "Poor conditioning",
    "gradient_noise": "Gradient noise",
    "no_critical_point": "No critical point",
    "divergence": "Divergence",
    "overfitting": "Overfitting",
}


@dataclass(frozen=True)
class PlotSpec:
    """One plot of the report: its file name, title, what to look for, why it may be missing."""

    name: str
    title: str
    draw: Callable[[Report], Figure | None]
    caption: str
    missing: str
    healthy: str
    """One line: what this plot looks like for a run that trains well."""


PLOTS: tuple[PlotSpec, ...] = (
    PlotSpec(
        "interpolation",
        "Loss on the straight line from the first to the last checkpoint",
        plot_interpolation,
        "A bump inside the shaded segment is a barrier between the checkpoints; a curve that "
        "only falls means the straight line meets none (Goodfellow, Vinyals & Saxe 2015).",
        "needs at least two checkpoints.",
        "Healthy: the loss falls all along the line, with no bump above the chord.",
    ),
    PlotSpec(
        "subspace",
        "Loss landscape on the plane of the training path",
        plot_subspace,
        "Follow the path across the contours: where it bends, stalls or skirts a ridge is where "
        "the landscape held the run back.",
        "needs at least two checkpoints and a preset that maps the plane.",
        "Healthy: the path crosses the contours steadily downhill into a basin.",
    ),
    PlotSpec(
        "negative_curvature",
        "Loss along the most negative curvature direction",
        plot_negative_curvature,
        "A curve bending down on both sides (green diamonds below the dotted line) is a saddle "
        "that a step along ±v escapes; a curve bending up is a minimum in that direction.",
        "no checkpoint recorded a Lanczos slice (it needs the standard or full preset).",
        "Healthy: near the end of training the curve bends up on both sides (a minimum).",
    ),
    PlotSpec(
        "time_series",
        "Training signals per checkpoint",
        plot_time_series,
        "lr·curvature above the optimizer's stability threshold (dotted) means its steps go "
        "uphill (conditioning); λmin < 0 with a small gradient is a saddle; low SNR with uphill "
        "minibatch steps is noise.",
        "no checkpoint was recorded.",
        "Healthy: the loss keeps falling, lr·λmax stays below the threshold, λmin is near 0 or "
        "positive, and few minibatch steps go uphill.",
    ),
    PlotSpec(
        "spectrum",
        "Hessian spectral density",
        plot_spectrum,
        "Mass left of 0 is negative curvature; a right tail far from the bulk is ill conditioning.",
        "the spectrum is computed only by the full preset.",
        "Healthy: nearly all mass at or right of 0, with no isolated outlier far to the right.",
    ),
)

# the plot that shows each obstacle best comes first
_LEADING_PLOT = {
    "local_minimum": "interpolation",
    "saddle_point": "negative_curvature",
    "poor_conditioning": "time_series",
    "gradient_noise": "time_series",
    "no_critical_point": "time_series",
    "divergence": "time_series",
    "overfitting": "interpolation",
}

# (record key, column header, tooltip)
_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("step", "step", "training step of the checkpoint"),
    ("lr", "lr", "learning rate"),
    ("loss", "loss", "probe loss (mean over the fixed probe batches)"),
    ("train_loss", "logged loss", "minibatch loss logged by the training run"),
    ("validation_loss", "validation", "validation loss"),
    ("grad_norm", "‖g‖", "probe gradient norm"),
    ("param_norm", "‖θ‖", "parameter norm"),
    ("distance_from_start", "‖θ−θ₀‖", "distance from the first checkpoint"),
    ("lr_curvature", "lr·gᵀHg/gᵀg", "a gradient step goes uphill above 2"),
    ("lambda_min", "λmin", "most negative Hessian eigenvalue (Lanczos)"),
    ("lambda_max", "λmax", "largest Hessian eigenvalue (Lanczos)"),
    ("lr_lambda_max", "lr·λmax", "sharpness against the step size"),
    ("stability_threshold", "threshold", "the optimizer's stability threshold for lr·λmax"),
    ("snr", "SNR", "gradient signal-to-noise ratio"),
    ("noise_scale", "noise scale", "gradient variance against the squared mean gradient"),
    ("uphill_fraction_minibatch", "uphill (minibatch)", "fraction of minibatch steps uphill"),
    ("full_step_uphill", "full step uphill", "the full-data step raises the probe loss"),
    ("finite", "finite", "every loss and parameter finite"),
)


# ----------------------------------------------------------------------------- view model


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _list(value: Any) -> list[Any]:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return []


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _label(kind: Any) -> str:
    if not isinstance(kind, str) or not kind:
        return "Unknown"
    return LABELS.get(kind, kind.replace("_", " ").capitalize())


def _percent(value: Any) -> str | None:
    """A recorded fraction as the verdict writes percentages (``<0.1%``, ``92%``, ``100%``)."""
    number = _number(value)
    if number is None or not math.isfinite(number):
        return None
    return percent(number)


def _width(value: Any) -> str:
    """A confidence as a CSS width (clamped to 0–100%)."""
    number = _number(value)
    if number is None or not math.isfinite(number):
        return "0%"
    return f"{100 * min(max(number, 0.0), 1.0):.1f}%"


def _steps_text(steps: Any) -> str:
    values = [s for s in _list(steps) if isinstance(s, int) and not isinstance(s, bool)]
    if not values:
        return ""
    if len(values) <= 6:
        return ", ".join(str(s) for s in values)
    return f"{values[0]}, {values[1]}, {values[2]}, …, {values[-1]} ({len(values)} checkpoints)"


def _when(record: Mapping[str, Any]) -> str:
    """The episode on the timeline, as the verdict decided it: its steps, share and end."""
    start, end = record.get("start_step"), record.get("end_step")
    share = _percent(record.get("share_of_run"))
    if not isinstance(start, int) or isinstance(start, bool):
        return ""
    # an episode that starts at the last checkpoint has no share of the run to speak of
    cost = f" ({share} of the run)" if share and share != "0%" else ""
    if record.get("still_present"):
        return f"from step {start}{cost}, still present at the last checkpoint"
    ended = str(record.get("ended_by") or "")
    return f"steps {start}–{end}{cost}" + (f"; {ended}" if ended else "")


def _evidence_value(value: Any, unit: Any) -> str:
    """An evidence line's value as its sentence writes it: a fraction as a percentage, a ratio as
    a multiple (reports written before units were recorded: a plain number)."""
    number = _number(value)
    if number is not None and unit == "fraction":
        return percent(number)
    if number is not None and unit == "ratio":
        return times(number)
    return format_number(value)


def _obstacle(record: Any) -> dict[str, Any]:
    return {
        "kind": record.get("kind") if isinstance(record.get("kind"), str) else "",
        "label": _label(record.get("kind")),
        "confidence": _percent(record.get("confidence")),
        "width": _width(record.get("confidence")),
        "steps": _steps_text(record.get("steps")),
        "when": _when(record),
        "evidence": [
            {
                "test": str(e.get("test") or ""),
                "statement": str(e.get("statement") or ""),
                "value": _evidence_value(e.get("value"), e.get("unit")),
            }
            for e in _list(record.get("evidence"))
            if isinstance(e, Mapping)
        ],
        "suggestion": str(record.get("suggestion") or ""),
    }


def _verdict(report: Report) -> dict[str, Any]:
    verdict = _get(report, "verdict")
    primary = _get(verdict, "primary")
    obstacles = [o for o in _list(_get(verdict, "obstacles")) if isinstance(o, Mapping)]
    obstacles.sort(key=lambda o: -(_number(o.get("confidence")) or 0.0))
    main = next((o for o in obstacles if o.get("kind") == primary), None)
    confidence = _get(verdict, "confidence")
    if _number(confidence) is None and main is not None:
        confidence = main.get("confidence")
    tone = "unknown" if not primary else "ok" if primary == "healthy" else "bad"
    return {
        "kind": primary if isinstance(primary, str) else "",
        "label": _label(primary) if primary else "No verdict recorded",
        "tone": tone,
        "confidence": _percent(confidence),
        "width": _width(confidence),
        "summary": str(_get(verdict, "summary") or ""),
        "main": _obstacle(main) if main is not None else None,
        "others": [_obstacle(o) for o in obstacles if o is not main],
        "ruled_out": [
            {
                "kind": str(r.get("kind") or ""),
                "label": _label(r.get("kind")),
                "reason": str(r.get("reason") or ""),
            }
            for r in _list(_get(verdict, "ruled_out"))
            if isinstance(r, Mapping)
        ],
    }


def _facts(report: Report) -> list[tuple[str, str]]:
    run = _get(report, "run")
    facts: list[tuple[str, Any]] = [
        ("run", _get(run, "name")),
        ("preset", _get(run, "preset")),
        ("parameters", _get(run, "num_parameters")),
        ("checkpoints", _get(run, "num_checkpoints")),
        ("target loss", _get(run, "target_loss")),
        ("uphill step rate", _percent(_get(run, "uphill_step_rate", "rate"))),
        ("curvature variation (cv)", _get(run, "curvature_variation", "cv")),
        ("curvature sign changes", _get(run, "curvature_variation", "sign_changes")),
        ("interpolation barrier", _get(run, "interpolation", "barrier")),
    ]
    shown = []
    for name, value in facts:
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            text = f"{value:,}"
        else:
            text = value if isinstance(value, str) else format_number(value)
        shown.append((name, text))
    return shown


def _cell(key: str, value: Any, record: Mapping[str, Any]) -> dict[str, str]:
    if value is None:
        return {"text": "—", "cls": "null"}
    number = _number(value)
    if number is not None and not math.isfinite(number):
        # a measured non-finite value, not a missing one: say which
        text = "NaN" if math.isnan(number) else "+∞" if number > 0 else "−∞"
        return {"text": text, "cls": "nonfinite"}
    cls = ""
    if key in ("lr_curvature", "lr_lambda_max") and number is not None:
        limit = _number(record.get("stability_threshold"))
        if number > (limit if limit is not None and math.isfinite(limit) else 2.0):
            cls = "warn"
    elif key == "full_step_uphill" and value is True:
        cls = "warn"
    elif key == "finite" and value is False:
        return {"text": "non-finite", "cls": "nonfinite badge"}
    return {"text": format_number(value), "cls": cls}


def _columns(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """The table's columns: the step, and every quantity that some checkpoint recorded."""
    return [
        column
        for column in _COLUMNS
        if column[0] == "step" or any(r.get(column[0]) is not None for r in records)
    ]


def _table(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str, str]],
    implicated: set[int],
) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        step = record.get("step")
        classes = []
        if record.get("finite") is False:
            classes.append("row-nonfinite")
        if isinstance(step, int) and step in implicated:
            classes.append("row-implicated")
        cells = [_cell(key, record.get(key), record) for key, _, _ in columns]
        rows.append({"cls": " ".join(classes), "cells": cells})
    return rows


def _figures(report: Report) -> list[tuple[PlotSpec, Figure | None]]:
    primary = _get(report, "verdict", "primary")
    lead = _LEADING_PLOT.get(primary) if isinstance(primary, str) else None
    ordered = sorted(PLOTS, key=lambda spec: spec.name != lead)
    return [(spec, spec.draw(report)) for spec in ordered]


def _caption(spec: PlotSpec, report: Report) -> str:
    if spec.name != "negative_curvature":
        return spec.caption
    chosen = select_saddle_checkpoint(report)
    step = _get(chosen, "step")
    if not isinstance(step, int):
        return spec.caption
    return (
        f"Drawn at step {step}, the checkpoint with the strongest saddle evidence "
        f"(most negative λmin relative to λmax whose escape descends). {spec.caption}"
    )


def _missing(spec: PlotSpec, report: Report) -> str:
    """Why a plot is absent: the battery's own note when it left one, else the usual reason."""
    note = _get(report, "run", spec.name, "note")
    return f"{note}." if isinstance(note, str) and note else spec.missing


def _check(report: Any) -> None:
    if not isinstance(report, Mapping):
        raise InputError(
            f"The report must be a dict holding the {SCHEMA!r} JSON. Got "
            f"{type(report).__name__} instead; pass the object `obstacle analyze --json` writes."
        )
    schema = report.get("schema")
    if schema is not None and schema != SCHEMA:
        raise InputError(
            f"The report's 'schema' must be {SCHEMA!r}. Got {schema!r} instead; render it with "
            "the obstacle version that wrote it."
        )


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("obstacle.battery.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _html(report: Report, images: Sequence[tuple[PlotSpec, bytes | None, Figure | None]]) -> str:
    from obstacle import __version__

    verdict = _verdict(report)
    # rows of the table where the primary obstacle shows
    main_record = next(
        (
            o
            for o in _list(_get(report, "verdict", "obstacles"))
            if isinstance(o, Mapping) and o.get("kind") == verdict["kind"]
        ),
        None,
    )
    implicated = {
        s for s in _list(_get(main_record, "steps")) if isinstance(s, int) and verdict["kind"]
    }
    plots = []
    for spec, data, fig in images:
        entry: dict[str, Any] = {
            "name": spec.name,
            "title": spec.title,
            "healthy": spec.healthy,
            "missing": _missing(spec, report),
        }
        if data is None or fig is None:
            entry["src"] = None
        else:
            width, height = fig.get_size_inches()
            entry.update(
                src="data:image/png;base64," + base64.b64encode(data).decode("ascii"),
                caption=_caption(spec, report),
                # shown at CSS_PX_PER_INCH; the PNG's extra resolution keeps it sharp on HiDPI
                width=round(width * CSS_PX_PER_INCH),
                height=round(height * CSS_PX_PER_INCH),
            )
        plots.append(entry)
    records = [r for r in _list(_get(report, "checkpoints")) if isinstance(r, Mapping)]
    columns = _columns(records)
    template = _environment().get_template("report.html.j2")
    return template.render(
        verdict=verdict,
        run_name=str(_get(report, "run", "name") or "unnamed run"),
        facts=_facts(report),
        plots=plots,
        columns=columns,
        rows=_table(records, columns, implicated),
        schema=SCHEMA,
        version=__version__,
    )


# ----------------------------------------------------------------------------- public


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (images inlined, no scripts, no fetches)."""
    _check(report)
    images = []
    for spec, fig in _figures(report):
        images.append((spec, png_bytes(fig) if fig is not None else None, fig))
    return _html(report, images)


def render_report(report: Report, out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/plots/<name>.png`` for each plot with data.

    Returns the path of the HTML file. Plots without data get no PNG; the page says why. The
    plots' captions (what to look for, what a healthy run shows) go to ``plots/captions.txt``.
    """
    _check(report)
    out = Path(out_dir)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for spec, fig in _figures(report):
        data = png_bytes(fig) if fig is not None else None
        target = plots_dir / f"{spec.name}.png"
        if data is not None:
            target.write_bytes(data)
        else:
            target.unlink(missing_ok=True)  # a stale plot from an earlier render would mislead
        images.append((spec, data, fig))
    captions = [
        f"{spec.name}.png — {spec.title}: {_caption(spec, report)} {spec.healthy}"
        if data is not None
        else f"{spec.name} — not drawn: {_missing(spec, report)}"
        for spec, data, _fig in images
    ]
    (plots_dir / "captions.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    page = out / "report.html"
    page.write_text(_html(report, images), encoding="utf-8")
    return page
