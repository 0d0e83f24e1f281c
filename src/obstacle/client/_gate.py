"""The CI gate's decision and its outputs (terminal text, JUnit XML, Markdown). Torch-free.

A report's verdict lists present obstacles (``obstacles``, with evidence) and the others
(``ruled_out``, with a reason); each carries a confidence. The gate fails on a listed obstacle
whose confidence is at least ``min_confidence``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obstacle.labels import OBSTACLE_LABELS

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "OBSTACLE_LABELS",
    "Case",
    "GateOutcome",
    "case_name",
    "evaluate",
    "format_outcome",
    "junit_error_xml",
    "junit_xml",
    "markdown_error",
    "markdown_summary",
    "parse_labels",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNAVAILABLE = 2


def parse_labels(text: str) -> list[str]:
    """``"divergence, saddle_point"`` → the labels, or ValueError naming the unknown ones."""
    labels = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [label for label in labels if label not in OBSTACLE_LABELS]
    if unknown or not labels:
        raise ValueError(
            f"--fail-on must be a comma-separated list of {', '.join(OBSTACLE_LABELS)}; "
            f"got {text!r}{_unknown(unknown)}."
        )
    return list(dict.fromkeys(labels))


def _unknown(labels: list[str]) -> str:
    return f" (unknown: {', '.join(labels)})" if labels else ""


@dataclass(frozen=True)
class Case:
    """One obstacle the gate considered."""

    label: str
    failed: bool
    confidence: float | None
    detail: str
    evidence: list[dict[str, Any]] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    suggestion: str = ""


@dataclass(frozen=True)
class GateOutcome:
    run_name: str
    primary: str
    summary: str
    min_confidence: float
    cases: list[Case]
    run_id: str | None = None
    analysis_id: str | None = None
    report_url: str | None = None

    @property
    def failures(self) -> list[Case]:
        return [case for case in self.cases if case.failed]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failures else EXIT_OK


def evaluate(
    report: dict[str, Any],
    *,
    fail_on: Sequence[str],
    min_confidence: float,
    run_name: str | None = None,
    run_id: str | None = None,
    analysis_id: str | None = None,
    report_url: str | None = None,
) -> GateOutcome:
    """The gate's decision on ``report`` for the obstacles ``fail_on``.

    ``run_name`` names the run in every output (default: the report's own, which on the service is
    the name of a directory there); the ids and the report's URL are printed when given.
    """
    verdict = report["verdict"]
    present = {o["kind"]: o for o in verdict.get("obstacles") or []}
    ruled_out = {r["kind"]: r for r in verdict.get("ruled_out") or []}
    cases = []
    for label in fail_on:
        if label in present:
            found = present[label]
            confidence = float(found["confidence"])
            failed = confidence >= min_confidence
            relation = "≥" if failed else "<"
            detail = (
                f"{label} present with confidence {confidence:.2f} "
                f"({relation} {min_confidence:.2f})"
            )
            cases.append(
                Case(
                    label,
                    failed,
                    confidence,
                    detail,
                    evidence=list(found.get("evidence") or []),
                    steps=[int(s) for s in found.get("steps") or []],
                    suggestion=str(found.get("suggestion") or ""),
                )
            )
        elif label in ruled_out:
            item = ruled_out[label]
            raw = item.get("confidence")
            level = None if raw is None else float(raw)
            failed = level is not None and level >= min_confidence
            reason = str(item.get("reason") or "no supporting evidence")
            note = "" if level is None else f" (confidence {level:.2f})"
            cases.append(Case(label, failed, level, f"ruled out{note}: {reason}"))
        else:
            cases.append(Case(label, False, None, "not assessed by this analysis"))
    run = report.get("run") or {}
    return GateOutcome(
        run_name=run_name or str(run.get("name") or "run"),
        primary=str(verdict.get("primary", "?")),
        summary=str(verdict.get("summary", "")),
        min_confidence=min_confidence,
        cases=cases,
        run_id=run_id,
        analysis_id=analysis_id,
        report_url=report_url,
    )


def _identity_lines(outcome: GateOutcome) -> list[str]:
    """Which run and analysis the gate judged, and where its report is."""
    lines = [f"run: {outcome.run_name}" + (f" ({outcome.run_id})" if outcome.run_id else "")]
    if outcome.analysis_id:
        lines.append(f"analysis: {outcome.analysis_id}")
    if outcome.report_url:
        lines.append(f"report: {outcome.report_url}")
    return lines


def _evidence_lines(case: Case) -> list[str]:
    lines = [f"[{ev.get('test', '?')}] {ev.get('statement', '')}" for ev in case.evidence]
    if case.steps:
        lines.append(f"at steps {', '.join(str(s) for s in case.steps[:12])}")
    if case.suggestion:
        lines.append(f"suggestion: {case.suggestion}")
    return lines


def format_outcome(outcome: GateOutcome) -> str:
    """What the gate prints: the run, analysis and report, the verdict, then each failing obstacle
    with its evidence."""
    lines = [*_identity_lines(outcome), "", outcome.summary, ""]
    if outcome.failures:
        lines.append(
            f"FAILED: {len(outcome.failures)} obstacle(s) at or above confidence "
            f"{outcome.min_confidence:.2f}:"
        )
        for case in outcome.failures:
            lines.append(f"  {case.detail}")
            lines.extend(f"    - {line}" for line in _evidence_lines(case))
    else:
        lines.append(
            f"PASSED: none of {', '.join(c.label for c in outcome.cases)} is present at or above "
            f"confidence {outcome.min_confidence:.2f}."
        )
    return "\n".join(lines)


def _suite(name: str, tests: int, failures: int, errors: int) -> tuple[ET.Element, ET.Element]:
    root = ET.Element("testsuites", name="obstacle gate", tests=str(tests), failures=str(failures))
    root.set("errors", str(errors))
    suite = ET.SubElement(
        root,
        "testsuite",
        name=f"obstacle gate: {name}",
        tests=str(tests),
        failures=str(failures),
        errors=str(errors),
        skipped="0",
    )
    return root, suite


def _write(root: ET.Element, path: Path) -> Path:
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def case_name(run_name: str, label: str) -> str:
    """A JUnit test case's name: the run, then what was checked (``my-run: divergence``)."""
    return f"{run_name}: {label}"


