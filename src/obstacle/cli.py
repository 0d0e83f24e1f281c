"""The `obstacle` command line: joins the commands each subpackage registers.

Each ``register`` function adds its commands without importing heavy dependencies (torch,
fastapi, celery) at import time, so ``obstacle --help`` is fast and works in every install.

No Python traceback for bad input: an exception that escapes a command (a file that is a
directory, unreadable or not text, a database URL that does not parse, ...) ends in one line
naming the input and exit status 2. ``obstacle --debug COMMAND`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import inspect
import sys

import typer

from obstacle._hugepages import use_huge_pages

app = typer.Typer(
    name="obstacle",
    help=(
        "Find out which optimization obstacle holds a training run back — saddle point, local "
        "minimum, poor conditioning, gradient noise, no critical point, divergence, overfitting — "
        "with the evidence for it."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines `register(app)`. A module whose extra is not installed is skipped, so the
# service image (no torch) still has `serve` and `token`.
_COMMAND_MODULES = (
    "obstacle.battery.commands",
    "obstacle.service.commands",
    "obstacle.workers.commands",
    "obstacle.client.commands",
)

for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
        if exc.name == _name:
            continue
        if exc.name and exc.name.split(".")[0] in {"typer", "obstacle"}:
            raise
        continue
    _module.register(app)


def _one_line_summaries(app: typer.Typer) -> None:
    """Each command's summary in ``obstacle --help``: its docstring's first paragraph, unwrapped.
    Typer's rich help keeps a docstring's line breaks there, so a summary wrapped at the source's
    100 columns broke mid-sentence in the list."""
    for command in app.registered_commands:
        doc = command.callback.__doc__ if command.callback else None
        if command.short_help is None and command.help is None and doc:
            command.short_help = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


_one_line_summaries(app)

_debug = False


@app.callback()
def _global_options(
    debug: bool = typer.Option(
        False, "--debug", help="Show the Python traceback of an error instead of one line."
    ),
) -> None:
    global _debug
    _debug = debug


def describe_error(exc: BaseException) -> str:
    """One line for an exception that escaped a command: the input it concerns, what went wrong,
    and what to do."""
    kind = type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None:
        reason = exc.strerror or str(exc)
        return (
            f"{exc.filename}: {reason} ({kind}). Check the path: it must name a readable file "
            "or directory as the command's help describes."
        )
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"an input file is not UTF-8 text ({exc.reason} at byte {exc.start}). Check the "
            "files the command reads."
        )
    if isinstance(exc, RecursionError):
        return (
            "an input is nested too deeply to read (RecursionError). Check the JSON files the "
            "command reads."
        )
    module = type(exc).__module__.split(".")[0]
    if module == "sqlalchemy":
        first = str(exc).splitlines()[0] if str(exc) else kind
        return (
            f"the database (OBSTACLE_DATABASE_URL) failed: {first} ({kind}). Check the URL and "
            "that the database is reachable."
        )
    if module in ("redis", "kombu"):
        return (
            f"the broker (OBSTACLE_BROKER_URL) failed: {exc} ({kind}). Check the URL and that "
            "Redis is reachable."
        )
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{kind}: {first}. Rerun with `obstacle --debug ...` for the traceback."


def main() -> None:
    """Entry point of the ``obstacle`` console script."""
    use_huge_pages()  # before torch's first allocation: large tensors on 2 MiB pages
    try:
        app()
    except Exception as exc:  # the boundary: one line and exit 2, the traceback only with --debug
        if _debug:
            raise
        typer.echo(f"obstacle: error: {describe_error(exc)}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
