"""`obstacle upload`, `submit`, `runs`, `analyses`, `status`, `report` and `gate`: the service (or,
for the gate, the battery in-process) from the command line.

Exit status of every command here: 0 when it did what it says, 1 only for the gate finding an
obstacle, 2 when it could not (bad input, the service unreachable or refusing, an analysis that
failed or did not finish in time).

Nothing heavy is imported here at module level (no torch, no fastapi): each command imports what
it needs in its body, so ``obstacle --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from obstacle.client._gate import (
    EXIT_UNAVAILABLE,
    OBSTACLE_LABELS,
    evaluate,
    format_outcome,
    junit_error_xml,
    junit_xml,
    markdown_error,
    markdown_summary,
    parse_labels,
)
from obstacle.errors import ObstacleError

if TYPE_CHECKING:
    from datetime import datetime

    from obstacle.client._client import Client
    from obstacle.client._models import AnalysisStatus

__all__ = ["register"]

DEFAULT_WAIT_S = 3600.0

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="OBSTACLE_URL",
        help="The service, e.g. http://localhost:8000 (default: OBSTACLE_URL).",
        show_envvar=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="OBSTACLE_TOKEN",
        help="A project token from `obstacle token create` (default: OBSTACLE_TOKEN).",
        show_envvar=False,
    ),
]
ProgressOption = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Show progress bars on stderr (default: only when stderr is a terminal).",
        show_default=False,
    ),
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for the analysis.", min=1.0)
]


def register(app: typer.Typer) -> None:
    """Add the client's commands to the `obstacle` CLI."""
    app.command("upload")(upload_command)
    app.command("submit")(submit_command)
    app.command("runs")(runs_command)
    app.command("analyses")(analyses_command)
    app.command("status")(status_command)
    app.command("report")(report_command)
    app.command("gate")(gate_command)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_UNAVAILABLE)


def _client(url: str | None, token: str | None) -> Client:
    from obstacle.client._client import Client

    if not url:
        raise _fail("no service URL: pass --url http://HOST:PORT or set OBSTACLE_URL.")
    if not token:
        raise _fail(
            "no token: pass --token or set OBSTACLE_TOKEN (an operator creates one with "
            "`obstacle token create --project NAME`)."
        )
    try:
        return Client(url, token)
    except ObstacleError as exc:
        raise _fail(str(exc)) from None


def upload_command(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run directory written by Probe.save and save_checkpoint.", show_default=False
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="The run's name (default: the directory's name).")
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Upload into this existing run id.")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    progress: ProgressOption = None,
) -> None:
    """Upload RUN_DIR's probe and checkpoints. Resumes: checkpoints already on the service with
    the same SHA-256 are skipped, so running it again after an interruption sends only the rest.

    Prints the run id. Exit status 0 on success, 2 when the upload could not be done.
    """
    from obstacle.client._upload import upload_run_dir

    with _client(url, token) as client:
        try:
            result = upload_run_dir(client, run_dir, name=name, run_id=run, progress=progress)
        except ObstacleError as exc:
            raise _fail(str(exc)) from None
    typer.echo(
        f"run {result.run.id} ({result.run.name}): uploaded {len(result.uploaded)} checkpoint(s), "
        f"skipped {len(result.skipped)} already there; probe "
        f"{'uploaded' if result.probe_uploaded else 'already there'}."
    )


