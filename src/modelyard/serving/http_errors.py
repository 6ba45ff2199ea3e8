"""One JSON error shape for every failure: ``{"error": {"code", "message", ...}}``.

Clients branch on ``error.code`` (stable) and show ``error.message`` (human). Handlers here cover
request validation, plain HTTP errors (404/405), our own :class:`ApiError` and, as the last resort,
any unexpected exception, which is logged server-side and answered without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelyard.serving.batcher import BatcherClosedError, BatchFailedError, QueueFullError

T = TypeVar("T")

logger = logging.getLogger("modelyard.serving")

# Codes for HTTP errors raised by the framework itself (routing, method checks).
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answered as ``{"error": {"code": ..., "message": ..., **extra}}``.

    Args:
        status_code: HTTP status.
        code: Stable machine-readable code.
        message: Human-readable explanation naming the field and the fix.
        headers: Extra response headers (e.g. ``Retry-After``).
        **extra: Additional members of the ``error`` object (``limit``, ``index``).
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra


def error_response(
    status_code: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """Build the JSON error response every handler and middleware returns.

    Args:
        status_code: HTTP status.
        code: Stable machine-readable code.
        message: Human-readable explanation.
        headers: Extra response headers.
        **extra: Additional members of the ``error`` object; ``None`` values are left out.

    Returns:
        The response.
    """
    body: dict[str, Any] = {"code": code, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse({"error": body}, status_code=status_code, headers=dict(headers or {}))


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc) or "body"


def _msg(err: Mapping[str, Any]) -> str:
    # pydantic prefixes messages of our own ValueErrors; the prefix is noise for API users.
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    for err in errors:
        if err.get("type") == "json_invalid":
            loc = list(err.get("loc", ()))
            pos = loc[1] if len(loc) > 1 else None
            reason = (err.get("ctx") or {}).get("error", "malformed JSON")
            where = f" at character {pos}" if isinstance(pos, int) else ""
            return error_response(422, "invalid_json", f"request body is not valid JSON: {reason}{where}")
    # Echoing `input` back could return megabytes of text; the location and message are enough.
    details = [
        {
            "loc": [p if isinstance(p, int) else str(p) for p in err.get("loc", ())],
            "msg": _msg(err),
            "type": str(err.get("type", "")),
        }
        for err in errors
    ]
    message = "; ".join(f"{_loc(d['loc'])}: {d['msg']}" for d in details) or "invalid request"
    return error_response(422, "invalid_request", message, details=details)


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
        cfg = getattr(request.app.state, "config", None)
        if getattr(cfg, "docs", "public") != "off":  # serve.docs: off serves no /docs to point at
            message += "; see /docs for the API"
    elif exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
        message = f"method {request.method} is not allowed on {request.url.path}" + (f"; use {allow}" if allow else "")
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, headers=exc.headers, **exc.extra)


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the server log only: it can reveal paths, code and data.
    logger.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error; the server log has the details")


class ClientGone(Exception):
    """The client hung up while its request waited (e.g. for a drift run); there is no one to answer.

    Answered with status 499 (nginx's "client closed request"), which the server drops since the connection
    is gone, and which ``modelyard_http_requests_total`` records as 499, never as a 500.
    """


async def _client_gone_handler(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)


async def wait_while_connected(request: Request, waiting: Awaitable[T], poll_s: float = 0.5) -> T:
    """Await ``waiting`` while the client stays connected; when it hangs up, cancel it and raise :class:`ClientGone`.

    Starlette does not cancel a handler whose client went away, so a long wait (a shared admin job) would
    otherwise keep the work alive for no one.
    """
    task = asyncio.ensure_future(waiting)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone(request.url.path)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``.

    Args:
        app: The application.
    """
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(ClientGone, _client_gone_handler)
    # Starlette routes the `Exception` handler to its outermost ServerErrorMiddleware, so it also
    # catches errors raised inside our own middleware.
    app.add_exception_handler(Exception, _unhandled_handler)


RETRY_AFTER = {"Retry-After": "1"}
"""Headers of the 503s a client should simply retry."""


async def submit_batch(batcher: Any, items: list[Any]) -> list[Any]:
    """Hand ``items`` to the micro-batcher; its refusals become the JSON errors clients see (503/500)."""

    try:
        return await batcher.submit(items)
    except QueueFullError as err:
        raise ApiError(
            503, "overloaded", f"the server is overloaded ({err}); retry shortly", headers=RETRY_AFTER
        ) from None
    except BatcherClosedError:
        raise ApiError(503, "shutting_down", "the server is shutting down; retry", headers=RETRY_AFTER) from None
    except BatchFailedError:
        # Already logged with its traceback by the batcher; the client gets no internals.
        raise ApiError(
            500,
            "prediction_failed",
            "the model failed on the batch holding this request; the server log has the details",
        ) from None
