"""Score labelled inputs with a loaded classifier and write metrics, predictions and report (text and images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard._internal.io import write_json
from modelyard._internal.layout import METRICS, PREDICTIONS, REPORT
from modelyard.evaluation.metrics import compute_metrics, mean_nll
from modelyard.evaluation.predictions import prediction_frame
from modelyard.evaluation.report import write_report


def score_and_write(
    out_dir: Path,
    title: str,
    clf: Any,
    splits: dict[str, tuple[list[Any], np.ndarray, list[str] | None]],
    history: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    info: dict[str, Any],
) -> tuple[dict[str, Any], Any]:
    """Score ``splits`` (``name → (inputs, gold ids, row names or None = the inputs)``) with ``clf`` and write
    ``metrics.json``, ``predictions.parquet`` (atomically) and ``report.html`` to ``out_dir``.

    Returns ``(metrics, predictions frame)``; shared by text and image evaluation.
    """
    scored = {
        name: (list(inputs if refs is None else refs), y, clf.predict_proba(list(inputs)))
        for name, (inputs, y, refs) in splits.items()
    }
    return write_scored(out_dir, title, list(clf.labels), scored, history, steps, info)


def write_scored(
    out_dir: Path,
    title: str,
    labels: list[str],
    scored: dict[str, tuple[list[Any], np.ndarray, np.ndarray]],
    history: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    info: dict[str, Any],
) -> tuple[dict[str, Any], Any]:
    """Write ``metrics.json``, ``predictions.parquet`` (atomically) and ``report.html`` for splits already scored
    (``name → (row texts or references, gold ids, probabilities)``); log-loss is the mean NLL of the gold class.

    Shared by ``modelyard evaluate`` (text and images) and the runs of one-shot model kinds.
    """
    metrics: dict[str, Any] = {}
    frames = []
    for name, (refs, y, probs) in scored.items():
        probs = np.asarray(probs, dtype=np.float64)
        metrics[name] = compute_metrics(y, probs, labels, loss=mean_nll(probs, y))
        frames.append(prediction_frame(name, list(refs), y, probs, labels))
    predictions = pd.concat(frames, ignore_index=True)
    write_json(out_dir / METRICS, metrics)
    tmp = out_dir / ".predictions.parquet.tmp"
    predictions.to_parquet(tmp, index=False)
    tmp.replace(out_dir / PREDICTIONS)
    write_report(
        out_dir / REPORT,
        title=title,
        metrics=metrics,
        labels=labels,
        history=history,
        steps=steps,
        predictions=predictions,
        info=info,
    )
    return metrics, predictions
