"""Classification metrics computed from predicted class probabilities.

Everything scikit-learn implements is delegated to it so the numbers match what users get from
sklearn themselves; only the expected calibration error (and the reliability bins behind it) is
written here, because scikit-learn has no ECE (``sklearn.calibration.calibration_curve`` is
binary-only and returns no bin counts).

The returned dictionaries hold only plain Python ``int``/``float``/``str``/``list``/``dict`` and
``None`` where a value is undefined, so they can go straight into ``json.dumps(..., allow_nan=False)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = ["compute_metrics", "expected_calibration_error", "reliability_bins"]

# Rows further than this from summing to 1 are almost certainly logits or unnormalised scores,
# which would give meaningless log loss / ECE; smaller drift is float32 softmax rounding.
_ROW_SUM_TOLERANCE = 1e-3

#: The metrics shown per split in logs, reports and the history (in this order).
HEADLINE = ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "roc_auc", "log_loss", "ece")


def mean_nll(probs: np.ndarray, y: np.ndarray) -> float | None:
    """Mean negative log-likelihood of the gold classes (probabilities clipped at 1e-12); None for no rows."""
    if not len(y):
        return None
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))


def _validate(y_true: Sequence[int] | np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(y, p)`` as int64 / float64 arrays after checking shapes and ranges.

    Rows are renormalised in float64 because scikit-learn's ``log_loss`` warns and the multiclass
    ``roc_auc_score`` refuses rows whose sum drifts by float32 rounding (~1e-7) from exactly 1.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be a 2-D array of shape (n, k) with k >= 2, got shape {p.shape}")
    y_raw = np.asarray(y_true)
    if y_raw.ndim != 1 or y_raw.shape[0] != p.shape[0]:
        raise ValueError(f"y_true must be 1-D with {p.shape[0]} entries (one per row of probs), got {y_raw.shape}")
    if p.shape[0] == 0:
        raise ValueError("cannot compute metrics on zero examples")
    if y_raw.dtype.kind not in "iub" and not (
        y_raw.dtype.kind == "f" and np.all(np.isfinite(y_raw)) and np.all(y_raw == np.round(y_raw))
    ):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y_raw.dtype}")
    y = y_raw.astype(np.int64)
    k = p.shape[1]
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true holds class indices outside 0..{k - 1}: min {y.min()}, max {y.max()}")
    if not np.all(np.isfinite(p)) or p.min() < 0:
        raise ValueError("probs must be finite and non-negative")
    sums = p.sum(axis=1)
    worst = float(np.max(np.abs(sums - 1.0)))
    if worst > _ROW_SUM_TOLERANCE:
        raise ValueError(
            f"rows of probs must sum to 1 (worst row is off by {worst:.3g}); pass softmax probabilities, not logits"
        )
    return y, p / sums[:, None]


def _bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    """Equal-width bins over ``[0, 1]``; bin ``i`` holds confidences in ``(lower, upper]``.

    The first bin also takes a confidence of exactly 0 so that no example is dropped.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side="left") - 1 maps c to the bin whose upper edge is the first edge >= c,
    # i.e. the right-closed (lower, upper] convention of Guo et al. (2017), comparing against the
    # very same edge floats that are reported, so no float rounding moves an example between bins.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    out: list[dict[str, Any]] = []
    for i in range(n_bins):
        mask = index == i
        count = int(mask.sum())
        out.append(
            {
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "count": count,
                # None, not NaN: an empty bin has no accuracy, and NaN is not valid JSON.
                "accuracy": float(correct[mask].mean()) if count else None,
                "confidence": float(confidence[mask].mean()) if count else None,
            }
        )
    return out


def reliability_bins(y_true: Sequence[int] | np.ndarray, probs: np.ndarray, n_bins: int = 15) -> list[dict[str, Any]]:
    """Group predictions into equal-width confidence bins (the data of a reliability diagram).

    Confidence is the maximum class probability of each row and the prediction is its argmax.

    Args:
        y_true: True class indices, shape ``(n,)``.
        probs: Class probabilities, shape ``(n, k)``, rows summing to 1.
        n_bins: Number of equal-width bins over ``[0, 1]``.

    Returns:
        One dict per bin, in increasing order: ``lower``, ``upper`` (the bin holds confidences in
        ``(lower, upper]``), ``count``, and the mean ``accuracy`` and ``confidence`` of its examples
        (``None`` for an empty bin).

    Raises:
        ValueError: If the shapes, class indices or probabilities are invalid.
    """
    y, p = _validate(y_true, probs)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    return _bins(confidence, correct, n_bins)


