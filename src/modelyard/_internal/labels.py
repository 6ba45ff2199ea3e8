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