def _classname(run_name: str) -> str:
    # CI viewers split a classname at dots into packages; a run named "lr0.1" stays one level.
    return "obstacle.gate." + run_name.replace(".", "_")


def junit_xml(outcome: GateOutcome, path: Path) -> Path:
    """One ``testcase`` per obstacle considered; a ``failure`` (with the evidence) per failing one."""
    root, suite = _suite(outcome.run_name, len(outcome.cases), len(outcome.failures), 0)
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="primary", value=outcome.primary)
    ET.SubElement(props, "property", name="min_confidence", value=f"{outcome.min_confidence:g}")
    for key in ("run_id", "analysis_id", "report_url"):
        value = getattr(outcome, key)
        if value:
            ET.SubElement(props, "property", name=key, value=value)
    for case in outcome.cases:
        element = ET.SubElement(
            suite,
            "testcase",
            classname=_classname(outcome.run_name),
            name=case_name(outcome.run_name, case.label),
        )
        element.set("time", "0")
        if case.failed:
            failure = ET.SubElement(element, "failure", message=case.detail, type=case.label)
            failure.text = "\n".join([case.detail, *_evidence_lines(case)])
        else:
            ET.SubElement(element, "system-out").text = case.detail
    return _write(root, path)


def junit_error_xml(run_name: str, message: str, path: Path) -> Path:
    """The JUnit file when the analysis could not be done: one ``analysis`` case in error."""
    root, suite = _suite(run_name, 1, 0, 1)
    element = ET.SubElement(
        suite,
        "testcase",
        classname=_classname(run_name),
        name=case_name(run_name, "analysis"),
    )
    ET.SubElement(
        element, "error", message=message.splitlines()[0][:500], type="ObstacleError"
    ).text = message
    return _write(root, path)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(outcome: GateOutcome) -> str:
    """A Markdown summary for ``$GITHUB_STEP_SUMMARY``."""
    status = "❌ failed" if outcome.failures else "✅ passed"
    lines = [
        f"## obstacle gate: {status} — {outcome.run_name}",
        "",
        *[f"- {_cell(line)}" for line in _identity_lines(outcome)],
        "",
        f"**Verdict:** {_cell(outcome.summary)}",
        "",
        "| Obstacle | Result | Confidence | Detail |",
        "|---|---|---|---|",
    ]
    for case in outcome.cases:
        confidence = "—" if case.confidence is None else f"{case.confidence:.2f}"
        result = "❌ fail" if case.failed else "✅ pass"
        lines.append(f"| `{case.label}` | {result} | {confidence} | {_cell(case.detail)} |")
    for case in outcome.failures:
        lines += ["", f"### `{case.label}`", ""]
        lines += [f"- {_cell(line)}" for line in _evidence_lines(case)]
    lines += ["", f"Fails on confidence ≥ {outcome.min_confidence:.2f}.", ""]
    return "\n".join(lines)


def markdown_error(run_name: str, message: str) -> str:
    return f"## obstacle gate: ⚠️ no verdict — {run_name}\n\nThe analysis could not be done:\n\n```\n{message}\n```\n"
