"""`obstacle analyze` and `obstacle demo`: the battery in-process, no server needed."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from obstacle.errors import ObstacleError

EXIT_BAD_INPUT = 2


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_command)
    app.command("demo")(demo_command)


def analyze_command(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run directory written by Probe.save and save_checkpoint.", show_default=False
        ),
    ],
    target_loss: Annotated[
        float | None,
        typer.Option(
            help="The loss the run needs to reach: a minimum above it is a local minimum."
        ),
    ] = None,
    preset: Annotated[
        str, typer.Option(help="Cost preset: quick, standard or full (adds the Hessian spectrum).")
    ] = "standard",
    device: Annotated[
        str,
        typer.Option(
            help="auto (a GPU when CUDA is present, as a worker does), cpu, cuda or cuda:N."
        ),
    ] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            help="auto (default: float64 for CPU models up to 1M parameters, float32 on GPUs and "
            "above), float64 (exact) or float32 (half the memory, faster)."
        ),
    ] = "auto",
    memory_budget: Annotated[
        str | None,
        typer.Option(
            help="Memory the battery may plan to, e.g. 8GiB or 500MB (default: what the device "
            "has free). Over it, per-batch gradients go in chunks, fewer probe batches keep "
            "their gradient graph (the others are rebuilt in each Hessian-vector product) and "
            "the Lanczos basis shrinks; if even that does not fit, the analysis stops before any "
            "work and says what to lower."
        ),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the full JSON report here.")
    ] = None,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Write the self-contained HTML report here.")
    ] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(
            help="Override a verdict threshold, NAME=VALUE (repeatable); see obstacle.battery.verdict."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run the battery on RUN_DIR and print which obstacle holds the run back, with evidence.

    Exit status: 0 when the analysis ran (whatever the verdict), 2 on bad input.
    """
    try:
        check_run_files(run_dir)
        report = run_analysis(
            run_dir,
            target_loss=target_loss,
            preset=preset,
            device=device,
            dtype=dtype,
            thresholds=_parse_thresholds(threshold or []),
            progress=progress,
            memory_budget=memory_budget,
        )
    except ObstacleError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    typer.echo(format_summary(report))
    write_outputs(report, json_out=json_out, html_out=html_out)


def check_run_files(run_dir: Path) -> None:
    """Refuse, naming the path, what the battery's readers would fail on without saying which
    file: a probe file or checkpoint that is not a regular file, a training log that is not UTF-8."""
    import codecs

    from obstacle.artifacts.layout import (
        CHECKPOINT_DIR,
        PROBE_DATA,
        PROBE_DIR,
        PROBE_PROGRAM,
        TRAIN_LOG,
    )
    from obstacle.errors import RunDirectoryError

    paths = [run_dir / PROBE_DIR / PROBE_PROGRAM, run_dir / PROBE_DIR / PROBE_DATA]
    checkpoints = run_dir / CHECKPOINT_DIR
    if checkpoints.is_dir():
        paths += sorted(checkpoints.glob("*.safetensors"))
    for path in paths:
        if path.exists() and not path.is_file():
            raise RunDirectoryError(
                f"{path}: must be a file, but it is a directory or another kind of entry. Write it "
                "with obstacle.Probe.capture(...).save(run_dir) / obstacle.save_checkpoint(...)."
            )
    log = run_dir / TRAIN_LOG
    if log.exists():
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        try:
            with log.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    decoder.decode(chunk)
                    offset += len(chunk)
                decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise RunDirectoryError(
                f"{log}: the training log must be UTF-8 text (JSON lines {{step, lr, loss}}); "
                f"byte {offset + exc.start} is not ({exc.reason}). Write it with "
                "obstacle.battery.checkpoint.append_train_log(...) or remove it."
            ) from None
        except OSError as exc:
            raise RunDirectoryError(
                f"{log}: the training log cannot be read ({exc.strerror or exc})."
            ) from None


def run_analysis(
    run_dir: Path,
    *,
    target_loss: float | None,
    preset: str,
    device: str,
    dtype: str,
    thresholds: dict[str, float],
    progress: bool,
    memory_budget: str | None = None,
) -> dict[str, Any]:
    import torch

    from obstacle.battery.analysis import analyze

    torch.set_num_threads(1)  # one intra-op thread: measured 30× collapses with 2 under load
    with _progress_bar(progress, f"analysing {run_dir.name}") as bar:
        return analyze(
            run_dir,
            preset=preset,
            target_loss=target_loss,
            device=device,
            dtype=dtype,
            thresholds=thresholds or None,
            progress=bar,
            memory_budget=memory_budget,
        )


