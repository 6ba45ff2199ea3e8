"""The served model's runtime: background loading, readiness, hot swap, predictions and explanations.

:class:`ModelRuntime` holds the loaded classifier behind a lock; the app (:mod:`modelyard.serving.app`) routes
requests to it through the micro-batcher.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from fastapi import FastAPI, Request

from modelyard._internal.labels import join_label_set, label_predictions, label_set_predictions, predicted_sets
from modelyard.serving.http_errors import RETRY_AFTER, ApiError
from modelyard.serving.metrics import ServingMetrics

logger = logging.getLogger("modelyard.serving")


# Explanations waiting for (or in) the explain thread; beyond this /v1/explain answers 503 overloaded.
# An explanation costs up to n_steps forward+backward passes and holds the model meanwhile.
MAX_PENDING_EXPLANATIONS = 4
EXPLAIN_N_STEPS = 32


@runtime_checkable
class Classifier(Protocol):
    """What the server needs from a model (see ``modelyard.models.loading``)."""

    labels: list[str]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities ``(len(texts), len(labels))``, rows summing to 1 (multi-label models, which also have
        ``multi_label = True`` and ``thresholds``: one independent probability per label). Blocking."""
        ...

    def info(self) -> dict[str, Any]:
        """JSON-able description: name, run id, backbone, labels …"""
        ...


class PredictionHook(Protocol):
    """Called once per answered ``/v1/predict`` request (texts, or images via :mod:`.images`) with the HTTP
    request (``request.state.api_key`` is the caller's key when auth is on), the texts (or one description
    per image), the ``(len(texts), len(labels))`` probabilities returned, the model that answered
    (``.labels``, ``.info``), the seconds spent so far, and ``mask`` (whether the texts may hold personal
    data worth masking; ``False`` for image descriptions). Returns one id per prediction (sent back as
    ``predictions[i].id``) or ``None``.
    """

    def __call__(
        self, request: Request, texts: list[str], probs: np.ndarray, loaded: Any, seconds: float, mask: bool = True
    ) -> Sequence[str] | None: ...


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
"""An extra lifespan for :func:`create_app`: ``lifespan(app)`` is entered before the model starts
loading and exited after the batcher drained at shutdown."""


def _combine_hooks(hooks: Sequence[PredictionHook]) -> PredictionHook | None:
    """One hook calling ``hooks`` in order; the ids are the first non-``None`` ids any of them returns."""
    if not hooks:
        return None

    def combined(
        request: Request, texts: list[str], probs: np.ndarray, loaded: Any, seconds: float, mask: bool = True
    ) -> list[str] | None:
        ids: list[str] | None = None
        for hook in hooks:
            out = hook(request, texts, probs, loaded, seconds, mask=mask)
            if out is not None and ids is None:
                ids = list(out)
        return ids

    return combined


@dataclass(frozen=True)
class _Loaded:
    classifier: Classifier
    labels: tuple[str, ...]
    info: dict[str, Any]
    # multi-label models: the per-label decision thresholds (label order); None for a single-label model
    thresholds: np.ndarray | None = None

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None

    def predictions(self, probs: np.ndarray) -> list[dict[str, Any]]:
        """``{"label", "scores"}`` (single-label: the argmax) or ``{"labels", "scores"}`` (multi-label) per row."""
        labels = list(self.labels)
        if self.thresholds is None:
            return label_predictions(labels, probs)
        return label_set_predictions(labels, probs, self.thresholds)

    def label_strings(self, probs: np.ndarray) -> list[str]:
        """What the prediction log's ``label`` column keeps: the argmax label, or the label set joined by ``|``."""
        labels = list(self.labels)
        if self.thresholds is None:
            return [labels[int(i)] for i in np.asarray(probs).argmax(axis=1)]
        return [join_label_set(s) for s in predicted_sets(labels, probs, self.thresholds)]


def _multi_label(classifier: Any, labels: tuple[str, ...], info: dict[str, Any]) -> tuple[np.ndarray | None, dict]:
    """The thresholds of a multi-label classifier (``None`` otherwise) and its ``info()`` saying so.

    Raises:
        ValueError: A multi-label classifier without one finite threshold per label.
    """
    if not getattr(classifier, "multi_label", False):
        return None, info
    thresholds = np.asarray(getattr(classifier, "thresholds", None), dtype=np.float64)
    if thresholds.shape != (len(labels),) or not np.isfinite(thresholds).all():
        raise ValueError(f"a multi-label classifier needs one threshold per label; got shape {thresholds.shape}")
    per_label = dict(zip(labels, (round(float(t), 6) for t in thresholds), strict=True))
    return thresholds, {**info, "multi_label": True, "thresholds": per_label}


