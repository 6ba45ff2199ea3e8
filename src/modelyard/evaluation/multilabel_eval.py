"""``modelyard evaluate`` for a multi-label run: its saved splits again, or any file in the recipe's label layout.

The model's own thresholds (tuned on validation when it was trained, saved in ``modelyard.json``) decide every
label; evaluation never re-tunes them, so the numbers are those a served model would reach.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from modelyard._internal.io import write_json
from modelyard._internal.layout import METRICS, PREDICTIONS, REPORT
from modelyard._internal.storage import atomic_dir, storage_errors
from modelyard.data.multilabel import label_sets, multi_hot, read_label_sets
from modelyard.errors import DataError
from modelyard.evaluation.multilabel_metrics import MULTILABEL_HEADLINE, compute_multilabel_metrics, with_aliases
from modelyard.evaluation.multilabel_report import multilabel_prediction_frame, write_multilabel_report
from modelyard.rundir import RunDir


def _file_split(path: Path, recipe: Any, labels: list[str], text_column: str | None, label_column: str | None) -> Any:
    update: dict[str, Any] = {"path": str(path.resolve())}
    if text_column:
        update["text_column"] = text_column
    if label_column:  # a delimited column named on the command line replaces 0/1 columns
        update |= {"label_column": label_column, "label_columns": None}
    cfg = recipe.data.model_copy(update=update)
    frame, info = read_label_sets(cfg, path.parent)
    unknown = sorted({lb for s in frame["label"] for lb in s} - set(labels))
    if unknown:
        rows = [int(i) + 2 for i, s in frame["label"].items() if set(s) & set(unknown)][:5]
        raise DataError(
            f"{path}: labels {unknown[:10]} are not labels of this model ({labels}); "
            f"first rows (1-based, header = row 1): {rows}"
        )
    frame = frame[frame["text"].str.strip() != ""]
    if frame.empty:
        raise DataError(f"{path}: no rows with text and labels to evaluate ({info['layout']} layout)")
    return frame.reset_index(drop=True)


def evaluate_multilabel_run(
    rd: RunDir,
    clf: Any,
    data: str | Path | None,
    text_column: str | None,
    label_column: str | None,
    console: Console,
) -> tuple[Path, dict[str, Any]]:
    """Score a multi-label run (see :func:`modelyard.evaluation.evaluate.evaluate`); returns ``(out_dir, metrics)``."""
    recipe, labels = rd.recipe(), list(clf.labels)
    if data is None:
        saved = rd.splits()
        splits = {s: getattr(saved, s) for s in ("valid", "test")}
        out_dir, history = rd.path, rd.history()
    else:
        path = Path(data)
        splits = {"eval": _file_split(path, recipe, labels, text_column, label_column)}
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = rd.evaluations_dir / f"{path.stem}-{stamp}"
        n = 1
        while out_dir.exists():
            out_dir, n = rd.evaluations_dir / f"{path.stem}-{stamp}-{n}", n + 1
        history = []
    metrics, frames = {}, []
    for name, frame in splits.items():
        texts = frame["text"].tolist()
        y = multi_hot(label_sets(frame["label"]), labels)
        probs = np.asarray(clf.predict_proba(texts), dtype=np.float64)
        metrics[name] = with_aliases(compute_multilabel_metrics(y, probs, labels, clf.thresholds))
        frames.append(multilabel_prediction_frame(name, texts, y, probs, labels, clf.thresholds))
    predictions = pd.concat(frames, ignore_index=True)
    info = {
        "run": rd.path.name,
        "backbone": clf.meta.get("backbone"),
        "evaluated": str(data) if data is not None else "run splits (valid, test)",
        "labels": len(labels),
    }

    def write(target: Path) -> None:
        write_json(target / METRICS, metrics)
        predictions.to_parquet(target / PREDICTIONS, index=False)
        write_multilabel_report(
            target / REPORT,
            title=f"{recipe.name} · {rd.path.name} · evaluation",
            metrics=metrics,
            labels=labels,
            history=history,
            predictions=predictions,
            info=info,
        )

    with storage_errors("the evaluation", out_dir, "RUN"):
        if data is None:
            write(out_dir)
        else:
            with atomic_dir(out_dir) as tmp:
                write(tmp)
    for split, m in metrics.items():
        shown = ", ".join(f"{k} {m[k]:.4f}" for k in MULTILABEL_HEADLINE if m.get(k) is not None)
        console.print(f"[bold]{split}[/] {shown}")
    console.print(f"report: {out_dir / REPORT}")
    return out_dir, metrics
