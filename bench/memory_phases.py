"""Where the battery's peak RSS comes from: the high-water mark of each phase of one analysis.

    python bench/memory_phases.py --model mlp --size 4M
    python bench/memory_phases.py --model mlp --size 25M --dtype float32

Builds ``bench/scale.py``'s run for one model (a probe and 3 checkpoints), then analyses it with
the ``standard`` preset in this process. Before each phase (binding the probe, each quantity of a
checkpoint, each Lanczos expansion and restart) the kernel's peak-RSS counter is reset
(``/proc/self/clear_refs`` ← 5, Linux), and after it the peak is read (``VmHWM``): the table gives
each phase's peak over the whole run, in MiB, over the float32 weights, and in vectors of the model's size (in the analysis dtype)
above the RSS the
process had before the analysis (torch and obstacle imported). ``bench/scale.py`` gives the
headline peak / weights; this says which phase sets it and by how much.
"""

from __future__ import annotations

import argparse
import functools
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import scale
import torch
from _machine import describe_machine

from obstacle.battery import analysis
from obstacle.battery import lanczos as lanczos_module

MIB = 2**20
_QUANTITIES = (
    "loss.LossQuantity",
    "gradient.GradientNorm",
    "gradient_noise.GradientNoise",
    "curvature.DirectionalCurvature",
    "simulated_steps.SimulatedSteps",
    "negative_curvature.NegativeCurvature",
)


def _status_mib(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


class PhasePeaks:
    """Wraps callables so that each call's peak RSS is credited to its phase (nested: both)."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self._stack: list[str] = []

    def _credit(self, name: str, peak: float) -> None:
        self.peaks[name] = max(self.peaks.get(name, 0.0), peak)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            if self._stack:  # the outer phase reached this much before the inner one began
                self._credit(self._stack[-1], _status_mib("VmHWM"))
            self._stack.append(name)
            _reset_peak()
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                self._credit(name, _status_mib("VmHWM"))
                _reset_peak()

        return inner


def instrument(peaks: PhasePeaks) -> None:
    for dotted in _QUANTITIES:
        module_name, class_name = dotted.split(".")
        module = __import__(f"obstacle.battery.quantities.{module_name}", fromlist=[class_name])
        cls = getattr(module, class_name)
        cls.__call__ = peaks.wrap(class_name, cls.__call__)
    krylov = lanczos_module._KrylovSchur
    krylov.expand = peaks.wrap("  Lanczos expand", krylov.expand)  # type: ignore[method-assign]
    krylov.restart = peaks.wrap("  Lanczos restart", krylov.restart)  # type: ignore[method-assign]
    session = analysis._Session
    session.__init__ = peaks.wrap("bind probe + θ₀", session.__init__)  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(scale.FAMILIES), default="mlp")
    parser.add_argument("--size", default="4M", help="parameters, e.g. 4M, 25M (default 4M)")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(1)
    family = scale.FAMILIES[args.model]
    target = scale._parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="obstacle-phases-") as tmp:
        run_dir = Path(tmp) / "run"
        n = scale.build_run(run_dir, family, scale.width_for(family, target), 8)
        peaks = PhasePeaks()
        instrument(peaks)
        base = _status_mib("VmRSS")
        start = time.perf_counter()
        report = analysis.analyze(run_dir, preset="standard", dtype=args.dtype)
        wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    vector = n * 4 / MIB
    plan = report["run"].get("memory_plan") or {}
    lanczos = [r["details"].get("lanczos") or {} for r in report["checkpoints"]]
    print(describe_machine(f"{args.model} {n:,} parameters, analysed in {report['run']['dtype']}"))
    print(
        f"float32 weights {vector:.1f} MiB; RSS before the analysis {base:.0f} MiB; "
        f"plan {plan.get('estimate_bytes', 0) / MIB:.0f} MiB "
        f"({plan.get('lanczos_max_vectors')} Lanczos vectors, per-batch gradient chunk "
        f"{plan.get('batch_gradient_chunk')})"
    )
    print(
        f"{'phase':28s} {'peak MiB':>9s} {'/ weights':>10s} {'above base (vectors in the analysis dtype)':>44s}"
    )
    analysed = plan.get("vector_bytes", n * 4) / MIB  # a vector in the analysis dtype
    for name, peak in sorted(peaks.peaks.items(), key=lambda kv: -kv[1]):
        above = (peak - base) / analysed
        print(f"{name:28s} {peak:9.0f} {peak / vector:9.1f}× {above:44.1f}")
    print(
        f"HVPs per checkpoint {[lz.get('matvecs') for lz in lanczos]}, restarts "
        f"{[lz.get('restarts') for lz in lanczos]}; wall {wall:.0f} s, CPU user "
        f"{usage.ru_utime:.0f} s, system {usage.ru_stime:.0f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
