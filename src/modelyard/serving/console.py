"""The web console of the production server (``GET /``) and the admin endpoints only it needs.

The console is one static page (``console/index.html`` + ``console.js`` + ``console.css``, shipped as
package data; no build step, no CDN). It holds no data: the user pastes an API key, which the page
keeps in ``sessionStorage`` and sends as ``Authorization: Bearer KEY`` to the same JSON API every
client uses, so every panel is subject to the key's scopes and rate limit. Its responses carry a
strict Content-Security-Policy (:mod:`.headers`: ``default-src 'self'``, no inline script or style), so even a
logged text that contains markup cannot run script in the page (the page also only ever inserts
text with ``textContent``).

Admin endpoints added here (admin scope, like every ``/admin/`` path):

* ``GET /admin/v1/traffic``: requests per time bucket, mean confidence, class mix, from the
  prediction log;
* ``GET /admin/v1/drift``: the latest drift report written by ``modelyard monitor`` (or by
  ``POST /admin/v1/drift``, which runs the monitor now).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi import Path as Path_
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from modelyard.registry.names import RegistryError
from modelyard.registry.store import Registry, parse_since
from modelyard.serving.headers import SECURITY_HEADERS
from modelyard.serving.http_errors import ApiError, wait_while_connected
from modelyard.serving.jobs import CANCELLED, SUCCEEDED, TIMED_OUT, JobRunner
from modelyard.serving.schemas import ErrorResponse

logger = logging.getLogger("modelyard.serving")

CONSOLE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console/console.css": ("console.css", "text/css; charset=utf-8"),
}
"""Public paths of the console and the package file each serves."""

MAX_BUCKETS = 2000
MAX_WINDOW = timedelta(days=366)
_SINCE_PATTERN = r"^[1-9][0-9]{0,5}[smhd]$"
_NICE_BUCKETS = (1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)

_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorResponse,
        "description": "No API key, an unknown/revoked one (`unauthorized`) or an expired one (`key_expired`).",
    },
    403: {"model": ErrorResponse, "description": "The key lacks the `admin` scope (`forbidden`)."},
    422: {"model": ErrorResponse, "description": "Bad query parameter (`invalid_request`)."},
    429: {"model": ErrorResponse, "description": "The key's rate limit is exhausted (`rate_limited`)."},
}


class TrafficBucket(BaseModel):
    """One time bucket of the prediction log."""

    start: datetime = Field(..., description="Start of the bucket (UTC).")
    requests: int = Field(..., ge=0, description="Predictions logged in the bucket (one per text or image).")
    mean_confidence: float | None = Field(
        None, description="Mean top score of those predictions; null for an empty bucket."
    )


class TrafficResponse(BaseModel):
    """Body of ``GET /admin/v1/traffic``."""

    app: str
    since: datetime = Field(..., description="Start of the window (UTC).")
    until: datetime = Field(..., description="End of the window (UTC, the time of the request).")
    bucket_s: int = Field(..., description="Bucket width in seconds.")
    total: int = Field(..., ge=0, description="Predictions in the window.")
    buckets: list[TrafficBucket] = Field(..., description="Every bucket of the window, oldest first.")
    class_mix: dict[str, int] = Field(..., description="Predictions per predicted label in the window.")
    mean_latency_ms: float | None = Field(None, description="Mean logged latency; null without traffic.")


class DriftSignal(BaseModel):
    """One drift signal of the monitor (see ``modelyard monitor``)."""

    value: float = Field(..., description="PSI, KS statistic or cosine distance.")
    threshold: float = Field(..., description="Alert threshold; above it is drift.")
    drift: bool = Field(..., description="value > threshold.")


class DriftResponse(BaseModel):
    """Body of ``GET``/``POST /admin/v1/drift``: the latest drift report of the served app."""

    app: str
    status: str = Field(..., description="`ok`, `drift`, `insufficient_data`, or `no_report` (no monitor has run yet).")
    version: int | None = Field(None, description="Version whose reference was compared.")
    since: str | None = Field(None, description="Window of live traffic, e.g. `7d`.")
    at: str | None = Field(None, description="When the report was computed (ISO 8601, UTC).")
    n_live: int | None = Field(None, description="Live predictions compared.")
    n_reference: int | None = Field(None, description="Reference rows (the version's valid + test splits).")
    message: str | None = Field(None, description="Why there is no verdict (`insufficient_data`, `no_report`).")
    signals: dict[str, DriftSignal] = Field(default_factory=dict, description="Every signal with its threshold.")
    class_mix: dict[str, dict[str, float]] | None = Field(
        None, description="Predicted-class shares: `reference` and `live`."
    )
    job_id: str | None = Field(None, description="`POST`: the drift job that computed it (`GET /admin/v1/jobs/{id}`).")


class JobResponse(BaseModel):
    """Body of ``GET /admin/v1/jobs/{id}``."""

    id: str
    kind: str = Field(..., description="`drift`.")
    state: str = Field(..., description="`running`, `succeeded`, `failed`, `timed_out` or `cancelled`.")
    started_at: float = Field(..., description="Unix time the job started.")
    finished_at: float | None = Field(None, description="Unix time it ended; null while running.")
    seconds: float = Field(..., description="How long it ran (so far).")
    error: str | None = Field(None, description="Why it failed, timed out or was cancelled.")


class DriftRunRequest(BaseModel):
    """Body of ``POST /admin/v1/drift``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"since": "7d"}]})
    since: str = Field("7d", pattern=_SINCE_PATTERN, description="Window of live traffic, e.g. `24h`, `7d` (≤ 366d).")