class _Bar:
    """Checkpoints done of all, and where the current one is: its test and that test's
    Hessian-vector products (a 25M-parameter checkpoint takes minutes, most of them in Lanczos)."""

    REFRESH_S = 0.5  # products can come thousands a second on a small model

    def __init__(self, label: str) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm(total=1, desc=label, unit="ckpt", file=sys.stderr, leave=False)
        self._test = ""
        self._shown = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase == "checkpoint":
            self._tqdm.total = total
            self._tqdm.n = done
            self._test = ""
            self._tqdm.set_postfix_str("per-checkpoint tests", refresh=False)
        elif phase.startswith("test:"):
            self._test = f"{phase.removeprefix('test:').replace('_', ' ')} ({done + 1}/{total})"
            self._tqdm.set_postfix_str(self._test, refresh=False)
        elif phase == "products":
            if done > 1 and time.monotonic() - self._shown < self.REFRESH_S:
                return
            self._tqdm.set_postfix_str(f"{self._test}, Hessian-vector products: {done}", False)
        else:
            self._tqdm.set_postfix_str("run-level tests and verdict", refresh=False)
        self._shown = time.monotonic()
        self._tqdm.refresh()

    def close(self) -> None:
        self._tqdm.close()


@contextmanager
def _progress_bar(enabled: bool, label: str) -> Iterator[_Bar | None]:
    """A progress bar on stderr when asked for and stderr is a terminal, closed on the way out."""
    bar = _Bar(label) if enabled and sys.stderr.isatty() else None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


def _parse_thresholds(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            typer.echo(
                f"error: --threshold must be NAME=NUMBER, e.g. plateau_rel=0.05; got {item!r}.",
                err=True,
            )
            raise typer.Exit(EXIT_BAD_INPUT)
    return out


def write_outputs(report: dict[str, Any], *, json_out: Path | None, html_out: Path | None) -> None:
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        typer.echo(f"JSON report: {json_out}")
    if html_out is not None:
        from obstacle.battery.report import render_report

        # The HTML inlines its images; the PNGs also land beside it in <name>_files/plots/.
        files = html_out.parent / f"{html_out.stem}_files"
        files.mkdir(parents=True, exist_ok=True)
        render_report(report, files).replace(html_out)
        typer.echo(f"HTML report: {html_out} (plots as PNG in {files / 'plots'})")
        typer.echo((files / "plots" / "captions.txt").read_text(encoding="utf-8").rstrip())


def format_summary(report: dict[str, Any]) -> str:
    """The terminal summary: the verdict in one sentence, its evidence, what was ruled out."""
    verdict = report["verdict"]
    run = report.get("run", {})
    parameters = run.get("num_parameters")
    header = (
        f"Run {run.get('name', '?')}: {run.get('num_checkpoints', '?')} checkpoints, "
        f"{f'{parameters:,}' if isinstance(parameters, int) else '?'} parameters, "
        f"preset {run.get('preset', '?')}"
    )
    if run.get("device") and run.get("dtype"):  # where it ran: a GPU when present, by default
        header += f", on {run['device']} in {run['dtype']}"
    lines = [
        header,
        "",
        verdict["summary"],
    ]
    for obstacle in verdict["obstacles"]:
        lines.append("")
        lines.append(
            f"  {obstacle['kind']} (confidence {obstacle['confidence']:.2f}), shown at step "
            f"{obstacle.get('shown_at_step')}; evidence at steps {_steps(obstacle['steps'])}"
        )
        for ev in obstacle["evidence"]:
            lines.append(f"    - [{ev['test']}] {ev['statement']}")
        lines.append(f"    → {obstacle['suggestion']}")
    if verdict["ruled_out"]:
        lines.append("")
        lines.append("  Ruled out:")
        for item in verdict["ruled_out"]:
            lines.append(f"    - {item['kind']}: {item['reason']}")
    return "\n".join(lines)


def _steps(steps: list[int]) -> str:
    if len(steps) <= 6:
        return ", ".join(str(s) for s in steps) or "—"
    return f"{steps[0]}, {steps[1]}, …, {steps[-1]} ({len(steps)} checkpoints)"


def demo_command(
    out: Annotated[Path, typer.Option(help="Where to write the demo runs and reports.")] = Path(
        "obstacle-demo"
    ),
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train small models on bundled data (no network), analyse them and print the verdicts.

    One run is healthy (an MLP on scikit-learn's digits), one is stuck at a saddle point (a deep
    linear network from a tiny initialisation), one diverges (too large a learning rate).
    """
    from obstacle.battery.demo import DEMOS, run_demo

    verdicts = []
    for name in DEMOS:
        if progress and sys.stderr.isatty():
            typer.echo(f"training {name} …", err=True)
        try:
            with _progress_bar(progress, f"analysing {name}") as bar:
                run = run_demo(name, out, progress=bar)
        except ObstacleError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        typer.echo(format_summary(run.report))
        write_outputs(run.report, json_out=out / f"{name}.json", html_out=None)
        try:
            write_outputs(run.report, json_out=None, html_out=out / f"{name}.html")
        except ImportError as exc:  # the report's drawing libraries are missing: JSON only
            typer.echo(
                f"no HTML report ({exc}): pip install 'obstacle-detector[battery]'", err=True
            )
        typer.echo("")
        verdicts.append(f"{name} → {run.verdict}")
    typer.echo("Verdicts: " + ", ".join(verdicts))
