"""``modelyard data audit RECIPE``: rows whose label looks wrong, found by confident learning.

The recipe's data is read exactly as training reads it (:func:`modelyard.data.prepare_data`, cleaning included),
every cleaned row of the source (train, valid and test: the user fixes the file, not a split) gets out-of-fold
probabilities from a fast model, and cleanlab flags the rows whose given label those contradict
(:mod:`modelyard.data.label_issues`). The output folder is written under a hidden staging name and renamed
into place when complete:

    <output_dir>/<name>-audit/
      label_issues.csv    row, file, split, text, given_label, suggested_label, score — most suspicious first
      audit.json          settings, counts, estimated noise rate per class, cross-validated accuracy, fingerprints
      label_issues.html   the top issues, per-class counts, given × suggested label confusion
"""

from __future__ import annotations

import functools
import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import Progress

from modelyard._internal.io import atomic_write_text, write_json
from modelyard._internal.storage import atomic_dir, storage_errors
from modelyard.config import Recipe
from modelyard.data import prepare_data
from modelyard.data.label_issues import (
    DEFAULT_FOLDS,
    ISSUES_FILE,
    AuditResult,
    check_folds,
    confident_learning,
    issues_frame,
    out_of_fold_probs,
    tfidf_features,
)
from modelyard.data.sources import SOURCE_FILE, SOURCE_ROW
from modelyard.errors import ConfigError
from modelyard.evaluation.html import environment, fig_text, figure_env, new_figure, svg

AUDIT_JSON = "audit.json"
AUDIT_HTML = "label_issues.html"
MODELS = ("tfidf", "embeddings", "both")
_FEATURES = {
    "tfidf": "TF-IDF char_wb 2-5 (1-3 for Chinese) + word 1-2 n-grams (jieba words for Chinese)",
    "embeddings": "all-MiniLM-L6-v2 mean-pooled sentence embeddings (bundled:minilm-l6, frozen)",
}
_TEMPLATE_DIR = Path(__file__).parent / "templates"
_EMBED_CHUNK = 256  # texts per progress step (MiniLM batches 32 at a time inside)
_C = {"tfidf": 4.0, "embeddings": 1.0}  # logistic regression strength, picked on a Rotten Tomatoes sample


def default_output(recipe: Recipe) -> Path:
    """``<recipe output_dir>/<name>-audit``."""
    return recipe.resolve(recipe.output_dir) / f"{recipe.name}-audit"


def _audited_rows(recipe: Recipe) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """Every cleaned row of ``data.path`` with its split and input position, the classes, the data report."""
    if recipe.task != "text-classification":
        raise ConfigError(f"modelyard data audit checks single-label text data; the recipe's task is {recipe.task}")
    data_cfg = recipe.data.model_copy(
        update={
            "clean": recipe.data.clean.model_copy(update={"label_issues": "off"}),
            "extra_train": [],  # other files: not the rows of data.path the user will fix
            "train_per_class": None,  # every cleaned row is audited, also those a small-data run leaves out
            "train_fraction": None,
        }
    )
    data = prepare_data(data_cfg, recipe.base_dir, source_rows=True)
    frames = [getattr(data, name).assign(split=name) for name in ("train", "valid", "test")]
    rows = pd.concat(frames, ignore_index=True)
    # Input order (file, then row), so the audit itself does not depend on how the split shuffled the rows.
    rows = rows.sort_values([SOURCE_FILE, SOURCE_ROW], kind="mergesort").reset_index(drop=True)
    return rows, list(data.labels), data.report


def _features(texts: list[str], model: str, console: Console) -> Any:
    if model == "tfidf":
        return tfidf_features(texts)
    from modelyard.llm.prompting import minilm_embedder

    embed = minilm_embedder(batch_size=32)
    chunks = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("MiniLM embeddings", total=len(texts))
        for start in range(0, len(texts), _EMBED_CHUNK):
            batch = texts[start : start + _EMBED_CHUNK]
            chunks.append(embed(batch))
            progress.advance(task, len(batch))
    return np.concatenate(chunks)


def _per_class(rows: pd.DataFrame, labels: list[str], result: AuditResult) -> dict[str, dict[str, Any]]:
    given = rows["label"].to_numpy()
    flagged = np.zeros(len(rows), dtype=bool)
    flagged[result.issues] = True
    out = {}
    for k, lb in enumerate(labels):
        mine = given == lb
        n = int(mine.sum())
        out[lb] = {
            "rows": n,
            "flagged": int((flagged & mine).sum()),
            "flagged_share": round(float((flagged & mine).sum() / n), 4) if n else 0.0,
            "estimated_noise_rate": round(float(result.noise_rate[k]), 4),
            "cv_recall": round(float((result.suggested[mine] == k).mean()), 4) if n else 0.0,
        }
    return out


def _confusion(issues: pd.DataFrame, labels: list[str]) -> dict[str, dict[str, int]]:
    """Flagged rows counted by given label (rows) × suggested label (columns)."""
    counts = issues.groupby(["given_label", "suggested_label"]).size()
    return {g: {s: int(counts.get((g, s), 0)) for s in labels} for g in labels}


