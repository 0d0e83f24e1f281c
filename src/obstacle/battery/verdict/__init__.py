"""The verdict: from the battery's records, which obstacle holds the run back, with evidence."""

from obstacle.battery.verdict.thresholds import DEFAULT_THRESHOLDS, Thresholds
from obstacle.battery.verdict.verdict import judge
from obstacle.labels import LABELS

__all__ = ["DEFAULT_THRESHOLDS", "LABELS", "Thresholds", "judge"]
