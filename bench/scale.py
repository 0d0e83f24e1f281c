"""Peak memory and overhead of the battery as the model grows: MLP, CNN and a small GPT at ~1M–25M.

    python bench/scale.py                                   # mlp cnn gpt × 1M 10M 25M
    python bench/scale.py --models gpt --sizes 1M 10M       # some rows
    python bench/scale.py --memory-budget 4GiB              # analyze(memory_budget=...)
    python bench/scale.py --compare-max-iter 100 400 --lanczos-tol 1e-300 --models mlp --sizes 10M
    python bench/scale.py --write                           # also bench/results-scale-cpu.txt
    python bench/scale.py --models gpt2 --sizes 124M --device cuda --reference-dtype float64 --write
                                                            # the GPU row: results-scale-gpu.txt

Each row builds a run in a temporary directory (a probe of the preset's number of batches of 4
samples, 3 checkpoints 5 SGD+momentum steps apart, float32 weights), then analyses it with
``obstacle.battery.analysis.analyze`` in a fresh child process (``--one RUN_DIR``), so that the
child's own high-water mark (``VmHWM``) is that row's peak RSS alone. The child also reports its
RSS right after importing torch and obstacle (the base, most of which is torch), and measures the
battery's floor on the same engine after the peak is read: its single-batch loss, gradient and
HVP passes priced at unit costs measured there (``_floor.py``, as ``battery_floor.py``); wall /
floor is the checkpoint phase's wall time over that floor (the run-level tests are not in it).
On ``--device cuda`` the row's peak is ``torch.cuda.max_memory_allocated`` (the battery's tensors
live on the device; RSS is shown beside it). ``--reference-dtype float64`` analyses each row a
second time in that precision and compares the last checkpoint's λmin and λmax, relative to
max(|λ|, 1e-2·λmax) as the issue states. ``gpt2`` is GPT-2 small's shape (12 blocks, 64-wide
heads, 50,257-token vocabulary, 1,024 positions, tied head): ``--sizes 124M`` is GPT-2 small.
"plan MiB" is the battery's own estimate of its tensors (``report["run"]["memory_plan"]``). With ``--dtype
auto`` the battery picks the precision per row (float64 up to 1M parameters on CPU).

The inputs are small on purpose (8×8 inputs, 16-token sequences): this measures memory and the
battery's overhead, not FLOPs. ``--compare-max-iter A B`` analyses each model twice and shows the
two peaks side by side: with a bounded Lanczos basis the peak must not grow with the cap. At the
presets' tolerance (and even at 1e-12) Lanczos converges within about 100 matvecs on these
models and reaches neither cap, so the comparison only shows something with a tolerance it
cannot meet (``--lanczos-tol 1e-300``: it then runs to each cap); the matvecs columns say whether
it did.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _floor import unit_costs
from _machine import describe_machine
from torch import Tensor, nn
from torch.nn import functional as F

import obstacle
from obstacle._hugepages import HUGE_PAGES_ENV
from obstacle.artifacts.layout import list_checkpoints
from obstacle.battery import presets
from obstacle.battery.analysis import analyze, load_probe
from obstacle.battery.checkpoint import load_checkpoint
from obstacle.battery.engine import Cost, LossEngine

RESULTS = Path(__file__).with_name("results-scale-cpu.txt")
RESULTS_GPU = Path(__file__).with_name("results-scale-gpu.txt")
BATCH = 4  # samples per probe batch (--batch)
IMAGE = 8  # side of the MLP's and the CNN's inputs
SEQUENCE = 16  # tokens per GPT sample
VOCAB = 256
GPT2_VOCAB = 50257
CLASSES = 10
CHECKPOINTS = 3
STEPS_BETWEEN = 5
LR = 0.01
MIB = 2**20

Batch = tuple[Tensor, Tensor]


# -- the models -------------------------------------------------------------------------------


def mlp(width: int) -> nn.Module:
    """8×8 inputs flattened, four tanh hidden layers of ``width``, 10 classes."""
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(IMAGE * IMAGE, width), nn.Tanh()]
    for _ in range(3):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, CLASSES))


def cnn(width: int) -> nn.Module:
    """3×8×8 images: a stride-2 stem to 4×4, three 3×3 convolutions of ``width`` channels, pool."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, CLASSES))


