"""API-key authentication, scopes and per-key rate limits (pure ASGI middleware).

Keys come from the registry (``modelyard keys create``), sent as ``Authorization: Bearer KEY`` or
``X-API-Key: KEY``. Every route but ``/healthz``, ``/readyz``, the console's static page (``GET /``,
which holds no data) and, unless ``serve.docs`` is ``key``, the API docs (``/docs``, ``/openapi.json``;
:mod:`.docs`) needs a key; which scope it needs is decided by :func:`required_scope`. Failures are
JSON errors like every other: 401 ``unauthorized`` (no key, unknown or revoked key), 401 ``key_expired``
(the key's lifetime, ``modelyard keys create --expires``, has passed), 403 ``forbidden`` (key lacks the
scope), 429 ``rate_limited`` with ``Retry-After`` (the key's token bucket is empty).

Revocation window: verified keys (and refusals) are cached per server process for
``key_cache_s`` seconds, so a revoked key keeps working for at most that long after
``modelyard keys revoke``, then answers 401. The lifetime is the ``key_cache_s`` argument of
:func:`install_auth` / ``create_production_app``, else the environment variable
``MODELYARD_KEY_CACHE_SECONDS``, else :data:`KEY_CACHE_TTL_S` (5 s); ``0`` looks every request up
in the registry. Expiry is exact: the cached key carries its ``expires_at``, compared with the clock
on every request (the verifier is ``Registry.lookup_key``, which returns expired keys too, so the server
can tell ``key_expired`` from ``unauthorized``).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.registry.keys import KeyInfo
from modelyard.registry.models import utcnow
from modelyard.registry.names import RegistryError
from modelyard.serving.http_errors import error_response
from modelyard.serving.middleware import MetricsMiddleware

# The console's page, script and style sheet are public: they hold no data (serving/console.py).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/console/console.js", "/console/console.css"})
KEY_CACHE_TTL_S = 5.0  # default lifetime of a cached key: a revoked key stops working within this many seconds
KEY_CACHE_ENV = "MODELYARD_KEY_CACHE_SECONDS"
KEY_CACHE_SIZE = 10_000


def key_cache_seconds(value: float | None = None) -> float:
    """The verified-key cache lifetime: ``value``, else ``$MODELYARD_KEY_CACHE_SECONDS``, else 5 s.

    Args:
        value: An explicit lifetime in seconds (``None``: from the environment or the default).

    Returns:
        Seconds, ``>= 0`` (``0``: no caching).

    Raises:
        RegistryError: A negative, non-finite or non-numeric value.
    """
    source = "key_cache_s"
    if value is None:
        raw = os.environ.get(KEY_CACHE_ENV, "").strip()
        if not raw:
            return KEY_CACHE_TTL_S
        source = f"${KEY_CACHE_ENV}"
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise RegistryError(f"{source} must be a number of seconds >= 0 (the API-key cache lifetime)")
    return float(value)


def required_scope(path: str, public: frozenset[str] = PUBLIC_PATHS) -> str | None:
    """The scope a request path needs: ``None`` (public), ``predict``, ``feedback``, ``admin`` or ``any``.

    Args:
        path: The request path.
        public: The paths that need no key (the app's: :data:`PUBLIC_PATHS` plus, unless ``serve.docs``
            is ``key``, the API docs).

    Returns:
        The scope; ``any`` means any valid key (e.g. the API docs with ``serve.docs: key``).
    """
    if path in public:
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
    """Verified keys by the sha256 of the presented string, for ``ttl_s`` seconds (LRU-bounded).

    Negative answers are cached too, so a flood of bad keys costs one lookup per key per TTL.

    Args:
        verify: ``Registry.lookup_key``.
        ttl_s: Lifetime of an entry (see :func:`key_cache_seconds`); a key looked up at time ``t``
            is answered from the cache until ``t + ttl_s`` and looked up again after that.
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        verify: Callable[[str], KeyInfo | None],
        ttl_s: float = KEY_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._verify = verify
        self.ttl_s = ttl_s
        self._clock = clock
        self._cache: OrderedDict[str, tuple[KeyInfo | None, float]] = OrderedDict()

    async def get(self, key: str) -> KeyInfo | None:
        """The key's info (possibly expired), or ``None`` for an unknown/revoked key."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        now = self._clock()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            self._cache.move_to_end(digest)
            return hit[0]
        info = await asyncio.to_thread(self._verify, key)
        self._cache[digest] = (info, now + self.ttl_s)
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
        verify: ``Registry.lookup_key`` (called off the event loop, results cached); it may return an
            expired key's info, refused here with ``key_expired``.
        buckets: Rate-limit state (default: a fresh one).
        cache_s: Key-cache lifetime in seconds (``None``: :func:`key_cache_seconds`).
        public_paths: Paths that need no key (default :data:`PUBLIC_PATHS`).
        max_in_flight: Requests one key may have in flight at once; more → 429 ``too_many_in_flight``
            (``None``: no cap). Rate limits bound requests per second; this bounds slow ones piling up.
    """

    def __init__(
        self,
        app: ASGIApp,
        verify: Callable[[str], KeyInfo | None],
        buckets: TokenBuckets | None = None,
        cache_s: float | None = None,
        public_paths: frozenset[str] = PUBLIC_PATHS,
        max_in_flight: int | None = None,
    ) -> None:
        self.app = app
        self.keys = KeyCache(verify, key_cache_seconds(cache_s))
        self.buckets = buckets or TokenBuckets()
        self.public_paths = public_paths
        self.max_in_flight = max_in_flight
        self.in_flight: dict[str, int] = {}  # key id → requests being answered (one event loop: no lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["path"], self.public_paths)
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
        if info.expired(utcnow()):  # checked on every request: a cached key expires on time too
            assert info.expires_at is not None
            resp = error_response(
                401,
                "key_expired",
                f"the API key expired at {info.expires_at.isoformat(timespec='seconds')}; "
                "ask for a new one (`modelyard keys create`)",
                headers=challenge,
            )
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
        busy = self.in_flight.get(info.key_id, 0)
        if self.max_in_flight is not None and busy >= self.max_in_flight:
            resp = error_response(
                429,
                "too_many_in_flight",
                f"this API key already has {busy} requests in flight (the limit is {self.max_in_flight}); "
                "wait for answers before sending more",
                headers={"Retry-After": "1"},
            )
            await resp(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = info
        self.in_flight[info.key_id] = busy + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.in_flight[info.key_id] - 1
            if left:
                self.in_flight[info.key_id] = left
            else:
                del self.in_flight[info.key_id]


def install_auth(
    app: object,
    verify: Callable[[str], KeyInfo | None],
    *,
    cache_s: float | None = None,
    max_in_flight: int | None = None,
) -> None:
    """Add :class:`ApiKeyMiddleware` inside the metrics middleware (so 401/403/429 are counted) and
    before the body guard (so an unauthenticated body is never read).

    Args:
        app: A FastAPI app from :func:`modelyard.serving.create_app` (not yet started).
        verify: ``Registry.lookup_key`` (expired keys answer 401 ``key_expired``; with
            ``Registry.verify_key`` they would answer 401 ``unauthorized``).
        cache_s: How long a verified key is trusted without asking the registry again, i.e. how long a
            revoked key may keep working (``None``: ``$MODELYARD_KEY_CACHE_SECONDS`` or 5 s).
        max_in_flight: Requests one key may have in flight at once (``serve.max_in_flight_per_key``).

    Raises:
        RegistryError: A negative or malformed lifetime (checked now, not at the first request).
    """
    cache_s = key_cache_seconds(cache_s)
    from starlette.middleware import Middleware

    # The API docs are public unless serve.docs is `key` (create_app puts their paths in app.state).
    public = PUBLIC_PATHS | getattr(app.state, "public_paths", frozenset())  # type: ignore[attr-defined]
    stack = app.user_middleware  # type: ignore[attr-defined]
    # user_middleware[0] is the outermost layer; put auth right after the metrics layer.
    at = next((i + 1 for i, m in enumerate(stack) if m.cls is MetricsMiddleware), 0)
    stack.insert(
        at,
        Middleware(ApiKeyMiddleware, verify=verify, cache_s=cache_s, public_paths=public, max_in_flight=max_in_flight),
    )
