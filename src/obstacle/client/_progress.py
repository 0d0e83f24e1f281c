"""Progress bars on stderr: tqdm, shown only on a terminal unless asked for explicitly."""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["Bar", "progress_bar"]

# An upload moves the bar once per chunk sent; redrawing it that often would cost more than the chunk.
_REDRAW_S = 0.1


class Bar:
    """A tqdm bar moved to absolute positions (the service reports done/total, not increments).

    ``unit_scale``: show counts with SI prefixes (for bytes, ``unit="B"``: kB, MB, GB).
    """

    def __init__(
        self, *, desc: str, unit: str, total: int | None = None, unit_scale: bool = False
    ) -> None:
        from tqdm import tqdm

        self._tqdm: Any = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            unit_scale=unit_scale,
            file=sys.stderr,
            leave=False,
        )
        self._drawn = 0.0

    @property
    def total(self) -> int | None:
        total: int | None = self._tqdm.total
        return total

    def update_to(self, done: int, total: int | None = None, note: str | None = None) -> None:
        if total is not None and total != self._tqdm.total:
            self._tqdm.total = total
        self._tqdm.n = done
        if note:
            self._tqdm.set_postfix_str(note, refresh=False)
        now = time.monotonic()
        if now - self._drawn >= _REDRAW_S or done == self._tqdm.total:
            self._drawn = now
            self._tqdm.refresh()

    def close(self) -> None:
        self._tqdm.close()


def progress_bar(
    enabled: bool | None,
    *,
    desc: str,
    unit: str,
    total: int | None = None,
    unit_scale: bool = False,
) -> Bar | None:
    """A bar when ``enabled`` (None: when stderr is a terminal), else None."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return Bar(desc=desc, unit=unit, total=total, unit_scale=unit_scale) if enabled else None
