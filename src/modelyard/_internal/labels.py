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