def expected_calibration_error(y_true: Sequence[int] | np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error over equal-width bins of the maximum class probability.

    ``ECE = sum_b (n_b / n) * |accuracy_b - confidence_b|`` over non-empty bins (Guo et al., 2017).
    Hand-written because scikit-learn has no ECE.

    Args:
        y_true: True class indices, shape ``(n,)``.
        probs: Class probabilities, shape ``(n, k)``, rows summing to 1.
        n_bins: Number of equal-width bins over ``[0, 1]``.

    Returns:
        The ECE, a float in ``[0, 1]``.

    Raises:
        ValueError: If the shapes, class indices or probabilities are invalid.
    """
    bins = reliability_bins(y_true, probs, n_bins)
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def _finite(value: Any) -> float | None:
    """Plain float, or None for NaN/inf so the result stays valid JSON."""
    value = float(value)
    return value if math.isfinite(value) else None


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC-AUC: binary on the positive column, multiclass one-vs-rest macro.

    When some classes never occur in ``y`` sklearn's multiclass AUC is undefined (it raises), so
    the one-vs-rest macro average is taken over the classes that do occur, which is what sklearn's
    ``multi_class="ovr", average="macro"`` computes when every class is present.
    """
    k = p.shape[1]
    present = np.unique(y)
    if present.size < 2:
        return None  # AUC needs both positives and negatives for at least one split of the classes.
    if present.size == k:
        if k == 2:
            return _finite(roc_auc_score(y, p[:, 1]))
        return _finite(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(k))))
    # Each present class has positives, and with >= 2 classes present also negatives.
    scores = [roc_auc_score((y == c).astype(int), p[:, c]) for c in present]
    return _finite(np.mean(scores))


def compute_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    loss: float | None = None,
) -> dict[str, Any]:
    """Compute the standard classification metrics from class probabilities.

    The prediction is the argmax of each row. Averages are over all ``len(labels)`` classes,
    including classes that never occur in ``y_true`` or the predictions (their precision, recall
    and F1 count as 0, ``zero_division=0``), so the numbers are comparable across splits.

    Args:
        y_true: True class indices in ``0..k-1``, shape ``(n,)``.
        probs: Class probabilities, shape ``(n, k)`` with ``k == len(labels) >= 2``, rows summing to 1.
        labels: Class names, index ``i`` naming column ``i`` of ``probs``.
        loss: Model loss to carry along (e.g. the evaluation loss of the trainer), or None.

    Returns:
        A JSON-serialisable dict with keys ``n``, ``labels``, ``accuracy``, ``macro_precision``,
        ``macro_recall``, ``macro_f1``, ``micro_f1``, ``weighted_f1``, ``per_class``
        (``{label: {precision, recall, f1, support}}``), ``roc_auc`` (None when fewer than two
        classes occur in ``y_true``), ``log_loss``, ``ece`` (15 bins), ``confusion_matrix`` (rows =
        true class, columns = predicted class, in ``labels`` order) and ``loss``.

    Raises:
        ValueError: If the shapes, class indices, probabilities or labels are inconsistent.
    """
    y, p = _validate(y_true, probs)
    k = p.shape[1]
    if len(labels) != k:
        raise ValueError(f"got {len(labels)} labels for {k} probability columns")
    if len(set(labels)) != k:
        raise ValueError(f"labels must be unique, got {labels}")
    classes = list(range(k))
    pred = p.argmax(axis=1)

    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=classes, average=None, zero_division=0
    )
    macro_p, macro_r, macro_f1, _ = precision_recall_fscore_support(
        y, pred, labels=classes, average="macro", zero_division=0
    )
    with warnings.catch_warnings():
        # A class absent from y_true makes sklearn warn even with zero_division set; the value is
        # still defined (it is None-safe below) and the warning would only alarm users.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        roc_auc = _roc_auc(y, p)

    return {
        "n": int(y.shape[0]),
        "labels": [str(label) for label in labels],
        "accuracy": _finite(accuracy_score(y, pred)),
        "macro_precision": _finite(macro_p),
        "macro_recall": _finite(macro_r),
        "macro_f1": _finite(macro_f1),
        "micro_f1": _finite(f1_score(y, pred, labels=classes, average="micro", zero_division=0)),
        "weighted_f1": _finite(f1_score(y, pred, labels=classes, average="weighted", zero_division=0)),
        "per_class": {
            str(label): {
                "precision": _finite(precision[i]),
                "recall": _finite(recall[i]),
                "f1": _finite(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "roc_auc": roc_auc,
        # Positional y_proba: the keyword was renamed (y_pred -> y_proba) in scikit-learn 1.9.
        "log_loss": _finite(log_loss(y, p, labels=classes)),
        "ece": _finite(expected_calibration_error(y, p)),
        "confusion_matrix": confusion_matrix(y, pred, labels=classes).tolist(),
        "loss": None if loss is None else _finite(loss),
    }
