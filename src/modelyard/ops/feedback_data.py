"""Feedback → the challenger's training data, for text and image models (used by ``modelyard retrain``).

Both follow one rule: the latest label per item wins; a deterministic hash of the item puts a ``holdout``
fraction of the feedback aside for scoring; an item of the champion's test split never enters training (it
is counted and ignored); an item already in train/valid takes the feedback label; new items are added to
the training split.

* Texts are keyed by their normalised text (:func:`text_key`).
* Images are keyed by the sha256 of the model-sized pixel array (the same image re-encoded is the same
  item). Their pixels come from ``feedback_images``: a client sends the image back with its feedback
  (``POST /v1/feedback {"image": …}``); the prediction log itself never keeps pixels.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from modelyard._internal.labels import split_label_set
from modelyard.data import PreparedData, label_sets
from modelyard.data.images import ImageData, ImageSplit
from modelyard.serving.images import described_sha256


def text_key(text: str) -> str:
    """Dedup key of a text: NFKC, whitespace collapsed, case kept."""
    return " ".join(unicodedata.normalize("NFKC", str(text)).split())


def holdout_score(key: str) -> float:
    """A number in [0, 1] fixed by ``key``: items scoring below ``holdout`` are held out."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF


def _label_set_of(value: Any, labels: list[str]) -> tuple[str, ...] | None:
    """A logged multi-label answer (``"a|b"``, ``""``) as a tuple in label order; ``None`` if a label is unknown."""
    found = split_label_set(value)
    if any(lab not in labels for lab in found):
        return None
    return tuple(lab for lab in labels if lab in found)


