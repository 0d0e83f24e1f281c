"""The verdict's accuracy on the scenario suite: a confusion matrix for the calibration set and one for
the held-out set.

    python bench/verdict_accuracy.py                       # both sets
    python bench/verdict_accuracy.py --set held-out        # only the runs never tuned on
    python bench/verdict_accuracy.py --set calibration --limit 3   # a smoke run
    python bench/verdict_accuracy.py --write               # also save results-verdict-accuracy-cpu.txt

Every run of ``tests/scenarios/builders`` (CALIBRATION: seed 0 of the calibration architectures,
the only runs thresholds may be tuned on; HELD_OUT: seeds 1 and 2 of those and seeds 0–2 of
architectures found only there) is trained, then analysed as a user would
(``obstacle.battery.analysis.analyze``, standard preset, float64 on CPU), in a pool of two worker
processes on one torch thread each. Printed per set: the confusion matrix (rows: the true label,
columns: the verdict's primary; "error" when the analysis raised), the accuracy, every
misclassified run with its summary line, obstacle runs called healthy, and the episode check (each
expected episode found with overlapping steps and the same "still present"). Not a test: run it and
read it; ``tests/scenarios/test_verdicts.py`` runs the calibration set in CI.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _machine import describe_machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results-verdict-accuracy-cpu.txt"
WORKERS = 2
ERROR = "error"

sys.path.insert(0, str(ROOT / "tests"))

from scenarios.builders import CALIBRATION, HELD_OUT, LABELS, SCENARIOS  # noqa: E402

SETS = {"calibration": CALIBRATION, "held-out": HELD_OUT}


@dataclass
class Outcome:
    """One run: what it is, what the verdict said, whether its episodes were found, and its cost."""

    name: str
    seed: int
    label: str
    predicted: str
    confidence: float | None
    summary: str
    episodes_expected: list[str] = field(default_factory=list)
    episodes_missed: list[str] = field(default_factory=list)
    build_s: float = 0.0
    analyze_s: float = 0.0

    @property
    def run(self) -> str:
        return f"{self.name}@{self.seed}"


def _start_worker() -> None:
    torch.set_num_threads(1)


def evaluate(run: tuple[str, int]) -> Outcome:
    """Train one scenario run, analyse it, and compare the verdict with what the run is."""
    from obstacle.battery.analysis import analyze

    name, seed = run
    with tempfile.TemporaryDirectory(prefix="obstacle-accuracy-") as tmp:
        start = time.perf_counter()
        info = SCENARIOS[name](Path(tmp) / "run", seed)
        built = time.perf_counter()
        expected = [_describe(e.kind, e.start_step, e.end_step) for e in info.episodes]
        try:
            report = analyze(Path(tmp) / "run", preset="standard", target_loss=info.target_loss)
        except Exception as exc:  # a crash is a result here, not a reason to stop the bench
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return Outcome(
                name,
                seed,
                info.label,
                ERROR,
                None,
                f"{type(exc).__name__}: {message}",
                episodes_expected=expected,
                episodes_missed=expected,
                build_s=built - start,
                analyze_s=time.perf_counter() - built,
            )
        analysed = time.perf_counter()
    verdict = report["verdict"]
    found = verdict.get("episodes", [])
    missed = [
        text
        for e, text in zip(info.episodes, expected, strict=True)
        if not e.found_in(found, info.steps[-1])
    ]
    return Outcome(
        name,
        seed,
        info.label,
        str(verdict["primary"]),
        float(verdict["confidence"]),
        str(verdict["summary"]),
        episodes_expected=expected,
        episodes_missed=missed,
        build_s=built - start,
        analyze_s=analysed - built,
    )


def _describe(kind: str, start: int, end: int | None) -> str:
    return f"{kind} {start}–{'end' if end is None else end}"


def report(title: str, outcomes: list[Outcome]) -> list[str]:
    """The lines printed for one set."""
    lines = [f"\n== {title}: {len(outcomes)} runs"]
    columns = [*LABELS, ERROR]
    counts = Counter((o.label, o.predicted) for o in outcomes)
    width = max(len(c) for c in columns) + 1
    corner = "true \\ predicted"
    lines.append(f"{corner:>{width}s} " + " ".join(f"{c[:9]:>9s}" for c in columns) + "   total")
    for label in LABELS:
        row = [counts[(label, c)] for c in columns]
        if sum(row):
            cells = " ".join(f"{n:9d}" if n else f"{'.':>9s}" for n in row)
            lines.append(f"{label:>{width}s} {cells}   {sum(row):5d}")
    right = sum(o.predicted == o.label for o in outcomes)
    lines.append(f"accuracy: {right}/{len(outcomes)} = {right / max(len(outcomes), 1):.1%}")
    called_healthy = [o for o in outcomes if o.label != "healthy" and o.predicted == "healthy"]
    lines.append(f"obstacle runs called healthy: {len(called_healthy)}")
    wrong = [o for o in outcomes if o.predicted != o.label]
    if wrong:
        lines.append("misclassified:")
        lines += [f"  {o.run}: {o.label} called {o.predicted} — {o.summary}" for o in wrong]
    timed = [o for o in outcomes if o.episodes_expected]
    if timed:
        found = sum(len(o.episodes_expected) - len(o.episodes_missed) for o in timed)
        total = sum(len(o.episodes_expected) for o in timed)
        lines.append(f"episodes found: {found}/{total} in {len(timed)} runs with a timeline")
        for o in timed:
            status = (
                "all found" if not o.episodes_missed else "missed " + "; ".join(o.episodes_missed)
            )
            lines.append(f"  {o.run}: expected {'; '.join(o.episodes_expected)} — {status}")
    lines.append("per run (seconds to train and write the run, seconds to analyse it):")
    lines += [
        f"  {o.run:<52s} {o.label:>18s} → {o.predicted:<18s} "
        f"{'' if o.confidence is None else f'{o.confidence:.2f}':>5s} "
        f"{o.build_s:6.1f} {o.analyze_s:6.1f}"
        for o in outcomes
    ]
    return lines


def run_all(runs: list[tuple[str, int]]) -> Iterable[Outcome]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=context, initializer=_start_worker) as pool:
        yield from pool.map(evaluate, runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", choices=[*SETS, "all"], default="all")
    parser.add_argument("--limit", type=int, default=None, help="only the first N runs of each set")
    parser.add_argument("--write", action="store_true", help=f"also write {RESULTS.name}")
    args = parser.parse_args()
    chosen = list(SETS) if args.set == "all" else [args.set]
    runs = {s: SETS[s][: args.limit] for s in chosen}

    torch.set_num_threads(1)
    lines = [
        describe_machine(
            f"{WORKERS} worker processes, 1 torch thread each",
            "preset standard, float64",
        )
    ]
    print(lines[0], flush=True)
    start = time.perf_counter()
    every = [run for s in chosen for run in runs[s]]
    by_run = {(o.name, o.seed): o for o in run_all(every)}
    for s in chosen:
        block = report(s, [by_run[run] for run in runs[s]])
        print("\n".join(block), flush=True)
        lines += block
    tail = f"\n{len(every)} runs in {time.perf_counter() - start:.0f} s wall"
    print(tail)
    lines.append(tail)
    if args.write:
        RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