class CausalBlock(nn.Module):
    """Pre-LN transformer block: causal multi-head self-attention, then a 4× GELU MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
            for z in self.qkv(self.ln1(x)).split(d, dim=-1)
        )
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        out: Tensor = x + self.down(F.gelu(self.up(self.ln2(x))))
        return out


class TinyGPT(nn.Module):
    """Token and learned position embeddings, causal blocks, final LayerNorm, tied head."""

    def __init__(
        self,
        width: int,
        heads: int = 4,
        depth: int = 4,
        vocab: int = VOCAB,
        context: int = SEQUENCE,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(0.02 * torch.randn(context, width))
        self.blocks = nn.Sequential(*(CausalBlock(width, heads) for _ in range(depth)))
        self.ln = nn.LayerNorm(width)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.tokens(idx) + self.positions[: idx.shape[1]]
        logits: Tensor = self.ln(self.blocks(x)) @ self.tokens.weight.t()
        return logits


def gpt2_shaped(width: int) -> TinyGPT:
    """GPT-2 small's shape: 12 blocks of 64-wide heads, its 50,257-token vocabulary and 1,024
    positions, tied head; width 768 is GPT-2 small itself (124,439,808 parameters)."""
    return TinyGPT(width, heads=max(1, width // 64), depth=12, vocab=GPT2_VOCAB, context=1024)


def sequence_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Next-token cross-entropy over every position."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _image_batches(
    shape: tuple[int, ...], count: int, size: int, g: torch.Generator
) -> list[Batch]:
    teacher = torch.randn(math.prod(shape), CLASSES, generator=g)
    batches = []
    for _ in range(count):
        x = torch.randn(size, *shape, generator=g)
        batches.append((x, (x.flatten(1) @ teacher).argmax(dim=1)))
    return batches


def _token_batches(count: int, size: int, g: torch.Generator, vocab: int = VOCAB) -> list[Batch]:
    """Sequences from a noisy bigram teacher (next = perm[current] 80% of the time)."""
    perm = torch.randperm(vocab, generator=g)
    batches = []
    for _ in range(count):
        seq = torch.empty(size, SEQUENCE + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, vocab, (size,), generator=g)
        for t in range(SEQUENCE):
            noise = torch.randint(0, vocab, (size,), generator=g)
            keep = torch.rand(size, generator=g) < 0.8
            seq[:, t + 1] = torch.where(keep, perm[seq[:, t]], noise)
        batches.append((seq[:, :-1].contiguous(), seq[:, 1:].contiguous()))
    return batches


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[int], nn.Module]  # width → model
    width_step: int  # widths are multiples of this
    batches: Callable[[int, int, torch.Generator], list[Batch]]  # (count, size, generator)
    loss: Callable[[Tensor, Tensor], Tensor]


FAMILIES = {
    "mlp": Family(
        "mlp", mlp, 1, lambda k, b, g: _image_batches((IMAGE, IMAGE), k, b, g), F.cross_entropy
    ),
    "cnn": Family(
        "cnn", cnn, 1, lambda k, b, g: _image_batches((3, IMAGE, IMAGE), k, b, g), F.cross_entropy
    ),
    "gpt": Family("gpt", TinyGPT, 4, _token_batches, sequence_cross_entropy),
    # The GPU row: --models gpt2 --sizes 124M --device cuda --reference-dtype float64
    "gpt2": Family(
        "gpt2",
        gpt2_shaped,
        64,
        lambda k, b, g: _token_batches(k, b, g, GPT2_VOCAB),
        sequence_cross_entropy,
    ),
}


def count_parameters(family: Family, width: int) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in family.build(width).parameters())


def width_for(family: Family, target: int) -> int:
    """The width (a multiple of ``width_step``) whose parameter count is nearest ``target``."""
    step = family.width_step
    lo, hi = 1, 2
    while count_parameters(family, hi * step) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # count(lo·step) < target ≤ count(hi·step)
        mid = (lo + hi) // 2
        if count_parameters(family, mid * step) < target:
            lo = mid
        else:
            hi = mid
    below, above = count_parameters(family, lo * step), count_parameters(family, hi * step)
    return (lo if target - below < above - target else hi) * step


def build_run(
    run_dir: Path, family: Family, width: int, probe_batches: int, batch: int = BATCH
) -> int:
    """Probe + ``CHECKPOINTS`` checkpoints of SGD with momentum; returns the parameter count."""
    torch.manual_seed(0)
    model = family.build(width)
    batches = family.batches(probe_batches, batch, torch.Generator().manual_seed(0))
    obstacle.Probe.capture(model, family.loss, batches).save(run_dir)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for step in range(STEPS_BETWEEN * (CHECKPOINTS - 1) + 1):
        x, y = batches[step % len(batches)]
        loss = family.loss(model(x), y)
        if step % STEPS_BETWEEN == 0:
            obstacle.save_checkpoint(
                run_dir, model, step=step, lr=LR, train_loss=float(loss.detach()), optimizer=opt
            )
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return sum(p.numel() for p in model.parameters())


# -- the child: one analysis, its own peak ------------------------------------------------------


def _proc_status_mb(field: str) -> float:
    """``VmRSS``/``VmHWM`` of this process in MiB (Linux)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def analyse_once(args: argparse.Namespace) -> dict[str, Any]:
    """Analyse ``args.one`` in this process; what the parent's table needs, as JSON types."""
    torch.set_num_threads(1)
    base_mb = _proc_status_mb("VmRSS")
    # analyze takes a preset by name: the overrides replace it in this process's table.
    overrides = {
        k: v
        for k, v in (("lanczos_max_iter", args.lanczos_max_iter), ("lanczos_tol", args.lanczos_tol))
        if v is not None
    }
    chosen = dataclasses.replace(presets.get_preset(args.preset), **overrides)
    presets.PRESETS[chosen.name] = chosen

    marks: list[float] = []
    run_started: list[float] = []
    checkpoint_peak: list[float] = []

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "checkpoint":
            marks.append(time.perf_counter())
        elif phase == "run" and done == 0:
            run_started.append(time.perf_counter())
            checkpoint_peak.append(_proc_status_mb("VmHWM"))  # before the run-level tests

    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    report = analyze(
        args.one,
        preset=args.preset,
        device=args.device,
        dtype=args.dtype,
        memory_budget=args.memory_budget,
        progress=progress,
    )
    end = time.perf_counter()
    peak_mb = _proc_status_mb("VmHWM")  # before the floor below allocates anything
    rss_after_mb = _proc_status_mb("VmRSS")
    # On CUDA the battery's tensors are on the device: its peak is the caching allocator's.
    device_peak_mb = torch.cuda.max_memory_allocated() / MIB if cuda else None

    records = report["checkpoints"]
    used = Cost()
    hvps = []
    for record in records:
        costs = [d.get("cost") or {} for d in record["details"].values() if d]
        used.loss_batches += sum(c.get("loss_batch_passes", 0) for c in costs)
        used.grad_batches += sum(c.get("grad_batch_passes", 0) for c in costs)
        used.hvp_batches += sum(c.get("hvp_batch_passes", 0) for c in costs)
        hvps.append(sum(c.get("hvp_evals", 0) for c in costs))
    lanczos = [r["details"].get("lanczos") or {} for r in records]
    resolved = report["run"]["dtype"]

    steps = list_checkpoints(args.one)
    engine = LossEngine.create(
        load_probe(args.one), device=args.device, dtype=resolved, max_batches=1
    )
    theta = engine.flatten(load_checkpoint(steps[-1][1], engine.probe.manifest).state)
    units = unit_costs(engine, theta, budget_s=2.0)
    checkpoint_wall = marks[-1] - marks[0]
    return {
        "parameters": report["run"]["num_parameters"],
        "dtype": resolved,
        "preset": args.preset,
        "lanczos_max_iter": chosen.lanczos_max_iter,
        "lanczos_tol": chosen.lanczos_tol,
        "memory_budget": args.memory_budget,
        "memory_plan": report["run"].get("memory_plan"),
        "base_rss_mb": base_mb,
        "peak_rss_mb": peak_mb,
        "device": args.device,
        "device_peak_mb": device_peak_mb,
        "checkpoint_peak_rss_mb": checkpoint_peak[0],
        "rss_after_mb": rss_after_mb,
        "setup_s": marks[0] - start,
        "checkpoint_s": [b - a for a, b in itertools.pairwise(marks)],
        "run_level_s": end - run_started[0],
        "floor_s": units.floor(used),
        "wall_over_floor": checkpoint_wall / units.floor(used),
        "unit_ms": {k: 1e3 * v for k, v in dataclasses.asdict(units).items()},
        "passes": {"loss": used.loss_batches, "grad": used.grad_batches, "hvp": used.hvp_batches},
        "hvps": hvps,
        "matvecs": [lz.get("matvecs") for lz in lanczos],
        "lambda_min": lanczos[-1].get("lambda_min"),
        "lambda_max": lanczos[-1].get("lambda_max"),
    }