def submit_command(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run directory written by Probe.save and save_checkpoint.", show_default=False
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="The run's name (default: the directory's name).")
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Upload into this existing run id.")
    ] = None,
    preset: Annotated[
        str, typer.Option(help="Cost preset of the battery: quick, standard or full.")
    ] = "standard",
    target_loss: Annotated[
        float | None,
        typer.Option(help="The loss the run must reach: a minimum above it is a local minimum."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the verdict and print it (as `status --wait`).")
    ] = False,
    timeout: TimeoutOption = DEFAULT_WAIT_S,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the ids and the report URL as one JSON line.")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    progress: ProgressOption = None,
) -> None:
    """Upload RUN_DIR (resuming, as `upload`) and start an analysis of its checkpoints.

    Prints the run id, the analysis id and the report's URL; follow the analysis with
    `obstacle status ANALYSIS_ID --wait`, save the report with `obstacle report ANALYSIS_ID`.

    Exit status: 0 when the analysis was started (with --wait: when it succeeded), 2 when the
    upload or the analysis could not be done (or, with --wait, failed or did not finish in time).
    """
    from obstacle.client._upload import upload_run_dir

    if preset not in ("quick", "standard", "full"):
        raise _fail(f"--preset must be quick, standard or full; got {preset!r}. Pass one of them.")
    with _client(url, token) as client:
        try:
            uploaded = upload_run_dir(client, run_dir, name=name, run_id=run, progress=progress)
            status = client.start_analysis(uploaded.run.id, preset=preset, target_loss=target_loss)
        except ObstacleError as exc:
            raise _fail(str(exc)) from None
        report_url = client.report_url(status.id)
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "run_id": uploaded.run.id,
                        "run_name": uploaded.run.name,
                        "analysis_id": status.id,
                        "state": status.state,
                        "report_url": report_url,
                        "uploaded": uploaded.uploaded,
                        "skipped": uploaded.skipped,
                    }
                )
            )
        else:
            typer.echo(
                f"run {uploaded.run.id} ({uploaded.run.name}): uploaded "
                f"{len(uploaded.uploaded)} checkpoint(s), skipped {len(uploaded.skipped)} already "
                "there."
            )
            typer.echo(
                f"analysis {status.id}: {status.state}, {status.progress.total} checkpoint(s), "
                f"preset {status.preset}."
            )
            typer.echo(f"report: {report_url} (once it has succeeded)")
            if not wait:
                typer.echo(f"follow it: obstacle status {status.id} --wait")
        if wait:
            _wait_and_print(client, status.id, timeout=timeout, progress=progress)


def runs_command(
    limit: Annotated[int, typer.Option(help="Show at most this many runs.", min=1, max=1000)] = 50,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON lines.")] = False,
) -> None:
    """List the project's runs, newest first: id, name, checkpoints, whether the probe is there.

    List a run's analyses with `obstacle analyses RUN_ID`. Exit status 0, or 2 when the service
    cannot be reached or refuses the token.
    """
    with _client(url, token) as client:
        try:
            runs = client.list_runs(limit=limit)
        except ObstacleError as exc:
            raise _fail(str(exc)) from None
    if as_json:
        for info in runs:
            typer.echo(
                json.dumps(
                    {
                        "id": info.id,
                        "name": info.name,
                        "num_checkpoints": info.num_checkpoints,
                        "probe": info.probe is not None,
                        "created_at": _iso(info.created_at),
                    }
                )
            )
        return
    if not runs:
        typer.echo("no runs yet: upload one with `obstacle submit RUN_DIR`.")
        return
    typer.echo(f"{'RUN ID':36}  {'CHECKPOINTS':>11}  {'PROBE':5}  {'CREATED':19}  NAME")
    for info in runs:
        typer.echo(
            f"{info.id:36}  {info.num_checkpoints:>11}  {'yes' if info.probe else 'no':5}  "
            f"{_iso(info.created_at)[:19]:19}  {info.name}"
        )


def analyses_command(
    run_id: Annotated[str, typer.Argument(help="The run id (see `obstacle runs`).")],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the analyses as JSON lines.")
    ] = False,
) -> None:
    """List a run's analyses, newest first: id, state, checkpoints done / total, preset, verdict.

    Exit status 0, or 2 when the run does not exist or the service cannot be reached.
    """
    with _client(url, token) as client:
        try:
            analyses = client.list_analyses(run_id)
        except ObstacleError as exc:
            raise _fail(str(exc)) from None
    if as_json:
        for status in analyses:
            typer.echo(json.dumps(_status_json(status)))
        return
    if not analyses:
        typer.echo(f"run {run_id} has no analyses: start one with `obstacle submit` or the gate.")
        return
    typer.echo(
        f"{'ANALYSIS ID':36}  {'STATE':10}  {'DONE':>9}  {'PRESET':8}  {'CREATED':19}  PRIMARY"
    )
    for status in analyses:
        done = f"{status.progress.done}/{status.progress.total}"
        primary = str((status.report or {}).get("verdict", {}).get("primary", "—"))
        typer.echo(
            f"{status.id:36}  {status.state:10}  {done:>9}  {status.preset:8}  "
            f"{_iso(status.created_at)[:19]:19}  {primary}"
        )


