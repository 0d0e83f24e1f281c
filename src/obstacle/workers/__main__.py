"""``python -m obstacle.workers``: the same as ``obstacle worker``."""

from __future__ import annotations

import typer

from obstacle.workers.commands import worker

typer.run(worker)
