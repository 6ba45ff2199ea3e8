"""What a multi-label run (``task: multi-label-classification``) does differently, for every kind.

* Targets are a 0/1 matrix (one column per label); the loop trains with binary cross-entropy
  (:func:`modelyard.training.losses.binary_cross_entropy`) and predicts independent sigmoid probabilities.
* During training, validation uses threshold 0.5 (:func:`loop_metrics`); the metric keys the loop and tuning
  read are filled in (``accuracy`` = subset accuracy, ``roc_auc`` = macro ROC-AUC, ``loss`` = BCE).
* At the end (:func:`finish_multilabel`, shared by the loop and one-shot kinds) one threshold per label is tuned
  on the validation split (:func:`~modelyard.evaluation.multilabel_metrics.tune_thresholds`), recorded in
  ``model/modelyard.json`` (``thresholds: {label: t}``, read by the loaded classifier's ``predict``), and the
  valid/test metrics, ``predictions.parquet`` and ``report.html`` (per-label table, label co-occurrence) are
  written with those thresholds. The test split never influences the thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard._internal.io import read_json, write_json
from modelyard._internal.layout import HISTORY, MANIFEST, METRICS, MODEL_DIR, MODEL_META, PREDICTIONS, REPORT
from modelyard._internal.rundir import run_manifest
from modelyard.data.multilabel import multi_hot
from modelyard.evaluation.multilabel_metrics import (
    MULTILABEL_HEADLINE,
    compute_multilabel_metrics,
    tune_thresholds,
    with_aliases,
)
from modelyard.evaluation.multilabel_report import multilabel_prediction_frame, write_multilabel_report


def targets(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """The float32 multi-hot target matrix of a split (its ``label`` column holds label tuples)."""
    return multi_hot(frame["label"], labels).astype(np.float32)


def loop_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    loss: float | None,
    thresholds: np.ndarray | None = None,
    *,
    tune: bool = False,
) -> dict[str, Any]:
    """Multi-label metrics of one split plus the keys the loop reads (``loss``, ``accuracy``, ``roc_auc``).

    ``tune``: thresholds tuned on this very split (the validation split after each epoch). The final valid
    metrics use thresholds tuned on valid, so epochs are compared on the same footing; at 0.5 an early epoch
    whose probabilities are still all below 0.5 would score 0 whatever it had learnt.
    """
    if tune:
        thresholds = tune_thresholds(y.astype(np.int64), probs)
    return with_aliases(compute_multilabel_metrics(y.astype(np.int64), probs, labels, thresholds), loss)


def save_thresholds(model_dir: Path, labels: list[str], thresholds: np.ndarray) -> None:
    """Record per-label thresholds in ``model_dir/modelyard.json``."""
    meta = read_json(model_dir / MODEL_META)
    meta["thresholds"] = {lb: float(t) for lb, t in zip(labels, thresholds, strict=True)}
    write_json(model_dir / MODEL_META, meta)


def finish_multilabel(
    run_dir: Path,
    *,
    title: str,
    labels: list[str],
    scored: dict[str, tuple[list[str], np.ndarray, np.ndarray, float | None]],
    history: list[dict[str, Any]],
    info: dict[str, Any],
) -> dict[str, Any]:
    """Tune thresholds on valid, save them into ``run_dir/model``; write metrics, predictions, history, report.

    ``scored`` is ``{split: (texts, multi-hot y, probabilities, mean loss or None)}`` for ``valid`` and ``test``;
    ``model/`` must already be saved. Returns ``{split: metrics}``.
    """
    _, y_valid, p_valid, _ = scored["valid"]
    thresholds = tune_thresholds(y_valid.astype(np.int64), p_valid)
    save_thresholds(run_dir / MODEL_DIR, labels, thresholds)
    metrics = {s: loop_metrics(y, p, labels, loss, thresholds) for s, (_, y, p, loss) in scored.items()}
    frames = [
        multilabel_prediction_frame(s, texts, y.astype(np.int64), p, labels, thresholds)
        for s, (texts, y, p, _) in scored.items()
    ]
    predictions = pd.concat(frames, ignore_index=True)
    write_json(run_dir / METRICS, metrics)
    predictions.to_parquet(run_dir / PREDICTIONS, index=False)
    write_json(run_dir / HISTORY, history)
    write_multilabel_report(
        run_dir / REPORT,
        title=title,
        metrics=metrics,
        labels=labels,
        history=history,
        predictions=predictions,
        info=info,
    )
    return metrics


def write_multilabel_run(run_dir: Path, recipe: Any, run_id: str, t0: float, data: Any, result: Any) -> dict:
    """The outputs of a one-shot multi-label fit (tf-idf): thresholds, metrics, predictions, report, manifest."""
    labels = list(data.labels)
    scored = {
        s: (getattr(data, s)["text"].tolist(), targets(getattr(data, s), labels), result.probs[s], None)
        for s in ("valid", "test")
    }
    sizes = {s: len(getattr(data, s)) for s in ("train", "valid", "test")}
    info = {"run": run_id, "recipe name": recipe.name, **result.info}
    info.setdefault("data", recipe.data.path)
    info.setdefault("train / valid / test", " / ".join(str(n) for n in sizes.values()))
    info["labels"] = len(labels)
    metrics = finish_multilabel(
        run_dir, title=f"{recipe.name} · {run_id}", labels=labels, scored=scored, history=[], info=info
    )
    manifest = run_manifest(
        recipe, run_id, t0, data_fingerprints=data.fingerprints, data_sizes=sizes, **result.manifest
    )
    write_json(run_dir / MANIFEST, manifest)
    return metrics


def print_multilabel_metrics(console: Any, metrics: dict[str, Any]) -> None:
    """One line per split with the headline multi-label metrics."""
    for split, m in metrics.items():
        shown = ", ".join(f"{k} {m[k]:.4f}" for k in MULTILABEL_HEADLINE if m.get(k) is not None)
        console.print(f"[bold]{split}[/] {shown}")