def _auto_bucket(window_s: float) -> int:
    """The smallest round bucket width giving at most ~120 buckets over the window."""
    return next((b for b in _NICE_BUCKETS if window_s / b <= 120), _NICE_BUCKETS[-1])


def _parse_window(since: str, field: str = "query.since") -> datetime:
    try:
        start = parse_since(since)
    except RegistryError as err:  # e.g. 999999d: before year 1 (found by fuzzing: it was a 500)
        raise ApiError(422, "invalid_request", f"{field}: {err}") from None
    assert start is not None  # the pattern guarantees a non-empty value
    if datetime.now(timezone.utc) - start > MAX_WINDOW + timedelta(seconds=1):
        raise ApiError(422, "invalid_request", f"{field}: {since!r} is longer than the maximum of 366d")
    return start


def latest_drift_report(store: Path, app: str) -> dict[str, Any] | None:
    """The newest ``drift-*.json`` summary ``modelyard monitor`` wrote for ``app`` under ``store``, or ``None``."""
    folder = store / "monitor" / app
    reports = sorted(folder.glob("drift-*.json")) if folder.is_dir() else []
    for path in reversed(reports):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("drift report %s is unreadable; trying an older one", path)
            continue
        if isinstance(summary, dict):
            return summary
    return None


def _drift_response(app: str, summary: dict[str, Any] | None) -> DriftResponse:
    if summary is None:
        return DriftResponse(
            app=app,
            status="no_report",
            message=f"no drift report yet; run `modelyard monitor {app}` or POST /admin/v1/drift",
        )
    fields = {k: summary.get(k) for k in ("status", "version", "since", "at", "n_live", "n_reference", "message")}
    fields["since"] = None if fields["since"] is None else str(fields["since"])
    return DriftResponse(app=app, signals=summary.get("signals") or {}, class_mix=summary.get("class_mix"), **fields)


def _console_file(name: str) -> bytes:
    return resources.files("modelyard.serving").joinpath("console", name).read_bytes()


