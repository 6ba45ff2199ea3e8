"""Metrics agree with scikit-learn, ECE matches hand-computed values, and edge cases stay JSON-safe."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from modelyard.evaluation.metrics import compute_metrics, expected_calibration_error, reliability_bins

TOL = 1e-12


def _random_case(seed: int, k: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0  # better than chance, so every metric is away from its edge
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


def _close(actual: float | None, expected: float) -> bool:
    return actual is not None and abs(actual - expected) <= TOL


def _ece_reference(y: np.ndarray, probs: np.ndarray, n_bins: int) -> float:
    """Loop-based ECE with (lower, upper] bins, written independently of the module."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        mask = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return total


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_metrics_match_sklearn(seed: int, k: int) -> None:
    y, probs = _random_case(seed, k)
    labels = [f"c{i}" for i in range(k)]
    m = compute_metrics(y, probs, labels, loss=0.25)
    pred = probs.argmax(axis=1)
    classes = list(range(k))

    assert m["n"] == len(y)
    assert m["labels"] == labels
    assert m["loss"] == 0.25
    assert _close(m["accuracy"], accuracy_score(y, pred))
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=classes, average="macro", zero_division=0)
    assert _close(m["macro_precision"], p)
    assert _close(m["macro_recall"], r)
    assert _close(m["macro_f1"], f)
    assert _close(m["micro_f1"], f1_score(y, pred, labels=classes, average="micro", zero_division=0))
    assert _close(m["weighted_f1"], f1_score(y, pred, labels=classes, average="weighted", zero_division=0))
    assert _close(m["log_loss"], log_loss(y, probs, labels=classes))
    if k == 2:
        expected_auc = roc_auc_score(y, probs[:, 1])
    else:
        expected_auc = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert _close(m["roc_auc"], expected_auc)
    assert _close(m["ece"], _ece_reference(y, probs, 15))

    p_c, r_c, f_c, s_c = precision_recall_fscore_support(y, pred, labels=classes, average=None, zero_division=0)
    assert list(m["per_class"]) == labels
    for i, label in enumerate(labels):
        row = m["per_class"][label]
        assert _close(row["precision"], p_c[i])
        assert _close(row["recall"], r_c[i])
        assert _close(row["f1"], f_c[i])
        assert row["support"] == s_c[i]
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=classes).tolist()
    json.dumps(m, allow_nan=False)


def test_returned_values_are_plain_python() -> None:
    y, probs = _random_case(7, 3)
    m = compute_metrics(y, probs, ["a", "b", "c"])
    for key in ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "roc_auc", "log_loss", "ece"):
        assert type(m[key]) is float, key
    assert type(m["n"]) is int
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)
    assert type(m["per_class"]["a"]["support"]) is int
    assert m["loss"] is None


def test_ece_hand_computed() -> None:
    # 5 bins: (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1].
    probs = np.array([[0.10, 0.90], [0.30, 0.70], [0.75, 0.25], [0.45, 0.55]])
    y = np.array([1, 1, 1, 0])
    # conf .90 correct -> bin 4; .70 correct and .75 wrong -> bin 3; .55 wrong -> bin 2.
    # ECE = 1/4*|0-.55| + 2/4*|.5-.725| + 1/4*|1-.9| = .1375 + .1125 + .025 = .275
    assert expected_calibration_error(y, probs, n_bins=5) == pytest.approx(0.275, abs=TOL)

    bins = reliability_bins(y, probs, n_bins=5)
    assert [b["count"] for b in bins] == [0, 0, 1, 2, 1]
    assert bins[0]["accuracy"] is None and bins[0]["confidence"] is None
    assert bins[3]["accuracy"] == pytest.approx(0.5, abs=TOL)
    assert bins[3]["confidence"] == pytest.approx(0.725, abs=TOL)
    assert bins[0]["lower"] == 0.0 and bins[-1]["upper"] == 1.0
    json.dumps(bins, allow_nan=False)