# -- the parent: one run and one child per row ---------------------------------------------------


def measure(
    family: Family,
    target: int,
    args: argparse.Namespace,
    children: Sequence[tuple[int | None, str]],
) -> tuple[int, list[dict[str, Any]]]:
    """Build the row's run once, then analyse it in one child per ``(lanczos_max_iter, dtype)``."""
    width = width_for(family, target)
    probe_batches = presets.get_preset(args.preset).max_batches
    results = []
    with tempfile.TemporaryDirectory(prefix=f"obstacle-scale-{family.name}-") as tmp:
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        n = build_run(run_dir, family, width, probe_batches, args.batch)
        _log(
            f"{family.name} ~{_size(target)}: width {width}, {n:,} parameters; "
            f"run built in {time.perf_counter() - start:.1f} s"
        )
        for max_iter, dtype in children:
            results.append(_child(run_dir, args, max_iter, dtype))
            _log("  " + _summary(results[-1]))
    return n, results


def _summary(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"failed after {r['wall_s']:.1f} s: {r['error']}"
    checkpoints = "/".join(f"{t:.1f}" for t in r["checkpoint_s"])
    return (
        f"child {r['wall_s']:.1f} s (lanczos_max_iter {r['lanczos_max_iter']}, tol "
        f"{r['lanczos_tol']:g}, {r['dtype']}): "
        f"setup {r['setup_s']:.1f} s, checkpoints {checkpoints} s, run level {r['run_level_s']:.1f} s; "
        f"peak RSS {r['peak_rss_mb']:.0f} MiB ({r['checkpoint_peak_rss_mb']:.0f} MiB by the end of "
        f"the checkpoints); "
        + (
            f"peak CUDA {r['device_peak_mb']:.0f} MiB; "
            if r.get("device_peak_mb") is not None
            else ""
        )
        + _plan_summary(r)
        + f"Lanczos matvecs {r['matvecs']}; unit ms "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["unit_ms"].items())
    )


