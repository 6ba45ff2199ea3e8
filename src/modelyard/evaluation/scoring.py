"""Score labelled inputs with a loaded classifier and write metrics, predictions and report (text and images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard._internal.io import write_json
from modelyard._internal.layout import METRICS, PREDICTIONS, REPORT
from modelyard.evaluation.metrics import compute_metrics
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
    metrics: dict[str, Any] = {}
    frames = []
    for name, (inputs, y, refs) in splits.items():
        probs = clf.predict_proba(list(inputs))
        loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))
        metrics[name] = compute_metrics(y, probs, clf.labels, loss=loss)
        frames.append(prediction_frame(name, list(inputs if refs is None else refs), y, probs, clf.labels))
    predictions = pd.concat(frames, ignore_index=True)
    write_json(out_dir / METRICS, metrics)
    tmp = out_dir / ".predictions.parquet.tmp"
    predictions.to_parquet(tmp, index=False)
    tmp.replace(out_dir / PREDICTIONS)
    write_report(
        out_dir / REPORT,
        title=title,
        metrics=metrics,
        labels=clf.labels,
        history=history,
        steps=steps,
        predictions=predictions,
        info=info,
    )
    return metrics, predictions
