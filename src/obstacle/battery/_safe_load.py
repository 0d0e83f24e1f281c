"""The one place in obstacle that calls ``torch.export.load``, and only after the validator.

``torch.export.load`` runs code from the file it reads (pickled sample inputs and weights,
sympified expressions, generated Python source); ``obstacle.artifacts.archive`` lists every such
path. The file is read once, the validator checks those bytes, and torch loads the same bytes, so
the archive cannot change between the check and the load.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch

from obstacle.artifacts.archive import (
    MAX_PROGRAM_BYTES,
    PROGRAM_SIZE_FIX,
    validate_program_archive,
)
from obstacle.errors import ProbeError, UnsafeArchiveError

__all__ = ["load_program_safely"]


class _NamedBytes(io.BytesIO):
    """In-memory archive that keeps the file's name for the validator's messages."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name


def load_program_safely(path: str | Path) -> torch.export.ExportedProgram:
    """Validate the probe program archive at ``path``, then load it with ``torch.export.load``.

    Raises ``UnsafeArchiveError`` when the archive fails validation (torch never sees it) and
    ``ProbeError`` when the file cannot be read or torch cannot load a valid archive.
    """
    label = str(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_PROGRAM_BYTES:
                raise UnsafeArchiveError(
                    f"{label}: the program archive is {size} bytes, over the limit of "
                    f"{MAX_PROGRAM_BYTES} bytes. {PROGRAM_SIZE_FIX}."
                )
            data = handle.read()
    except OSError as exc:
        raise ProbeError(
            f"{label}: the probe program cannot be read ({exc.strerror or exc}). "
            "Check that the run directory holds probe/program.pt2 and is readable."
        ) from None
    archive = _NamedBytes(data, label)
    validate_program_archive(archive, max_bytes=MAX_PROGRAM_BYTES)
    archive.seek(0)
    try:
        with warnings.catch_warnings():
            # torch's own pytree code trips its deprecation of LeafSpec; not the caller's concern.
            warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)", FutureWarning)
            return torch.export.load(archive)
    except Exception as exc:  # torch raises many types here; all mean "not loadable"
        raise ProbeError(
            f"{label}: torch.export.load rejected the validated program archive "
            f"({type(exc).__name__}: {str(exc)[:300]}). The probe was probably saved by a torch "
            f"version other than {torch.__version__}; re-capture it with obstacle.Probe.capture "
            "under the workers' torch version."
        ) from exc