def _plan_summary(r: dict[str, Any]) -> str:
    """The memory plan's choices, where it made any: basis, gradient chunk, graphs kept."""
    plan = r.get("memory_plan") or {}
    if "kept_graphs" not in plan:
        return ""
    return (
        f"plan: {plan['lanczos_max_vectors']} basis vectors, gradients {plan['batch_gradient_chunk']}"
        f" at a time, {plan['kept_graphs']}/{plan['num_batches']} graphs kept "
        f"({plan['batch_graph_bytes'] / MIB:.1f} MiB each); "
    )


def _child(
    run_dir: Path, args: argparse.Namespace, max_iter: int | None, dtype: str
) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__)), "--one", str(run_dir), "--preset", args.preset]
    command += ["--dtype", dtype, "--device", args.device]
    if max_iter is not None:
        command += ["--lanczos-max-iter", str(max_iter)]
    if args.lanczos_tol is not None:
        command += ["--lanczos-tol", repr(args.lanczos_tol)]
    if args.memory_budget is not None:
        command += ["--memory-budget", args.memory_budget]
    env = dict(os.environ)
    if args.malloc_mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    # As the `obstacle` command runs the battery: torch's large tensors on huge pages.
    env[HUGE_PAGES_ENV] = "0" if args.no_huge_pages else "1"
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        _log(done.stderr)
        last = (done.stderr.strip().splitlines() or [""])[-1]
        why = "killed: out of memory?" if done.returncode == -9 else last.replace("|", "/")
        return {"error": f"child exited {done.returncode}: {why}", "wall_s": wall}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _size(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k"


def _parse_size(text: str) -> int:
    scale = {"k": 1e3, "m": 1e6}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale != 1 else text) * scale)


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _plan_mb(r: dict[str, Any]) -> str:
    """The battery's own estimate of its tensors (``run.memory_plan``), in MiB."""
    plan = r.get("memory_plan") or {}
    return _num(plan["estimate_bytes"] / MIB if "estimate_bytes" in plan else None, ".0f")


