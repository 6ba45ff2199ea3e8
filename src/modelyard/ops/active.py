"""Active learning: which unlabelled texts a human should label next (``modelyard label queue``).

The model scores every unlabelled row once (in batches, with a progress bar) and a strategy ranks them:

* ``margin``: the smallest gap between the top two class probabilities first (the model hesitates between two);
* ``entropy``: the flattest class distribution first (entropy divided by its maximum, ``log C``);
* ``diverse``: uncertainty *and* diversity — the ``10·k`` rows with the smallest margin are embedded, clustered
  into ``k`` groups with k-means, and the most uncertain row of each group is taken, so a batch is not ``k``
  near-duplicates of one confusing text. The embedding is the model's own where it has one (an encoder's hidden
  states mean-pooled, :func:`modelyard.ops.text_ood.sentence_embeddings`; a tf-idf model's own tf-idf features),
  else character n-gram TF-IDF of the candidate texts (prompt, ensemble and other kinds); either is reduced with
  a truncated SVD to at most 64 dimensions and L2-normalised before k-means;
* ``random``: a seeded uniform draw, the baseline every other strategy must beat.

Multi-label models: per label, the distance of its probability to that label's decision threshold (as a share
of the way to certainty) and its binary entropy, averaged over the labels.

A queue never holds a text that is already labelled: input rows whose text — as typed, or after the run's own
cleaning (:func:`modelyard.data.cleaning.clean_text`), compared by :func:`modelyard.ops.feedback_data.text_key`
— is in the run's train/valid/test splits or has feedback in the registry are dropped, and so are repeated
texts of the input (the first one stays).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from modelyard._internal.labels import join_label_set
from modelyard.config import CleaningConfig
from modelyard.data.cleaning import clean_text
from modelyard.errors import DataError, ModelyardError
from modelyard.ops.feedback_data import text_key

STRATEGIES = ("margin", "entropy", "diverse", "random")
"""The ranking strategies of ``modelyard label queue``."""

DIVERSE_POOL = 10
"""``diverse`` clusters the ``DIVERSE_POOL · k`` most uncertain rows."""

EMBED_DIMS = 64
"""Most dimensions kept (truncated SVD) before k-means."""

QUEUE_COLUMNS = ["row", "text", "pred", "confidence", "margin", "entropy", "score"]
"""Columns of a queue file (``diverse`` adds ``cluster``)."""


@dataclass
class LabelQueue:
    """The rows to label next, most useful first, and what was left out of the ranking.

    Attributes:
        frame: ``row`` (1-based data row of the input file), ``text``, ``pred`` (the model's label, or a
            multi-label set joined by ``|``), ``confidence`` (top-1 probability; multi-label: mean of
            ``max(p, 1 − p)``), ``margin`` (top-1 − top-2; multi-label: mean distance to the thresholds),
            ``entropy`` (normalised to [0, 1]), ``score`` (the strategy's: higher is labelled first),
            ``cluster`` (``diverse`` only).
        counts: ``input_rows``, ``empty``, ``duplicates``, ``already_labelled`` (of which ``in_splits``,
            ``with_feedback``), ``candidates`` (rows ranked), ``queued``.
        strategy: The strategy used.
        embedding: ``diverse``: which embedding the clusters were made from.
    """

    frame: pd.DataFrame
    counts: dict[str, int]
    strategy: str
    embedding: str | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- scoring


def uncertainty(
    probs: np.ndarray, labels: list[str], thresholds: np.ndarray | None = None
) -> dict[str, np.ndarray | list[str]]:
    """Prediction, confidence, margin and normalised entropy of each row of ``probs``.

    Args:
        probs: ``(N, C)`` class probabilities (multi-label: one independent probability per label).
        labels: The ``C`` labels.
        thresholds: A multi-label model's per-label thresholds; ``None`` for a single-label model.

    Returns:
        ``{"pred", "confidence", "margin", "entropy"}``; small margins and large entropies are uncertain.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    n, c = p.shape
    if thresholds is not None:
        t = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-6, 1 - 1e-6)
        above = p >= t
        # how far each probability is from its threshold, as a share of the way to 0 or 1
        dist = np.where(above, (p - t) / (1 - t), (t - p) / t)
        q = np.clip(p, 1e-12, 1 - 1e-12)
        h = -(q * np.log(q) + (1 - q) * np.log(1 - q)) / math.log(2)
        preds = [join_label_set([lab for lab, a in zip(labels, row, strict=True) if a]) for row in above]
        return {
            "pred": preds,
            "confidence": np.maximum(p, 1 - p).mean(axis=1),
            "margin": dist.mean(axis=1),
            "entropy": h.mean(axis=1),
        }
    order = np.sort(p, axis=1)[:, ::-1]
    top1 = order[:, 0]
    top2 = order[:, 1] if c > 1 else np.zeros(n)
    q = np.clip(p, 1e-12, 1.0)
    ent = -(p * np.log(q)).sum(axis=1) / (math.log(c) if c > 1 else 1.0)
    return {
        "pred": [labels[i] for i in p.argmax(axis=1)],
        "confidence": top1,
        "margin": top1 - top2,
        "entropy": np.clip(ent, 0.0, 1.0),
    }