def _rows_sha256(rows: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for text, label in zip(rows["text"], rows["label"], strict=True):
        digest.update(f"{label}\x1f{text}\x1e".encode())
    return digest.hexdigest()


def _class_chart(per_class: dict[str, dict[str, Any]]) -> Any:
    labels = list(per_class)
    with figure_env("label-issues-classes"):
        fig = new_figure(max(3.2, 0.9 * len(labels) + 1.5), 2.8)
        ax = fig.add_subplot()
        x = np.arange(len(labels))
        ax.bar(x - 0.2, [per_class[lb]["flagged_share"] for lb in labels], 0.4, label="flagged share")
        ax.bar(x + 0.2, [per_class[lb]["estimated_noise_rate"] for lb in labels], 0.4, label="estimated noise rate")
        ax.set_xticks(x, [fig_text(lb) for lb in labels], rotation=30 if len(labels) > 4 else 0)
        ax.set_ylabel("share of the class's rows")
        ax.legend(fontsize=8)
        return svg(fig)


def render_page(summary: dict[str, Any], issues: pd.DataFrame, top: int) -> str:
    """The audit page (self-contained HTML): the ``top`` issues, per-class counts, the confusion table."""
    env = environment(_TEMPLATE_DIR)
    return env.get_template("label_issues.html.j2").render(
        s=summary,
        issues=issues.head(top).to_dict("records"),
        labels=list(summary["per_class"]),
        chart=_class_chart(summary["per_class"]),
    )


def audit(
    recipe: Recipe,
    *,
    folds: int = DEFAULT_FOLDS,
    model: str = "tfidf",
    output: Path | None = None,
    top: int = 20,
    console: Console | None = None,
) -> tuple[Path, dict[str, Any], pd.DataFrame]:
    """Audit the labels of a recipe's data; write the output folder; return it, the summary and the issues.

    Raises:
        ConfigError: unknown ``model``, a task other than single-label text classification.
        DataError: the data cannot be read, or a class has fewer rows than ``folds``.
    """
    console = console or Console(stderr=True)
    if model not in MODELS:
        raise ConfigError(f"--model '{model}' is not one of {', '.join(MODELS)}")
    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    t0 = time.time()
    rows, labels, report = _audited_rows(recipe)
    check_folds(
        rows["label"].tolist(),
        labels,
        folds,
        str(report.get("source")),
        "lower --folds to {max_folds} (the class's row count; at least 2), add rows to that class, or leave it "
        "out by listing the other classes in data.labels",
    )
    present = [lb for lb in labels if lb in set(rows["label"])]
    texts = rows["text"].tolist()
    console.print(f"[bold]audit[/] {len(rows)} rows of {report.get('source')} · {model} · {folds} folds")
    index = {lb: i for i, lb in enumerate(present)}
    y = np.array([index[lb] for lb in rows["label"]], dtype=np.int64)
    parts = ["tfidf", "embeddings"] if model == "both" else [model]
    probs = []
    for part in parts:  # `both`: the mean of the two models' out-of-fold probabilities
        x = _features(texts, part, console)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"cross-validated fits ({part})", total=folds)
            advance = functools.partial(progress.advance, task)
            probs.append(out_of_fold_probs(x, y, len(present), folds, recipe.data.seed, c=_C[part], on_fold=advance))
    result = confident_learning(y, np.mean(probs, axis=0))
    issues = issues_frame(rows, result, present, row_col=SOURCE_ROW, file_col=SOURCE_FILE)
    per_class = _per_class(rows, present, result)
    import cleanlab

    summary: dict[str, Any] = {
        "name": recipe.name,
        "source": report.get("source"),
        "settings": {
            "model": model,
            "features": " | ".join(_FEATURES[p] for p in parts),
            "classifier": "logistic regression (C="
            + ", ".join(f"{_C[p]}" for p in parts)
            + "), out-of-fold probabilities"
            + (", averaged over both models" if len(parts) > 1 else ""),
            "folds": folds,
            "seed": recipe.data.seed,
            "method": "cleanlab.filter.find_label_issues (prune_by_noise_rate), ranked by self_confidence; "
            "score = cleanlab.rank.get_label_quality_scores (self_confidence)",
            "cleanlab": cleanlab.__version__,
            "cleaning": recipe.data.clean.model_dump(mode="json", exclude={"label_issues", "label_issues_file"}),
        },
        "rows_audited": len(rows),
        "rows_by_split": {s: int((rows["split"] == s).sum()) for s in ("train", "valid", "test")},
        "issues": len(issues),
        "issues_share": round(len(issues) / len(rows), 4),
        "issues_by_split": {s: int((issues["split"] == s).sum()) for s in ("train", "valid", "test")},
        "cv_accuracy": round(result.accuracy, 4),
        "estimated_noise_rate": round(
            float(sum(per_class[lb]["estimated_noise_rate"] * per_class[lb]["rows"] for lb in present) / len(rows)), 4
        ),
        "per_class": per_class,
        "confusion": _confusion(issues, present),
        "dropped_by_cleaning": report.get("dropped", {}),
        "not_audited": [str(e.path) for e in recipe.data.extra_train],  # data.extra_train files
        "fingerprints": report.get("fingerprints", {}),
        "rows_sha256": _rows_sha256(rows),
        "seconds": round(time.time() - t0, 1),
    }
    out_dir = Path(output) if output is not None else default_output(recipe)
    with storage_errors("the label audit", out_dir, "--output"), atomic_dir(out_dir) as tmp:
        issues.to_csv(tmp / ISSUES_FILE, index=False)
        write_json(tmp / AUDIT_JSON, summary)
        atomic_write_text(tmp / AUDIT_HTML, render_page(summary, issues, top))
    return out_dir, summary, issues
