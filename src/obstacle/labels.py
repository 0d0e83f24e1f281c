"""The verdict's labels (exact strings), shared by the battery, the service and the client."""

from __future__ import annotations

HEALTHY = "healthy"

#: Every obstacle the verdict considers, in no particular order.
OBSTACLE_LABELS: tuple[str, ...] = (
    "local_minimum",
    "saddle_point",
    "poor_conditioning",
    "gradient_noise",
    "no_critical_point",
    "divergence",
    "overfitting",
)

#: Every label a verdict's ``primary`` can take.
LABELS: tuple[str, ...] = (HEALTHY, *OBSTACLE_LABELS)