def _table(
    head: str, rows: list[tuple[str, int, dict[str, Any]]], cells: Callable[[float, Any], list[str]]
) -> str:
    """A markdown table: model, parameters and fp32 weights MiB, then ``cells(weights, r)``
    (or the row's error across the rest)."""
    columns = head.count(" | ") + 1
    lines = [head, "|" + "---|" * columns]
    for name, n, r in rows:
        weights = 4 * n / MIB
        first = [name, f"{n:,}", f"{weights:.1f}"]
        rest = [r["error"]] + [""] * (columns - 4) if "error" in r else cells(weights, r)
        lines.append("| " + " | ".join(first + rest) + " |")
    return "\n".join(lines)


def grid_table(rows: list[tuple[str, int, dict[str, Any]]]) -> str:
    head = (
        "| model | parameters | fp32 weights MiB | dtype | base RSS MiB | peak RSS MiB | plan MiB "
        "| peak / weights | (peak − base) / weights | s / checkpoint | wall / floor | HVPs / checkpoint | λmin | λmax |"
    )
    return _table(
        head,
        rows,
        lambda weights, r: [
            r["dtype"],
            f"{r['base_rss_mb']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
            _plan_mb(r),
            f"{r['peak_rss_mb'] / weights:.1f}",
            f"{(r['peak_rss_mb'] - r['base_rss_mb']) / weights:.1f}",
            f"{_mean(r['checkpoint_s']):.1f}",
            f"{r['wall_over_floor']:.2f}",
            f"{_mean(r['hvps']):.0f}",
            _num(r["lambda_min"], ".3g"),
            _num(r["lambda_max"], ".3g"),
        ],
    )


def device_table(rows: list[tuple[str, int, dict[str, Any]]]) -> str:
    """The grid on CUDA: the peak is ``torch.cuda.max_memory_allocated`` (the battery's tensors)."""
    head = (
        "| model | parameters | fp32 weights MiB | dtype | peak CUDA MiB | plan MiB "
        "| peak CUDA / weights | peak RSS MiB | s / checkpoint | wall / floor "
        "| HVPs / checkpoint | λmin | λmax |"
    )
    return _table(
        head,
        rows,
        lambda weights, r: [
            r["dtype"],
            f"{r['device_peak_mb']:.0f}",
            _plan_mb(r),
            f"{r['device_peak_mb'] / weights:.1f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{_mean(r['checkpoint_s']):.1f}",
            f"{r['wall_over_floor']:.2f}",
            f"{_mean(r['hvps']):.0f}",
            _num(r["lambda_min"], ".4g"),
            _num(r["lambda_max"], ".4g"),
        ],
    )


def extreme_error(value: float | None, reference: float | None, lambda_max: float | None) -> float:
    """|λ − λ_ref| relative to max(|λ_ref|, 1e-2·|λmax_ref|), the issue's accuracy measure."""
    if value is None or reference is None or lambda_max is None:
        return math.nan
    return abs(value - reference) / max(abs(reference), 1e-2 * abs(lambda_max), 1e-300)


