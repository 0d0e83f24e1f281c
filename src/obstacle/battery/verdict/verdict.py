"""Combine the rules into a verdict: every obstacle considered, each supported or ruled out."""

from __future__ import annotations

from typing import Any

from obstacle.battery.verdict.evidence import Record, finite, fmt, run_facts
from obstacle.battery.verdict.rules import (
    Finding,
    divergence,
    gradient_noise,
    local_minimum,
    no_critical_point,
    overfitting,
    poor_conditioning,
    saddle_point,
)
from obstacle.battery.verdict.thresholds import DEFAULT_THRESHOLDS, Thresholds

# When two obstacles are equally supported, the one that makes the others moot comes first:
# a diverged run's other numbers are meaningless; a saddle or bad conditioning explains a plateau
# before noise does; overfitting is about generalisation, not optimisation, so it ranks last.
PRIORITY = (
    "divergence",
    "saddle_point",
    "poor_conditioning",
    "gradient_noise",
    "no_critical_point",
    "local_minimum",
    "overfitting",
)


def judge(
    records: list[Record],
    *,
    target_loss: float | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """The verdict for a run from its per-checkpoint records."""
    if not records:
        raise ValueError("judge() needs at least one checkpoint record")
    facts = run_facts(records, thresholds)
    findings = {
        "divergence": divergence(facts, thresholds),
        "overfitting": overfitting(facts, thresholds),
        "saddle_point": saddle_point(facts, thresholds),
        "local_minimum": local_minimum(facts, thresholds, target_loss),
        "poor_conditioning": poor_conditioning(facts, thresholds),
        "gradient_noise": gradient_noise(facts, thresholds, target_loss),
        "no_critical_point": no_critical_point(facts, thresholds),
    }
    if findings["divergence"].confidence >= thresholds.present:
        # After a blow-up the records measure a broken model: judge nothing else on them.
        first = findings["divergence"].steps[0] if findings["divergence"].steps else None
        for kind, finding in findings.items():
            if kind != "divergence":
                finding.reason = (
                    f"not assessed: the run diverged (from step {first}), so its curvature, noise "
                    "and progress numbers no longer describe an obstacle"
                )
                finding.confidence = 0.0
    present = sorted(
        (f for f in findings.values() if f.confidence >= thresholds.present),
        key=lambda f: (-round(f.confidence, 6), PRIORITY.index(f.kind)),
    )
    ruled_out = [
        {
            "kind": f.kind,
            "reason": f.reason or "no supporting evidence",
            "confidence": round(f.confidence, 3),
        }
        for kind in PRIORITY
        if (f := findings[kind]).confidence < thresholds.present
    ]
    if present:
        primary = present[0]
        summary = _summary(primary, facts.last_loss)
        confidence = primary.confidence
        primary_kind = primary.kind
    else:
        primary_kind = "healthy"
        confidence = 1.0 - max(f.confidence for f in findings.values())
        if facts.plateau:
            summary = f"Healthy: converged to a minimum at loss {fmt(facts.last_loss)}; no obstacle found."
        elif not finite(facts.late_progress):
            summary = (
                f"No obstacle found at loss {fmt(facts.last_loss)}; progress, plateaus and trends "
                "need two or more checkpoints."
            )
        else:
            summary = (
                f"Healthy: the loss is still falling ({fmt(100 * facts.late_progress)}% over the second "
                f"half of the run, now {fmt(facts.last_loss)}); no obstacle found."
            )
    return {
        "primary": primary_kind,
        "confidence": round(confidence, 3),
        "obstacles": [_obstacle(f) for f in present],
        "ruled_out": ruled_out,
        "summary": summary,
        "thresholds": thresholds.as_dict(),
        "target_loss": target_loss,
    }


def _obstacle(f: Finding) -> dict[str, Any]:
    return {
        "kind": f.kind,
        "confidence": round(f.confidence, 3),
        "steps": f.steps,
        "evidence": f.evidence,
        "suggestion": f.suggestion,
    }


_HEADLINES = {
    "divergence": "The run diverged",
    "overfitting": "The run overfits",
    "saddle_point": "The run is stuck at a saddle point",
    "local_minimum": "The run is stuck in a local minimum above the target loss",
    "poor_conditioning": "The run is held back by poor conditioning",
    "gradient_noise": "The run is held back by gradient noise",
    "no_critical_point": "The loss has no critical point to reach",
}


def _summary(primary: Finding, last_loss: float) -> str:
    lead = primary.evidence[0]["statement"] if primary.evidence else ""
    return f"{_HEADLINES[primary.kind]} (confidence {primary.confidence:.2f}): {lead}."
