"""``modelyard evaluate``: metrics and report for a finished run, on its test split or any labelled file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from modelyard._internal.layout import REPORT
from modelyard._internal.storage import atomic_dir, storage_errors
from modelyard.data import read_table
from modelyard.errors import DataError
from modelyard.evaluation.image_eval import evaluate_image_run
from modelyard.evaluation.multilabel_eval import evaluate_multilabel_run
from modelyard.evaluation.predictions import print_metrics
from modelyard.evaluation.scoring import score_and_write
from modelyard.kinds import get_kind
from modelyard.models.loading import load
from modelyard.rundir import RunDir


def evaluate(
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    console: Console | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Evaluate a run. Returns ``(output_dir, metrics)``.

    Without ``data`` the run's saved valid/test splits are re-scored and ``metrics.json``,
    ``predictions.parquet`` and ``report.html`` in the run are rewritten (atomically). With ``data``
    (any labelled CSV/TSV/JSONL/Parquet file) results go to ``<run>/evaluations/<file>-<time>/``.

    Raises:
        ModelyardError: the run or file is unusable (missing columns, labels the model doesn't know …).
    """
    console = console or Console(stderr=True)
    rd = RunDir.finished(run_dir)
    run = rd.path
    recipe = rd.recipe()
    if get_kind(recipe.model.type).modality == "image":
        return evaluate_image_run(run, recipe, data, console)
    clf = load(run)
    if getattr(clf, "multi_label", False):
        return evaluate_multilabel_run(rd, clf, data, text_column, label_column, console)
    index = {lab: i for i, lab in enumerate(clf.labels)}

    if data is None:
        saved = rd.splits()
        splits = {s: getattr(saved, s) for s in ("valid", "test")}
        out_dir = run
        history = rd.history()
    else:
        path = Path(data)
        frame = read_table(path, "auto", recipe.data.encoding)
        folder = path.is_dir()  # a labelled folder of .txt files is read into `text` and `label` columns
        tcol = text_column or ("text" if folder else recipe.data.text_column)
        lcol = label_column or ("label" if folder else recipe.data.label_column)
        for col, key in ((tcol, "--text-column"), (lcol, "--label-column")):
            if col not in frame.columns:
                raise DataError(
                    f"{path}: column '{col}' not found; columns found: {', '.join(map(str, frame.columns))}; pass {key}"
                )
        frame = pd.DataFrame({"text": frame[tcol].astype(str), "label": frame[lcol].astype(str).str.strip()})
        unknown = sorted(set(frame["label"]) - set(index))
        if unknown:
            rows = [int(i) + 2 for i in frame.index[frame["label"].isin(unknown)][:5]]
            raise DataError(
                f"{path}: labels {unknown[:10]} are not classes of this model ({clf.labels}); "
                f"first rows (1-based, header = row 1): {rows}"
            )
        frame = frame[frame["text"].str.strip() != ""]
        if frame.empty:
            raise DataError(f"{path}: no rows with text to evaluate")
        splits = {"eval": frame.reset_index(drop=True)}
        out_dir = rd.evaluations_dir / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while out_dir.exists():  # two evaluations of one file in the same second
            out_dir = rd.evaluations_dir / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
            n += 1
        history = []

    scored = {
        name: (frame["text"].tolist(), np.array([index[x] for x in frame["label"]], dtype=np.int64), None)
        for name, frame in splits.items()
    }
    steps = rd.steps() if data is None else []
    info = {
        "run": run.name,
        "backbone": clf.meta.get("backbone"),
        "evaluated": str(data) if data is not None else "run splits (valid, test)",
    }
    title = f"{recipe.name} · {run.name} · evaluation"
    with storage_errors("the evaluation", out_dir, "RUN"):
        if data is None:  # the run's own files, each replaced atomically
            metrics, _ = score_and_write(out_dir, title, clf, scored, history, steps, info)
        else:  # a new folder: written under a hidden name, renamed into place when complete
            with atomic_dir(out_dir) as tmp:
                metrics, _ = score_and_write(tmp, title, clf, scored, history, steps, info)
    print_metrics(console, metrics)
    console.print(f"report: {out_dir / REPORT}")
    return out_dir, metrics