def status_command(
    analysis_id: Annotated[str, typer.Argument(help="The analysis id.", show_default=False)],
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Follow the analysis until it finishes (a progress bar), then print its verdict.",
        ),
    ] = False,
    timeout: TimeoutOption = DEFAULT_WAIT_S,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    progress: ProgressOption = None,
) -> None:
    """Print an analysis's state and progress (checkpoints done / total) and any errors; with
    --wait, follow it to the end and print the verdict.

    Exit status: 0 when the status was read (with --wait: when the analysis succeeded), 2 when the
    service cannot be reached (with --wait: also when the analysis failed or did not finish within
    --timeout).
    """
    with _client(url, token) as client:
        if wait and not as_json:
            _wait_and_print(client, analysis_id, timeout=timeout, progress=progress)
            return
        try:
            if wait:
                client.wait_analysis(analysis_id, timeout=timeout, progress=progress)
            status = client.get_analysis(analysis_id)
        except ObstacleError as exc:
            raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(_status_json(status)))
        return
    typer.echo(
        f"analysis {status.id} of run {status.run_id}: {status.state}, "
        f"{status.progress.done}/{status.progress.total} checkpoints "
        f"({status.progress.failed} failed)"
    )
    for error in status.errors:
        step = error.step
        typer.echo(f"  step {step}: {error.message}" if step is not None else f"  {error.message}")


def _wait_and_print(
    client: Client, analysis_id: str, *, timeout: float, progress: bool | None
) -> None:
    from obstacle.battery.commands import format_summary

    try:
        result = client.wait_analysis(analysis_id, timeout=timeout, progress=progress)
    except ObstacleError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"analysis {result.id} of run {result.status.run_id}: {result.status.state}")
    typer.echo(f"report: {client.report_url(result.id)}")
    typer.echo("")
    typer.echo(format_summary(result.report_json))


