"""The prediction table every stage writes and reads (train, evaluate, predict, label, reports).

One schema (:func:`modelyard._internal.labels.add_prediction_columns`): ``pred``, ``confidence`` and one
``prob_<label>`` column per class, in label order; evaluation tables add ``split``, ``text`` (or the image
reference) and the gold ``label`` in front.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from modelyard._internal.labels import add_prediction_columns
from modelyard.evaluation.metrics import HEADLINE


def prediction_frame(split: str, texts: list[str], y: np.ndarray | None, probs: np.ndarray, labels: list[str]) -> Any:
    """The evaluation table (``predictions.parquet``): ``split``, ``text``, gold ``label`` + the shared columns."""
    frame = pd.DataFrame({"split": split, "text": texts, "label": [labels[i] for i in y] if y is not None else None})
    return add_prediction_columns(frame, labels, probs)


def print_metrics(console: Console, metrics: dict[str, Any]) -> None:
    """A table of the headline metrics per split."""

    table = Table(title="metrics")
    table.add_column("split")
    for k in HEADLINE:
        table.add_column(k, justify="right")
    for split, m in metrics.items():
        table.add_row(split, *("-" if m.get(k) is None else f"{m[k]:.4f}" for k in HEADLINE))
    console.print(table)