def install_console(
    app: FastAPI | APIRouter,
    registry: Registry,
    app_name: str,
    alias: str,
    run_monitor: Callable[..., dict[str, Any]] | None = None,
    jobs: JobRunner | None = None,
) -> JobRunner:
    """Add the console (``GET /``, its script and style sheet) and the traffic/drift admin endpoints.

    Args:
        app: The production app, or the router it is built from (:mod:`modelyard.serving.production`).
        registry: Its registry (prediction log, versions, store directory for drift reports).
        app_name: The served app.
        alias: The served alias (the drift reference is that version's held-out data).
        run_monitor: The drift monitor for ``POST /admin/v1/drift`` (:func:`modelyard.ops.monitor.monitor`,
            passed in because serving sits below the operations layer); ``None``: that endpoint answers
            409 ``drift_unavailable``. It runs in a child process (``modelyard.serving.job_worker``) by name.
        jobs: The job runner for admin jobs (default: a new one with the default time limit).

    Returns:
        The job runner; the caller stops it on shutdown (:meth:`JobRunner.shutdown`).
    """
    jobs = jobs or JobRunner(env={"MODELYARD_DB": registry.engine.db_url})
    files = {path: (_console_file(name), media) for path, (name, media) in CONSOLE_FILES.items()}

    def static(path: str) -> Any:
        body, media = files[path]

        async def serve() -> Response:
            return Response(body, media_type=media, headers=SECURITY_HEADERS)

        return serve

    for path in CONSOLE_FILES:
        app.add_api_route(path, static(path), methods=["GET"], include_in_schema=False)

    @app.get(
        "/admin/v1/traffic",
        tags=["admin"],
        summary="Requests per time bucket, mean confidence and predicted-class mix, from the prediction log",
        response_model=TrafficResponse,
        responses=_ADMIN_ERRORS,
    )
    async def admin_traffic(
        since: str = Query(
            "1h", pattern=_SINCE_PATTERN, description="Window: a number and s/m/h/d, e.g. `30m`, `24h`, `7d` (≤ 366d)."
        ),
        bucket: int | None = Query(
            None, ge=1, le=86400, description="Bucket width in seconds (default: a round width giving ≤ 120 buckets)."
        ),
    ) -> TrafficResponse:
        start = _parse_window(since)
        now = datetime.now(timezone.utc)
        width = bucket or _auto_bucket((now - start).total_seconds())
        n = int(now.timestamp()) // width - int(start.timestamp()) // width + 1
        if n > MAX_BUCKETS:
            raise ApiError(
                422,
                "invalid_request",
                f"query.bucket: {width}s buckets over {since} make {n} buckets; the limit is {MAX_BUCKETS} "
                "(use a wider bucket or a shorter window)",
            )
        stats = await asyncio.to_thread(registry.traffic, app_name, start, width, now)
        return TrafficResponse(app=app_name, **stats)

    # Drift runs go through the job runner: one per app at a time (concurrent requests join it), a time
    # limit, cancelled when every waiting client has gone, stopped on shutdown (see serving/jobs.py).
    drift_key = f"drift:{app_name}"
    target = f"{run_monitor.__module__}:{run_monitor.__name__}" if run_monitor is not None else None

    @app.get(
        "/admin/v1/drift",
        tags=["admin"],
        summary="The latest drift report (PSI/KS against the training reference, with thresholds)",
        response_model=DriftResponse,
        responses={k: v for k, v in _ADMIN_ERRORS.items() if k != 422},
    )
    async def admin_drift() -> DriftResponse:
        summary = await asyncio.to_thread(latest_drift_report, registry.store, app_name)
        return _drift_response(app_name, summary)

    @app.post(
        "/admin/v1/drift",
        tags=["admin"],
        summary="Run the drift monitor now on the served alias (one run per app; concurrent requests join it)",
        response_model=DriftResponse,
        responses={
            **_ADMIN_ERRORS,
            409: {"model": ErrorResponse, "description": "The monitor cannot run or failed (`drift_unavailable`)."},
            503: {"model": ErrorResponse, "description": "The server is shutting down (`shutting_down`)."},
            504: {"model": ErrorResponse, "description": "The run passed its time limit (`job_timed_out`)."},
        },
    )
    async def admin_drift_run(body: DriftRunRequest, response: Response, request: Request) -> DriftResponse:
        _parse_window(body.since, "body.since")
        if target is None:
            raise ApiError(409, "drift_unavailable", "the drift monitor cannot run: this server was started without it")
        kwargs = {"store": str(registry.store), "app": app_name, "alias": alias, "since": body.since}
        try:
            job, _ = jobs.start(drift_key, "drift", target, kwargs)
        except RuntimeError:
            raise ApiError(503, "shutting_down", "the server is shutting down; retry on the next one") from None
        response.headers["X-Job-Id"] = job.id
        # a caller that hangs up stops waiting; when none waits any more the runner cancels the run
        await wait_while_connected(request, jobs.wait(job))
        if job.state == TIMED_OUT:
            raise ApiError(504, "job_timed_out", f"drift job {job.id}: {job.error}")
        if job.state == CANCELLED:
            raise ApiError(503, "shutting_down", f"drift job {job.id}: {job.error}")
        if job.state != SUCCEEDED:
            raise ApiError(409, "drift_unavailable", f"the drift monitor cannot run: {job.error}")
        return _drift_response(app_name, job.result).model_copy(update={"job_id": job.id})

    @app.get(
        "/admin/v1/jobs/{job_id}",
        tags=["admin"],
        summary="State of an admin job (a drift run): running, succeeded, failed, timed_out or cancelled",
        response_model=JobResponse,
        responses={
            **{k: v for k, v in _ADMIN_ERRORS.items() if k != 422},
            404: {"model": ErrorResponse, "description": "No such job (`job_not_found`)."},
        },
    )
    async def admin_job(job_id: str = Path_(..., pattern=r"^[0-9a-f]{16}$")) -> JobResponse:
        job = jobs.get(job_id)
        if job is None:
            raise ApiError(404, "job_not_found", f"no job {job_id} (the last {jobs.keep} jobs are kept)")
        return JobResponse(**job.to_dict())

    return jobs
