"""The `obstacle` command line: joins the commands each subpackage registers.

Each ``register`` function adds its commands without importing heavy dependencies (torch,
fastapi, celery) at import time, so ``obstacle --help`` is fast and works in every install.
"""

from __future__ import annotations

import importlib

import typer

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


def main() -> None:
    """Entry point of the ``obstacle`` console script."""
    app()


if __name__ == "__main__":
    main()