def _status_json(status: AnalysisStatus) -> dict[str, Any]:
    return {
        "id": status.id,
        "run_id": status.run_id,
        "state": status.state,
        "preset": status.preset,
        "done": status.progress.done,
        "total": status.progress.total,
        "failed": status.progress.failed,
        "errors": [e.model_dump() for e in status.errors],
        "primary": (status.report or {}).get("verdict", {}).get("primary"),
        "created_at": _iso(status.created_at),
    }


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def report_command(
    analysis_id: Annotated[str, typer.Argument(help="The analysis id.", show_default=False)],
    html: Annotated[
        Path | None, typer.Option("--html", help="Write the HTML report to this file.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the JSON report to this file.")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Print a finished analysis's verdict and evidence; save its HTML and JSON reports.

    Exit status 2 when the analysis has not succeeded (yet) or the service cannot be reached.
    """
    from obstacle.battery.commands import format_summary

    with _client(url, token) as client:
        try:
            result = client.result(client.get_analysis(analysis_id))
            if html is not None:
                typer.echo(f"HTML report: {result.save_html(html)}")
        except ObstacleError as exc:
            raise _fail(str(exc)) from None
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.report_json, indent=2), encoding="utf-8")
        typer.echo(f"JSON report: {json_out}")
    typer.echo(format_summary(result.report_json))


def gate_command(
    run_dir: Annotated[
        Path | None,
        typer.Argument(
            help="A run directory to upload (or, with --local, analyse here).", show_default=False
        ),
    ] = None,
    run: Annotated[
        str | None,
        typer.Option("--run", help="Analyse this run already on the service instead of RUN_DIR."),
    ] = None,
    fail_on: Annotated[
        str,
        typer.Option(help="Comma-separated obstacles that fail the gate."),
    ] = ",".join(OBSTACLE_LABELS),
    min_confidence: Annotated[
        float,
        typer.Option(help="Fail on a listed obstacle at or above this confidence.", min=0, max=1),
    ] = 0.5,
    target_loss: Annotated[
        float | None,
        typer.Option(help="The loss the run must reach: a minimum above it is a local minimum."),
    ] = None,
    preset: Annotated[
        str, typer.Option(help="Cost preset of the battery: quick, standard or full.")
    ] = "standard",
    junit_xml_path: Annotated[
        Path | None,
        typer.Option("--junit-xml", help="Write a JUnit XML file: one test case per obstacle."),
    ] = None,
    markdown: Annotated[
        Path | None,
        typer.Option("--markdown", help="Write a Markdown summary (e.g. to $GITHUB_STEP_SUMMARY)."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the full JSON report here.")
    ] = None,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Analyse in this process, on a GPU when CUDA is present; no service needed.",
        ),
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    timeout: TimeoutOption = DEFAULT_WAIT_S,
    progress: ProgressOption = None,
) -> None:
    """Fail a CI job when a training run is stuck.

    Analyses RUN_DIR (uploading it first, or in-process with --local) or the service's run --run
    ID, and exits 0 when no --fail-on obstacle is present at or above --min-confidence, 1 when
    one is (printed with its evidence), and 2 when the analysis could not be done (bad input,
    service unreachable).
    """
    try:
        labels = parse_labels(fail_on)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if preset not in ("quick", "standard", "full"):
        raise _fail(f"--preset must be quick, standard or full; got {preset!r}.")
    name = run or (run_dir.resolve().name if run_dir is not None else "run")
    try:
        gated = _gate_report(
            run_dir,
            run_id=run,
            local=local,
            url=url,
            token=token,
            preset=preset,
            target_loss=target_loss,
            timeout=timeout,
            progress=progress,
        )
    except (ObstacleError, _Usage) as exc:
        message = str(exc)
        if junit_xml_path is not None:
            junit_error_xml(name, message, junit_xml_path)
        if markdown is not None:
            _append(markdown, markdown_error(name, message))
        raise _fail(message) from None
    report = gated.report
    outcome = evaluate(
        report,
        fail_on=labels,
        min_confidence=min_confidence,
        run_name=gated.run_name,
        run_id=gated.run_id,
        analysis_id=gated.analysis_id,
        report_url=gated.report_url,
    )
    typer.echo(format_outcome(outcome))
    if junit_xml_path is not None:
        junit_xml(outcome, junit_xml_path)
    if markdown is not None:
        _append(markdown, markdown_summary(outcome))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    raise typer.Exit(outcome.exit_code)


class _Usage(Exception):
    """Arguments that cannot go together; reported like a failed analysis (exit 2)."""


@dataclass(frozen=True)
class _Gated:
    """The report the gate judges, and which run and analysis it is (ids: on the service only)."""

    report: dict[str, Any]
    run_name: str
    run_id: str | None = None
    analysis_id: str | None = None
    report_url: str | None = None


def _gate_report(
    run_dir: Path | None,
    *,
    run_id: str | None,
    local: bool,
    url: str | None,
    token: str | None,
    preset: str,
    target_loss: float | None,
    timeout: float,
    progress: bool | None,
) -> _Gated:
    if (run_dir is None) == (run_id is None):
        raise _Usage("give exactly one of RUN_DIR and --run ID.")
    if local:
        if run_dir is None:
            raise _Usage("--local analyses a RUN_DIR in-process; it cannot take --run.")
        from obstacle.battery.commands import run_analysis

        local_report = run_analysis(
            run_dir,
            target_loss=target_loss,
            preset=preset,
            device="auto",
            dtype="auto",
            thresholds={},
            progress=sys.stderr.isatty() if progress is None else progress,
        )
        return _Gated(local_report, run_name=run_dir.resolve().name)
    with _client(url, token) as client:
        if run_dir is not None:
            from obstacle.client._upload import upload_run_dir

            info = upload_run_dir(client, run_dir, progress=progress).run
        else:
            assert run_id is not None
            info = client.get_run(run_id)
        status = client.start_analysis(info.id, preset=preset, target_loss=target_loss)
        report_url = client.report_url(status.id)
        # Said before the wait, so a CI log names the analysis even if the job is cancelled.
        typer.echo(f"obstacle gate: run {info.id} ({info.name}), analysis {status.id}", err=True)
        result = client.wait_analysis(status.id, timeout=timeout, progress=progress)
        return _Gated(
            result.report_json,
            run_name=info.name,
            run_id=info.id,
            analysis_id=status.id,
            report_url=report_url,
        )


def _append(path: Path, text: str) -> None:
    # $GITHUB_STEP_SUMMARY is shared by the job's steps: append, never overwrite.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