def reference_table(rows: list[tuple[str, int, list[dict[str, Any]]]]) -> str:
    """The last checkpoint's extremes in the row's precision against the reference precision's
    (the issue's bar: within 1e-3 relative to max(|λ|, 1e-2·λmax))."""
    head = (
        "| model | parameters | dtype | λmin | λmax | reference dtype | λmin | λmax "
        "| λmin error | λmax error | s / checkpoint | reference s / checkpoint |"
    )
    lines = [head, "|" + "---|" * (head.count(" | ") + 1)]
    for name, n, (r, ref) in rows:
        if "error" in r or "error" in ref:
            errors = ", ".join(x.get("error", "ok") for x in (r, ref))
            lines.append(f"| {name} | {n:,} | {errors} |" + " |" * 9)
            continue
        top = ref["lambda_max"]
        lines.append(
            f"| {name} | {n:,} | {r['dtype']} | {_num(r['lambda_min'], '.6g')} "
            f"| {_num(r['lambda_max'], '.6g')} | {ref['dtype']} | {_num(ref['lambda_min'], '.6g')} "
            f"| {_num(top, '.6g')} "
            f"| {extreme_error(r['lambda_min'], ref['lambda_min'], top):.1e} "
            f"| {extreme_error(r['lambda_max'], top, top):.1e} "
            f"| {_mean(r['checkpoint_s']):.1f} | {_mean(ref['checkpoint_s']):.1f} |"
        )
    return "\n".join(lines)


def compare_table(rows: list[tuple[str, int, list[dict[str, Any]]]], iters: list[int]) -> str:
    a, b = iters
    head = (
        f"| model | parameters | fp32 weights MiB | peak RSS MiB ({a}) | peak RSS MiB ({b}) | Δ MiB "
        f"| Lanczos matvecs / checkpoint ({a}) | ({b}) | s / checkpoint ({a}) | ({b}) |"
    )
    lines = [head, "|" + "---|" * (head.count(" | ") + 1)]
    for name, n, (ra, rb) in rows:
        weights = 4 * n / MIB
        if "error" in ra or "error" in rb:
            errors = ", ".join(r.get("error", "ok") for r in (ra, rb))
            lines.append(f"| {name} | {n:,} | {weights:.1f} | {errors} |" + " |" * 6)
            continue
        lines.append(
            f"| {name} | {n:,} | {weights:.1f} | {ra['peak_rss_mb']:.0f} | {rb['peak_rss_mb']:.0f} "
            f"| {rb['peak_rss_mb'] - ra['peak_rss_mb']:+.0f} "
            f"| {'/'.join(str(m) for m in ra['matvecs'])} | {'/'.join(str(m) for m in rb['matvecs'])} "
            f"| {_mean(ra['checkpoint_s']):.1f} | {_mean(rb['checkpoint_s']):.1f} |"
        )
    return "\n".join(lines)


