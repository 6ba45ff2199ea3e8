"""Knowledge distillation's teacher side (``train.distill``): soft targets, and labels for unlabelled texts.

``teacher_targets`` gives the loop the teacher's tempered probabilities on the training split (Hinton et al.
2015). ``add_teacher_labelled`` is the small-data half (``train.distill.unlabelled``): texts without labels —
the training rows that ``data.train_per_class`` left out (``rest``) or a file — are labelled by the teacher
and added to the training split, so a zero-shot prompt teacher can train a fast student from its own
answers (self-training with soft targets). Valid and test never change, and texts that are in them are
never added. The teacher scores each text once per process (``_MEMO``): the pool's probabilities are
reused for the soft targets of the same rows.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard.config import Recipe
from modelyard.data.cleaning import clean_frame
from modelyard.data.sources import load_table
from modelyard.errors import DataError, ModelyardError
from modelyard.models.loading import load

#: (teacher path, label order) → {text: probabilities in that label order}
_MEMO: dict[tuple[str, tuple[str, ...]], dict[str, np.ndarray]] = {}


def teacher_probabilities(recipe: Recipe, texts: list[str], labels: list[str], device: str, console: Any) -> np.ndarray:
    """The teacher's class probabilities for ``texts``, columns in the order of ``labels`` (memoised per text)."""
    spec = recipe.train.distill
    assert spec is not None
    source = recipe.resolve(spec.teacher)
    memo = _MEMO.setdefault((str(source), tuple(labels)), {})
    todo = list(dict.fromkeys(t for t in texts if t not in memo))
    if todo:
        teacher = load(source, device=device)
        if sorted(teacher.labels) != sorted(labels):
            raise ModelyardError(
                f"train.distill.teacher {spec.teacher} predicts labels {teacher.labels}, but the data has "
                f"{labels}; distillation needs the same label set"
            )
        console.print(f"distill: teacher {spec.teacher} scoring {len(todo)} texts …")
        probs = np.asarray(teacher.predict_proba(todo), dtype=np.float64)
        probs = probs[:, [teacher.labels.index(lab) for lab in labels]]
        memo.update(zip(todo, probs, strict=True))
        del teacher
    return np.stack([memo[t] for t in texts]) if texts else np.zeros((0, len(labels)))


def teacher_targets(recipe: Recipe, texts: list[str], gold: np.ndarray, labels: list[str], device: str, console: Any):
    """The teacher's probabilities on the training texts, tempered: ``softmax(logits / T)`` from ``p``."""
    spec = recipe.train.distill
    assert spec is not None
    probs = teacher_probabilities(recipe, texts, labels, device, console)
    # softmax(logits / T) from probabilities: p^(1/T), renormalised (works for teachers that only give p).
    tempered = np.power(np.clip(probs, 1e-12, 1.0), 1.0 / spec.temperature)
    tempered /= tempered.sum(axis=1, keepdims=True)
    agree = float(np.mean(probs.argmax(axis=1) == gold))
    console.print(f"distill: teacher agrees with the training labels on {agree:.1%} of the training split")
    return tempered.astype(np.float32)


def _pool(recipe: Recipe, data: Any) -> tuple[pd.DataFrame, str, pd.Series | None]:
    """The unlabelled texts (cleaned like the data) and, for ``rest``, the hidden gold labels (diagnostics only)."""
    spec = recipe.train.distill
    assert spec is not None and spec.unlabelled is not None
    if spec.unlabelled == "rest":
        rest = getattr(data, "unlabelled", None)
        if rest is None or rest.empty:
            raise DataError(
                "train.distill.unlabelled: rest uses the training rows that data.train_per_class or "
                "data.train_fraction leave out, and none were left out; set one of them, or point "
                "train.distill.unlabelled at a file of texts"
            )
        return rest[["text"]].copy(), "rest of the training split (labels hidden)", rest["label"]
    path = Path(recipe.resolve(spec.unlabelled))
    table = load_table(path)
    column = spec.unlabelled_column
    if column not in table.frame.columns:
        found = ", ".join(str(c) for c in table.frame.columns)
        raise DataError(
            f"{path}: no text column '{column}' (columns found: {found}); set train.distill.unlabelled_column"
        )
    frame = pd.DataFrame({"text": table.frame[column].astype(str), "label": "?"})
    cleaned, _ = clean_frame(frame, recipe.data.clean.model_copy(update={"conflicts": "drop", "pii": "off"}))
    return cleaned[["text"]].drop_duplicates().reset_index(drop=True), str(path), None


def add_teacher_labelled(recipe: Recipe, data: Any, device: str, console: Any) -> Any:
    """``train.distill.unlabelled``: the teacher labels a pool of texts, which joins the training split.

    Each added row's label is the teacher's most probable class; rows below ``min_confidence`` stay out;
    ``max_unlabelled`` draws a seeded sample of the pool first. Texts already in any split are skipped, so
    nothing from valid/test leaks into training. ``data.report['distill_unlabelled']`` records the counts
    (and, for ``rest``, how often the teacher's label matched the hidden gold label).
    """
    spec = recipe.train.distill
    if spec is None or spec.unlabelled is None:
        return data
    pool, source, hidden = _pool(recipe, data)
    known = set(data.train["text"]) | set(data.valid["text"]) | set(data.test["text"])
    keep = ~pool["text"].isin(known)
    pool, hidden = pool[keep], (hidden[keep.to_numpy()] if hidden is not None else None)
    if spec.max_unlabelled is not None and len(pool) > spec.max_unlabelled:
        # Ranked by a seeded hash of the text, not by position: overlapping pools (the rest at 8, 16, 64 … labels per
        # class) draw the same texts, so the teacher's memoised answers are reused.
        rank = [hashlib.sha256(f"{recipe.data.seed}\x00{t}".encode()).digest() for t in pool["text"]]
        chosen = np.sort(np.argsort(rank, kind="stable")[: spec.max_unlabelled])
        pool = pool.iloc[chosen]
        hidden = hidden.iloc[chosen] if hidden is not None else None
    labels = list(data.labels)
    texts = pool["text"].tolist()
    probs = teacher_probabilities(recipe, texts, labels, device, console)
    best = probs.argmax(axis=1) if len(texts) else np.zeros(0, dtype=int)
    confident = probs.max(axis=1) >= spec.min_confidence if len(texts) else np.zeros(0, dtype=bool)
    added = pd.DataFrame(
        {"text": np.asarray(texts, dtype=object)[confident], "label": [labels[i] for i in best[confident]]}
    )
    info: dict[str, Any] = {
        "source": source,
        "scored": len(texts),
        "added": len(added),
        "min_confidence": spec.min_confidence,
        "labels_added": {lab: int((added["label"] == lab).sum()) for lab in labels},
    }
    if hidden is not None and len(texts):
        matched = np.asarray(labels)[best] == hidden.to_numpy()
        info["teacher_accuracy_on_hidden_labels"] = round(float(np.mean(matched)), 4)
        if confident.any():
            info["teacher_accuracy_on_added"] = round(float(np.mean(matched[confident])), 4)
    console.print(f"distill: {len(added)} of {len(texts)} unlabelled texts join the training split, teacher-labelled")
    data.train = pd.concat([data.train, added], ignore_index=True)
    data.report["distill_unlabelled"] = info
    data.report.setdefault("split_sizes", {})["train"] = len(data.train)
    return data
