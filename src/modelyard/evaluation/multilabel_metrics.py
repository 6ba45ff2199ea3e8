"""Multi-label metrics and per-label decision thresholds.

Inputs are a multi-hot ``y`` (n, L) and independent per-label probabilities ``probs`` (n, L) (sigmoid outputs,
rows need not sum to 1). A label is predicted when its probability is **≥ its threshold**. Every number is
scikit-learn's own (``f1_score`` micro/macro/samples, ``hamming_loss``, ``accuracy_score`` on the indicator
matrices = subset accuracy, ``precision_recall_fscore_support`` and ``roc_auc_score`` per label) with
``zero_division=0``; only the threshold search is written here. Values are plain ``float``/``int``/``None`` so
the dictionaries go straight into ``json.dumps(..., allow_nan=False)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "MULTILABEL_HEADLINE",
    "compute_multilabel_metrics",
    "predict_sets",
    "tune_thresholds",
    "with_aliases",
]

DEFAULT_THRESHOLD = 0.5
#: The metrics shown per split in logs and reports (in this order).
MULTILABEL_HEADLINE = ("micro_f1", "macro_f1", "samples_f1", "hamming_loss", "subset_accuracy", "macro_roc_auc")


def _check(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y), np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"y and probs must both have shape (n, labels); got {y.shape} and {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("cannot compute metrics on zero examples")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must be a 0/1 (multi-hot) matrix")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("probs must be probabilities in [0, 1] (sigmoid outputs, not logits)")
    return y.astype(np.int64), p


def _thresholds(thresholds: float | Sequence[float] | np.ndarray | None, n_labels: int) -> np.ndarray:
    if thresholds is None:
        return np.full(n_labels, DEFAULT_THRESHOLD)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (n_labels,)).copy()
    return t


def predict_sets(probs: np.ndarray, thresholds: float | Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """The predicted multi-hot matrix: label ``j`` is on when ``probs[:, j] >= thresholds[j]``."""
    p = np.asarray(probs, dtype=np.float64)
    return (p >= _thresholds(thresholds, p.shape[1])[None, :]).astype(np.int64)


def _f(x: Any) -> float:
    return float(x)


def compute_multilabel_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    thresholds: float | Sequence[float] | np.ndarray | None = None,
) -> dict[str, Any]:
    """Every multi-label metric of one split.

    Returns:
        ``n``, ``micro_f1``, ``macro_f1``, ``weighted_f1``, ``samples_f1``, ``micro_precision``, ``micro_recall``,
        ``hamming_loss``, ``subset_accuracy``, ``macro_roc_auc`` (mean over labels whose AUC is defined; None if
        none is), ``label_cardinality`` (true and predicted), and ``per_label``: ``{label: {precision, recall, f1,
        support, roc_auc, threshold}}`` (``roc_auc`` None when the split has only one class for that label).
    """
    y, p = _check(y, probs)
    if len(labels) != y.shape[1]:
        raise ValueError(f"{len(labels)} labels for {y.shape[1]} columns")
    t = _thresholds(thresholds, y.shape[1])
    pred = predict_sets(p, t)
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    aucs: list[float | None] = []
    for j in range(y.shape[1]):
        col = y[:, j]
        aucs.append(_f(roc_auc_score(col, p[:, j])) if 0 < col.sum() < len(col) else None)
    defined = [a for a in aucs if a is not None]
    per_label = {
        lb: {
            "precision": _f(prec[j]),
            "recall": _f(rec[j]),
            "f1": _f(f1[j]),
            "support": int(support[j]),
            "roc_auc": aucs[j],
            "threshold": _f(t[j]),
        }
        for j, lb in enumerate(labels)
    }
    return {
        "n": int(y.shape[0]),
        "micro_f1": _f(f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": _f(f1_score(y, pred, average="macro", zero_division=0)),
        "weighted_f1": _f(f1_score(y, pred, average="weighted", zero_division=0)),
        "samples_f1": _f(f1_score(y, pred, average="samples", zero_division=0)),
        "micro_precision": _f(precision_score(y, pred, average="micro", zero_division=0)),
        "micro_recall": _f(recall_score(y, pred, average="micro", zero_division=0)),
        "hamming_loss": _f(hamming_loss(y, pred)),
        "subset_accuracy": _f(accuracy_score(y, pred)),
        "macro_roc_auc": _f(np.mean(defined)) if defined else None,
        "label_cardinality": _f(y.sum(axis=1).mean()),
        "predicted_cardinality": _f(pred.sum(axis=1).mean()),
        "per_label": per_label,
    }


#: The single-label names the loop, tuning and ``print_metrics`` read, filled in for multi-label metrics.
ALIASES = {"accuracy": "subset_accuracy", "roc_auc": "macro_roc_auc"}


def with_aliases(metrics: dict[str, Any], loss: float | None = None) -> dict[str, Any]:
    """``metrics`` plus ``accuracy`` (= subset accuracy), ``roc_auc`` (= macro ROC-AUC) and ``loss`` (BCE or None)."""
    return metrics | {alias: metrics[key] for alias, key in ALIASES.items()} | {"loss": loss}


def _best_threshold(y: np.ndarray, p: np.ndarray, default: float) -> float:
    """The threshold maximising this label's F1 on ``(y, p)``; the midpoint below the best cut-off score."""
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        return default  # F1 says nothing useful: keep the default
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys)
    k = np.arange(1, len(ys) + 1)  # predicted positives when the cut-off is ps[k-1]
    last = np.r_[ps[1:] != ps[:-1], True]  # only cut between distinct scores
    f1 = np.where(last, 2 * tp / (k + positives), -1.0)
    i = int(np.argmax(f1))
    below = ps[i + 1] if i + 1 < len(ps) else 0.0
    return float((ps[i] + below) / 2.0)


def tune_thresholds(y_valid: np.ndarray, p_valid: np.ndarray, default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """One threshold per label, each maximising that label's F1 on the validation split.

    A label is predicted when ``p >= threshold``; the threshold is the midpoint between the lowest score kept
    positive and the next lower score, so the choice is not tied to one exact validation score. A label that
    is always or never present in ``y_valid`` keeps ``default``.
    """
    y, p = _check(y_valid, p_valid)
    return np.array([_best_threshold(y[:, j], p[:, j], default) for j in range(y.shape[1])])
