"""``obstacle.analyze(run_dir)``: the battery on a run directory, in this process, no server.

The Python face of ``obstacle analyze RUN_DIR``: the same defaults and the same report, returned
as a typed :class:`obstacle.schemas.Report` instead of printed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from obstacle.schemas import Report

__all__ = ["analyze"]


def analyze(
    run_dir: str | Path,
    *,
    target_loss: float | None = None,
    preset: str = "standard",
    device: str = "cpu",
    dtype: str = "auto",
    memory_budget: str | int | None = None,
    thresholds: Mapping[str, float] | None = None,
    progress: bool = False,
) -> Report:
    """Run the battery on ``run_dir`` and return its report (verdict, evidence, records).

    The arguments are ``obstacle analyze``'s options: ``target_loss`` (a minimum above it is a
    local minimum), ``preset`` (quick, standard or full), ``device`` (cpu, cuda, cuda:N, auto),
    ``dtype`` (auto, float64, float32), ``memory_budget`` (e.g. "8GiB"), ``thresholds`` (verdict
    threshold overrides by name). ``progress`` shows a bar on stderr when it is a terminal.
    Raises an ``obstacle.InputError`` subclass for a bad run directory or argument.

        report = obstacle.analyze("runs/my-run", target_loss=0.1)
        print(report.summary); report.save_html("report.html")
    """
    from obstacle.battery.analysis import analyze as run_battery
    from obstacle.battery.commands import _progress_bar

    path = Path(run_dir)
    with _progress_bar(progress, f"analysing {path.name}") as bar:
        report = run_battery(
            path,
            preset=preset,
            target_loss=target_loss,
            device=device,
            dtype=dtype,
            thresholds=dict(thresholds) if thresholds else None,
            progress=bar,
            memory_budget=memory_budget,
        )
    return Report.from_json(report)
