"""Progress bars on stderr: tqdm, shown only on a terminal unless asked for explicitly."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["Bar", "progress_bar"]


class Bar:
    """A tqdm bar moved to absolute positions (the service reports done/total, not increments)."""

    def __init__(self, *, desc: str, unit: str, total: int | None = None) -> None:
        from tqdm import tqdm

        self._tqdm: Any = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)

    def update_to(self, done: int, total: int | None = None, note: str | None = None) -> None:
        if total is not None and total != self._tqdm.total:
            self._tqdm.total = total
        self._tqdm.n = done
        if note:
            self._tqdm.set_postfix_str(note, refresh=False)
        self._tqdm.refresh()

    def close(self) -> None:
        self._tqdm.close()


def progress_bar(
    enabled: bool | None, *, desc: str, unit: str, total: int | None = None
) -> Bar | None:
    """A bar when ``enabled`` (None: when stderr is a terminal), else None."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return Bar(desc=desc, unit=unit, total=total) if enabled else None
