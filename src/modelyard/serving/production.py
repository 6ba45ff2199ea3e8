"""The production server: ``modelyard serve NAME@ALIAS`` on top of :func:`modelyard.serving.create_app`.

What it adds to the plain server:

* the model comes from the registry (``NAME@production``), verified (file hashes, no pickles) and
  smoke-tested before it serves;
* API keys with scopes and per-key rate limits (:mod:`modelyard.serving.security`);
* every prediction logged with a UUIDv4 id by a bounded asynchronous writer (:mod:`.predlog`), its input
  encrypted at rest (``serve.log_inputs``, ``serve.log_key_file``; :mod:`modelyard.registry.logkeys`),
  ``POST /v1/feedback`` for the correct label (only with the key that made the prediction);
* a poller that hot-swaps the model when the alias moves; a version that fails to load or
  verify is recorded in the audit trail and the old one keeps serving;
* ``GET /admin/v1/versions`` and ``GET /admin/v1/predictions`` (admin scope; texts PII-redacted);
* the web console at ``GET /`` and its ``/admin/v1/traffic`` and ``/admin/v1/drift`` (:mod:`.console`), and its
  "Label next" panel's ``/admin/v1/label/queue`` and ``/admin/v1/label`` (:mod:`.labelling`);
* Prometheus gauges for the served version, the log queue depth and log drops.

All of it is passed to :func:`modelyard.serving.create_app` as routers (console, feedback, admin),
one prediction hook (the log) and lifespans (the log writer, the hot-swap poller); the app is not
modified after it is built (only the API-key middleware is inserted, see :func:`install_auth`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timezone
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, Field

from modelyard.config import ServeConfig
from modelyard.errors import ModelyardError
from modelyard.models.loading import load
from modelyard.registry import open_registry
from modelyard.registry.models import utcnow
from modelyard.registry.names import RegistryError, validate_alias, validate_name
from modelyard.registry.store import Registry
from modelyard.registry.versions import VersionInfo, verify_version
from modelyard.rundir import RunDir
from modelyard.serving.app import ModelRuntime, create_app
from modelyard.serving.console import install_console
from modelyard.serving.feedback import FeedbackRequest, FeedbackResponse, feedback_router
from modelyard.serving.images import described_sha256
from modelyard.serving.jobs import JobRunner
from modelyard.serving.labelling import label_router
from modelyard.serving.predlog import PredictionLog, log_label, mask_pii
from modelyard.serving.security import install_auth
from modelyard.serving.server import run_server

# FeedbackRequest, FeedbackResponse and feedback_router moved to serving/feedback.py; importable here as before.
__all__ = ["FeedbackRequest", "FeedbackResponse", "create_production_app", "feedback_router", "serve_registry"]

logger = logging.getLogger("modelyard.serving")

DEFAULT_POLL_S = 2.0
DEFAULT_LOG_CAPACITY = 10_000
_SMOKE_TEXT = "modelyard smoke test"


class RegistryModel:
    """A loaded classifier plus its registry identity; everything else is delegated to the classifier.

    Args:
        classifier: The loaded model (``modelyard.models.text_classifier.Classifier``).
        version: Its registry version.
        alias: The alias it was resolved from.
    """

    def __init__(self, classifier: Any, version: VersionInfo, alias: str) -> None:
        self._classifier = classifier
        self.version = version
        self.alias = alias
        self.labels = list(classifier.labels)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Delegate to the classifier."""
        return self._classifier.predict_proba(texts)

    def info(self) -> dict[str, Any]:
        """The classifier's info plus ``app``, ``version``, ``alias`` and the registered ``run_id``."""
        return {
            **self._classifier.info(),
            "run_id": self.version.run_id,
            "app": self.version.app,
            "version": self.version.version,
            "alias": self.alias,
            "sha256": self.version.sha256[:12],
        }

    def __getattr__(self, name: str) -> Any:  # model, tokenizer, encode … for /v1/explain
        return getattr(self._classifier, name)


