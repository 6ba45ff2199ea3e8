"""The evaluation table and report of a multi-label run (``task: multi-label-classification``).

``predictions.parquet`` keeps the shared columns where they still mean something: ``split``, ``text``, the gold
``label`` and the predicted ``pred`` — here both are **lists of labels** in label order (parquet list columns) —
and one ``prob_<label>`` column per label (independent sigmoid probabilities); ``errors`` counts the labels
the prediction got wrong (the row's Hamming distance). There is no single ``confidence``.

``report.html`` holds what a reader of a multi-label model needs and a single-label report has no place for:
the headline metrics per split, the **per-label table** (precision, recall, F1, support, ROC-AUC and the tuned
threshold), the **label co-occurrence** of the gold sets (heat map and the most frequent pairs with
P(b | a)), label cardinality, the training history and the test rows with the most wrong labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup

from modelyard._internal.labels import add_prediction_columns, prob_columns
from modelyard.evaluation.html import environment, fig_text, figure_env, new_figure, svg
from modelyard.evaluation.multilabel_metrics import MULTILABEL_HEADLINE, predict_sets
from modelyard.evaluation.report import _write_atomic

ERRORS = "errors"  # wrong labels per row (false positives + false negatives)
_MAX_ROWS = 20
_MAX_TEXT = 400
_MAX_HEATMAP = 30  # labels drawn in the co-occurrence heat map (the most frequent ones)
_SHOWN = (*MULTILABEL_HEADLINE, "weighted_f1", "micro_precision", "micro_recall", "label_cardinality",
          "predicted_cardinality", "loss")  # fmt: skip


def multilabel_prediction_frame(
    split: str, texts: list[str], y: np.ndarray, probs: np.ndarray, labels: list[str], thresholds: np.ndarray
) -> pd.DataFrame:
    """The evaluation rows of one split: ``split``, ``text``, ``label`` and ``pred`` (label lists), ``errors``,
    ``prob_<label>``."""
    pred = predict_sets(probs, thresholds)
    frame = pd.DataFrame(
        {
            "split": split,
            "text": texts,
            "label": [[lb for lb, on in zip(labels, row, strict=True) if on] for row in y],
            "pred": [[lb for lb, on in zip(labels, row, strict=True) if on] for row in pred],
            ERRORS: (pred != y).sum(axis=1).astype(np.int64),
        }
    )
    probs_frame = add_prediction_columns(pd.DataFrame(index=frame.index), labels, probs)[prob_columns(labels)]
    return pd.concat([frame, probs_frame], axis=1)


def cooccurrence(sets: list[list[str]] | pd.Series, labels: list[str]) -> np.ndarray:
    """``C[a, b]`` = rows whose gold set holds both ``a`` and ``b``; the diagonal is each label's count."""
    index = {lb: i for i, lb in enumerate(labels)}
    y = np.zeros((len(sets), len(labels)), dtype=np.int64)
    for r, s in enumerate(sets):
        for lb in s:
            if lb in index:
                y[r, index[lb]] = 1
    return (y.T @ y).astype(np.int64)


def _pairs(c: np.ndarray, labels: list[str], limit: int = _MAX_ROWS) -> list[dict[str, Any]]:
    rows = []
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            if c[a, b]:
                rows.append(
                    {
                        "a": labels[a],
                        "b": labels[b],
                        "n": int(c[a, b]),
                        "p_b_given_a": c[a, b] / c[a, a] if c[a, a] else None,
                        "p_a_given_b": c[a, b] / c[b, b] if c[b, b] else None,
                    }
                )
    return sorted(rows, key=lambda r: -r["n"])[:limit]


def _heatmap(c: np.ndarray, labels: list[str], split: str) -> Markup | None:
    if not len(labels):
        return None
    keep = np.argsort(-np.diag(c), kind="stable")[:_MAX_HEATMAP]
    keep.sort()
    sub, names = c[np.ix_(keep, keep)], [fig_text(labels[i], 14) for i in keep]
    size = 1.6 + 0.32 * len(keep)
    with figure_env(f"cooccurrence-{split}"):
        fig = new_figure(size + 1.2, size)
        ax = fig.add_subplot()
        im = ax.imshow(sub, cmap="Blues")
        ax.set_xticks(range(len(keep)), names, rotation=60, ha="right")
        ax.set_yticks(range(len(keep)), names)
        if len(keep) <= 12:
            top = sub.max() or 1
            for i in range(len(keep)):
                for j in range(len(keep)):
                    ax.text(
                        j,
                        i,
                        str(sub[i, j]),
                        ha="center",
                        va="center",
                        color="white" if sub[i, j] > top / 2 else "black",
                    )
        ax.set_title(f"gold label co-occurrence ({split})")
        fig.colorbar(im, ax=ax, shrink=0.8)
        return svg(fig)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_multilabel_report(
    path: Path,
    *,
    title: str,
    metrics: dict[str, dict],
    labels: list[str],
    history: list[dict],
    predictions: pd.DataFrame,
    info: dict[str, Any],
) -> Path:
    """Write a multi-label run's ``report.html`` (self-contained, replaced atomically) and return ``path``.

    ``metrics`` is ``{split: compute_multilabel_metrics(...)}``; ``predictions`` the frame of
    :func:`multilabel_prediction_frame`. The per-label table, co-occurrence and worst rows describe ``test``
    when present, else the first split.
    """
    splits = list(metrics)
    focus = "test" if "test" in metrics else (splits[0] if splits else None)
    rows = predictions[predictions["split"] == focus] if focus else predictions.iloc[:0]
    c = cooccurrence(rows["label"].tolist(), labels) if len(rows) else np.zeros((len(labels), len(labels)), int)
    per_label = metrics.get(focus, {}).get("per_label", {}) if focus else {}
    worst = rows.sort_values(ERRORS, ascending=False, kind="stable")
    worst = worst[worst[ERRORS] > 0].head(_MAX_ROWS)
    page = (
        environment()
        .get_template("multilabel_report.html.j2")
        .render(
            title=title,
            info={k: _fmt(v) for k, v in info.items()},
            splits=splits,
            headline=[
                {"name": k, "values": [_fmt(metrics[s].get(k)) for s in splits]}
                for k in _SHOWN
                if any(metrics[s].get(k) is not None for s in splits)
            ],  # fmt: skip
            focus=focus,
            per_label=[
                {"label": lb, **{k: _fmt(v) for k, v in per_label.get(lb, {}).items()}}
                for lb in labels
                if lb in per_label
            ],
            heatmap=_heatmap(c, labels, focus or ""),
            pairs=[{k: _fmt(v) for k, v in p.items()} for p in _pairs(c, labels)],
            n_rows=len(rows),
            empty_sets=int(sum(1 for s in rows["label"] if len(s) == 0)),
            history=[{k: _fmt(v) for k, v in h.items()} for h in history],
            history_keys=list(history[0]) if history else [],
            worst=[
                {
                    "text": str(r.text)[:_MAX_TEXT],
                    "label": ", ".join(r.label) or "(none)",
                    "pred": ", ".join(r.pred) or "(none)",
                    "errors": int(getattr(r, ERRORS)),
                }
                for r in worst.itertuples(index=False)
            ],
        )
    )
    _write_atomic(Path(path), page)
    return Path(path)
