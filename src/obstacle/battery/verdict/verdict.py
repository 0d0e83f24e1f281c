"""The verdict: every obstacle considered on the run's timeline, each found or ruled out.

1. The late window (the run's present state) is judged by every rule.
2. The timeline finds the stalled phases that ended earlier and what held each of them.
3. The obstacles of the run are the episodes still present at the end, and the ended ones that
   held the run for at least ``episode_share`` of its steps. The primary obstacle is the one that
   cost the most steps (a blow-up always comes first: after it nothing else can be measured).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from obstacle.battery.verdict.conditions import Finding
from obstacle.battery.verdict.facts import (
    Record,
    RunFacts,
    finite,
    fmt,
    percent,
    run_facts,
    times,
    window,
)
from obstacle.battery.verdict.rules import EPISODIC, PRIORITY, RULES, Context
from obstacle.battery.verdict.thresholds import DEFAULT_THRESHOLDS, Thresholds
from obstacle.battery.verdict.timeline import Episode, ended_episodes, present_episode


def judge(
    records: Sequence[Record],
    *,
    target_loss: float | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """The verdict for a run from its per-checkpoint records (see :func:`judge_facts`)."""
    if not records:
        raise ValueError("judge() needs at least one checkpoint record")
    return judge_facts(
        run_facts(records, thresholds), target_loss=target_loss, thresholds=thresholds
    )


def judge_facts(
    facts: RunFacts,
    *,
    target_loss: float | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """The verdict (JSON-ready) from the run's facts."""
    t = thresholds
    ctx = Context(facts, facts.late, t, target_loss)
    findings = {rule.kind: rule.judge(ctx) for rule in RULES}
    diverged = findings["divergence"].present
    if diverged:
        first = findings["divergence"].steps[0] if findings["divergence"].steps else None
        for kind, finding in findings.items():
            if kind != "divergence":
                finding.not_assessed = (
                    f"not assessed at the end: the run diverged (from step {first}), so its curvature, "
                    "noise and progress numbers no longer describe an obstacle"
                )
    if not diverged and not facts.late.stalled:
        # The second half may hold an escape; what holds the run now can still be a stall of the
        # last third on its own (a noise floor after a saddle). Episodic obstacles are judged there.
        own = window(facts.late.checkpoints, t, at_end=True)
        if own.stalled:
            recent = Context(
                facts, replace(own, uphill_rate=facts.late.uphill_rate), t, target_loss
            )
            for rule in EPISODIC:
                again = rule.judge(recent)
                if again.present:
                    findings[rule.kind] = again
    earlier, phases = ended_episodes(facts, t, target_loss)
    rules = {rule.kind: rule for rule in RULES}
    present = [
        present_episode(f, rules[kind], facts, phases[-1])
        for kind, f in findings.items()
        if f.present and f.confidence >= t.present
    ]
    present, earlier = _merge(present, earlier, facts)
    counted = present + [e for e in earlier if e.share_of_run >= t.episode_share]
    # One entry per obstacle: its costliest episode.
    by_kind: dict[str, Episode] = {}
    for e in counted:
        if e.kind not in by_kind or e.share_of_run > by_kind[e.kind].share_of_run:
            by_kind[e.kind] = e
    ranked = sorted(
        by_kind.values(),
        key=lambda e: (
            e.kind != "divergence",
            -round(e.share_of_run, 6),
            -round(e.finding.confidence, 6),
            PRIORITY.index(e.kind),
        ),
    )
    ruled_out = [
        {
            "kind": kind,
            "reason": f.reason or "no supporting evidence",
            "confidence": round(f.confidence, 3),
        }
        for kind in PRIORITY
        if kind not in by_kind and (f := findings[kind])
    ]
    if ranked:
        primary = ranked[0]
        primary_kind, confidence = primary.kind, primary.finding.confidence
        summary = _summary(primary, rules[primary.kind].headline, facts)
    else:
        primary_kind = "healthy"
        confidence = 1.0 - max(f.confidence for f in findings.values())
        summary = _healthy(facts)
    episodes = sorted(counted, key=lambda e: (e.start_step, PRIORITY.index(e.kind)))
    return {
        "primary": primary_kind,
        "confidence": round(confidence, 3),
        "obstacles": [_obstacle(e) for e in ranked],
        "ruled_out": ruled_out,
        "episodes": [e.as_dict() for e in episodes],
        "timeline": [
            {
                "phase": p.kind,
                "start_step": facts.checkpoints[p.start].step,
                "end_step": facts.checkpoints[p.stop - 1].step,
                "explained_by": next(
                    (e.kind for e in episodes if e.start_step == facts.checkpoints[p.start].step),
                    None,
                ),
            }
            for p in phases
        ],
        "summary": summary,
        "thresholds": t.as_dict(),
        "target_loss": target_loss,
    }