def write_section(
    path: Path,
    title: str,
    body: str,
    header: str = "bench/scale.py — the battery's peak RSS and overhead against model size",
) -> None:
    """Replace the ``## title`` section of ``path`` (or append it), keeping the others."""
    sections: dict[str, str] = {}
    if path.exists():
        current = None
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            if line.startswith("## "):
                current = line[3:].strip()
                sections[current] = ""
            elif current is not None:
                sections[current] += line
    sections = {t: "\n" + s.strip() + "\n\n" for t, s in sections.items()}
    sections[title] = "\n" + body.strip() + "\n\n"
    path.write_text(
        f"# {header}\n\n" + "".join(f"## {t}\n{s}" for t, s in sections.items()).rstrip() + "\n",
        encoding="utf-8",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument(
        "--sizes", nargs="+", default=["1M", "10M", "25M"], help="target parameter counts"
    )
    parser.add_argument("--preset", default="standard", choices=list(presets.PRESETS))
    parser.add_argument(
        "--batch",
        type=int,
        default=BATCH,
        help=f"samples per probe batch (default {BATCH})",
    )
    parser.add_argument("--dtype", default="auto", help="passed to analyze (default: auto)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="passed to analyze (default: cpu); on cuda the peak is torch.cuda.max_memory_allocated",
    )
    parser.add_argument(
        "--reference-dtype",
        metavar="DTYPE",
        help="analyse each row again in this dtype (float64) and compare the last checkpoint's "
        "λmin and λmax, relative to max(|λ|, 1e-2·λmax)",
    )
    parser.add_argument(
        "--lanczos-max-iter",
        type=int,
        help="override the preset's Lanczos cap (HVPs per checkpoint)",
    )
    parser.add_argument(
        "--lanczos-tol",
        type=float,
        help="override the preset's Lanczos tolerance (a tiny one runs Lanczos to its cap)",
    )
    parser.add_argument("--memory-budget", help="passed to analyze(memory_budget=), e.g. 4GiB")
    parser.add_argument(
        "--compare-max-iter",
        nargs=2,
        type=int,
        metavar=("A", "B"),
        help="analyse each model twice, with lanczos_max_iter A and B, and compare the peaks",
    )
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        metavar="BYTES",
        help="glibc's MALLOC_MMAP_THRESHOLD_ for the children: a small one (131072) returns freed "
        "tensors to the system at once, so the peak counts live tensors, not the heap glibc keeps "
        "(slower: every large tensor is fresh pages)",
    )
    parser.add_argument(
        "--no-huge-pages",
        action="store_true",
        help=f"the children run with {HUGE_PAGES_ENV}=0: 4 KiB pages for torch's large tensors, "
        "as before the `obstacle` command asked for huge pages (obstacle._hugepages)",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"write the table to {RESULTS.name} ({RESULTS_GPU.name} with --device cuda)",
    )
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child mode: one run dir
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.one is not None:
        print(json.dumps(analyse_once(args)))
        return

    cuda = torch.device(args.device).type == "cuda"
    if args.reference_dtype and args.compare_max_iter:
        parser.error("--reference-dtype and --compare-max-iter: one comparison at a time")
    extras = [
        f"device {args.device}",
        f"preset {args.preset}",
        f"probe batch {args.batch}",
        f"dtype {args.dtype}",
    ]
    if args.lanczos_max_iter is not None and not args.compare_max_iter:
        extras.append(f"lanczos_max_iter {args.lanczos_max_iter}")
    if args.lanczos_tol is not None:
        extras.append(f"lanczos_tol {args.lanczos_tol:g}")
    if args.memory_budget is not None:
        extras.append(f"memory budget {args.memory_budget}")
    if args.malloc_mmap_threshold is not None:
        extras.append(f"MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold}")
    if args.no_huge_pages:
        extras.append(f"{HUGE_PAGES_ENV}=0")
    if args.reference_dtype:
        extras.append(f"reference dtype {args.reference_dtype}")
    machine = describe_machine(*extras)
    print(machine, flush=True)
    started = time.perf_counter()
    targets = [_parse_size(s) for s in args.sizes]
    if args.compare_max_iter:
        iters = list(args.compare_max_iter)
        pairs = []
        for name in args.models:
            for target in targets:
                children = [(i, args.dtype) for i in iters]
                n, results = measure(FAMILIES[name], target, args, children)
                pairs.append((name, n, results))
        title = (
            f"Peak RSS against lanczos_max_iter {iters[0]} and {iters[1]}: "
            f"{' '.join(args.models)} × {' '.join(args.sizes)}"
        )
        table = compare_table(pairs, iters)
    else:
        rows, pairs = [], []
        for name in args.models:
            for target in targets:
                children = [(args.lanczos_max_iter, args.dtype)]
                if args.reference_dtype:
                    children.append((args.lanczos_max_iter, args.reference_dtype))
                n, results = measure(FAMILIES[name], target, args, children)
                rows.append((name, n, results[0]))
                pairs.append((name, n, results))
        where = f" on {args.device}" if cuda else ""
        title = f"Grid{where}: {' '.join(args.models)} × {' '.join(args.sizes)}"  # one per grid
        table = device_table(rows) if cuda else grid_table(rows)
        if args.reference_dtype:
            table += "\n\nAgainst " + args.reference_dtype + ":\n\n" + reference_table(pairs)
    elapsed = time.perf_counter() - started
    print("\n" + table)
    print(f"\n{len(args.models) * len(targets)} row(s) in {elapsed / 60:.1f} min")
    if args.write:
        command = "python bench/scale.py " + shlex.join(sys.argv[1:])
        stamp = datetime.date.today().isoformat()
        body = f"{stamp}: `{command}`\n\n{machine}\n\n{table}\n"
        results = RESULTS_GPU if cuda else RESULTS
        write_section(results, title, body)
        print(f"written: {results}")


if __name__ == "__main__":
    main()
