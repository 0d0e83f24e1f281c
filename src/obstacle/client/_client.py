"""``Client``: the service's HTTP API on httpx, with retries, timeouts and typed results."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from obstacle.client._body import FileBody
from obstacle.client._exceptions import map_httpx_exceptions, service_error, translate
from obstacle.client._models import (
    AnalysisResult,
    AnalysisStatus,
    CheckpointInfo,
    RunInfo,
)
from obstacle.client._progress import progress_bar
from obstacle.errors import ComputeError, ParameterError, ServiceTimeoutError, TransportError

if TYPE_CHECKING:
    from obstacle.battery.probe import Probe
    from obstacle.client._run import Run

__all__ = ["DEFAULT_TIMEOUT", "Client", "UploadData"]

DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
RETRY_STATUSES = frozenset({500, 502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
PRESETS = ("quick", "standard", "full")

#: What an upload takes: bytes already in memory, or a file (a path, or a ``FileBody``)
#: that is sent from disk in chunks.
UploadData = bytes | os.PathLike[str] | FileBody


class Client:
    """A connection to an obstacle service.

    ``Client("http://localhost:8000", token)`` — every call raises only ``obstacle`` errors:
    ``ConnectError``/``ServiceTimeoutError`` when the service cannot be reached in time (after
    ``retries`` retries with exponential backoff for idempotent calls), ``ServiceError`` with
    the service's RFC 9457 problem otherwise. Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url or not url.startswith(("http://", "https://")):
            raise ParameterError(
                f"The 'url' parameter must be an http:// or https:// URL. Got {url!r} instead. "
                "Pass the service's address, e.g. http://localhost:8000 (or set OBSTACLE_URL)."
            )
        if not token:
            raise ParameterError(
                "The 'token' parameter must be a non-empty project token. Got an empty one instead. "
                "An operator creates one with `obstacle token create --project NAME`."
            )
        if retries < 0:
            raise ParameterError(f"The 'retries' parameter must be an int >= 0. Got {retries}.")
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        with map_httpx_exceptions("creating the HTTP client"):
            self._http = httpx.Client(
                base_url=self.url,
                headers={"Authorization": f"Bearer {token}", "User-Agent": "obstacle-client"},
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                transport=transport,
            )

    # --- plumbing -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | FileBody | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request, retrying transient failures; raise on a 4xx/5xx answer.

        A ``FileBody`` is streamed from its file, which every try opens again from the start.
        """
        what = f"{method} {path}"
        attempts = self.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._http.request(
                    method,
                    path,
                    json=json,
                    content=content.chunks() if isinstance(content, FileBody) else content,
                    params={k: v for k, v in (params or {}).items() if v is not None},
                    headers=headers,
                )
            except httpx.HTTPError as exc:
                # A refused connection never reached the service: safe to retry even a POST.
                retryable = method in IDEMPOTENT or isinstance(exc, httpx.ConnectError)
                if isinstance(exc, httpx.TransportError) and retryable and not last:
                    self._sleep(attempt)
                    continue
                raise translate(exc, what=what) from None
            except (httpx.InvalidURL, httpx.StreamError, httpx.CookieConflict) as exc:
                raise translate(exc, what=what) from None
            if response.status_code in RETRY_STATUSES and method in IDEMPOTENT and not last:
                self._sleep(attempt)
                continue
            if response.is_error:
                raise service_error(response, what=what)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _sleep(self, attempt: int) -> None:
        delay = min(self.backoff * 2**attempt, 10.0)
        time.sleep(delay * (0.5 + random.random() / 2))

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise TransportError(
                f"{method} {path}: the service answered {response.status_code} with a body that is "
                f"not JSON ({response.text[:200]!r}). Check that the URL points at an obstacle service."
            ) from None

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- runs -----------------------------------------------------------------------------

    def create_run(
        self,
        name: str,
        *,
        probe: Probe | str | Path | None = None,
        meta: Mapping[str, Any] | None = None,
        queue_size: int = 4,
    ) -> Run:
        """Create a run (and upload its probe, if given) and return a :class:`Run` handle.

        ``probe`` is a captured ``obstacle.Probe``, a run directory holding ``probe/``, or the
        ``probe/`` directory itself. ``queue_size`` bounds the checkpoints waiting for upload.
        """
        from obstacle.client._run import Run

        info = RunInfo.from_json(
            self._json("POST", "/v1/runs", json={"name": name, "meta": dict(meta or {})})
        )
        run = Run(self, info, queue_size=queue_size)
        if probe is not None:
            run.upload_probe(probe)
        return run

    def run(self, run_id: str, *, queue_size: int = 4) -> Run:
        """A handle on an existing run."""
        from obstacle.client._run import Run

        return Run(self, self.get_run(run_id), queue_size=queue_size)

    def get_run(self, run_id: str) -> RunInfo:
        return RunInfo.from_json(self._json("GET", f"/v1/runs/{run_id}"))

    def list_runs(self, *, offset: int = 0, limit: int = 100) -> list[RunInfo]:
        """The project's runs, newest first (one page)."""
        body = self._json("GET", "/v1/runs", params={"offset": offset, "limit": limit})
        return [RunInfo.from_json(r) for r in body["data"]]

    def delete_run(self, run_id: str) -> None:
        self.request("DELETE", f"/v1/runs/{run_id}")

    def put_probe(self, run_id: str, bundle: UploadData) -> bool:
        """Upload a probe bundle (``pack_probe``'s bytes or file); True if stored, False if unchanged."""
        body = _upload_body(bundle)
        response = self.request(
            "PUT",
            f"/v1/runs/{run_id}/probe",
            content=body,
            headers=_upload_headers(body, "application/zip"),
        )
        return response.status_code == 201

    def put_train_log(self, run_id: str, data: UploadData) -> None:
        """Upload ``train_log.jsonl``; it replaces the run's log (the same bytes: a no-op)."""
        body = _upload_body(data)
        self.request(
            "PUT",
            f"/v1/runs/{run_id}/train-log",
            content=body,
            headers=_upload_headers(body, "application/x-ndjson"),
        )

    def list_checkpoints(self, run_id: str) -> list[CheckpointInfo]:
        body = self._json("GET", f"/v1/runs/{run_id}/checkpoints")
        return [CheckpointInfo.from_json(c) for c in body["data"]]

    def put_checkpoint(
        self,
        run_id: str,
        step: int,
        data: UploadData,
        *,
        lr: float | None = None,
        train_loss: float | None = None,
    ) -> CheckpointInfo:
        """Upload a safetensors checkpoint (same bytes again is a no-op).

        ``data`` is its bytes, or its file (a path or ``FileBody``), which is sent from disk in
        chunks and never read whole into memory; a path is hashed while it is sent (read once).
        """
        body = _upload_body(data)
        answer = self._json(
            "PUT",
            f"/v1/runs/{run_id}/checkpoints/{step}",
            content=body,
            params={"lr": lr, "train_loss": train_loss},
            headers=_upload_headers(body, "application/octet-stream"),
        )
        return CheckpointInfo.from_json(answer)

    def put_optimizer_state(self, run_id: str, step: int, data: UploadData) -> CheckpointInfo:
        """Upload the optimizer state of the checkpoint at ``step`` (bytes or a file, as above)."""
        body = _upload_body(data)
        answer = self._json(
            "PUT",
            f"/v1/runs/{run_id}/checkpoints/{step}/optimizer",
            content=body,
            headers=_upload_headers(body, "application/octet-stream"),
        )
        return CheckpointInfo.from_json(answer)

    # --- analyses -------------------------------------------------------------------------

    def start_analysis(
        self,
        run_id: str,
        *,
        preset: str = "standard",
        target_loss: float | None = None,
        steps: list[int] | None = None,
    ) -> AnalysisStatus:
        """Queue an analysis of the run's checkpoints (202); see :meth:`wait_analysis`."""
        if preset not in PRESETS:
            raise ParameterError(
                f"The 'preset' parameter must be one of {', '.join(PRESETS)}. Got {preset!r} instead."
            )
        body: dict[str, Any] = {"preset": preset, "target_loss": target_loss}
        if steps is not None:
            body["options"] = {"steps": list(steps)}
        return AnalysisStatus.from_json(
            self._json("POST", f"/v1/runs/{run_id}/analyses", json=body)
        )

    def get_analysis(self, analysis_id: str) -> AnalysisStatus:
        return AnalysisStatus.from_json(self._json("GET", f"/v1/analyses/{analysis_id}"))

    def list_analyses(self, run_id: str) -> list[AnalysisStatus]:
        """The run's analyses, newest first."""
        body = self._json("GET", f"/v1/runs/{run_id}/analyses")
        return [AnalysisStatus.from_json(a) for a in body["data"]]

    def report_url(self, analysis_id: str) -> str:
        """Where the analysis's HTML report is served once it has succeeded (the token is needed)."""
        return f"{self.url}/v1/analyses/{analysis_id}/report.html"

    def wait_analysis(
        self,
        analysis_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: bool | None = None,
    ) -> AnalysisResult:
        """Poll until the analysis finishes; the result, or ComputeError if it failed.

        ``progress``: a tqdm bar on stderr (None: only when stderr is a terminal).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = progress_bar(progress, desc=f"analysis {analysis_id[:8]}", unit="ckpt")
        try:
            while True:
                status = self.get_analysis(analysis_id)
                if bar is not None:
                    bar.update_to(status.progress.done, status.progress.total, status.state)
                if status.finished:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise ServiceTimeoutError(
                        f"analysis {analysis_id} is still {status.state} after {timeout:g} s "
                        f"({status.progress.done}/{status.progress.total} checkpoints). Wait longer, "
                        f"or follow it later with `obstacle status {analysis_id} --wait`."
                    )
                time.sleep(poll_interval)
        finally:
            if bar is not None:
                bar.close()
        return self.result(status)

    def result(self, status: AnalysisStatus) -> AnalysisResult:
        """The result of a finished analysis; ComputeError if it failed."""
        if status.state == "failed" or status.report is None:
            errors = "; ".join(
                f"step {e.step}: {e.message}" if e.step is not None else e.message
                for e in status.errors
            )
            raise ComputeError(
                f"analysis {status.id} of run {status.run_id} {status.state} without a report"
                f"{': ' + errors if errors else ''}. Fix the checkpoints named, or ask the operator "
                "to check the workers."
            )
        return AnalysisResult(status=status, report_json=status.report, _client=self)

    def report_html(self, analysis_id: str) -> str:
        """The analysis's HTML report."""
        return self.request("GET", f"/v1/analyses/{analysis_id}/report.html").text

    def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        body: dict[str, Any] = self._json("GET", "/healthz")
        return body


def _upload_body(data: UploadData) -> bytes | FileBody:
    """Bytes as they are; a path as a ``FileBody`` hashed while it is sent (one pass over it)."""
    if isinstance(data, bytes | FileBody):
        return data
    if isinstance(data, os.PathLike):
        return FileBody.streamed(data)
    raise ParameterError(
        f"The 'data' parameter must be bytes, a path (pathlib.Path) or a FileBody. Got "
        f"{type(data).__name__} instead. Wrap a file name in pathlib.Path to send the file."
    )


def _upload_headers(body: bytes | FileBody, content_type: str) -> dict[str, str]:
    if isinstance(body, FileBody):
        return body.headers(content_type)
    return {"Content-Type": content_type, "X-Content-SHA256": hashlib.sha256(body).hexdigest()}
