"""The run's timeline: phases (descent, stall, blow-up) and the obstacle episodes within them.

An obstacle is an episode, not a property of the last checkpoint: a run can sit on a saddle for
most of its budget and escape near the end. The timeline marks each checkpoint as descending or
stalled from the loss around it, groups consecutive marks into phases, and asks the episodic
rules (saddle, conditioning, noise) what held each stalled phase that ended before the run did.
What holds the run at its end is judged on the late window, as before, and continues the last
stalled phase when there is one.

A checkpoint is **stalled** when a least-squares line through it and its neighbours (three
checkpoints) falls by less than ``plateau_rel`` of the loss per half of the run's length, scaled
to the neighbours' span — or by no more than twice their scatter around the line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from obstacle.battery.verdict.conditions import Finding
from obstacle.battery.verdict.facts import CheckpointFacts, RunFacts, finite, percent, trend, window
from obstacle.battery.verdict.rules import EPISODIC, PRIORITY, Context, Rule
from obstacle.battery.verdict.thresholds import Thresholds


@dataclass(frozen=True)
class Phase:
    """A stretch of consecutive checkpoints with the same state of progress."""

    kind: str
    """``descent``, ``stall`` or ``blow_up``."""
    start: int
    """Index of its first checkpoint."""
    stop: int
    """Index one past its last checkpoint."""


@dataclass
class Episode:
    """An obstacle on the timeline: when it began, when (and how) it ended, what it cost."""

    kind: str
    start_step: int
    end_step: int | None
    """The first checkpoint at which it is over; None while still present at the last one."""
    ended_by: str | None
    share_of_run: float
    """The fraction of the run's steps it held: (end or last step − start) / the run's span."""
    finding: Finding

    @property
    def still_present(self) -> bool:
        return self.end_step is None

    @property
    def shown_at_step(self) -> int | None:
        """The checkpoint that shows the episode best: the one its evidence cites."""
        if self.finding.shown_at is not None:
            return self.finding.shown_at
        return self.finding.steps[-1] if self.finding.steps else self.start_step

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "start_step": self.start_step,
            "end_step": self.end_step,
            "still_present": self.still_present,
            "ended_by": self.ended_by,
            "share_of_run": round(self.share_of_run, 4),
            "confidence": round(self.finding.confidence, 3),
            "steps": self.finding.steps,
            "shown_at_step": self.shown_at_step,
            "evidence": self.finding.evidence,
        }


def stalled_marks(facts: RunFacts, t: Thresholds) -> list[bool]:
    """For each checkpoint, whether the loss around it makes no real progress."""
    cps = facts.checkpoints
    n = len(cps)
    half = facts.span_steps / 2
    if n < 3 or half <= 0:
        return [facts.late.stalled] * n
    marks = []
    for i in range(n):
        lo = min(max(i - 1, 0), n - 3)
        local = trend(cps[lo : lo + 3])
        span = local.last_step - local.first_step
        limit = t.plateau_rel * span / half
        marks.append(local.stalled(limit) or not finite(local.decrease_rel))
    return marks


def phases(facts: RunFacts, t: Thresholds) -> list[Phase]:
    """The run cut into descent / stall / blow-up phases (a stall needs two checkpoints)."""
    cps = facts.checkpoints
    ratio_limit = (
        t.explosion_ratio * facts.first_loss
        if finite(facts.first_loss) and facts.first_loss > 0
        else math.inf
    )
    blown = next(
        (
            i
            for i, c in enumerate(cps)
            if not c.finite or (finite(c.loss) and c.loss >= ratio_limit)
        ),
        len(cps),
    )
    marks = stalled_marks(facts, t)[:blown]
    out: list[Phase] = []
    i = 0
    while i < len(marks):
        j = i
        while j < len(marks) and marks[j] == marks[i]:
            j += 1
        kind = "stall" if marks[i] and j - i >= 2 else "descent"
        if out and out[-1].kind == kind:
            out[-1] = replace(out[-1], stop=j)
        else:
            out.append(Phase(kind, i, j))
        i = j
    if blown < len(cps):
        out.append(Phase("blow_up", blown, len(cps)))
    return out


def _best(findings: Sequence[Finding]) -> Finding | None:
    present = [f for f in findings if f.present]
    if not present:
        return None
    return min(present, key=lambda f: (-round(f.confidence, 6), PRIORITY.index(f.kind)))


def _share(facts: RunFacts, start: int, end: int) -> float:
    span = facts.span_steps
    return (end - start) / span if span > 0 else 1.0


def _ended_by(kind: str, before: CheckpointFacts, after: CheckpointFacts, next_phase: str) -> str:
    if next_phase == "blow_up":
        return f"ended by the blow-up at step {after.step}"
    drop = (
        (before.loss - after.loss) / max(abs(before.loss), 1e-12)
        if finite(before.loss) and finite(after.loss)
        else math.nan
    )
    fell = f"the loss fell {percent(drop)} between step {before.step} and step {after.step}"
    lr = ""
    if (
        finite(before.lr)
        and finite(after.lr)
        and not math.isclose(before.lr, after.lr, rel_tol=1e-6)
    ):
        lr = f" (the learning rate went from {before.lr:g} to {after.lr:g})"
    if kind == "saddle_point":
        return f"escaped by step {after.step}: {fell}{lr}"
    return f"over by step {after.step}: {fell}{lr}"


def ended_episodes(
    facts: RunFacts, t: Thresholds, target_loss: float | None
) -> tuple[list[Episode], list[Phase]]:
    """The episodes of the stalled phases that ended before the last checkpoint, and all phases."""
    cps = facts.checkpoints
    all_phases = phases(facts, t)
    out: list[Episode] = []
    for k, phase in enumerate(all_phases):
        if phase.kind != "stall" or phase.stop >= len(cps):
            continue
        part = window(cps[phase.start : phase.stop], t, at_end=False)
        part = replace(part, stalled=True)  # marked stalled checkpoint by checkpoint
        ctx = Context(facts, part, t, target_loss)
        best = _best([rule.judge(ctx) for rule in EPISODIC])
        if best is None:
            continue
        after = cps[phase.stop]
        out.append(
            Episode(
                kind=best.kind,
                start_step=cps[phase.start].step,
                end_step=after.step,
                ended_by=_ended_by(best.kind, cps[phase.stop - 1], after, all_phases[k + 1].kind),
                share_of_run=_share(facts, cps[phase.start].step, after.step),
                finding=best,
            )
        )
    return out, all_phases


def present_episode(finding: Finding, rule: Rule, facts: RunFacts, last_phase: Phase) -> Episode:
    """The episode of an obstacle found at the end of the run: it began when its phase did."""
    cps = facts.checkpoints
    last = cps[-1].step
    if (rule.episodic or rule.kind == "local_minimum") and last_phase.kind == "stall":
        start = cps[last_phase.start].step
    elif rule.kind == "divergence" and finding.steps:
        start = finding.steps[0]
    elif finding.steps:
        start = min(finding.steps[0], facts.late.checkpoints[0].step)
    else:
        start = facts.late.checkpoints[0].step
    return Episode(rule.kind, start, None, None, _share(facts, start, last), finding)