def build_training_data(
    splits: Any, feedback: list[dict[str, Any]], labels: list[str], holdout: float, *, multi_label: bool = False
) -> tuple[Any, pd.DataFrame, dict[str, int]]:
    """Apply feedback to the champion's splits.

    Multi-label (``multi_label``): a feedback ``label`` is a label set joined by ``|`` (``""``: the empty set,
    a real answer); it becomes a tuple of labels in label order, the ``label`` cell of a multi-label split
    (:mod:`modelyard.data.multilabel`), so the challenger trains on splits of the same layout as the champion's.

    Args:
        splits: The champion's :class:`~modelyard.data.PreparedData`.
        feedback: ``Registry.feedback`` rows (``text``, ``label``, ``at``).
        labels: The champion's labels; feedback with another label is ignored (counted).
        holdout: Fraction of feedback texts held out for evaluation.
        multi_label: The champion learns label sets.

    Returns:
        ``(prepared data for the challenger, feedback hold-out frame, counts)``.
    """

    counts = {"feedback_rows": len(feedback), "feedback_unknown_label": 0}
    latest: dict[str, tuple[Any, Any]] = {}
    for row in feedback:
        answer = _label_set_of(row["label"], labels) if multi_label else row["label"]
        if answer is None or (not multi_label and answer not in labels):
            counts["feedback_unknown_label"] += 1
            continue
        key = text_key(row["text"])
        if key and (key not in latest or row["at"] >= latest[key][0]):
            latest[key] = (row["at"], answer)
    test_keys = {text_key(t) for t in splits.test["text"]}
    held = {k: lab for k, (_, lab) in latest.items() if holdout_score(k) < holdout and k not in test_keys}
    learn = {k: lab for k, (_, lab) in latest.items() if k not in held and k not in test_keys}
    counts["feedback_texts"] = len(latest)
    counts["feedback_in_test_ignored"] = sum(1 for k in latest if k in test_keys)
    counts["feedback_holdout"] = len(held)

    def apply(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
        frame = frame.copy()
        if multi_label:  # parquet gives arrays back: tuples compare (and hash) as label sets
            frame["label"] = pd.Series(label_sets(frame["label"]), index=frame.index, dtype=object)
        keys = frame["text"].map(text_key)
        frame = frame[~keys.isin(held)]  # hold-out texts must not be trained on
        keys = frame["text"].map(text_key)
        fb = keys.map(learn)
        conflicts = int((fb.notna() & (fb != frame["label"])).sum())
        frame.loc[fb.notna(), "label"] = fb[fb.notna()]
        before = len(frame)
        frame = frame.assign(_k=keys).drop_duplicates("_k", keep="last").drop(columns="_k")
        return frame, conflicts, before - len(frame)

    train, c_train, d_train = apply(splits.train)
    valid, c_valid, d_valid = apply(splits.valid)
    seen = set(train["text"].map(text_key)) | set(valid["text"].map(text_key))
    new = pd.DataFrame(
        [{"text": k, "label": lab} for k, lab in learn.items() if k not in seen], columns=["text", "label"]
    )
    counts.update(
        conflicts_resolved_for_feedback=c_train + c_valid,
        duplicates_dropped=d_train + d_valid,
        feedback_added=len(new),
        train_rows=len(train) + len(new),
    )
    train = pd.concat([train, new], ignore_index=True)
    report = {**(splits.report or {}), "retrain": counts}
    prepared = PreparedData(
        train=train.reset_index(drop=True),
        valid=valid.reset_index(drop=True),
        test=splits.test.reset_index(drop=True),
        labels=list(labels),
        report=report,
        fingerprints=dict(splits.fingerprints or {}),
    )
    hold = pd.DataFrame([{"text": k, "label": lab} for k, lab in held.items()], columns=["text", "label"])
    return prepared, hold, counts


def build_image_training_data(
    splits: ImageData,
    feedback: list[dict[str, Any]],
    labels: list[str],
    holdout: float,
    fetch_image: Callable[[str], tuple[str, bytes] | None],
    to_array: Callable[[bytes], np.ndarray],
) -> tuple[ImageData, ImageSplit, dict[str, int]]:
    """Apply image feedback to the champion's image splits.

    Args:
        splits: The champion's :class:`~modelyard.data.images.ImageData` (uint8 ``(N, C, H, W)``).
        feedback: ``Registry.feedback`` rows; ``text`` is the logged image description (type, size, sha256).
        labels: The champion's labels; feedback with another label is ignored (counted).
        holdout: Fraction of feedback images held out for evaluation.
        fetch_image: sha256 → ``(media type, bytes)`` sent with the feedback, or ``None``.
        to_array: Encoded image → the model's uint8 ``(C, H, W)`` array (the champion's preprocessing).

    Returns:
        ``(image data for the challenger, feedback hold-out split, counts)``; ``counts["feedback_images"]``
        is 0 when no feedback carried its image.
    """
    counts = {
        "feedback_rows": len(feedback),
        "feedback_unknown_label": 0,
        "feedback_without_image": 0,
        "feedback_image_shape_mismatch": 0,
    }
    shape = splits.train.images.shape[1:]
    latest: dict[str, tuple[Any, int, np.ndarray, str]] = {}
    for row in feedback:
        if row["label"] not in labels:
            counts["feedback_unknown_label"] += 1
            continue
        sha = described_sha256(row["text"])
        stored = fetch_image(sha) if sha else None
        if stored is None:
            counts["feedback_without_image"] += 1
            continue
        array = np.ascontiguousarray(to_array(stored[1]), dtype=np.uint8)
        if array.shape != shape:
            counts["feedback_image_shape_mismatch"] += 1
            continue
        key = pixel_key(array)
        if key not in latest or row["at"] >= latest[key][0]:
            latest[key] = (row["at"], labels.index(row["label"]), array, sha or "")
    test_keys = {pixel_key(im) for im in splits.test.images}
    held = {k for k in latest if holdout_score(k) < holdout and k not in test_keys}
    learn = {k: v for k, v in latest.items() if k not in held and k not in test_keys}
    counts["feedback_images"] = len(latest)
    counts["feedback_in_test_ignored"] = sum(1 for k in latest if k in test_keys)
    counts["feedback_holdout"] = len(held)

    def apply(split: ImageSplit) -> tuple[ImageSplit, int, set[str]]:
        keys = [pixel_key(im) for im in split.images]
        keep = np.array([k not in held for k in keys], dtype=bool)
        y = split.labels.copy()
        conflicts = 0
        for i, k in enumerate(keys):
            if k in learn and y[i] != learn[k][1]:
                y[i] = learn[k][1]
                conflicts += 1
        refs = [r for r, kept in zip(split.refs, keep, strict=True) if kept]
        return ImageSplit(split.images[keep], y[keep], refs), conflicts, set(keys)

    train, c_train, k_train = apply(splits.train)
    valid, c_valid, k_valid = apply(splits.valid)
    new = [(k, v) for k, v in learn.items() if k not in k_train and k not in k_valid]
    if new:
        train = ImageSplit(
            np.concatenate([train.images, np.stack([v[2] for _, v in new])]),
            np.concatenate([train.labels, np.array([v[1] for _, v in new], dtype=train.labels.dtype)]),
            [*train.refs, *(f"feedback:{v[3]}" for _, v in new)],
        )
    counts.update(
        conflicts_resolved_for_feedback=c_train + c_valid,
        feedback_added=len(new),
        train_rows=len(train),
    )
    hold_items = [latest[k] for k in sorted(held)]
    hold = ImageSplit(
        np.stack([v[2] for v in hold_items]) if hold_items else np.zeros((0, *shape), dtype=np.uint8),
        np.array([v[1] for v in hold_items], dtype=np.int64),
        [f"feedback:{v[3]}" for v in hold_items],
    )
    data = ImageData(
        train=train,
        valid=valid,
        test=splits.test,
        labels=list(labels),
        report={**(splits.report or {}), "retrain": counts},
        fingerprints=dict(splits.fingerprints or {}),
    )
    return data, hold, counts


def pixel_key(image: np.ndarray) -> str:
    """Identity of an image for feedback: the sha256 of its model-sized uint8 pixels and their shape."""
    return hashlib.sha256(repr(image.shape).encode() + np.ascontiguousarray(image).tobytes()).hexdigest()
