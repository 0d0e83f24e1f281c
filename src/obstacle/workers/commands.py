"""The workers' command: ``obstacle worker`` (also ``python -m obstacle.workers``).

Celery and torch are imported inside the command, so ``obstacle --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from obstacle.platform.settings import load_or_exit as _load

__all__ = ["register", "worker"]


def register(app: typer.Typer) -> None:
    """Add ``worker`` to the ``obstacle`` command line."""
    app.command("worker")(worker)


def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            help="Pool processes on CPU (default: one per core). With GPUs: one process per GPU.",
        ),
    ] = None,
    pool: Annotated[
        str,
        typer.Option(
            help="Celery pool: prefork (default; enforces time limits) or solo (one process)."
        ),
    ] = "prefork",
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run a worker: it takes analysis tasks from the broker and runs the battery on them.

    CUDA when present (one process per GPU), else CPU with one torch thread per process. Needs
    OBSTACLE_BROKER_URL, OBSTACLE_DATABASE_URL and OBSTACLE_ARTIFACT_URL shared with the API.
    """
    from obstacle.errors import DeviceError
    from obstacle.platform.settings import ConfigurationError
    from obstacle.workers.launch import run_worker
    from obstacle.workers.settings import WorkerSettings

    if pool not in ("prefork", "solo"):
        raise typer.BadParameter(f"--pool must be prefork or solo; got {pool!r}.")
    settings = _load(WorkerSettings)
    try:
        code = run_worker(settings, concurrency=concurrency, pool=pool, loglevel=loglevel)
    except (ConfigurationError, DeviceError) as exc:
        typer.echo(f"obstacle: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)