def test_bins_are_right_closed() -> None:
    # A confidence exactly on an edge belongs to the bin it closes: 0.6 -> (0.4, 0.6], 1.0 -> last bin.
    probs = np.array([[0.6, 0.4], [1.0, 0.0], [0.5, 0.5]])
    y = np.array([0, 0, 0])
    counts = [b["count"] for b in reliability_bins(y, probs, n_bins=5)]
    assert counts == [0, 0, 2, 0, 1]


def test_perfect_predictions() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=100)
    probs = rng.dirichlet([1, 1, 1], size=100)
    # Move each row's largest probability onto the true class, so argmax == y.
    for i in range(len(y)):
        j = probs[i].argmax()
        probs[i, [j, y[i]]] = probs[i, [y[i], j]]
    m = compute_metrics(y, probs, ["x", "y", "z"])
    assert m["accuracy"] == 1.0
    assert m["macro_f1"] == 1.0
    assert m["ece"] == pytest.approx(1.0 - probs.max(axis=1).mean(), abs=TOL)
    assert np.diag(m["confusion_matrix"]).sum() == 100


def test_absent_class_is_handled_without_nan_or_warnings() -> None:
    y, probs = _random_case(11, 4)
    y = np.where(y == 3, 0, y)  # class 3 never occurs in y_true
    probs[:, 3] = 0.0  # ... nor in the predictions
    probs /= probs.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics(y, probs, ["a", "b", "c", "d"])
    json.dumps(m, allow_nan=False)
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # One-vs-rest macro AUC over the three classes that occur.
    expected = np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(3)])
    assert _close(m["roc_auc"], expected)
    assert len(m["confusion_matrix"]) == 4 and all(len(row) == 4 for row in m["confusion_matrix"])
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]


@pytest.mark.parametrize("k", [2, 3])
def test_single_class_present_gives_no_auc(k: int) -> None:
    _, probs = _random_case(5, k, n=20)
    y = np.zeros(20, dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics(y, probs, [f"l{i}" for i in range(k)])
    assert m["roc_auc"] is None
    assert m["log_loss"] is not None
    json.dumps(m, allow_nan=False)


def test_confusion_matrix_rows_are_true_labels() -> None:
    y = np.array([0, 0, 1, 2, 2, 2])
    probs = np.array(
        [
            [0.8, 0.1, 0.1],  # 0 -> 0
            [0.1, 0.8, 0.1],  # 0 -> 1
            [0.1, 0.8, 0.1],  # 1 -> 1
            [0.1, 0.1, 0.8],  # 2 -> 2
            [0.7, 0.2, 0.1],  # 2 -> 0
            [0.1, 0.1, 0.8],  # 2 -> 2
        ]
    )
    m = compute_metrics(y, probs, ["neg", "neu", "pos"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert m["per_class"]["pos"]["support"] == 3


def test_float32_probabilities_are_accepted() -> None:
    y, probs = _random_case(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn warns on rows that do not sum to 1 in float64
        m = compute_metrics(y, probs.astype(np.float32), list("abcd"))
    assert _close(m["accuracy"], accuracy_score(y, probs.argmax(axis=1)))


def test_invalid_inputs_raise() -> None:
    y, probs = _random_case(0, 3, n=10)
    with pytest.raises(ValueError, match="sum to 1"):
        compute_metrics(y, probs * 3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="labels"):
        compute_metrics(y, probs, ["a", "b"])
    with pytest.raises(ValueError, match="outside"):
        compute_metrics(np.full(10, 3), probs, ["a", "b", "c"])
    with pytest.raises(ValueError, match="one per row"):
        compute_metrics(y[:5], probs, ["a", "b", "c"])
    with pytest.raises(ValueError, match="zero examples"):
        compute_metrics(np.array([], dtype=int), np.empty((0, 3)), ["a", "b", "c"])