def score_texts(clf: Any, texts: list[str], *, batch_size: int = 256, console: Console | None = None) -> np.ndarray:
    """``clf.predict_proba`` over ``texts`` in batches, with a progress bar (rows, rate, ETA) on ``console``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    out = np.zeros((len(texts), len(clf.labels)), dtype=np.float64)
    columns = (
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeRemainingColumn(),
    )
    console = console or Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("score", total=len(texts))
        for start in range(0, len(texts), batch_size):
            part = texts[start : start + batch_size]
            probs = np.asarray(clf.predict_proba(part), dtype=np.float64)
            if probs.shape != (len(part), len(clf.labels)):
                raise ModelyardError(f"the model returned probabilities of shape {probs.shape} for {len(part)} texts")
            out[start : start + len(part)] = probs
            progress.advance(task, len(part))
    return out


# ---------------------------------------------------------------------------------------------- embeddings


def embed_texts(clf: Any, texts: list[str], cleaning: CleaningConfig, seed: int = 0) -> tuple[np.ndarray, str]:
    """L2-normalised vectors of ``texts`` (at most :data:`EMBED_DIMS` dimensions) and what they came from.

    The model's own representation where it has one: a tf-idf model's tf-idf features (``features``), an
    encoder's mean-pooled hidden states; otherwise character 2–4-gram TF-IDF of the texts themselves (works for
    English and for Chinese without word segmentation).
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    x: Any = None
    how = ""
    if callable(getattr(clf, "features", None)):  # tfidf-logreg: its features take cleaned texts
        try:
            x, how = clf.features([clean_text(t, cleaning) for t in texts]), "the model's tf-idf features"
        except Exception:  # noqa: BLE001 - any kind may call something else `features`; fall back to texts
            x = None
    if x is None and getattr(clf, "model", None) is not None and hasattr(clf, "encode"):
        from modelyard.ops.text_ood import sentence_embeddings

        try:
            x = sentence_embeddings(clf, texts)
            how = "the model's encoder (hidden states, mean-pooled)"
        except Exception:  # noqa: BLE001 - an architecture without hidden states: fall back to the texts
            x = None
    if x is None:
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
        try:
            x, how = vec.fit_transform([clean_text(t, cleaning) for t in texts]), "char n-gram TF-IDF of the texts"
        except ValueError:  # every text empty after the analyzer: no vocabulary
            return np.zeros((len(texts), 1)), "none (no characters to compare)"
    if not hasattr(x, "toarray"):  # dense encoder vectors: centre them so the first component is not the mean
        x = np.asarray(x, dtype=np.float64)
        x = x - x.mean(axis=0, keepdims=True)
    dims = min(EMBED_DIMS, x.shape[1] - 1, x.shape[0] - 1)
    if x.shape[1] > EMBED_DIMS and dims >= 2:
        x = TruncatedSVD(n_components=dims, random_state=seed).fit_transform(x)
    dense = x.toarray() if hasattr(x, "toarray") else np.asarray(x, dtype=np.float64)
    return normalize(dense), how


