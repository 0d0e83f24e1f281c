"""The service's commands: ``obstacle serve`` and ``obstacle token create`` (``obstacle worker`` is
in ``obstacle.workers.commands``).

fastapi, uvicorn, celery and torch are imported inside the commands, so ``obstacle --help`` is
fast and this module loads in every install.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from obstacle.platform.settings import load_or_exit as _load

__all__ = ["register", "serve", "token_create"]


DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help=(
            "Where the service keeps its data (SQLite database, artifacts, embedded Redis, tokens). "
            "Default: OBSTACLE_DATA_DIR, else ./obstacle-data of the current directory. "
            "`serve` and `token create` follow the same rule and print the directory they use."
        ),
        show_default=False,
    ),
]


def _data_dir_values(data_dir: Path | None) -> dict[str, object]:
    """The settings' override for ``--data-dir`` (nothing when the flag is absent)."""
    return {} if data_dir is None else {"data_dir": data_dir}


def _announce_data_dir(resolved: Path, flag: Path | None) -> None:
    """Say which data directory a command uses and why, on stderr (stdout may carry a token)."""
    if flag is not None:
        source = "--data-dir"
    elif os.environ.get("OBSTACLE_DATA_DIR"):
        source = "OBSTACLE_DATA_DIR"
    else:
        source = (
            "default: ./obstacle-data of the current directory; set OBSTACLE_DATA_DIR or --data-dir"
        )
    typer.echo(f"obstacle: data directory {resolved} ({source})", err=True)


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``token`` to the ``obstacle`` command line."""
    app.command("serve")(serve)
    tokens = typer.Typer(
        help="Manage API tokens; works on the database directly (OBSTACLE_DATABASE_URL).",
        no_args_is_help=True,
    )
    tokens.command("create")(token_create)
    app.add_typer(tokens, name="token")


def serve(
    api_only: Annotated[
        bool,
        typer.Option(
            "--api-only",
            help="Run only the HTTP API; the broker (OBSTACLE_BROKER_URL) and `obstacle worker` run elsewhere.",
        ),
    ] = False,
    host: Annotated[
        str | None,
        typer.Option(help="Interface to listen on (default: OBSTACLE_HOST, else 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port (default: OBSTACLE_PORT, else 8000); 0 picks a free one."),
    ] = None,
    workers: Annotated[int, typer.Option(help="Processes of the embedded worker.", min=1)] = 1,
    migrate: Annotated[
        bool, typer.Option(help="Bring the database schema up to date before starting.")
    ] = True,
    data_dir: DataDirOption = None,
) -> None:
    """Run the service: the API, a worker, an embedded Redis and SQLite, started and stopped together.

    The data lives in --data-dir, else OBSTACLE_DATA_DIR, else ./obstacle-data of the current
    directory; the directory used is printed: run `obstacle token create` with the same one.

    Configure it with OBSTACLE_* environment variables: OBSTACLE_DATABASE_URL (e.g.
    postgresql+psycopg://…), OBSTACLE_BROKER_URL (redis://…), OBSTACLE_ARTIFACT_URL (any fsspec URL,
    e.g. s3://bucket/prefix), OBSTACLE_DATA_DIR, OBSTACLE_MAX_CHECKPOINT_BYTES, OBSTACLE_MAX_PROBE_BYTES,
    OBSTACLE_VISIBILITY_TIMEOUT_S.
    """
    import uvicorn

    from obstacle.platform.db import create_db_engine
    from obstacle.platform.db import migrate as migrate_schema
    from obstacle.service.app import create_app
    from obstacle.service.embedded import EmbeddedRedis, EmbeddedWorker
    from obstacle.service.server import uvicorn_config
    from obstacle.service.settings import ConfigurationError, Settings

    settings = _load(Settings, **_data_dir_values(data_dir))
    _announce_data_dir(settings.data_dir, data_dir)
    overrides: dict[str, object] = {
        k: v for k, v in (("host", host), ("port", port)) if v is not None
    }
    redis_server: EmbeddedRedis | None = None
    worker_process: EmbeddedWorker | None = None
    try:
        if settings.broker_url is None:
            if api_only:
                settings.require_broker_url()
            redis_server = EmbeddedRedis(settings.data_dir / "redis")
            overrides["broker_url"] = redis_server.start()
        settings = settings.model_copy(update=overrides)
        if migrate:
            engine = create_db_engine(settings.resolved_database_url)
            migrate_schema(engine)
            engine.dispose()
        if not api_only:
            worker_process = EmbeddedWorker(settings, processes=workers)
            worker_process.start()  # watched and restarted when it dies; /healthz reports it
        listener = socket.create_server((settings.host, settings.port))
        bound = listener.getsockname()[1]
        parts = [f"obstacle: API listening on http://{settings.host}:{bound} (OpenAPI at /docs)"]
        if worker_process is not None:
            parts.append(f"worker pid {worker_process.pid}")
        parts.append(f"broker {settings.broker_url}{' (embedded)' if redis_server else ''}")
        parts.append(f"database {_redact(settings.resolved_database_url)}")
        parts.append(f"artifacts {settings.resolved_artifact_url}")
        typer.echo("; ".join(parts), err=False)
        api = create_app(settings)
        api.state.embedded_worker = worker_process
        server = uvicorn.Server(uvicorn_config(api, settings))  # limits: service/server.py
        # uvicorn re-raises the stop signal once it has shut down; exit through `finally` instead
        # of dying from it, so the worker and the embedded Redis are stopped too.
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, _exit_cleanly)
        server.run(sockets=[listener])
    except ConfigurationError as exc:
        typer.echo(f"obstacle: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        if worker_process is not None:
            worker_process.stop()
        if redis_server is not None:
            redis_server.stop()


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _redact(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def token_create(
    project: Annotated[str, typer.Option(help="The project the token may act on; created if new.")],
    label: Annotated[
        str, typer.Option(help="A note to remember the token by (who or what uses it).")
    ] = "",
    data_dir: DataDirOption = None,
) -> None:
    """Create an API token for a project and print it (it is shown only once; only its hash is kept).

    The token is stored in the service's database: OBSTACLE_DATABASE_URL, else the SQLite database
    in the data directory (--data-dir, else OBSTACLE_DATA_DIR, else ./obstacle-data), which must be
    the one `obstacle serve` prints. The directory used is printed on stderr.
    """
    from obstacle.platform.db import create_db_engine, migrate, session_factory, session_scope
    from obstacle.platform.settings import CommonSettings
    from obstacle.service.auth import create_token

    if not project.strip() or len(project) > 200:
        raise typer.BadParameter("--project must be a non-empty name of at most 200 characters.")
    settings = _load(CommonSettings, **_data_dir_values(data_dir))
    if settings.database_url is None:
        _announce_data_dir(settings.data_dir, data_dir)
    else:
        typer.echo(
            f"obstacle: database {_redact(settings.database_url)} (OBSTACLE_DATABASE_URL)", err=True
        )
    engine = create_db_engine(settings.resolved_database_url)
    try:
        migrate(engine)
        with session_scope(session_factory(engine)) as session:
            token = create_token(session, project=project.strip(), label=label)
    finally:
        engine.dispose()
    typer.echo(token)
    typer.echo(
        f"Token for project {project.strip()!r}: send it as 'Authorization: Bearer <token>'. "
        "It is shown only now; store it as a secret.",
        err=True,
    )
