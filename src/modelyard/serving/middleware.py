"""Pure-ASGI middleware: request metrics, and the body/content-type guard for JSON endpoints.

Both are raw ASGI (not ``BaseHTTPMiddleware``) so they can see and replay the byte stream and add no
per-request task overhead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.serving.http_errors import error_response
from modelyard.serving.metrics import ServingMetrics

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def route_template(routes: Iterable[BaseRoute], scope: Scope) -> tuple[str, bool]:
    """Find the route template a request hits.

    Args:
        routes: The app's routes.
        scope: The ASGI scope.

    Returns:
        ``(template, full)``: the template (``"unmatched"`` when no path matches, so a scan of random
        URLs can't blow up metric cardinality) and whether the method matched too.
    """
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", "unmatched"), True
        if match is Match.PARTIAL and partial is None:
            partial = getattr(route, "path", "unmatched")
    return (partial or "unmatched"), False


#: The status recorded for a request whose client hung up before it was answered (nginx's convention).
CLIENT_CLOSED = 499


class MetricsMiddleware:
    """Counts every HTTP response by route template, method and status, and times it.

    Args:
        app: The wrapped ASGI app.
        metrics: Where to record.
        routes: The app's routes (for the route template label).
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, _ = route_template(self.routes, scope)
        start = time.perf_counter()
        status = 500  # if the app raises before responding, the error handler answers 500
        started = disconnected = False

        async def receive_wrapper() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
                # Every response, JSON errors included, is to be taken as its declared type (no MIME sniffing).
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
                    message = {**message, "headers": [*headers, (b"x-content-type-options", b"nosniff")]}
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            if disconnected and not started:
                status = CLIENT_CLOSED  # the client hung up before an answer: not a server error
            self.metrics.observe_request(route, scope["method"], status, time.perf_counter() - start)


def _unparseable_json(text: str) -> str | None:
    """Why ``json.loads`` would fail on ``text`` for a reason other than a syntax error, else ``None``.

    Syntax errors are left to the framework, whose 422 names the character position.
    """
    try:
        json.loads(text)
    except RecursionError:
        return "nested too deeply"
    except json.JSONDecodeError:
        return None
    except ValueError as err:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        return str(err).split(";")[0]
    return None


class JsonBodyGuardMiddleware:
    """Enforces the body size cap on every request, and JSON content type and UTF-8 on body routes.

    The size cap checks the ``Content-Length`` header first (cheap rejection, nothing read) and then
    counts the bytes actually received, because a chunked request has no header and a lying client
    can send more than it declared. Accepted bodies are buffered (at most ``max_body_bytes``) and
    replayed to the app as one message.

    Args:
        app: The wrapped ASGI app.
        max_body_bytes: Largest body accepted; larger → 413 ``body_too_large``.
        routes: The app's routes; the content-type check applies only to requests that hit one with
            a body-carrying method, so unknown paths still get their 404.
        path_limits: Larger caps for some paths (``/v1/feedback`` may carry an image back).
    """

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, routes: list[BaseRoute], path_limits: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.routes = routes
        self.path_limits = dict(path_limits or {})

    def _too_large(self, limit: int) -> tuple[int, str, str]:
        return (
            413,
            "body_too_large",
            f"request body exceeds the limit of {limit} bytes (max_body_bytes); "
            "send fewer or shorter texts per request",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope["method"]
        limit = self.path_limits.get(scope["path"], self.max_body_bytes)
        _, hits_route = route_template(self.routes, scope)
        if method in _BODY_METHODS and hits_route:
            content_type = headers.get("content-type", "")
            media_type = content_type.split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                got = f"'{content_type}'" if content_type else "no Content-Type"
                resp = error_response(
                    415,
                    "unsupported_media_type",
                    f"expected Content-Type: application/json, got {got}",
                )
                await resp(scope, receive, send)
                return

        declared = headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                resp = error_response(400, "bad_request", f"invalid Content-Length header: {declared!r}")
                await resp(scope, receive, send)
                return
            if length > limit:
                status, code, message = self._too_large(limit)
                await error_response(status, code, message, limit=limit)(scope, receive, send)
                return
        elif method not in _BODY_METHODS:
            # No declared body and a method that carries none: nothing to count, don't buffer.
            await self.app(scope, receive, send)
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left mid-body; there is no one to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                status, code, message_text = self._too_large(limit)
                resp = error_response(status, code, message_text, limit=limit)
                await resp(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break

        body = b"".join(chunks)
        if method in _BODY_METHODS and hits_route and body:
            # JSON on the wire is UTF-8 (RFC 8259). Checked here because the framework turns a decode
            # error into an anonymous 400 instead of a 422 the client can act on.
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as err:
                resp = error_response(
                    422, "invalid_json", f"request body is not UTF-8 (byte {err.start}); send UTF-8 JSON"
                )
                await resp(scope, receive, send)
                return
            # JSON the parser refuses for its size rather than its syntax (nesting deeper than Python's
            # recursion limit, integers over 4,300 digits) also became an anonymous 400: make it the 422.
            problem = _unparseable_json(text)
            if problem is not None:
                await error_response(422, "invalid_json", f"request body is not usable JSON: {problem}")(
                    scope, receive, send
                )
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for http.disconnect as usual

        await self.app(scope, replay, send)
