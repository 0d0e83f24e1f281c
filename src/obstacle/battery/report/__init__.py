"""The report: plots and a self-contained HTML page, drawn only from the report JSON.

Never imports torch (the service renders reports too); a test checks it.
"""

from obstacle.battery.report.plots import (
    plot_interpolation,
    plot_negative_curvature,
    plot_spectrum,
    plot_subspace,
    plot_time_series,
    save_png,
    select_saddle_checkpoint,
)

__all__ = [
    "plot_interpolation",
    "plot_negative_curvature",
    "plot_spectrum",
    "plot_subspace",
    "plot_time_series",
    "save_png",
    "select_saddle_checkpoint",
]
