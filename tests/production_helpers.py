"""Helpers for the production-server tests: a registry holding the tiny run, and an in-process client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from modelyard.config import ServeConfig
from modelyard.ops.monitor import monitor
from modelyard.registry import Registry, open_registry
from modelyard.serving.production import create_production_app

T = TypeVar("T")


def make_registry(tmp: Path, run: Path, versions: int = 1, db: str | None = None) -> Registry:
    """A registry with ``versions`` copies of ``run`` registered as app ``demo``; version 1 in production."""
    reg = open_registry(tmp / "store", db)
    for _ in range(versions):
        reg.register(run, "demo")
    reg.promote("demo", 1)
    return reg


def production_app(reg: Registry, **kw: Any) -> Any:
    """The production app for ``demo@production`` with small batching delays (and the drift monitor, as the CLI)."""
    cfg = ServeConfig(**{"max_wait_ms": 2.0, **kw.pop("cfg", {})})
    return create_production_app(reg, "demo", "production", cfg, **{"poll_s": 0, "drift_monitor": monitor, **kw})


@contextlib.asynccontextmanager
async def running(app: Any, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan; yield an in-process client (after the model loaded, if ``ready``)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            if ready:
                for _ in range(600):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError((await client.get("/readyz")).text)
            yield client


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Run a coroutine with a hard timeout."""
    return asyncio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


def bearer(key: str) -> dict[str, str]:
    """Authorization header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, in a thread; yields its base URL once ready."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not become ready"
        time.sleep(0.1)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(30)
