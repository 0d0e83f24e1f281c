"""The report: plots and a self-contained HTML page, drawn only from the report JSON.

Every function here reads the ``obstacle.report/1`` dict the battery writes and recomputes
nothing. Never imports torch (the service renders reports too); a test checks it.
"""

from obstacle.battery.report.html import render_html, render_report
from obstacle.battery.report.plots import (
    format_number,
    plot_interpolation,
    plot_negative_curvature,
    plot_spectrum,
    plot_subspace,
    plot_time_series,
    save_png,
    select_saddle_checkpoint,
)

__all__ = [
    "format_number",
    "plot_interpolation",
    "plot_negative_curvature",
    "plot_spectrum",
    "plot_subspace",
    "plot_time_series",
    "render_html",
    "render_report",
    "save_png",
    "select_saddle_checkpoint",
]
