"""One error hierarchy for the whole package, split by who must act.

    ObstacleError
    ├── InputError                 the caller's input is wrong: fix it and retry
    │   ├── ParameterError         an argument is out of its declared range
    │   ├── ProbeError             the probe cannot be captured, saved or loaded
    │   ├── UnsafeArchiveError     an uploaded program archive failed the safety validator
    │   ├── CheckpointError        a checkpoint is unreadable or does not match the probe
    │   ├── RunDirectoryError      a run directory is missing pieces or malformed
    │   └── MemoryBudgetError      the analysis cannot be planned within the memory budget
    ├── ComputeError               the numerics or the device failed: not the caller's input
    │   └── DeviceError            CUDA out of memory, missing device, ...
    └── TransportError             talking to the service failed (client side)
        ├── ConnectError           the service could not be reached
        ├── ServiceTimeoutError    the service did not answer, or an analysis did not finish, in time
        └── ServiceError           the service answered with an RFC 9457 problem

Every message names the thing, the rule, the value received and what to do next.
Non-convergence of an iterative method is a warning (`ConvergenceWarning`), not an error:
the result still carries its estimate and ``converged=False``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointError",
    "ComputeError",
    "ConnectError",
    "ConvergenceWarning",
    "DeviceError",
    "InputError",
    "MemoryBudgetError",
    "ObstacleError",
    "ParameterError",
    "ProbeError",
    "RunDirectoryError",
    "ServiceError",
    "ServiceTimeoutError",
    "TransportError",
    "UnsafeArchiveError",
]


class ObstacleError(Exception):
    """Root of every error raised by `obstacle`."""


class InputError(ObstacleError):
    """The caller's input is wrong; the message says what to change."""


class ParameterError(InputError, ValueError):
    """An argument is outside its declared constraint."""


class ProbeError(InputError):
    """A probe cannot be captured, saved or loaded."""


class UnsafeArchiveError(ProbeError):
    """A program archive failed the safety validator; nothing from it was executed."""

    def __init__(self, message: str, *, entry: str | None = None) -> None:
        super().__init__(message)
        self.entry = entry


class CheckpointError(InputError):
    """A checkpoint is unreadable or does not match the probe manifest."""


class RunDirectoryError(InputError):
    """A run directory is missing pieces or is malformed."""


class MemoryBudgetError(InputError):
    """The analysis does not fit the memory budget even at its smallest plan."""


class ComputeError(ObstacleError):
    """The computation itself failed (device, numerics), not the input."""


class DeviceError(ComputeError):
    """The requested device is missing or ran out of memory."""


class TransportError(ObstacleError):
    """The client could not complete a call to the service."""


class ConnectError(TransportError):
    """The service could not be reached."""


class ServiceTimeoutError(TransportError):
    """The service did not answer in time, or an analysis did not finish within the wait.

    Not named ``TimeoutError``: that would shadow the builtin for ``from obstacle.errors import *``.
    """


class ServiceError(TransportError):
    """The service answered with an error (an RFC 9457 problem document)."""

    def __init__(self, message: str, *, status: int, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


class ConvergenceWarning(UserWarning):
    """An iterative method stopped before its tolerance; the result says ``converged=False``."""