def _merge(
    present: list[Episode], earlier: list[Episode], facts: RunFacts
) -> tuple[list[Episode], list[Episode]]:
    """An ended episode that runs into a still-present one of the same kind is the same episode:
    it overlaps it, or at most one checkpoint of descent lies between them."""
    steps = facts.steps
    kept = []
    for e in earlier:
        same = next((p for p in present if p.kind == e.kind), None)
        assert e.end_step is not None
        between = sum(1 for s in steps if e.end_step < s < same.start_step) if same else 0
        if same is not None and (e.end_step >= same.start_step or between <= 1):
            same.start_step = min(same.start_step, e.start_step)
            same.share_of_run = (steps[-1] - same.start_step) / max(facts.span_steps, 1)
        else:
            kept.append(e)
    return present, kept


def _obstacle(e: Episode) -> dict[str, Any]:
    f: Finding = e.finding
    return {
        "kind": e.kind,
        "confidence": round(f.confidence, 3),
        "steps": f.steps,
        "shown_at_step": e.shown_at_step,
        "start_step": e.start_step,
        "end_step": e.end_step,
        "still_present": e.still_present,
        "ended_by": e.ended_by,
        "share_of_run": round(e.share_of_run, 4),
        "evidence": f.evidence,
        "conditions": [c.as_dict() for c in f.conditions],
        "suggestion": f.suggestion,
    }


def _summary(e: Episode, headline: str, facts: RunFacts) -> str:
    lead = e.finding.evidence[0]["statement"] if e.finding.evidence else ""
    if e.still_present:
        if e.start_step == facts.checkpoints[0].step:
            when = "from the start, and still is at the last checkpoint"
        elif e.start_step >= facts.checkpoints[-1].step:
            when = f"at its last checkpoint (step {e.start_step})"
        else:
            when = (
                f"since step {e.start_step} ({percent(e.share_of_run)} of the run), and still is "
                "at the last checkpoint"
            )
        return f"{headline} {when} (confidence {e.finding.confidence:.2f}): {lead}."
    past = headline.replace(" is stuck", " was stuck").replace(" is held", " was held")
    return (
        f"{past} from step {e.start_step} to step {e.end_step} ({percent(e.share_of_run)} of the run); "
        f"{e.ended_by} (confidence {e.finding.confidence:.2f}): {lead}."
    )


def _healthy(facts: RunFacts) -> str:
    if not finite(facts.progress.decrease_rel):
        return (
            f"No obstacle found at loss {fmt(facts.last_loss)}; progress, plateaus and trends need "
            "two or more checkpoints."
        )
    if facts.late.stalled:
        first, last = facts.first_loss, facts.last_loss
        if finite(first) and finite(last) and first > 0 and last >= first:
            return (
                f"No obstacle found: the loss stalled at {fmt(last)}, {times(last / first)} its "
                "first value, without converging to a minimum."
            )
        return f"Healthy: converged to a minimum at loss {fmt(last)}; no obstacle found."
    return (
        f"Healthy: the loss is still falling ({facts.progress.describe()}; now {fmt(facts.last_loss)}); "
        "no obstacle found."
    )
