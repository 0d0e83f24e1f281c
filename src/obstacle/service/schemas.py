"""Request and response bodies, split per resource into Create (in) and Public (out).

They live in ``obstacle.schemas``, which the client imports too: one definition of the API's
bodies for both sides.
"""

from __future__ import annotations

from obstacle.schemas import (
    PRESETS,
    AnalysesPublic,
    AnalysisCreate,
    AnalysisOptions,
    AnalysisPublic,
    CheckpointErrorPublic,
    CheckpointPublic,
    CheckpointsPublic,
    Health,
    Message,
    OptimizerStatePublic,
    Preset,
    ProbePublic,
    Progress,
    RunCreate,
    RunPublic,
    RunsPublic,
    TrainLogPublic,
)

__all__ = [
    "PRESETS",
    "AnalysesPublic",
    "AnalysisCreate",
    "AnalysisOptions",
    "AnalysisPublic",
    "CheckpointErrorPublic",
    "CheckpointPublic",
    "CheckpointsPublic",
    "Health",
    "Message",
    "OptimizerStatePublic",
    "Preset",
    "ProbePublic",
    "Progress",
    "RunCreate",
    "RunPublic",
    "RunsPublic",
    "TrainLogPublic",
]