def load_version(version: VersionInfo, alias: str) -> RegistryModel:
    """Verify a registered version (hashes, file formats), load it and smoke-test one prediction.

    Args:
        version: From :meth:`Registry.resolve` / :meth:`Registry.get_version`.
        alias: The alias being served (for ``info()``).

    Returns:
        The model, ready to serve.

    Raises:
        RegistryError: Files changed since registration, or a pickle / malformed file.
        ModelError: The model does not load.
        ValueError: The smoke prediction is malformed.
    """

    root = version.path
    verify_version(version)
    classifier = load(root)
    if getattr(classifier, "task", None) == "image-classification":  # smoke-test with a blank image
        (height, width), channels = classifier.image_size, classifier.channels
        smoke: Any = np.zeros((height, width) if channels == 1 else (height, width, channels), dtype=np.uint8)
    else:
        smoke = _SMOKE_TEXT
    probs = np.asarray(classifier.predict_proba([smoke]), dtype=np.float64)
    if probs.shape != (1, len(classifier.labels)) or not np.isfinite(probs).all():
        raise ValueError(f"{root}: smoke prediction returned shape {probs.shape} or non-finite values")
    return RegistryModel(classifier, version, alias)


def parse_target(target: str) -> tuple[str, str]:
    """``NAME@ALIAS`` → ``(name, alias)`` (both validated).

    Raises:
        RegistryError: Not of that form.
    """
    name, sep, alias = target.partition("@")
    if not sep:
        raise RegistryError(f"{target!r} is not NAME@ALIAS (e.g. sentiment@production)")
    return validate_name(name), validate_alias(alias)


class VersionOut(BaseModel):
    """One registered version in ``GET /admin/v1/versions``."""

    app: str
    version: int
    run_id: str
    aliases: list[str] = Field(..., description="Aliases pointing at this version (`production`, `staging`).")
    labels: list[str]
    test_accuracy: float | None = Field(None, description="Accuracy on the run's test split.")
    test_macro_f1: float | None = Field(None, description="Macro-F1 on the run's test split.")
    sha256: str = Field(..., description="Hash of the registered files.")
    created_at: str = Field(..., description="Registration time (ISO 8601).")


class PredictionOut(BaseModel):
    """One logged prediction in ``GET /admin/v1/predictions``."""

    id: str = Field(..., description="The prediction id (UUIDv4) for `POST /v1/feedback`.")
    at: str = Field(..., description="When it was made (ISO 8601, UTC).")
    version: int | None = Field(None, description="The model version that made it.")
    text: str = Field(..., description="The input after PII masking; for an image, its type, size and sha256.")
    label: str
    scores: dict[str, float]


def _prediction_logger(predlog: PredictionLog, app_name: str, cfg: ServeConfig) -> Callable[..., list[str]]:
    """The prediction hook: queue one log row per prediction and return the new prediction ids."""

    def log_predictions(
        http_request: Request, texts: list[str], probs: np.ndarray, loaded: Any, seconds: float, mask: bool = True
    ) -> list[str]:
        # texts: the request's texts, or descriptions of its images (serving/images.py; mask=False for those)
        key = getattr(http_request.state, "api_key", None)
        key_id = key.key_id if key is not None else None
        version = loaded.info.get("version")
        labels = loaded.labels
        predicted = loaded.label_strings(probs)  # the label, or a multi-label model's set joined by "|"
        now = utcnow()
        ids = []
        for text, row, label in zip(texts, probs, predicted, strict=True):
            pid = str(uuid.uuid4())
            predlog.log_prediction(
                {
                    "id": pid,
                    "at": now,
                    "app": app_name,
                    "version": version,
                    "key_id": key_id,
                    "text": text,
                    # masked by the log's writer thread, off the request path (~1 ms a text)
                    "_mask_pii": bool(cfg.mask_pii and mask),
                    "label": log_label(label),
                    "scores": dict(zip(labels, (float(p) for p in row), strict=True)),
                    "latency_ms": seconds * 1000.0,
                },
                labels,
                image_sha256=None if mask else described_sha256(text),
            )
            ids.append(pid)
        return ids

    return log_predictions


