"""The prediction table every stage writes and reads (train, evaluate, predict, label, reports).

One schema: ``split``, ``text`` (or the image reference), ``label`` (gold, when known), ``pred``,
``confidence`` and one ``prob_<label>`` column per class, in label order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from modelyard.evaluation.metrics import HEADLINE


def prediction_frame(split: str, texts: list[str], y: np.ndarray | None, probs: np.ndarray, labels: list[str]) -> Any:
    """The predictions table shared by train, evaluate and the report."""
    import pandas as pd

    pred = probs.argmax(axis=1)
    frame = pd.DataFrame(
        {
            "split": split,
            "text": texts,
            "label": [labels[i] for i in y] if y is not None else None,
            "pred": [labels[i] for i in pred],
            "confidence": probs.max(axis=1),
        }
    )
    for j, lab in enumerate(labels):
        frame[f"prob_{lab}"] = probs[:, j]
    return frame


def print_metrics(console: Console, metrics: dict[str, Any]) -> None:
    """A table of the headline metrics per split."""

    table = Table(title="metrics")
    table.add_column("split")
    for k in HEADLINE:
        table.add_column(k, justify="right")
    for split, m in metrics.items():
        table.add_row(split, *("-" if m.get(k) is None else f"{m[k]:.4f}" for k in HEADLINE))
    console.print(table)
