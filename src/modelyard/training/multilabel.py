"""The multi-label ending of a run: per-label thresholds tuned on validation, saved with the model, then metrics.

Every multi-label kind returns independent per-label probabilities for valid and test (sigmoid outputs). This
module, shared by all of them, tunes one threshold per label on the validation split
(:func:`~modelyard.evaluation.multilabel_metrics.tune_thresholds`), records the thresholds in
``model/modelyard.json`` (``thresholds: {label: t}``, read by the loaded classifier's ``predict``) and computes the
valid/test metrics with those thresholds. The test split never influences the thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelyard._internal.io import read_json, write_json
from modelyard._internal.layout import HISTORY, MANIFEST, METRICS, MODEL_DIR, MODEL_META
from modelyard._internal.rundir import run_manifest
from modelyard.data.multilabel import multi_hot
from modelyard.evaluation.multilabel_metrics import MULTILABEL_HEADLINE, compute_multilabel_metrics, tune_thresholds


def save_thresholds(model_dir: Path, labels: list[str], thresholds: np.ndarray) -> None:
    """Record per-label thresholds in ``model_dir/modelyard.json``."""
    meta = read_json(model_dir / MODEL_META)
    meta["thresholds"] = {lb: float(t) for lb, t in zip(labels, thresholds, strict=True)}
    write_json(model_dir / MODEL_META, meta)


def finish_multilabel(model_dir: Path, data: Any, probs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Tune thresholds on ``probs['valid']``, save them into the model, return ``{split: metrics}`` for valid/test."""
    labels = list(data.labels)
    y = {split: multi_hot(getattr(data, split)["label"], labels) for split in ("valid", "test")}
    thresholds = tune_thresholds(y["valid"], probs["valid"])
    save_thresholds(model_dir, labels, thresholds)
    return {split: compute_multilabel_metrics(y[split], probs[split], labels, thresholds) for split in y}


def write_multilabel_fit_outputs(run_dir: Path, model_dir: Path, data: Any, probs: dict[str, np.ndarray]) -> dict:
    """``metrics.json`` and an empty ``history.json`` of a one-shot multi-label fit (thresholds saved first)."""
    metrics = finish_multilabel(model_dir, data, probs)
    write_json(run_dir / METRICS, metrics)
    write_json(run_dir / HISTORY, [])
    return metrics


def write_multilabel_run(run_dir: Path, recipe: Any, run_id: str, t0: float, data: Any, result: Any) -> dict:
    """The outputs of a one-shot multi-label run: thresholds, ``metrics.json``, ``history.json``, ``manifest.json``.

    No ``predictions.parquet`` or ``report.html`` yet (issue #19 item 2: per-label table and co-occurrence).
    """
    metrics = write_multilabel_fit_outputs(run_dir, run_dir / MODEL_DIR, data, result.probs)
    manifest = run_manifest(
        recipe,
        run_id,
        t0,
        data_fingerprints=data.fingerprints,
        data_sizes={s: len(getattr(data, s)) for s in ("train", "valid", "test")},
        **result.manifest,
    )
    write_json(run_dir / MANIFEST, manifest)
    return metrics


def print_multilabel_metrics(console: Any, metrics: dict[str, Any]) -> None:
    """One line per split with the headline multi-label metrics."""
    for split, m in metrics.items():
        shown = ", ".join(f"{k} {m[k]:.4f}" for k in MULTILABEL_HEADLINE if m.get(k) is not None)
        console.print(f"[bold]{split}[/] {shown}")
