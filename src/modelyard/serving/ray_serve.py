"""``modelyard serve TARGET --backend ray --replicas N``: the same app as a Ray Serve deployment of N replicas.

Each replica builds the app with :func:`modelyard.serving.targets.build_app` — the routes, API keys, limits,
micro-batching and prediction log of the uvicorn server — and Ray Serve's HTTP proxy spreads requests over the
replicas. Ray owns the processes, the proxy and the routing; nothing here forwards requests by hand. A local
Ray instance binds to loopback with no dashboard; ``--ray-address`` joins an existing cluster instead. What
uvicorn's own protocol layer does in the single-process server (read deadlines, the open-connection cap) is the
proxy's job here: Ray Serve's proxy has its own request timeout and queueing (``max_ongoing_requests``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from modelyard.errors import ModelyardError
from modelyard.serving.targets import Target, build_app, run_loader, serve_settings


def serve_on_ray(
    target: Target,
    *,
    replicas: int,
    host: str | None = None,
    port: int | None = None,
    address: str | None = None,
    drift_monitor: Callable[..., dict[str, Any]] | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Deploy ``target`` on Ray Serve with ``replicas`` replicas and block until SIGINT/SIGTERM."""
    try:
        import ray
        from ray import serve
    except ImportError as err:
        raise ModelyardError(
            f"--backend ray needs Ray Serve ({err.name} is missing): pip install 'modelyard[ray]'"
        ) from None
    if replicas < 1:
        raise ModelyardError(f"--replicas must be at least 1 (got {replicas})")
    cfg = serve_settings(target)  # bad overrides, unknown app or alias: fail here, before Ray starts
    if not target.is_registry:
        from pathlib import Path

        if target.runtime == "auto":  # measured once here, not in every replica
            from modelyard.compression.choice import choose_runtime

            chosen, why = choose_runtime(Path(target.target), measure=True)
            say(f"runtime auto → {chosen}: {why}")
            target = dataclasses.replace(target, runtime=chosen)
        run_loader(Path(target.target), target.runtime)  # a bad path, a damaged file, a missing variant: now
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage upload from an offline tool
    cpus = os.cpu_count() or 1
    if address is None:
        ray.init(
            address="local",
            num_cpus=max(cpus, replicas),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level="ERROR",
        )
    else:
        ray.init(address=address, logging_level="ERROR")
    host, port = host or cfg.host, port or cfg.port
    threads = max(1, cpus // replicas)  # replicas share the cores instead of each taking all of them
    try:
        serve.start(http_options={"host": host, "port": port})

        def builder() -> FastAPI:  # a plain function: Ray Serve calls it in each replica (a partial is not one)
            return replica_app(target, drift_monitor, threads)

        deployment = serve.deployment(
            serve.ingress(builder)(),
            name="modelyard",
            num_replicas=replicas,
            # the app's own micro-batcher needs concurrent requests to batch; its queue limit answers overload
            max_ongoing_requests=max(cfg.max_queue, 1),
            ray_actor_options={"num_cpus": 1},
        )
        signal.signal(signal.SIGTERM, _interrupt)
        say(f"serving {target.target} on Ray Serve: {replicas} replica(s) at http://{host}:{port}")
        serve.run(deployment.bind(), name="modelyard", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()  # replicas drain in-flight requests (Ray Serve's graceful shutdown)
        ray.shutdown()


def replica_app(target: Target, drift_monitor: Callable[..., dict[str, Any]] | None, threads: int) -> FastAPI:
    """Run in each replica's process: torch's share of the cores, then the very app uvicorn would serve."""
    import torch

    torch.set_num_threads(threads)
    return build_app(target, drift_monitor=drift_monitor)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
