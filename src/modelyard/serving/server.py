"""Running a modelyard app on uvicorn with connection hygiene as the server's own defaults.

Where each limit comes from (all in the ``serve`` section):

* ``keep_alive_s`` → uvicorn ``timeout_keep_alive`` (idle kept-alive connections);
* ``max_connections`` → :class:`GuardedH11Protocol` (uvicorn's ``limit_concurrency`` rule, but the refusal is
  the JSON error ``503 overloaded`` with ``Retry-After`` and ``Connection: close`` instead of plain text);
* ``max_header_bytes`` → h11 ``max_incomplete_event_size`` (a larger request head: 400 and close);
* ``header_timeout_s`` / ``body_timeout_s`` → :class:`GuardedH11Protocol` below: uvicorn has no read
  timeouts, so a connection that trickles its headers or body (slow-loris) would otherwise stay open;
* a request h11 cannot parse → the JSON error ``400 bad_request`` (not uvicorn's plain text), then close;
* a request with both ``Content-Length`` and ``Transfer-Encoding`` → :class:`FramingMiddleware`: 400 and
  ``Connection: close``, so nothing smuggled after it on the connection is served;
* ``max_body_bytes`` → the JSON and image middleware (413).

Behind a reverse proxy, set the proxy's own client timeouts at or below these, let it refuse CL+TE as well
(nginx does), and keep ``max_connections`` above the proxy's upstream connection pool.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from modelyard.config import ServeConfig
from modelyard.errors import ResourceError
from modelyard.serving.http_errors import error_response

# Loopback by default: the server has no TLS and serves a model whose compute (and possibly training-data
# memorisation) is worth protecting. Binding every interface (0.0.0.0) would expose that to anything that can
# reach the machine, so it has to be an explicit choice - typically behind a reverse proxy that adds TLS.
DEFAULT_HOST = "127.0.0.1"

# How long shutdown waits for in-flight requests (uvicorn) and then for queued texts (the batcher).
GRACEFUL_SHUTDOWN_S = 30.0


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus read deadlines for the request head and body.

    The head must be complete ``header_timeout_s`` after the connection opened (or after the first byte of
    a later request on a kept-alive connection); the body ``body_timeout_s`` after the head. Past a
    deadline the connection is closed: before a request exists there is no one to answer, and during a
    body the application sees a disconnect. Subclassed (not patched) so the rest is uvicorn's own code.
    """

    header_timeout_s = 10.0
    body_timeout_s = 30.0
    max_connections: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.max_connections is not None:
            self.app = self._capped(self.app)

    def _capped(self, app: Any) -> Any:
        """uvicorn's own ``limit_concurrency`` test (open connections or running request tasks at the cap),
        answered with the documented JSON error: uvicorn would send ``text/plain`` "Service Unavailable", and
        the choice of that app is inside a method no subclass can reach."""
        limit = self.max_connections

        async def capped(scope: Scope, receive: Receive, send: Send) -> None:
            # uvicorn adds this request's task before the app runs, hence ``>`` for the tasks.
            if scope["type"] == "http" and (len(self.connections) >= limit or len(self.tasks) > limit):  # type: ignore[operator]
                self.logger.warning("Exceeded concurrency limit.")
                response = error_response(
                    503,
                    "overloaded",
                    f"the server holds its maximum of {limit} connections; retry shortly",
                    # outside the app, so its nosniff middleware never sees this response
                    headers={"Connection": "close", "Retry-After": "1", "X-Content-Type-Options": "nosniff"},
                )
                await response(scope, receive, send)
                return
            await app(scope, receive, send)

        return capped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_kind = ""
        self._arm("head", self.header_timeout_s)

    def _arm(self, kind: str, seconds: float) -> None:
        self._disarm()
        self._deadline_kind = kind
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()  # type: ignore[union-attr]
        self._deadline, self._deadline_kind = None, ""

    def _deadline_passed(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection whose request %s did not arrive in time", self._deadline_kind)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:  # still reading a request head (maybe the next one on a kept-alive connection)
            if self._deadline_kind != "head":
                self._arm("head", self.header_timeout_s)
        elif state is h11.SEND_BODY:
            if self._deadline_kind != "body":
                self._arm("body", self.body_timeout_s)
        else:  # the request is complete (DONE) or the connection is ending
            self._disarm()

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (bad request line, oversized head, bad chunk framing): the documented JSON
        error instead of uvicorn's plain-text body, then close (as uvicorn does)."""
        body = json.dumps(
            {"error": {"code": "bad_request", "message": f"malformed HTTP request ({msg.rstrip('.')}); fix the client"}}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"x-content-type-options", b"nosniff"),
            (b"connection", b"close"),
        ]
        try:
            for event in (h11.Response(status_code=400, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # h11 cannot answer in its current state: just close
            pass
        self.transport.close()

    def on_response_complete(self) -> None:
        self._disarm()  # uvicorn's keep-alive timer takes over until the next request's first byte
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class FramingMiddleware:
    """Refuse a request that declares both ``Content-Length`` and ``Transfer-Encoding`` (request smuggling).

    RFC 9112 §6.1 lets a server reject such a message; h11 would let Transfer-Encoding win, while a proxy in
    front may believe Content-Length and forward a second, smuggled request. The 400 carries
    ``Connection: close``, so the server closes the connection after it and serves nothing that followed.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = {k.lower() for k, _ in scope.get("headers", [])}
            if b"content-length" in names and b"transfer-encoding" in names:
                response = error_response(
                    400,
                    "bad_request",
                    "a request may not carry both Content-Length and Transfer-Encoding; send one of them",
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def protocol_for(cfg: ServeConfig) -> type[GuardedH11Protocol]:
    """The protocol class with ``cfg``'s read deadlines (uvicorn instantiates it per connection)."""
    return type(
        "ConfiguredH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout_s": cfg.header_timeout_s,
            "body_timeout_s": cfg.body_timeout_s,
            "max_connections": cfg.max_connections,
        },
    )


def uvicorn_config(app: Any, cfg: ServeConfig, host: str | None = None, port: int | None = None) -> Any:
    """The ``uvicorn.Config`` modelyard servers run with (loopback unless ``host``/``cfg.host`` say otherwise)."""
    import uvicorn  # imported here so building the app (tests, ASGI hosts) doesn't need it

    return uvicorn.Config(
        app,
        host=host or cfg.host or DEFAULT_HOST,
        port=cfg.port if port is None else port,
        http=protocol_for(cfg),
        lifespan="on",  # the app can't serve without its lifespan; fail loudly rather than silently
        timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
        timeout_keep_alive=int(max(1, round(cfg.keep_alive_s))),
        limit_concurrency=None,  # enforced by the protocol (see GuardedH11Protocol._capped)
        h11_max_incomplete_event_size=cfg.max_header_bytes,
        server_header=False,
        log_level="info",
    )


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, a port another process holds (uvicorn would log a traceback and exit).

    Raises:
        ResourceError: the port is in use or the address cannot be bound here.
    """
    import errno
    import socket

    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ResourceError(
                    f"port {port} on {host} is in use by another process; pass --port with a free port "
                    "(or serve.port=N), or stop the other server"
                ) from None
            if err.errno in (errno.EACCES, errno.EPERM):
                raise ResourceError(
                    f"cannot bind port {port} on {host}: permission denied; use a port above 1023"
                ) from None
            raise ResourceError(f"cannot bind {host}:{port} ({err.strerror}); check --host and --port") from None


def run_server(app: Any, cfg: ServeConfig, host: str | None = None, port: int | None = None) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, then shut down gracefully (see :func:`uvicorn_config`)."""
    import uvicorn

    config = uvicorn_config(app, cfg, host, port)
    check_port(config.host, config.port)
    uvicorn.Server(config).run()