def diverse_pick(emb: np.ndarray, uncertain: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means ``emb`` into ``k`` clusters; the most uncertain row of each, topped up by uncertainty.

    Args:
        emb: ``(N, D)`` vectors of the candidates.
        uncertain: ``(N,)`` uncertainty (higher: more uncertain).
        k: Rows to pick (``k < N``).
        seed: k-means seed.

    Returns:
        ``(picked candidate indices, their cluster ids)``; fewer distinct points than ``k`` (duplicates)
        leaves clusters empty, and those picks are the next most uncertain rows (cluster ``-1``).
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than k: handled below
        assign = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(emb)
    picked: list[int] = []
    clusters: list[int] = []
    for cl in np.unique(assign):
        members = np.flatnonzero(assign == cl)
        picked.append(int(members[np.argmax(uncertain[members])]))
        clusters.append(int(cl))
    if len(picked) < k:
        rest = [i for i in np.argsort(-uncertain, kind="stable") if i not in set(picked)]
        extra = rest[: k - len(picked)]
        picked += [int(i) for i in extra]
        clusters += [-1] * len(extra)
    return np.array(picked, dtype=np.int64), np.array(clusters, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- ranking


def _keys(text: str, cleaning: CleaningConfig) -> tuple[str, str]:
    return text_key(text), text_key(clean_text(text, cleaning))


def labelled_keys(
    split_texts: Iterable[str], feedback_texts: Iterable[str], cleaning: CleaningConfig
) -> tuple[set[str], set[str]]:
    """``(keys of the split texts, keys of the feedback texts)``: each text as stored and after cleaning."""
    splits = {k for t in split_texts for k in _keys(str(t), cleaning)}
    feedback = {k for t in feedback_texts for k in _keys(str(t), cleaning)}
    return splits, feedback


def rank_queue(
    clf: Any,
    texts: list[Any],
    k: int,
    *,
    strategy: str = "margin",
    seed: int = 0,
    cleaning: CleaningConfig | None = None,
    in_splits: set[str] | None = None,
    with_feedback: set[str] | None = None,
    batch_size: int = 256,
    console: Console | None = None,
) -> LabelQueue:
    """Rank unlabelled ``texts`` (a file's text column, in file order) and keep the ``k`` most useful.

    Args:
        clf: A loaded text classifier (``labels``, ``predict_proba``; ``multi_label``/``thresholds``).
        texts: The texts; ``row`` in the result is the 1-based position here.
        k: Rows to return (fewer when fewer are left).
        strategy: One of :data:`STRATEGIES`.
        seed: Seed of ``random`` and of ``diverse``'s k-means / SVD.
        cleaning: The run's cleaning (for comparing texts as the run saw them).
        in_splits: Keys of texts in the run's splits (:func:`labelled_keys`): never queued.
        with_feedback: Keys of texts that already have feedback: never queued.
        batch_size: Texts per ``predict_proba`` call.
        console: Progress output.

    Raises:
        ModelyardError: A bad ``k`` or strategy.
    """
    if strategy not in STRATEGIES:
        raise ModelyardError(f"--strategy '{strategy}' is not one of {', '.join(STRATEGIES)}")
    if k <= 0:
        raise ModelyardError(f"--k must be at least 1 (got {k})")
    cleaning = cleaning or CleaningConfig()
    in_splits, with_feedback = in_splits or set(), with_feedback or set()
    counts = {"input_rows": len(texts), "empty": 0, "duplicates": 0, "in_splits": 0, "with_feedback": 0}
    keep: list[int] = []
    seen: set[str] = set()
    for i, raw in enumerate(texts):
        if raw is None or (isinstance(raw, float) and math.isnan(raw)) or not str(raw).strip():
            counts["empty"] += 1
            continue
        keys = _keys(str(raw), cleaning)
        if keys[0] in in_splits or keys[1] in in_splits:
            counts["in_splits"] += 1
        elif keys[0] in with_feedback or keys[1] in with_feedback:
            counts["with_feedback"] += 1
        elif keys[1] in seen:
            counts["duplicates"] += 1
        else:
            seen.add(keys[1])
            keep.append(i)
    counts["already_labelled"] = counts["in_splits"] + counts["with_feedback"]
    counts["candidates"] = len(keep)
    cand = [str(texts[i]) for i in keep]
    multi = bool(getattr(clf, "multi_label", False))
    thresholds = np.asarray(clf.thresholds, dtype=np.float64) if multi else None
    probs = score_texts(clf, cand, batch_size=batch_size, console=console) if cand else np.zeros((0, len(clf.labels)))
    u = uncertainty(probs, list(clf.labels), thresholds)
    margin, entropy = np.asarray(u["margin"]), np.asarray(u["entropy"])
    frame = pd.DataFrame(
        {
            "row": np.asarray(keep, dtype=np.int64) + 1,
            "text": cand,
            "pred": u["pred"],
            "confidence": np.asarray(u["confidence"]),
            "margin": margin,
            "entropy": entropy,
        }
    )
    embedding = None
    if strategy == "random":
        frame["score"] = np.random.default_rng(seed).random(len(frame))
    elif strategy == "entropy":
        frame["score"] = entropy
    else:
        frame["score"] = 1.0 - margin
    order = np.lexsort((frame["row"].to_numpy(), -frame["score"].to_numpy()))  # by score, ties by row
    frame = frame.iloc[order].reset_index(drop=True)
    if strategy == "diverse" and len(frame) > k:
        pool = frame.iloc[: max(k, DIVERSE_POOL * k)].reset_index(drop=True)
        emb, embedding = embed_texts(clf, pool["text"].tolist(), cleaning, seed)
        picked, clusters = diverse_pick(emb, pool["score"].to_numpy(), k, seed)
        frame = pool.iloc[picked].assign(cluster=clusters)
        order = np.lexsort((frame["row"].to_numpy(), -frame["score"].to_numpy()))
        frame = frame.iloc[order].reset_index(drop=True)
    elif strategy == "diverse":
        frame = frame.assign(cluster=np.arange(len(frame), dtype=np.int64))
    frame = frame.head(k).reset_index(drop=True)
    counts["queued"] = len(frame)
    return LabelQueue(frame=frame, counts=counts, strategy=strategy, embedding=embedding)


# ---------------------------------------------------------------------------------------------- the command


def resolve_run(run: str, store: Path | None = None, db: str | None = None) -> tuple[Path, str | None, Any]:
    """``(run directory, app name or None, registry or None)`` of a run directory or a registry ``NAME@ALIAS``."""
    path = Path(run)
    if "@" in run and not path.exists():
        from modelyard.registry import open_registry
        from modelyard.serving.production import parse_target

        name, alias = parse_target(run)
        registry = open_registry(store, db)
        return registry.resolve(name, alias).path, name, registry
    if store is not None or db is not None:
        from modelyard.registry import open_registry

        return path, None, open_registry(store, db)
    return path, None, None


def read_unlabelled(path: Path, column: str) -> list[Any]:
    """The text column of an unlabelled file, in file order.

    Raises:
        DataError: The file is missing or empty, or has no such column (the columns found are named).
    """
    from modelyard.data import read_table

    if not Path(path).exists():
        raise DataError(f"{path}: input file not found")
    frame = read_table(Path(path))
    if column not in frame.columns:
        raise DataError(
            f"{path}: text column '{column}' not found; columns found: {', '.join(map(str, frame.columns))}; "
            "pass --text-column"
        )
    if frame.empty:
        raise DataError(f"{path}: no rows to rank (the file holds only a header or nothing)")
    return frame[column].tolist()


def label_queue(
    run: str,
    input_path: Path,
    *,
    k: int = 50,
    strategy: str = "margin",
    text_column: str | None = None,
    seed: int = 0,
    store: Path | None = None,
    db: str | None = None,
    app: str | None = None,
    batch_size: int = 256,
    console: Console | None = None,
) -> LabelQueue:
    """``modelyard label queue``: load the model once, drop what is labelled, rank the rest.

    Args:
        run: A run directory or ``NAME@ALIAS`` of the registry in ``store``/``db``.
        input_path: The unlabelled file (CSV/TSV/JSONL/Parquet/xlsx, or a folder of ``.txt``).
        k: Rows to queue.
        strategy: One of :data:`STRATEGIES`.
        text_column: The input's text column (default: the run's, else ``text``).
        seed: Seed of ``random`` and ``diverse``.
        store: Registry store: texts with feedback there are not queued.
        db: Registry database URL.
        app: The registry app whose feedback counts (default: NAME of ``NAME@ALIAS``).
        batch_size: Texts per model call.
        console: Progress and messages.

    Raises:
        ModelyardError: Bad ``k``/strategy, an image or generative model, a store without an app.
        DataError: Missing input, column or rows.
    """
    from modelyard.models.loading import load, model_dir_of, read_model_meta, require_classifier
    from modelyard.rundir import RunDir

    if strategy not in STRATEGIES:
        raise ModelyardError(f"--strategy '{strategy}' is not one of {', '.join(STRATEGIES)}")
    if k <= 0:
        raise ModelyardError(f"--k must be at least 1 (got {k})")
    console = console or Console(stderr=True)
    run_dir, target_app, registry = resolve_run(run, store, db)
    try:
        app = app or target_app
        if registry is not None and app is None:
            raise ModelyardError("--store names a registry: pass --app NAME (whose feedback counts as labelled)")
        require_classifier(run_dir, "label queue")
        meta = read_model_meta(model_dir_of(run_dir))
        if meta.get("task") == "image-classification" or meta.get("modality") == "image":
            raise ModelyardError(f"{run}: `label queue` ranks texts; this is an image model")
        cleaning = CleaningConfig.model_validate(meta.get("cleaning") or {})
        column = text_column or ("text" if Path(input_path).is_dir() else meta.get("text_column") or "text")
        texts = read_unlabelled(Path(input_path), column)
        splits = RunDir(run_dir).splits()
        split_texts = [t for part in (splits.train, splits.valid, splits.test) for t in part["text"]]
        feedback = [r["text"] for r in registry.feedback(app)] if registry is not None and app else []
        in_splits, with_feedback = labelled_keys(split_texts, feedback, cleaning)
        clf = load(run_dir, batch_size=min(batch_size, 64))
        if getattr(clf, "task", None) == "image-classification":
            raise ModelyardError(f"{run}: `label queue` ranks texts; this is an image model")
        return rank_queue(
            clf,
            texts,
            k,
            strategy=strategy,
            seed=seed,
            cleaning=cleaning,
            in_splits=in_splits,
            with_feedback=with_feedback,
            batch_size=batch_size,
            console=console,
        )
    finally:
        if registry is not None:
            registry.close()
