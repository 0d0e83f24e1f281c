"""obstacle: which optimization obstacle holds a training run back, with the evidence.

Importing ``obstacle`` does not import torch: the names that need it load on first use, so the
HTTP service (installed without torch) can import the package.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from obstacle.errors import (
    CheckpointError,
    ComputeError,
    ConnectError,
    ConvergenceWarning,
    DeviceError,
    InputError,
    MemoryBudgetError,
    ObstacleError,
    ParameterError,
    ProbeError,
    RunDirectoryError,
    ServiceError,
    ServiceTimeoutError,
    TransportError,
    UnsafeArchiveError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from obstacle._analyze import analyze
    from obstacle.battery.checkpoint import append_train_log, save_checkpoint
    from obstacle.battery.probe import Probe
    from obstacle.client import (
        AnalysisResult,
        AnalysisStatus,
        CheckpointInfo,
        Client,
        Run,
        RunInfo,
        upload_run_dir,
    )
    from obstacle.schemas import Report, Verdict

# public name -> module that defines it (imported lazily)
_LAZY = {
    "analyze": "obstacle._analyze",
    "Report": "obstacle.schemas",
    "Verdict": "obstacle.schemas",
    "Probe": "obstacle.battery.probe",
    "save_checkpoint": "obstacle.battery.checkpoint",
    "append_train_log": "obstacle.battery.checkpoint",
    "Client": "obstacle.client",
    "Run": "obstacle.client",
    "RunInfo": "obstacle.client",
    "AnalysisStatus": "obstacle.client",
    "AnalysisResult": "obstacle.client",
    "CheckpointInfo": "obstacle.client",
    "upload_run_dir": "obstacle.client",
}

__all__ = [
    "AnalysisResult",
    "AnalysisStatus",
    "CheckpointError",
    "CheckpointInfo",
    "Client",
    "ComputeError",
    "ConnectError",
    "ConvergenceWarning",
    "DeviceError",
    "InputError",
    "MemoryBudgetError",
    "ObstacleError",
    "ParameterError",
    "Probe",
    "ProbeError",
    "Report",
    "Run",
    "RunDirectoryError",
    "RunInfo",
    "ServiceError",
    "ServiceTimeoutError",
    "TransportError",
    "UnsafeArchiveError",
    "Verdict",
    "__version__",
    "analyze",
    "append_train_log",
    "save_checkpoint",
    "upload_run_dir",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'obstacle' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