def _redacted_recent(registry: Registry, app_name: str, limit: int) -> list[dict[str, Any]]:
    """The newest logged predictions with their texts decrypted and then PII-redacted: the admin API and the
    console show redacted text only, whatever ``serve.mask_pii`` was when the row was logged (an image's
    description is shown as it is: type, size and hash)."""
    rows = registry.recent_predictions(app_name, limit)
    return [r if described_sha256(r["text"]) else {**r, "text": mask_pii(r["text"])} for r in rows]


def admin_router(registry: Registry, app_name: str) -> APIRouter:
    """``GET /admin/v1/versions`` and ``GET /admin/v1/predictions`` (the admin scope is enforced by the auth layer)."""
    router = APIRouter()

    @router.get(
        "/admin/v1/versions",
        tags=["admin"],
        summary="Registered versions of the served app and their aliases",
        response_model=list[VersionOut],
    )
    async def admin_versions() -> list[dict[str, Any]]:
        return [v.to_dict() for v in await asyncio.to_thread(registry.list_versions, app_name)]

    @router.get(
        "/admin/v1/predictions",
        tags=["admin"],
        summary="The most recent logged predictions (oldest of them first)",
        response_model=list[PredictionOut],
    )
    async def admin_predictions(limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(_redacted_recent, registry, app_name, limit)
        # SQLite hands back naive UTC datetimes; say UTC explicitly, or browsers read them as local time.
        return [
            {**r, "at": (r["at"] if r["at"].tzinfo else r["at"].replace(tzinfo=timezone.utc)).isoformat()} for r in rows
        ]

    return router


def _log_lifespan(predlog: PredictionLog) -> Callable[[FastAPI], Any]:
    """Start the log writer before the server starts; drain it after the batcher drained."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        predlog.start()
        try:
            yield
        finally:
            # Exited after the serving lifespan (the batcher drained): every answered prediction is queued.
            await asyncio.to_thread(predlog.close)
            logger.info("prediction log closed: %d written, %d dropped", predlog.written, predlog.dropped)

    return lifespan


def _jobs_lifespan(jobs: JobRunner) -> Callable[[FastAPI], Any]:
    """Stop admin jobs (drift runs) on shutdown: terminated, then killed after the runner's grace period."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await jobs.shutdown()

    return lifespan


class _HotSwapper:
    """Polls the alias every ``poll_s`` seconds and swaps in the version it points at (verified first).

    A version that fails to load or verify is recorded (``swap_failed``) and never retried; the old
    model keeps serving. Each swap is recorded (``swap``) and counted in ``swaps`` (by result).
    """

    def __init__(self, registry: Registry, app_name: str, alias: str, poll_s: float) -> None:
        self.registry, self.app_name, self.alias, self.poll_s = registry, app_name, alias, poll_s
        self.swaps: Counter | None = None  # set once the app (and its metrics registry) exists

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """Run the poller while the server runs (``poll_s`` of 0: no poller)."""
        poller = asyncio.create_task(self.poll(app.state.runtime)) if self.poll_s > 0 else None
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()

    def _count(self, result: str) -> None:
        if self.swaps is not None:
            self.swaps.labels(result=result).inc()

    async def poll(self, runtime: ModelRuntime) -> None:
        """The polling loop over the server's ``runtime`` (runs until cancelled)."""
        registry, app_name, alias = self.registry, self.app_name, self.alias
        failed: set[int] = set()
        while True:
            await asyncio.sleep(self.poll_s)
            if runtime.status in ("loading", "shutting_down"):
                continue
            try:
                wanted = await asyncio.to_thread(registry.alias_version, app_name, alias)
            except Exception:
                logger.exception("hot swap: cannot read %s@%s from the registry", app_name, alias)
                continue
            loaded = runtime.loaded
            current = loaded.info.get("version") if loaded is not None else None
            if wanted is None or wanted == current or wanted in failed:
                continue
            try:
                version = await asyncio.to_thread(registry.get_version, app_name, wanted)
                model = await asyncio.to_thread(load_version, version, alias)
                runtime.swap(model)
            except Exception as err:
                failed.add(wanted)
                self._count("failed")
                logger.error("hot swap to %s version %s failed; still serving %s: %s", app_name, wanted, current, err)
                detail = {"alias": alias, "serving": current, "error": str(err)[:500]}
                await asyncio.to_thread(
                    registry.record, app_name, "swap_failed", wanted, detail, f"server:{os.getpid()}"
                )
                continue
            self._count("ok")
            logger.info("hot swap: %s@%s now serves version %s (was %s)", app_name, alias, wanted, current)
            detail = {"alias": alias, "from": current, "to": wanted}
            await asyncio.to_thread(registry.record, app_name, "swap", wanted, detail, f"server:{os.getpid()}")


def create_production_app(
    registry: Registry,
    app_name: str,
    alias: str,
    cfg: ServeConfig,
    *,
    auth: bool = True,
    poll_s: float = DEFAULT_POLL_S,
    log_capacity: int = DEFAULT_LOG_CAPACITY,
    key_cache_s: float | None = None,
    drift_monitor: Callable[..., dict[str, Any]] | None = None,
) -> FastAPI:
    """Build the production app serving ``app_name@alias`` from ``registry``.

    Args:
        registry: The registry (versions, keys, prediction log).
        app_name: The app.
        alias: ``production`` or ``staging``.
        cfg: Serving limits and batching.
        auth: Require API keys (on unless a test turns it off).
        poll_s: Seconds between alias checks for hot swap (0 disables it).
        log_capacity: Prediction-log queue size; beyond it rows are dropped and counted.
        key_cache_s: How long a verified API key is trusted before the registry is asked again, which
            bounds how long a revoked key keeps working (``None``: ``$MODELYARD_KEY_CACHE_SECONDS``,
            default 5 s; ``0``: every request is checked). See :mod:`modelyard.serving.security`.
        drift_monitor: What ``POST /admin/v1/drift`` runs: :func:`modelyard.ops.monitor.monitor`, passed
            in by the caller (serving does not import the operations layer); ``None``: that endpoint
            answers 409 ``drift_unavailable``.

    Returns:
        The app; ``app.state`` additionally holds ``registry`` and ``predlog``.

    Raises:
        RegistryError: Bad app name or alias, or a bad ``key_cache_s``.
    """
    validate_name(app_name)
    validate_alias(alias)
    encrypt = cfg.log_inputs == "encrypted"
    if cfg.log_key_file is not None:
        registry.log_keys.configure(cfg.log_key_file)
    if encrypt:  # a missing, unsafe or malformed key fails here, before the server starts, not in the log writer
        registry.log_keys.for_writing()
    else:
        logger.warning("serve.log_inputs is plaintext: logged inputs are stored unencrypted in the registry database")
    predlog = PredictionLog(registry, capacity=log_capacity, encrypt=encrypt)
    # The web console's routes: GET / (public page) + /admin/v1/traffic, /admin/v1/drift.
    console = APIRouter()
    # drift jobs run in a child process, which must find the same database and log keys
    job_env = {"MODELYARD_DB": registry.engine.db_url, **registry.log_keys.child_env()}
    jobs = install_console(console, registry, app_name, alias, run_monitor=drift_monitor, jobs=JobRunner(env=job_env))
    swapper = _HotSwapper(registry, app_name, alias, poll_s)
    app = create_app(
        lambda: load_version(registry.resolve(app_name, alias), alias),
        cfg,
        routers=(
            console,
            feedback_router(registry, predlog, app_name, cfg),
            admin_router(registry, app_name),
            label_router(registry, app_name, cfg, encrypt),  # the console's "Label next" panel
        ),
        prediction_hooks=(_prediction_logger(predlog, app_name, cfg),),
        lifespans=(_log_lifespan(predlog), swapper.lifespan, _jobs_lifespan(jobs)),
    )
    runtime = app.state.runtime
    if auth:
        install_auth(app, registry.lookup_key, cache_s=key_cache_s, max_in_flight=cfg.max_in_flight_per_key)
    app.state.registry = registry
    app.state.predlog = predlog
    app.state.jobs = jobs

    reg = app.state.metrics.registry
    version_gauge = Gauge("modelyard_model_version", "Registry version being served (0 until loaded).", registry=reg)
    version_gauge.set_function(lambda: float((runtime.loaded.info.get("version") if runtime.loaded else 0) or 0))
    Gauge("modelyard_predlog_queue_depth", "Prediction-log rows waiting to be written.", registry=reg).set_function(
        lambda: predlog.depth
    )
    Gauge(
        "modelyard_predlog_dropped", "Prediction-log rows dropped (queue full or write failed).", registry=reg
    ).set_function(lambda: predlog.dropped)
    Gauge("modelyard_predlog_written", "Prediction-log rows written.", registry=reg).set_function(
        lambda: predlog.written
    )
    swapper.swaps = Counter("modelyard_model_swaps", "Hot swaps by result (ok/failed).", ["result"], registry=reg)
    return app


def serve_config_of(version: VersionInfo, overrides: list[str] | None = None) -> ServeConfig:
    """The ``serve`` section of the version's recipe (:meth:`RunDir.serve_settings`; defaults when unreadable)."""
    try:
        return RunDir(version.path).serve_settings(overrides)
    except ModelyardError:
        if overrides:
            raise  # a bad override is the user's to fix, not to ignore
        return ServeConfig()


def run_app(app: FastAPI, cfg: ServeConfig, host: str | None, port: int | None) -> None:
    """Run an app with uvicorn like :func:`modelyard.serving.serve` (loopback unless ``host`` is given)."""
    run_server(app, cfg, host, port)


def serve_registry(
    target: str,
    *,
    store: Path | None = None,
    db: str | None = None,
    host: str | None = None,
    port: int | None = None,
    poll_s: float = DEFAULT_POLL_S,
    key_cache_s: float | None = None,
    drift_monitor: Callable[..., dict[str, Any]] | None = None,
    overrides: list[str] | None = None,
) -> None:
    """``modelyard serve NAME@ALIAS``: resolve, verify and serve with auth, logging and hot swap.

    ``overrides`` (``serve.KEY=VALUE``) change the version's serve settings for this server.

    Args:
        target: ``NAME@ALIAS``.
        store: Registry store directory.
        db: Registry database URL.
        host: Interface (default loopback).
        port: Port (default: the version's ``serve.port``).
        poll_s: Seconds between hot-swap alias checks.
        key_cache_s: API-key cache lifetime, i.e. the revocation window (``None``:
            ``$MODELYARD_KEY_CACHE_SECONDS`` or 5 s).
        drift_monitor: What ``POST /admin/v1/drift`` runs (see :func:`create_production_app`).

    Raises:
        RegistryError: Bad target, unknown app or unset alias, or a bad key-cache lifetime (before the
            server starts).
    """

    name, alias = parse_target(target)
    registry = open_registry(store, db)
    version = registry.resolve(name, alias)
    verify_version(version)  # a damaged version is refused before the server starts (hot swaps re-check)
    cfg = serve_config_of(version, overrides)
    app = create_production_app(
        registry, name, alias, cfg, poll_s=poll_s, key_cache_s=key_cache_s, drift_monitor=drift_monitor
    )
    run_app(app, cfg, host, port)
