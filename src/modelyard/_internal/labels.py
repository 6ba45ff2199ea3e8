"""The prediction dictionaries every classifier returns (shared by every model kind)."""

from __future__ import annotations

from typing import Any

import numpy as np


def label_predictions(labels: list[str], probs: np.ndarray) -> list[dict[str, Any]]:
    """``[{"label": argmax label, "scores": {label: p}}]`` for each row of a probability matrix."""
    return [
        {
            "label": labels[int(row.argmax())],
            "scores": {lab: float(p) for lab, p in zip(labels, row, strict=True)},
        }
        for row in probs
    ]


def label_set_predictions(labels: list[str], probs: np.ndarray, thresholds: np.ndarray) -> list[dict[str, Any]]:
    """Multi-label: ``[{"labels": [labels whose p >= its threshold, in label order], "scores": {label: p}}]``."""
    return [
        {
            "labels": [lab for lab, p, t in zip(labels, row, thresholds, strict=True) if p >= t],
            "scores": {lab: float(p) for lab, p in zip(labels, row, strict=True)},
        }
        for row in probs
    ]


MULTI_LABEL = "multi-label-classification"  # the recipe task (and ``modelyard.json`` ``task``) of label-set models


def model_thresholds(meta: dict[str, Any], labels: list[str]) -> np.ndarray:
    """Per-label decision thresholds of a multi-label model (``modelyard.json`` ``thresholds``; 0.5 when absent)."""
    saved = meta.get("thresholds") or {}
    return np.array([float(saved.get(lb, 0.5)) for lb in labels], dtype=np.float64)


# A label set as one string (the prediction log's and feedback's `label` column, `pred` of `modelyard predict`):
# the labels in the model's label order joined by "|"; the empty set is "".
LABEL_SET_SEPARATOR = "|"


def join_label_set(labels: list[str] | tuple[str, ...], order: list[str] | tuple[str, ...] | None = None) -> str:
    """``["sports", "food"]`` → ``"food|sports"`` (in ``order``, the model's labels, when given; duplicates once)."""
    unique = list(dict.fromkeys(str(x) for x in labels))
    if order is not None:
        rank = {lab: i for i, lab in enumerate(order)}
        unique.sort(key=lambda lab: rank.get(lab, len(rank)))
    return LABEL_SET_SEPARATOR.join(unique)


def split_label_set(value: Any) -> tuple[str, ...]:
    """The inverse of :func:`join_label_set`: ``"food|sports"`` → ``("food", "sports")``; ``""`` → ``()``."""
    if value is None:
        return ()
    if not isinstance(value, str):  # a list/tuple/array already
        return tuple(str(x) for x in value)
    return tuple(x for x in value.split(LABEL_SET_SEPARATOR) if x)


def predicted_sets(labels: list[str], probs: np.ndarray, thresholds: np.ndarray) -> list[list[str]]:
    """Multi-label: the labels whose probability reaches its threshold, per row, in label order."""
    keep = np.asarray(probs, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)
    return [[lab for lab, k in zip(labels, row, strict=True) if k] for row in keep]


# The prediction table: one schema for `modelyard predict`, `modelyard label`, evaluation tables
# (predictions.parquet, with `split` and the gold `label`) and image predictions.
PRED = "pred"  # the predicted label
CONFIDENCE = "confidence"  # its probability
PROB_PREFIX = "prob_"  # one column per class, in label order: prob_<label>


def prob_columns(labels: list[str]) -> list[str]:
    """The per-class probability columns, in label order."""
    return [f"{PROB_PREFIX}{lab}" for lab in labels]


def add_prediction_columns(frame: Any, labels: list[str], probs: np.ndarray) -> Any:
    """Append ``pred``, ``confidence`` and ``prob_<label>`` to ``frame`` (a DataFrame; one row per prob row).

    Rows whose probabilities are all NaN (an unreadable image) get ``None`` for ``pred`` and ``confidence``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    valid = ~np.isnan(probs).all(axis=1) if probs.size else np.zeros(len(probs), dtype=bool)
    safe = np.where(np.isnan(probs), -np.inf, probs)
    frame[PRED] = [labels[int(row.argmax())] if ok else None for row, ok in zip(safe, valid, strict=True)]
    frame[CONFIDENCE] = [float(row.max()) if ok else None for row, ok in zip(safe, valid, strict=True)]
    for name, column in zip(prob_columns(labels), probs.T, strict=True):
        frame[name] = column
    return frame


def add_label_set_columns(frame: Any, labels: list[str], probs: np.ndarray, thresholds: np.ndarray) -> Any:
    """Multi-label: append ``pred`` (the predicted labels joined by ``|`` in label order, ``""`` for none) and
    ``prob_<label>`` (each label's own probability; rows do not sum to 1). No ``confidence`` column: a label set
    has no single probability; each label's is in its ``prob_`` column, its cut-off in ``modelyard.json``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    frame[PRED] = [join_label_set(s) for s in predicted_sets(labels, probs, thresholds)]
    for name, column in zip(prob_columns(labels), probs.T, strict=True):
        frame[name] = column
    return frame
