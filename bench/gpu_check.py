"""Check the battery's CUDA path against the CPU in one run: same verdicts, same numbers, timings.

For each run (the demo's healthy digits MLP and saddle network, and a ~105k-parameter MLP) the
battery runs on the CPU in float64 (the baseline), then on CUDA in float64 and float32. It prints
the verdicts, the relative differences of λmin/λmax and the probe loss against the CPU, the wall
times and the CUDA/CPU speed-up, plus the unit costs of a gradient and an HVP on each device.

    python bench/gpu_check.py [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _machine import describe_machine

from obstacle.battery import analysis
from obstacle.battery.demo import healthy_digits, saddle_deep_linear
from obstacle.errors import ProbeError


def log(*parts: object) -> None:
    print(*parts, flush=True)


def rel(a: Any, b: Any) -> float:
    if a is None or b is None:
        return float("nan")
    return abs(a - b) / max(abs(b), 1e-300)


def mlp_100k(run_dir: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from battery_floor import build_run

    build_run(run_dir, 290, 4)


def ensure_probe(run_dir: Path) -> None:
    """Load the probe through the validator. If this torch writes an archive the validator does
    not know (it is strict about torch's schema), say so, then load this run's own just-written
    file directly so the CUDA path is still checked. Never done with uploads."""
    try:
        analysis.load_probe(run_dir)
    except ProbeError as exc:
        log(f"  NOTE: the safe loader rejected this torch's own archive: {str(exc)[:400]}")
        from safetensors.torch import load_file

        from obstacle.artifacts.manifest import read_manifest
        from obstacle.battery.probe import Probe, _split_data

        manifest = read_manifest(run_dir / "probe" / "manifest.json")
        program = torch.export.load(run_dir / "probe" / "program.pt2")  # our own file, this run
        batches, validation = _split_data(
            load_file(str(run_dir / "probe" / "data.safetensors")), manifest, run_dir
        )
        key = (str(run_dir.resolve()), manifest.content_hash)
        analysis._PROBES[key] = Probe(
            program=program, batches=batches, validation=validation, manifest=manifest
        )


def quantity_smoke(run_dir: Path) -> None:
    """Every quantity of the full preset once on CUDA, each failure reported with its location."""
    import traceback

    from obstacle.battery.presets import get_preset

    preset = get_preset("full")
    for dtype in ("float64", "float32"):
        session = analysis._Session(run_dir, preset, "cuda", dtype)
        ctx = analysis._context(session, max(session.paths), {})
        for quantity in analysis._quantities(preset):
            try:
                quantity(ctx)
                log(f"  smoke cuda {dtype} {quantity.name}: ok")
            except Exception as exc:
                frames = traceback.extract_tb(exc.__traceback__)
                where = "; ".join(
                    f"{Path(f.filename).name}:{f.lineno}"
                    for f in frames
                    if "obstacle" in f.filename
                )
                log(
                    f"  smoke cuda {dtype} {quantity.name}: FAILED {type(exc).__name__}: {str(exc)[:200]} at {where}"
                )


def memory_checks(run_dir: Path) -> None:
    """On CUDA: the memory budget counts the caching allocator's unused blocks as free, and
    LiveBytes' count of one product's temporaries against the allocator's own peak."""
    from obstacle.battery.memory import available_memory

    device = torch.device("cuda")
    before = available_memory(device) or 0
    block = torch.empty(2**30, dtype=torch.uint8, device=device)
    del block  # cached by torch's allocator, not returned to the driver
    after = available_memory(device) or 0
    log(
        f"  memory: available before {before / 2**20:.0f} MiB, after a freed 1 GiB block "
        f"{after / 2**20:.0f} MiB (difference {(before - after) / 2**20:+.0f} MiB; 0 expected)"
    )
    s = analysis._Session(run_dir, analysis.get_preset("standard"), "cuda", "float32")
    _, theta = s.theta(max(s.paths))
    counted = s.engine.operator_memory(theta).product_bytes
    op = s.engine.hessian_operator(theta, 0)
    v, out = torch.randn_like(theta), torch.zeros_like(theta)
    op(v, out=out)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    op(v, out=out)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    log(
        f"  memory: one product's temporaries, LiveBytes {counted / 2**20:.2f} MiB, CUDA "
        f"allocator peak {peak / 2**20:.2f} MiB (ratio {counted / max(peak, 1):.2f})"
    )


def timeit(fn: Any, sync: Any, n: int = 10) -> float:
    """Mean seconds per call of ``fn`` after one warm-up, synchronising the device."""
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    log(describe_machine())
    runs = {
        "healthy-digits-mlp": healthy_digits,
        "saddle-linear": saddle_deep_linear,
        "mlp-105k": mlp_100k,
    }
    base = Path(args.out or tempfile.mkdtemp())
    for name, build in runs.items():
        run_dir = base / name
        build(run_dir)
        ensure_probe(run_dir)
        if torch.cuda.is_available():
            quantity_smoke(run_dir)
        reports = {}
        for device, dtype in (("cpu", "float64"), ("cuda", "float64"), ("cuda", "float32")):
            if device == "cuda" and not torch.cuda.is_available():
                continue
            start = time.perf_counter()
            try:
                report = analysis.analyze(run_dir, preset="standard", device=device, dtype=dtype)
            except Exception as exc:  # report every failure of the CUDA path, then go on
                log(f"  {name} {device} {dtype}: FAILED {type(exc).__name__}: {exc}")
                continue
            if device == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
            reports[(device, dtype)] = (report, wall)
        cpu_report, cpu_wall = reports[("cpu", "float64")]
        log(
            f"{name}: {cpu_report['run']['num_parameters']} parameters, {len(cpu_report['checkpoints'])} checkpoints"
        )
        for (device, dtype), (report, wall) in reports.items():
            last, ref = report["checkpoints"][-1], cpu_report["checkpoints"][-1]
            log(
                f"  {device:4s} {dtype:7s} verdict={report['verdict']['primary']:18s} wall={wall:7.2f}s "
                f"speed-up vs CPU={cpu_wall / wall:5.2f}x  rel.diff loss={rel(last['loss'], ref['loss']):.1e} "
                f"λmin={rel(last['lambda_min'], ref['lambda_min']):.1e} λmax={rel(last['lambda_max'], ref['lambda_max']):.1e}"
            )
    # Unit costs on the largest model.
    session_runs = base / "mlp-105k"
    if torch.cuda.is_available() and (session_runs / "probe").exists():
        memory_checks(session_runs)
    if (session_runs / "probe").exists():
        for device, dtype in (("cpu", "float64"), ("cuda", "float64"), ("cuda", "float32")):
            if device == "cuda" and not torch.cuda.is_available():
                continue
            s = analysis._Session(session_runs, analysis.get_preset("standard"), device, dtype)
            _, theta = s.theta(max(s.paths))
            op = s.engine.hessian_operator(theta)
            v = torch.randn_like(theta)
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

            tg = timeit(lambda: s.engine.loss_and_grad(theta), sync)  # noqa: B023 - called at once
            th = timeit(lambda: op(v), sync)  # noqa: B023 - called at once
            log(
                f"  unit costs {device} {dtype}: gradient {tg * 1e3:.2f} ms, HVP {th * 1e3:.2f} ms (ratio {th / tg:.2f})"
            )


if __name__ == "__main__":
    main()
