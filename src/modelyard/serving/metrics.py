"""Prometheus metrics of one app, in its own registry.

Each app gets a private :class:`~prometheus_client.CollectorRegistry` rather than the process-global
one: several apps in one process (tests, a multi-model host) would otherwise collide on metric names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServingMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _label_name(key: object) -> str:
    # Prometheus label names: [a-zA-Z_][a-zA-Z0-9_]*, and a leading "__" is reserved.
    name = _LABEL_NAME.sub("_", str(key)).lstrip("_")
    return name if name and not name[0].isdigit() else f"k_{name}"


def _size_buckets(max_batch_size: int) -> tuple[float, ...]:
    # Powers of two up to the configured maximum, plus the maximum itself, so "full batches" is a bucket.
    out, b = [], 1
    while b < max_batch_size:
        out.append(float(b))
        b *= 2
    out.append(float(max_batch_size))
    return tuple(out)


class ServingMetrics:
    """The metrics an app exports at ``/metrics``.

    Args:
        max_batch_size: The batcher's maximum, used for the batch-size histogram buckets.
    """

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "modelyard_http_requests",
            "HTTP requests answered, by route template and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "modelyard_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "modelyard_batch_size",
            "Texts per model call (predict_proba).",
            buckets=_size_buckets(max_batch_size),
            registry=r,
        )
        self.batch_duration = Histogram(
            "modelyard_batch_duration_seconds",
            "Wall time of one model call.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_failures = Counter(
            "modelyard_batch_failures",
            "Model calls that raised.",
            registry=r,
        )
        self.texts = Counter("modelyard_predicted_texts", "Texts the model has scored.", registry=r)
        self.queue_depth = Gauge("modelyard_queue_depth", "Texts waiting for a batch.", registry=r)
        self.model_ready = Gauge("modelyard_model_ready", "1 once the model is loaded, else 0.", registry=r)
        self.model_info = Info("modelyard_model", "The serving model (from Classifier.info()).", registry=r)

    def bind_queue_depth(self, fn: Callable[[], float]) -> None:
        """Read the queue depth from ``fn`` at scrape time (no bookkeeping on the hot path).

        Args:
            fn: Returns the current number of queued texts.
        """
        self.queue_depth.set_function(fn)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request.

        Args:
            route: Route template (``/v1/predict``), never the raw path, to bound label cardinality.
            method: HTTP method.
            status: Response status code.
            seconds: Time to answer.
        """
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, size: int, seconds: float, ok: bool) -> None:
        """Record one model call (the batcher's ``on_batch`` hook).

        Args:
            size: Texts in the batch.
            seconds: Wall time of the call.
            ok: Whether it succeeded.
        """
        self.batch_size.observe(size)
        self.batch_duration.observe(seconds)
        if ok:
            self.texts.inc(size)
        else:
            self.batch_failures.inc()

    def set_model(self, info: Mapping[str, Any] | None) -> None:
        """Publish the loaded model's identity (scalar ``info()`` entries only), or mark it not ready.

        Args:
            info: ``Classifier.info()``, or ``None`` when no model is loaded.
        """
        if info is None:
            self.model_ready.set(0)
            return
        labels: dict[str, str] = {}
        for key, value in info.items():
            if isinstance(value, (str, int, float, bool)):
                labels[_label_name(key)] = str(value)
            elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                labels[_label_name(key)] = ",".join(value)
        self.model_info.info(labels)
        self.model_ready.set(1)

    def render(self) -> bytes:
        """The registry in Prometheus text format.

        Returns:
            The exposition body.
        """
        return generate_latest(self.registry)
