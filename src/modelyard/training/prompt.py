"""The prompt loop around ``model.type: prompt``: ``modelyard prompt try`` and ``modelyard label``.

The prompt kind itself (settings, one-shot fit, loading) is :mod:`modelyard.models.prompt`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from modelyard._internal.io import read_jsonl
from modelyard._internal.labels import PRED, add_prediction_columns
from modelyard._internal.layout import MODEL_DIR
from modelyard.config import Recipe, load_recipe
from modelyard.data import prepare_data
from modelyard.data.sources import read_table, write_table
from modelyard.errors import ConfigError, DataError
from modelyard.evaluation.metrics import compute_metrics
from modelyard.llm.classifier import load_prompt_model
from modelyard.models.loading import load
from modelyard.models.prompt import PromptSettings, predict_with_progress, prompt_settings, write_prompt_model

# Texts scored between two progress updates (the LM is slow on CPU: show an ETA, not a frozen screen).
_CHUNK = 32


# ---------------------------------------------------------------------- modelyard prompt try


def prompt_try(recipe: Recipe, *, sample: int, console: Console, show: int = 10) -> dict[str, Any]:
    """Run the recipe's prompt on ``sample`` labelled validation examples; print accuracy and mistakes.

    The shot pool is the training split, so the examples scored are never shots. Every try is appended
    to ``<output_dir>/prompts/history.jsonl`` (template, verbalizers, shots, accuracy) so template
    versions can be compared; the last tries are printed as a table.
    """
    import hashlib
    import json
    import tempfile

    from rich.table import Table

    if not isinstance(recipe.model, PromptSettings):
        raise ConfigError(f"`modelyard prompt try` needs model.type 'prompt' (the recipe has '{recipe.model.type}')")
    if sample < 1:
        raise ConfigError(f"--sample must be >= 1, got {sample}")
    p = recipe.model.prompt
    assert p is not None
    data = prepare_data(recipe.data, recipe.base_dir)
    labels = list(data.labels)
    settings = prompt_settings(recipe, labels)
    frame = data.valid if len(data.valid) else data.test
    frame = frame.sample(n=min(sample, len(frame)), random_state=recipe.data.seed).reset_index(drop=True)
    with tempfile.TemporaryDirectory(prefix="modelyard-prompt-") as tmp:
        write_prompt_model(
            recipe,
            labels,
            data.train[["text", "label"]].reset_index(drop=True) if p.shots else None,
            Path(tmp) / MODEL_DIR,
        )
        clf = load_prompt_model(Path(tmp) / MODEL_DIR)
        texts = frame["text"].tolist()
        t0 = time.perf_counter()
        probs = predict_with_progress(clf, texts, console, "prompt try")
        seconds = time.perf_counter() - t0
        template_source = clf.template_source if hasattr(clf, "template_source") else settings["template"]
        index = {label: i for i, label in enumerate(labels)}
        y = np.array([index[x] for x in frame["label"]], dtype=np.int64)
        metrics = compute_metrics(y, probs, labels)
        pred = probs.argmax(axis=1)
        wrong = np.flatnonzero(pred != y)
        wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:show]  # most confident mistakes first
        rendered = clf.render_prompts([texts[i] for i in wrong]) if len(wrong) else []

    table = Table(title=f"{len(wrong)} most confident of {int((pred != y).sum())} mistakes", show_lines=True)
    for col in ("gold", "predicted", "p", "rendered prompt"):
        table.add_column(col, overflow="fold")
    for i, prompt in zip(wrong, rendered, strict=True):
        table.add_row(labels[y[i]], labels[pred[i]], f"{probs[i, pred[i]]:.3f}", prompt)
    if len(wrong):
        console.print(table)

    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "recipe": recipe.name,
        "template_sha256": hashlib.sha256((template_source or "").encode("utf-8")).hexdigest()[:12],
        "template": template_source,
        "verbalizers": settings["verbalizers"],
        "shots": p.shots,
        "shot_selection": p.shot_selection,
        "chat": p.chat,
        "backbone": recipe.model.backbone,
        "n": len(texts),
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "seconds": round(seconds, 2),
    }
    history_path = recipe.resolve(recipe.output_dir) / "prompts" / "history.jsonl"
    history_path.parent.mkdir(parents=True, exist_ok=True)
    with history_path.open("a", encoding="utf-8") as fh:  # append-only log; one line per try
        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")

    past = [r for r in read_jsonl(history_path) if r.get("recipe") == recipe.name][-8:]
    versions = Table(title=f"prompt versions of {recipe.name} ({history_path})")
    for col in ("time", "template", "shots", "verbalizers", "n", "accuracy", "macro-F1"):
        versions.add_column(col, justify="right" if col in ("shots", "n", "accuracy", "macro-F1") else "left")
    for r in past:
        versions.add_row(
            r["time"],
            r["template_sha256"],
            f"{r['shots']} {r['shot_selection']}",
            json.dumps(r["verbalizers"], ensure_ascii=False),
            str(r["n"]),
            f"{r['accuracy']:.4f}",
            f"{r['macro_f1']:.4f}",
        )
    console.print(versions)
    console.print(
        f"accuracy {metrics['accuracy']:.4f} · macro-F1 {metrics['macro_f1']:.4f} on {len(texts)} validation "
        f"examples · {1000 * seconds / max(len(texts), 1):.0f} ms per example"
    )
    return entry


# ---------------------------------------------------------------------- modelyard label


def label_file(
    source: str | Path,
    input_path: Path,
    output_path: Path,
    *,
    console: Console,
    threshold: float | None = None,
    text_column: str | None = None,
) -> dict[str, Any]:
    """Label an unlabelled file with a model (a prompt run/recipe or any run): label, confidence, probabilities.

    ``source`` is a run directory or a prompt recipe (a temporary prompt model is built from it).
    Rows whose confidence is below ``threshold`` keep ``accepted = False`` and are written to
    ``<output stem>.rejected<suffix>`` instead of the output, so the output can train a student directly.
    """
    import tempfile

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {threshold}")
    source = Path(source)
    with tempfile.TemporaryDirectory(prefix="modelyard-label-") as tmp:
        if source.is_file():
            recipe = load_recipe(source)
            if not isinstance(recipe.model, PromptSettings):
                raise ConfigError(
                    f"{source}: `modelyard label RECIPE` needs a prompt recipe; to label with a trained model pass "
                    "its run directory"
                )
            text_column = text_column or recipe.data.text_column
            model_dir = _prompt_model_from_recipe(recipe, Path(tmp) / MODEL_DIR)
            clf = load(model_dir)
        else:
            clf = load(source)
            text_column = text_column or "text"
        frame = read_table(input_path)
        if Path(input_path).is_dir():  # a folder of .txt files is read into a `text` column
            text_column = "text"
        if text_column not in frame.columns:
            raise DataError(
                f"{input_path}: no text column '{text_column}' (columns: {', '.join(map(str, frame.columns))}); "
                "pass --text-column"
            )
        texts = frame[text_column].fillna("").astype(str).tolist()
        probs = predict_with_progress(clf, texts, console, "label")
    labels = list(clf.labels)
    out = add_prediction_columns(frame.copy(), labels, probs)
    out["label"] = out[PRED]  # the column a training recipe reads (data.label_column: label)
    out["accepted"] = True if threshold is None else out["confidence"] >= threshold
    kept = out[out["accepted"]]
    rejected = out[~out["accepted"]]
    write_table(kept, output_path)
    rejected_path = None
    if len(rejected):
        rejected_path = output_path.with_name(f"{output_path.stem}.rejected{output_path.suffix}")
        write_table(rejected, rejected_path)
    summary = {
        "rows": len(out),
        "accepted": len(kept),
        "rejected": len(rejected),
        "threshold": threshold,
        "label_counts": kept["label"].value_counts().to_dict(),
        "mean_confidence": float(out["confidence"].mean()) if len(out) else None,
        "output": str(output_path),
        "rejected_output": str(rejected_path) if rejected_path else None,
    }
    console.print(
        f"labelled {len(out)} rows → {output_path} ({len(kept)} accepted"
        + (f", {len(rejected)} below confidence {threshold} → {rejected_path}" if len(rejected) else "")
        + f") · labels {summary['label_counts']}"
    )
    return summary


def _prompt_model_from_recipe(recipe: Recipe, model_dir: Path) -> Path:
    """A prompt model directory from a recipe; the data is read only when shots or labels need it."""

    p = recipe.model.prompt
    assert p is not None
    pool = None
    if p.verbalizers and not p.shots and not recipe.data.labels:
        labels = list(p.verbalizers)
    elif recipe.data.labels and not p.shots:
        labels = list(recipe.data.labels)
    else:
        data = prepare_data(recipe.data, recipe.base_dir)
        labels = list(data.labels)
        pool = data.train[["text", "label"]].reset_index(drop=True) if p.shots else None
    return write_prompt_model(recipe, labels, pool, model_dir)