class ModelRuntime:
    """Loads the model in a background thread and tracks the server's readiness.

    The load runs off the event loop so ``/healthz`` and ``/readyz`` answer while a large model
    loads (orchestrators kill a process whose liveness probe hangs).

    Args:
        metrics: Where to publish the model's identity once loaded.
    """

    def __init__(self, metrics: ServingMetrics) -> None:
        self._metrics = metrics
        # One immutable snapshot, assigned once from the loader thread: readers on the event loop
        # see either nothing or the complete model, never half of it.
        self._loaded: _Loaded | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.shutting_down = False
        # Held around every model call (batches and explanations): they run in different threads.
        self.model_lock = threading.Lock()

    def start_loading(self, load_classifier: Callable[[], Classifier]) -> None:
        """Call ``load_classifier`` in a daemon thread (daemon: a hung load must not block exit).

        Args:
            load_classifier: Returns the classifier; may take minutes.
        """
        self._thread = threading.Thread(target=self._load, args=(load_classifier,), name="modelyard-load", daemon=True)
        self._thread.start()

    def _load(self, load_classifier: Callable[[], Classifier]) -> None:
        start = time.perf_counter()
        try:
            classifier = load_classifier()
            labels = tuple(str(x) for x in classifier.labels)
            if not labels:
                raise ValueError("the classifier has no labels")
            info = classifier.info()
            if not isinstance(info, dict):
                raise TypeError(f"Classifier.info() returned {type(info).__name__}, expected a dict")
            # Round-trip through JSON once, here, so numpy scalars or paths in info() can't make
            # every later response fail to serialise.
            info = json.loads(json.dumps(info, default=str))
            thresholds, info = _multi_label(classifier, labels, info)
        except BaseException as err:  # noqa: B036 - a SystemExit in a thread must still be reported
            self._error = err
            logger.error("model failed to load after %.1fs", time.perf_counter() - start, exc_info=err)
            self._metrics.set_model(None)
            return
        self._loaded = _Loaded(classifier, labels, info, thresholds)
        self._metrics.set_model(info)
        logger.info("model ready after %.1fs: %s", time.perf_counter() - start, info.get("name", "?"))

    @property
    def status(self) -> str:
        """``loading``, ``ready``, ``error`` or ``shutting_down``."""
        if self.shutting_down:
            return "shutting_down"
        if self._error is not None:
            return "error"
        return "ready" if self._loaded is not None else "loading"

    @property
    def error_detail(self) -> str | None:
        """Why loading failed, or ``None``."""
        return None if self._error is None else (str(self._error) or type(self._error).__name__)

    @property
    def loaded(self) -> _Loaded | None:
        """The loaded model, or ``None``."""
        return self._loaded

    def swap(self, classifier: Classifier) -> dict[str, Any]:
        """Replace the serving model with an already loaded one (registry hot swap).

        One reference assignment: a batch already running keeps the model it started with, the
        next batch uses the new one, so no request fails during the swap.

        Args:
            classifier: The new model; must have the same labels as the serving one.

        Returns:
            The new model's JSON-safe ``info()``.

        Raises:
            ValueError: No labels, different labels from the serving model, or a bad ``info()``.
        """
        labels = tuple(str(x) for x in classifier.labels)
        info = json.loads(json.dumps(classifier.info(), default=str))
        current = self._loaded
        if not labels or (current is not None and labels != current.labels):
            raise ValueError(f"labels {list(labels)} differ from the serving model's; restart to change them")
        thresholds, info = _multi_label(classifier, labels, info)
        if current is not None and current.multi_label != (thresholds is not None):
            raise ValueError("the new model and the serving one differ in multi-label; restart to change it")
        self._loaded = _Loaded(classifier, labels, info, thresholds)
        self._error = None
        self._metrics.set_model(info)
        return info

    def require_ready(self) -> _Loaded:
        """The loaded model, or an :class:`ApiError` (503) saying why there is none.

        Returns:
            The loaded model.

        Raises:
            ApiError: Loading, failed to load, or shutting down.
        """
        status = self.status
        if status == "ready":
            assert self._loaded is not None
            return self._loaded
        if status == "shutting_down":
            raise ApiError(503, "shutting_down", "the server is shutting down; retry", headers=RETRY_AFTER)
        if status == "error":
            # No Retry-After: retrying cannot help until an operator fixes the model and restarts.
            raise ApiError(503, "model_not_ready", "the model failed to load; see GET /readyz and the server log")
        raise ApiError(503, "model_not_ready", "the model is still loading; retry shortly", headers=RETRY_AFTER)

    def predict(self, texts: list[str]) -> np.ndarray:
        """Score ``texts`` with the loaded model (runs in the batcher's model thread).

        Args:
            texts: One batch.

        Returns:
            ``(len(texts), len(labels))`` probabilities.

        Raises:
            RuntimeError: No model is loaded.
            ValueError: The model returned a wrongly shaped or non-finite array.
        """
        loaded = self._loaded
        if loaded is None:
            raise RuntimeError("no model is loaded")
        with self.model_lock:
            probs = np.asarray(loaded.classifier.predict_proba(list(texts)), dtype=np.float64)
        if probs.shape != (len(texts), len(loaded.labels)):
            raise ValueError(
                f"predict_proba returned shape {probs.shape}; expected ({len(texts)}, {len(loaded.labels)})"
            )
        if not np.isfinite(probs).all():
            raise ValueError("predict_proba returned NaN or infinite probabilities")
        return probs

    def explain(self, text: str, method: str, target: str | None) -> dict[str, Any]:
        """Explain one text with the loaded model (runs in the explain thread, under ``model_lock``).

        Returns:
            ``Explanation.to_dict()``.

        Raises:
            RuntimeError: No model is loaded.
            ExplainUnsupportedError: The classifier has no PyTorch model / tokenizer.
        """

        loaded = self._loaded
        if loaded is None:
            raise RuntimeError("no model is loaded")
        with self.model_lock:
            # Looked up at call time: the attribution stack (captum) loads with the first explanation.
            from modelyard.explain import explain

            [explanation] = explain(loaded.classifier, [text], method=method, target=target, n_steps=EXPLAIN_N_STEPS)
        return explanation.to_dict()
