"""The FastAPI app: model loading in the background, readiness, prediction, metrics.

Request flow for ``POST /v1/predict``::

    MetricsMiddleware -> JsonBodyGuardMiddleware (415 / 413 body / UTF-8) -> FastAPI validation (422)
      -> endpoint (413 per-text limits, 503 not ready) -> MicroBatcher (503 overloaded) -> model thread

``POST /v1/explain`` takes the same path up to the endpoint, then runs ``modelyard.explain`` in its
own single worker thread. That thread and the batcher's model thread share
:attr:`ModelRuntime.model_lock`, so the model never runs two forward passes at once (predictions wait
while an explanation runs).

:func:`create_app` is composable: a caller such as the production server
(:mod:`modelyard.serving.production`) passes extra ``routers``, ``prediction_hooks`` (called with
every answered prediction; they may return an id per prediction) and ``lifespans`` (entered around
the server's own startup and shutdown) instead of modifying the app afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from modelyard import __version__
from modelyard.config import ServeConfig
from modelyard.errors import ConfigError
from modelyard.explain.core import ExplainUnsupportedError
from modelyard.serving.batcher import MicroBatcher
from modelyard.serving.docs import OPENAPI_URL, install_docs, public_docs_paths
from modelyard.serving.http_errors import RETRY_AFTER, ApiError, install_error_handlers, submit_batch
from modelyard.serving.images import ImageRequestMiddleware
from modelyard.serving.metrics import CONTENT_TYPE_LATEST, ServingMetrics
from modelyard.serving.middleware import JsonBodyGuardMiddleware, MetricsMiddleware
from modelyard.serving.ood import OodFlagger
from modelyard.serving.openapi import install_openapi
from modelyard.serving.runtime import (
    MAX_PENDING_EXPLANATIONS,
    Classifier,
    Lifespan,
    ModelRuntime,
    PredictionHook,
    _combine_hooks,
)
from modelyard.serving.schemas import (
    ErrorResponse,
    ExplainRequest,
    ExplainResponse,
    LabelSetPrediction,
    Prediction,
    PredictRequest,
    PredictResponse,
    ReadyResponse,
)
from modelyard.serving.server import GRACEFUL_SHUTDOWN_S, FramingMiddleware, run_server

logger = logging.getLogger("modelyard.serving")


_RETRY_AFTER = RETRY_AFTER

_DOCS_KEY_WITHOUT_AUTH = (
    "serve.docs is 'key' but this server checks no API keys; set serve.auth: true (or serve NAME@ALIAS "
    "from the registry), or serve.docs: public or off"
)


def _checks_api_keys(app: FastAPI) -> bool:
    from modelyard.serving.security import ApiKeyMiddleware

    return any(m.cls is ApiKeyMiddleware for m in app.user_middleware)


def _explainable(classifier: Any) -> bool:
    return getattr(classifier, "model", None) is not None and getattr(classifier, "tokenizer", None) is not None


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        413: "Too many texts (`too_many_texts`), a text too long (`text_too_long`) or body too large "
        "(`body_too_large`); image models: too many images (`too_many_images`), an image too large "
        "(`image_too_large`, `image_too_many_pixels`).",
        415: "Content-Type is not application/json (`unsupported_media_type`; image models also take "
        "multipart/form-data) or, image models, not a supported image (`unsupported_image`).",
        422: "Malformed JSON (`invalid_json`) or schema violation (`invalid_request`); image models: bad base64 "
        "(`invalid_base64`) or no images.",
        500: "The model failed on the batch holding this request (`prediction_failed`).",
        503: "Model not loaded yet (`model_not_ready`), queue full (`overloaded`) or shutting down "
        "(`shutting_down`); honour Retry-After.",
    }.items()
}

_EXPLAIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **{code: _ERRORS[code] for code in (413, 415)},
    422: {
        "model": ErrorResponse,
        "description": "Malformed JSON (`invalid_json`), schema violation or unknown method/target "
        "(`invalid_request`).",
    },
    500: {"model": ErrorResponse, "description": "The explanation failed (`explain_failed`)."},
    501: {
        "model": ErrorResponse,
        "description": "The serving model exposes no PyTorch internals, e.g. an ONNX runtime (`explain_unsupported`).",
    },
    503: {
        "model": ErrorResponse,
        "description": "Model not loaded yet (`model_not_ready`), too many explanations pending (`overloaded`) "
        "or shutting down (`shutting_down`); honour Retry-After.",
    },
}


def create_app(
    load_classifier: Callable[[], Classifier],
    cfg: ServeConfig,
    *,
    routers: Sequence[APIRouter] = (),
    prediction_hooks: Sequence[PredictionHook] = (),
    lifespans: Sequence[Lifespan] = (),
) -> FastAPI:
    """Build the serving app. Nothing is loaded until the app's lifespan starts.

    Args:
        load_classifier: Returns the classifier; called once, in a background thread, at startup.
        cfg: Limits and batching settings.
        routers: Extra routes (no prefix), added in order after the built-in ones.
        prediction_hooks: Called in order with every answered prediction request (see
            :class:`PredictionHook`); the first ids one returns become the predictions' ``id``.
        lifespans: Extra lifespans, entered in order before the model starts loading and exited in
            reverse order after the batcher drained (so work queued by hooks is complete by then).

    Returns:
        The FastAPI app; ``app.state`` holds ``config``, ``metrics``, ``runtime``, ``batcher``,
        ``prediction_hook`` (the combined hook, or ``None``; the image path reads it) and ``public_paths``
        (the docs paths an API-key check must let through, per ``cfg.docs``; see :mod:`.docs`).
        With ``cfg.docs == "key"`` the app refuses to start unless API keys are checked
        (:func:`modelyard.serving.security.install_auth`).
    """
    if cfg.max_texts_per_request > cfg.max_queue:
        logger.warning(
            "serve.max_texts_per_request (%d) > serve.max_queue (%d): requests larger than the queue always get 503",
            cfg.max_texts_per_request,
            cfg.max_queue,
        )
    metrics = ServingMetrics(cfg.max_batch_size)
    runtime = ModelRuntime(metrics)
    batcher = MicroBatcher(
        runtime.predict,
        max_batch_size=cfg.max_batch_size,
        max_wait_ms=cfg.max_wait_ms,
        max_queue=cfg.max_queue,
        on_batch=metrics.observe_batch,
    )
    metrics.bind_queue_depth(lambda: batcher.queue_depth)
    metrics.set_model(None)
    explainer: dict[str, Any] = {"executor": None, "pending": 0}

    @asynccontextmanager
    async def serving_lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.shutting_down = False
        await batcher.start()
        explainer["executor"] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelyard-explain")
        runtime.start_loading(load_classifier)
        try:
            yield
        finally:
            # readyz flips first so a load balancer stops routing here; then queued texts finish.
            runtime.shutting_down = True
            await batcher.close(timeout=GRACEFUL_SHUTDOWN_S)
            executor, explainer["executor"] = explainer["executor"], None
            # Like the batcher: don't block the loop on a thread that may be deep in a long explanation.
            executor.shutdown(wait=False, cancel_futures=True)
            stats = {k: v for k, v in batcher.stats().items() if k != "recent_sizes"}
            logger.info("batcher stopped: %s", stats)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if cfg.docs == "key" and not _checks_api_keys(app):
            raise ConfigError(_DOCS_KEY_WITHOUT_AUTH)
        # The extra lifespans wrap the serving one: started before the model loads, stopped after the drain.
        async with AsyncExitStack() as extras:
            for extra in lifespans:
                await extras.enter_async_context(extra(app))
            async with serving_lifespan(app):
                yield

    app = FastAPI(
        title="modelyard",
        version=__version__,
        description="Text classification served by modelyard. Every error is "
        '`{"error": {"code": ..., "message": ...}}`.',
        lifespan=lifespan,
        # FastAPI's own /docs loads Swagger UI from a CDN with an inline script; serving/docs.py serves it
        # from the package instead (serve.docs: public | key | off).
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        openapi_url=None if cfg.docs == "off" else OPENAPI_URL,
    )
    install_docs(app, cfg.docs)
    # /openapi.json: every status each route can answer, the API-key scheme, limits and labels (serving/openapi.py)
    install_openapi(app, cfg, _checks_api_keys)
    app.state.config = cfg
    # Paths the API-key middleware (serving/security.py install_auth) lets through without a key.
    app.state.public_paths = public_docs_paths(cfg.docs)
    app.state.metrics = metrics
    app.state.runtime = runtime
    app.state.batcher = batcher
    prediction_hook = _combine_hooks(tuple(prediction_hooks))
    app.state.prediction_hook = prediction_hook  # serving/images.py reads it for image predictions
    install_error_handlers(app)
    # CORS is deliberately off: browsers on other origins must not call the model; put a proxy in
    # front if a web page needs it. Middleware added last runs first, so metrics see every response.
    app.add_middleware(
        JsonBodyGuardMiddleware,
        max_body_bytes=cfg.max_body_bytes,
        routes=app.router.routes,
        # feedback on an image prediction may carry the image back (base64): room for one at its limit
        path_limits={"/v1/feedback": max(cfg.max_body_bytes, cfg.max_image_bytes * 4 // 3 + 4096)},
    )
    # Image models: multipart / {"images": [base64]} requests to /v1/predict (serving/images.py).
    ood = OodFlagger(cfg.ood_from) if cfg.ood_from else None  # a bad run fails here, before the server starts
    app.add_middleware(ImageRequestMiddleware, runtime=runtime, batcher=batcher, cfg=cfg, ood=ood)
    app.add_middleware(FramingMiddleware)  # CL + TE together: 400 and close, before anything reads a body
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)

    @app.get("/healthz", tags=["ops"], summary="Liveness: 200 while the process runs")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: 200 once the model is loaded",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "loading, error or shutting_down"}},
    )
    async def readyz() -> JSONResponse:
        status = runtime.status
        loaded = runtime.loaded
        if status == "ready" and loaded is not None:
            return JSONResponse({"status": "ready", "model": loaded.info})
        body: dict[str, Any] = {"status": status}
        if status == "error":
            body["detail"] = runtime.error_detail
        return JSONResponse(body, status_code=503)

    @app.get(
        "/v1/model",
        tags=["model"],
        summary="The serving model's info()",
        response_model=dict[str, Any],
        responses={503: {"model": ErrorResponse, "description": "Model not loaded (`model_not_ready`)."}},
    )
    async def model_info() -> dict[str, Any]:
        return runtime.require_ready().info

    def check_length(text: str, field: str, **extra: Any) -> None:
        """413 naming the field and the limit when one text is longer than ``max_chars_per_text``."""
        if len(text) > cfg.max_chars_per_text:
            raise ApiError(
                413,
                "text_too_long",
                f"{field} has {len(text)} characters; the limit is {cfg.max_chars_per_text} "
                "(max_chars_per_text); shorten or split it",
                limit=cfg.max_chars_per_text,
                **extra,
            )

    @app.post(
        "/v1/predict",
        tags=["model"],
        summary="Classify texts",
        response_model=PredictResponse,
        responses=_ERRORS,
    )
    async def predict(request: PredictRequest, http_request: Request) -> PredictResponse:
        started = time.perf_counter()
        texts = request.texts
        if len(texts) > cfg.max_texts_per_request:
            raise ApiError(
                413,
                "too_many_texts",
                f"texts has {len(texts)} items; the limit is {cfg.max_texts_per_request} per request "
                "(max_texts_per_request); split them over several requests",
                limit=cfg.max_texts_per_request,
            )
        for i, text in enumerate(texts):
            check_length(text, f"texts[{i}]", index=i)
        loaded = runtime.require_ready()
        rows = await submit_batch(batcher, texts)
        probs = np.vstack(rows)
        # single-label: {label, scores} (the argmax); multi-label: {labels, scores} (each label's threshold)
        kind = LabelSetPrediction if loaded.multi_label else Prediction
        predictions: list[Prediction | LabelSetPrediction] = [kind(**p) for p in loaded.predictions(probs)]
        # The production server logs every prediction and returns its id (serving/production.py).
        if prediction_hook is not None:
            ids = prediction_hook(http_request, texts, probs, loaded, time.perf_counter() - started)
            for pred, pred_id in zip(predictions, ids or [None] * len(predictions), strict=True):
                pred.id = pred_id
        return PredictResponse(predictions=predictions, model=loaded.info)

    @app.post(
        "/v1/explain",
        tags=["model"],
        summary="Explain one prediction: an attribution per word",
        response_model=ExplainResponse,
        responses=_EXPLAIN_ERRORS,
    )
    async def explain(request: ExplainRequest) -> ExplainResponse:
        text = request.text
        check_length(text, "text")
        loaded = runtime.require_ready()
        if request.target is not None and request.target not in loaded.labels:
            message = f"target {request.target!r} is not a label of the model; use one of {list(loaded.labels)}"
            raise ApiError(
                422,
                "invalid_request",
                f"body.target: {message}",
                details=[{"loc": ["body", "target"], "msg": message, "type": "value_error"}],
            )
        if not _explainable(loaded.classifier):
            raise ApiError(
                501,
                "explain_unsupported",
                "the serving model exposes no PyTorch model and tokenizer (e.g. an ONNX runtime), so it cannot be "
                "explained; serve the run directory instead",
            )
        executor = explainer["executor"]
        if executor is None:
            raise ApiError(503, "shutting_down", "the server is shutting down; retry", headers=_RETRY_AFTER)
        if explainer["pending"] >= MAX_PENDING_EXPLANATIONS:
            raise ApiError(
                503,
                "overloaded",
                f"{explainer['pending']} explanations are already pending; retry shortly",
                headers=_RETRY_AFTER,
            )
        explainer["pending"] += 1
        try:
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(executor, runtime.explain, text, request.method, request.target)
        except ExplainUnsupportedError as err:
            raise ApiError(501, "explain_unsupported", str(err)) from None
        except ImportError as err:
            logger.error("explanations need an optional dependency: %s", err)
            raise ApiError(
                501, "explain_unsupported", "explanations need captum on the server (pip install captum)"
            ) from None
        except RuntimeError as err:
            if "cannot schedule new futures" in str(err):  # the executor shut down under us
                raise ApiError(
                    503, "shutting_down", "the server is shutting down; retry", headers=_RETRY_AFTER
                ) from None
            logger.exception("explanation failed")
            raise ApiError(500, "explain_failed", "the explanation failed; the server log has the details") from None
        except Exception:
            logger.exception("explanation failed")
            raise ApiError(500, "explain_failed", "the explanation failed; the server log has the details") from None
        finally:
            explainer["pending"] -= 1
        return ExplainResponse(explanation=body, model=loaded.info)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(content=metrics.render(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        # The routes themselves, not app.include_router(): recent FastAPI includes a router as one lazy
        # route without a `.path`, and the metrics and body-guard middleware label requests by route path.
        app.router.routes.extend(router.routes)
    return app


def serve(
    load_classifier: Callable[[], Classifier],
    cfg: ServeConfig,
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Run the app with uvicorn until SIGINT/SIGTERM, then shut down gracefully.

    On a signal uvicorn stops accepting connections, lets in-flight requests finish (at most
    :data:`GRACEFUL_SHUTDOWN_S`), then the lifespan drains the batcher.

    Args:
        load_classifier: Returns the classifier; called once in a background thread.
        cfg: Serving settings.
        host: Interface to bind; defaults to ``cfg.host`` (loopback unless configured otherwise).
        port: TCP port; defaults to ``cfg.port``.

    Raises:
        ConfigError: ``cfg.docs`` is ``key``: this server checks no API keys (see ``serve.auth``).
    """
    if cfg.docs == "key":  # this server has no API keys (serve.auth: true goes through install_auth)
        raise ConfigError(_DOCS_KEY_WITHOUT_AUTH)
    run_server(create_app(load_classifier, cfg), cfg, host, port)
