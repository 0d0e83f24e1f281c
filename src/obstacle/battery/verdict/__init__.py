"""The verdict: from the battery's records, which obstacle holds the run back, with evidence."""

from obstacle.battery.verdict.facts import CheckpointFacts, RunFacts, run_facts
from obstacle.battery.verdict.thresholds import DEFAULT_THRESHOLDS, Thresholds
from obstacle.battery.verdict.verdict import judge, judge_facts
from obstacle.labels import LABELS

__all__ = [
    "DEFAULT_THRESHOLDS",
    "LABELS",
    "CheckpointFacts",
    "RunFacts",
    "Thresholds",
    "judge",
    "judge_facts",
    "run_facts",
]
