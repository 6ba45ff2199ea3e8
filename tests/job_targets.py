"""Functions the job-runner tests run in a child process (``python -m modelyard.serving.job_worker``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def sleepy(registry: Any, seconds: float, marker: str) -> dict[str, Any]:
    """Record this process's id in ``marker`` (one line per start), then sleep."""
    with Path(marker).open("a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid(), "app": registry.store.name}


def boom(registry: Any) -> dict[str, Any]:
    raise RuntimeError("kaput")


def slow_monitor(registry: Any, app: str, alias: str, since: str) -> dict[str, Any]:
    """A drift monitor stand-in: one line per run in ``$MODELYARD_TEST_MARKER``, one second of work."""
    with Path(os.environ["MODELYARD_TEST_MARKER"]).open("a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(1.0)
    return {"app": app, "status": "ok", "version": 1, "since": since, "n_live": 0, "signals": {}}


def quick_monitor(registry: Any, app: str, alias: str, since: str) -> dict[str, Any]:
    """A drift monitor stand-in that answers at once (HTTP-contract tests: the fuzzer)."""
    return {"app": app, "status": "insufficient_data", "version": 1, "since": since, "n_live": 0, "signals": {}}


def burning_monitor(registry: Any, app: str, alias: str, since: str) -> dict[str, Any]:
    """A drift monitor stand-in that keeps one core busy for a minute (one line per run in the marker)."""
    with Path(os.environ["MODELYARD_TEST_MARKER"]).open("a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + 60
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return {"app": app, "status": "ok", "version": 1, "since": since, "n_live": n, "signals": {}}
