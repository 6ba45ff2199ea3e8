"""``modelyard evaluate``: metrics and report for a finished run, on its test split or any labelled file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from modelyard._internal.io import read_json, write_json
from modelyard._internal.rundir import find_run
from modelyard.errors import DataError


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
    import pandas as pd

    from modelyard.config import load_recipe
    from modelyard.inference import load
    from modelyard.training.finetune import print_metrics

    console = console or Console(stderr=True)
    run = find_run(Path(run_dir))
    recipe = load_recipe(run / "recipe.yaml")
    if recipe.task == "image-classification":
        from modelyard.training.image_run import evaluate_image_run

        return evaluate_image_run(run, recipe, data, console)
    clf = load(run)
    index = {lab: i for i, lab in enumerate(clf.labels)}

    if data is None:
        splits = {s: pd.read_parquet(run / "splits" / f"{s}.parquet") for s in ("valid", "test")}
        out_dir = run
        history = read_json(run / "history.json") if (run / "history.json").is_file() else []
    else:
        from modelyard.data import read_table

        path = Path(data)
        frame = read_table(path, "auto", recipe.data.encoding)
        tcol, lcol = text_column or recipe.data.text_column, label_column or recipe.data.label_column
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
        out_dir = run / "evaluations" / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        out_dir.mkdir(parents=True, exist_ok=True)
        history = []

    scored = {
        name: (frame["text"].tolist(), np.array([index[x] for x in frame["label"]], dtype=np.int64), None)
        for name, frame in splits.items()
    }
    steps = []
    if data is None:
        from modelyard.training.finetune import read_jsonl

        steps = [r for r in read_jsonl(run / "progress.jsonl") if "event" not in r]
    info = {
        "run": run.name,
        "backbone": clf.meta.get("backbone"),
        "evaluated": str(data) if data is not None else "run splits (valid, test)",
    }
    metrics, _ = score_and_write(out_dir, f"{recipe.name} · {run.name} · evaluation", clf, scored, history, steps, info)
    print_metrics(console, metrics)
    console.print(f"report: {out_dir / 'report.html'}")
    return out_dir, metrics


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
    import pandas as pd

    from modelyard.evaluation.metrics import compute_metrics
    from modelyard.evaluation.report import write_report
    from modelyard.training.finetune import prediction_frame

    metrics: dict[str, Any] = {}
    frames = []
    for name, (inputs, y, refs) in splits.items():
        probs = clf.predict_proba(list(inputs))
        loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))
        metrics[name] = compute_metrics(y, probs, clf.labels, loss=loss)
        frames.append(prediction_frame(name, list(inputs if refs is None else refs), y, probs, clf.labels))
    predictions = pd.concat(frames, ignore_index=True)
    write_json(out_dir / "metrics.json", metrics)
    tmp = out_dir / ".predictions.parquet.tmp"
    predictions.to_parquet(tmp, index=False)
    tmp.replace(out_dir / "predictions.parquet")
    write_report(
        out_dir / "report.html",
        title=title,
        metrics=metrics,
        labels=clf.labels,
        history=history,
        steps=steps,
        predictions=predictions,
        info=info,
    )
    return metrics, predictions
