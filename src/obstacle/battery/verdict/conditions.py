"""Named conditions and the findings built from them.

A rule is a list of :class:`Condition` objects — each a predicate over the facts with its
threshold and the value it measured. The same objects decide and explain: the evidence lines of
an obstacle found are its conditions' statements, and the "ruled out because" line is the
statement of the first condition that fails.

Confidence, from the margins of the conditions (documented in the README's verdict section):

- every condition holds: ``0.5 + 0.5·mean(margins)``, where a condition's margin is how far its
  value is past the threshold, 0 at the threshold and 1 at the value where the evidence is
  unambiguous (linear between; a condition that is a plain yes/no has margin 1). So an obstacle
  found is always at or above 0.5, and at 1 only when every condition holds by a wide margin.
- a condition fails: ``0.5·(conditions that held before it)/(all conditions)``, below 0.5: the
  share of the rule's case that was made before it broke.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from obstacle.battery.verdict.facts import finite


def ramp(x: float, at: float, full: float) -> float:
    """0 at ``at``, 1 at ``full`` (either direction), linear between and clipped; NaN gives 0."""
    if not finite(x) or full == at:
        return 0.0 if not finite(x) else float(x >= full)
    return max(0.0, min(1.0, (x - at) / (full - at)))


@dataclass(frozen=True)
class Condition:
    """One named predicate of a rule: what was measured, against what, and whether it holds."""

    name: str
    holds: bool
    statement: str
    """A sentence that reads right whether it holds or not: it states the value and the limit."""
    test: str
    """The battery test the value comes from (``lanczos``, ``loss``, ``noise``, ...)."""
    value: float | None = None
    threshold: float | None = None
    margin: float = 1.0
    unit: str = ""
    """How ``value`` reads: ``fraction`` (as a percentage), ``ratio`` (as a multiple), or a plain
    number."""

    def as_dict(self) -> dict[str, Any]:
        value = self.value if self.value is not None and finite(self.value) else None
        return {
            "name": self.name,
            "holds": self.holds,
            "statement": self.statement,
            "test": self.test,
            "value": value,
            "threshold": self.threshold,
            "margin": round(self.margin, 3),
            "unit": self.unit,
        }


@dataclass
class Finding:
    """A rule's result on one window: its conditions, confidence, steps and evidence."""

    kind: str
    conditions: list[Condition] = field(default_factory=list)
    total_conditions: int = 0
    steps: list[int] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    """Supporting lines that are not conditions (they inform, they do not decide)."""
    suggestion: str = ""
    shown_at: int | None = None
    """The checkpoint the evidence cites (the strongest), for the text and the plots alike."""
    not_assessed: str = ""
    """Set when the rule was not run on this window (e.g. after a blow-up), with why."""

    @property
    def present(self) -> bool:
        return (
            not self.not_assessed
            and bool(self.conditions)
            and all(c.holds for c in self.conditions)
            and len(self.conditions) == self.total_conditions
        )

    @property
    def confidence(self) -> float:
        if self.not_assessed or not self.total_conditions:
            return 0.0
        if self.present:
            return 0.5 + 0.5 * math.fsum(c.margin for c in self.conditions) / len(self.conditions)
        held = sum(1 for c in self.conditions if c.holds)
        return 0.5 * held / self.total_conditions

    @property
    def reason(self) -> str:
        """Why it is ruled out: the statement of the first condition that fails."""
        if self.not_assessed:
            return self.not_assessed
        failed = next((c for c in self.conditions if not c.holds), None)
        return failed.statement if failed else ""

    @property
    def evidence(self) -> list[dict[str, Any]]:
        lines = [
            {
                "test": c.test,
                "statement": c.statement,
                "value": c.as_dict()["value"],
                "unit": c.unit,
                "condition": c.name,
            }
            for c in self.conditions
        ]
        return lines + self.extra

    def add(self, test: str, statement: str, value: float | None) -> None:
        v = None if value is None or not finite(float(value)) else float(value)
        self.extra.append({"test": test, "statement": statement, "value": v})


class Evaluation:
    """Collects a rule's conditions in order and stops at the first that fails."""

    def __init__(self, finding: Finding, total: int) -> None:
        self.finding = finding
        finding.total_conditions = total

    def check(self, condition: Condition) -> bool:
        self.finding.conditions.append(condition)
        return condition.holds
