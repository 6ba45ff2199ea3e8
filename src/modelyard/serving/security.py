"""API-key authentication, scopes and per-key rate limits (pure ASGI middleware).

Keys come from the registry (``modelyard keys create``), sent as ``Authorization: Bearer KEY`` or
``X-API-Key: KEY``. Every route but ``/healthz``, ``/readyz`` and the console's static page (``GET /``,
which holds no data) needs a key; which scope it needs is
decided by :func:`required_scope`. Failures are JSON errors like every other: 401 ``unauthorized``
(no key, unknown or revoked key), 403 ``forbidden`` (key lacks the scope), 429 ``rate_limited``
with ``Retry-After`` (the key's token bucket is empty).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.registry.store import KeyInfo
from modelyard.serving.http_errors import error_response

# The console's page, script and style sheet are public: they hold no data (serving/console.py).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/console/console.js", "/console/console.css"})
KEY_CACHE_TTL_S = 5.0  # a revoked key stops working within this many seconds
KEY_CACHE_SIZE = 10_000


def required_scope(path: str) -> str | None:
    """The scope a request path needs: ``None`` (public), ``predict``, ``feedback``, ``admin`` or ``any``.

    Args:
        path: The request path.

    Returns:
        The scope; ``any`` means any valid key (the API docs).
    """
    if path in PUBLIC_PATHS:
        return None
    if path == "/v1/feedback":
        return "feedback"
    if path.startswith("/admin/") or path == "/admin" or path == "/metrics":
        return "admin"
    if path.startswith("/v1/"):
        return "predict"
    return "any"


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """One token bucket per key: ``rate`` tokens per second, burst of ``max(1, rate)`` tokens.

    Args:
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str, rate: float) -> float:
        """Take one token. Returns 0 when allowed, else the seconds until a token is available."""
        capacity = max(1.0, rate)
        now = self._clock()
        with self._lock:
            b = self._buckets.get(key_id)
            if b is None:
                b = self._buckets[key_id] = _Bucket(capacity, now)
            b.tokens = min(capacity, b.tokens + (now - b.updated) * rate)
            b.updated = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return 0.0
            return (1.0 - b.tokens) / rate


class KeyCache:
    """Verified keys by the sha256 of the presented string, for :data:`KEY_CACHE_TTL_S` seconds (LRU-bounded).

    Negative answers are cached too, so a flood of bad keys costs one lookup per key per TTL.

    Args:
        verify: ``Registry.verify_key``.
    """

    def __init__(self, verify: Callable[[str], KeyInfo | None]) -> None:
        self._verify = verify
        self._cache: OrderedDict[str, tuple[KeyInfo | None, float]] = OrderedDict()

    async def get(self, key: str) -> KeyInfo | None:
        """The key's info, or ``None`` for an unknown/revoked key."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            self._cache.move_to_end(digest)
            return hit[0]
        info = await asyncio.to_thread(self._verify, key)
        self._cache[digest] = (info, now + KEY_CACHE_TTL_S)
        self._cache.move_to_end(digest)
        while len(self._cache) > KEY_CACHE_SIZE:
            self._cache.popitem(last=False)
        return info


def _presented_key(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


class ApiKeyMiddleware:
    """Requires a key with the right scope on every non-public route and applies its rate limit.

    On success the key's :class:`KeyInfo` is put in ``request.state.api_key``.

    Args:
        app: The wrapped ASGI app.
        verify: ``Registry.verify_key`` (called off the event loop, results cached).
        buckets: Rate-limit state (default: a fresh one).
    """

    def __init__(
        self, app: ASGIApp, verify: Callable[[str], KeyInfo | None], buckets: TokenBuckets | None = None
    ) -> None:
        self.app = app
        self.keys = KeyCache(verify)
        self.buckets = buckets or TokenBuckets()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["path"])
        if needed is None:
            await self.app(scope, receive, send)
            return
        challenge = {"WWW-Authenticate": 'Bearer realm="modelyard"'}
        key = _presented_key(scope)
        if key is None:
            resp = error_response(
                401,
                "unauthorized",
                "this endpoint needs an API key: send `Authorization: Bearer KEY` (create one with "
                "`modelyard keys create --scope predict`)",
                headers=challenge,
            )
            await resp(scope, receive, send)
            return
        info = await self.keys.get(key)
        if info is None:
            resp = error_response(401, "unauthorized", "the API key is unknown or revoked", headers=challenge)
            await resp(scope, receive, send)
            return
        if needed != "any" and not info.allows(needed):
            resp = error_response(
                403,
                "forbidden",
                f"the API key lacks the '{needed}' scope needed for {scope['path']} "
                f"(it has: {', '.join(sorted(info.scopes))})",
            )
            await resp(scope, receive, send)
            return
        if info.rate_per_s:
            wait = self.buckets.take(info.key_id, info.rate_per_s)
            if wait > 0:
                retry = max(1, math.ceil(wait))
                resp = error_response(
                    429,
                    "rate_limited",
                    f"rate limit of {info.rate_per_s:g} requests/s for this key exceeded; retry in {retry}s",
                    headers={"Retry-After": str(retry)},
                )
                await resp(scope, receive, send)
                return
        scope.setdefault("state", {})["api_key"] = info
        await self.app(scope, receive, send)


def install_auth(app: object, verify: Callable[[str], KeyInfo | None]) -> None:
    """Add :class:`ApiKeyMiddleware` inside the metrics middleware (so 401/403/429 are counted) and
    before the body guard (so an unauthenticated body is never read).

    Args:
        app: A FastAPI app from :func:`modelyard.serving.create_app` (not yet started).
        verify: ``Registry.verify_key``.
    """
    from starlette.middleware import Middleware

    from modelyard.serving.middleware import MetricsMiddleware

    stack = app.user_middleware  # type: ignore[attr-defined]
    # user_middleware[0] is the outermost layer; put auth right after the metrics layer.
    at = next((i + 1 for i, m in enumerate(stack) if m.cls is MetricsMiddleware), 0)
    stack.insert(at, Middleware(ApiKeyMiddleware, verify=verify))
