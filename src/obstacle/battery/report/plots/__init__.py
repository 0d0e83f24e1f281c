"""The report's plots, drawn only from the battery's recorded numbers (the report JSON).

Each ``plot_*`` function takes the report dict (schema ``obstacle.report/1``) and returns a
:class:`~matplotlib.figure.Figure`, or ``None`` when the report holds no data for that plot (the
HTML report then says why the plot is missing). Nothing is recomputed while drawing: a plot shows
what the battery measured, so it can stand as evidence. Any field may be null or missing; JSON null
(how non-finite numbers travel) becomes a gap in a line, never an error.

Figures are built from :class:`matplotlib.figure.Figure` directly — no pyplot, so no global figure
registry and no GUI backend; saving renders through Agg. This package never imports torch.

One module per plot (``interpolation``, ``subspace``, ``negative_curvature``, ``time_series``,
``spectrum``); what they share (reading records, scales, figures, PNG output) is in ``_common``.
"""

from obstacle.battery.report.plots._common import PALETTE, format_number, png_bytes, save_png
from obstacle.battery.report.plots.interpolation import plot_interpolation
from obstacle.battery.report.plots.negative_curvature import (
    plot_negative_curvature,
    select_saddle_checkpoint,
)
from obstacle.battery.report.plots.spectrum import plot_spectrum
from obstacle.battery.report.plots.subspace import plot_subspace
from obstacle.battery.report.plots.time_series import plot_time_series

__all__ = [
    "PALETTE",
    "format_number",
    "plot_interpolation",
    "plot_negative_curvature",
    "plot_spectrum",
    "plot_subspace",
    "plot_time_series",
    "png_bytes",
    "save_png",
    "select_saddle_checkpoint",
]
