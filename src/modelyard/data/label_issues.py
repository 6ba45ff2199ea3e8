"""Label-noise detection (confident learning): out-of-fold probabilities from a fast model, then cleanlab.

Every row gets class probabilities from a model that never saw it (k-fold cross-validation), and cleanlab
(Northcutt et al., "Confident Learning", JAIR 2021) flags the rows whose given label disagrees with them more
than the per-class noise it estimates allows. The fast model here is TF-IDF character + word n-grams with a
logistic regression (scikit-learn); ``modelyard data audit --model embeddings`` feeds MiniLM sentence embeddings
into the same functions (:mod:`modelyard.ops.audit`).

This module is the data layer's half: ``data.clean.label_issues: report | drop`` (:func:`apply_label_issues`)
runs it on the training split, or reads the ``label_issues.csv`` an audit wrote. scikit-learn, scipy, jieba and
cleanlab are imported inside the functions, so importing :mod:`modelyard.data` stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard.errors import DataError

ISSUE_COLUMNS = ("row", "file", "split", "text", "given_label", "suggested_label", "score")
"""The columns of ``label_issues.csv``, in order (most suspicious row first)."""

ISSUES_FILE = "label_issues.csv"
DEFAULT_FOLDS = 5
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_MAX_REPORTED = 50  # flagged rows listed in data_report.json (the count covers all of them)


@dataclass
class AuditResult:
    """What the audit found for ``n`` rows.

    Attributes:
        probs: Out-of-fold class probabilities, shape ``(n, n_classes)``.
        scores: Label quality per row (cleanlab's self-confidence: the out-of-fold probability of the given
            label); lower = more suspicious.
        issues: Indices of the flagged rows, most suspicious first.
        suggested: Index of the most probable class per row.
        noise_rate: Per class (given label): the share of its rows whose true class is another one, from
            cleanlab's calibrated confident joint.
        accuracy: Cross-validated accuracy against the given labels.
    """

    probs: np.ndarray
    scores: np.ndarray
    issues: np.ndarray
    suggested: np.ndarray
    noise_rate: np.ndarray
    accuracy: float


def check_folds(labels: Sequence[str], classes: Sequence[str], folds: int, where: str, fix: str) -> None:
    """Every class needs at least ``folds`` rows (one per held-out fold) and there must be two classes.

    ``fix`` may name ``{max_folds}``: the smallest class's row count (the most folds it allows).

    Raises:
        DataError: naming the smallest class, its count and ``fix`` (e.g. "lower --folds").
    """
    if folds < 2:
        raise DataError(f"{where}: cross-validation needs at least 2 folds, got {folds}; {fix}")
    counts = pd.Series(list(labels), dtype=object).value_counts()
    present = [c for c in classes if counts.get(c, 0) > 0]
    if len(present) < 2:
        raise DataError(f"{where}: the label audit needs rows of at least 2 classes, found {len(present)}")
    small = sorted((int(counts.get(c, 0)), c) for c in present if counts.get(c, 0) < folds)
    if small:
        n, name = small[0]
        others = ", ".join(f"'{c}' ({k})" for k, c in small[1:5])
        raise DataError(
            f"{where}: class '{name}' has {n} row(s), fewer than the {folds} cross-validation folds (each fold "
            f"holds out at least one row of every class){f'; also {others}' if others else ''}; "
            + fix.format(max_folds=n)
        )


def tfidf_features(texts: Sequence[str]) -> Any:
    """Character (2–5, within words) + word (1–2) n-gram TF-IDF rows, each block scaled so a row has unit norm.

    Texts with Chinese characters are segmented with jieba for the word block (as ``model.tfidf.word_ngram_max``
    does); character n-grams need no segmentation. The vocabulary and idf are fitted on all texts: they use no
    labels, so no label of a held-out row reaches its fold's model.
    """
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer

    from modelyard.data.chinese import segment

    texts = [str(t) for t in texts]
    cjk = sum(bool(_CJK.search(t)) for t in texts) > len(texts) / 10
    words = [segment(t) for t in texts] if cjk else texts
    common = {"sublinear_tf": True, "min_df": 2 if len(texts) >= 50 else 1, "max_features": 300_000}
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5) if not cjk else (1, 3), **common)
    # A token is a run of word characters or one punctuation mark ("!" carries sentiment); jieba output is
    # whitespace-separated, so every segmented word is a token.
    word = TfidfVectorizer(
        analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\S+" if cjk else r"(?u)\w+|[^\w\s]", **common
    )
    try:
        blocks = [char.fit_transform(texts), word.fit_transform(words)]
    except ValueError as err:  # every text empty of n-grams
        raise DataError(f"the label audit found no n-grams in the texts ({err})") from None
    scale = float(1.0 / np.sqrt(2.0))
    return sp.hstack([b * scale for b in blocks], format="csr")


def out_of_fold_probs(
    x: Any,
    y: np.ndarray,
    n_classes: int,
    folds: int,
    seed: int,
    c: float = 4.0,
    on_fold: Callable[[], None] | None = None,
) -> np.ndarray:
    """Class probabilities of every row from a logistic regression fitted on the other folds (stratified k-fold).

    Args:
        x: Features, one row per example (sparse or dense).
        y: Class indices.
        n_classes: Number of classes (columns of the result, even if a class is absent from a fold's training part).
        folds: Number of folds.
        seed: Seeds the fold assignment.
        c: Inverse L2 strength of the logistic regression.
        on_fold: Called after each fold (progress).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(y), n_classes), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % (2**32))
    for fit_idx, held_idx in splitter.split(np.zeros(len(y)), y):
        model = LogisticRegression(C=c, max_iter=2000)
        model.fit(x[fit_idx], y[fit_idx])
        probs[np.ix_(held_idx, model.classes_)] = model.predict_proba(x[held_idx])
        if on_fold is not None:
            on_fold()
    return probs


def confident_learning(y: np.ndarray, probs: np.ndarray) -> AuditResult:
    """cleanlab's label issues (pruned by estimated noise rate, ranked by self-confidence) and quality scores."""
    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    issues = find_label_issues(y, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    scores = get_label_quality_scores(y, probs, method="self_confidence")
    joint = estimate_joint(y, probs)
    given = joint.sum(axis=1)
    noise = np.where(given > 0, 1.0 - np.diag(joint) / np.where(given > 0, given, 1.0), 0.0)
    suggested = probs.argmax(axis=1)
    return AuditResult(
        probs=probs,
        scores=np.asarray(scores, dtype=np.float64),
        issues=np.asarray(issues, dtype=np.int64),
        suggested=suggested,
        noise_rate=noise,
        accuracy=float((suggested == y).mean()),
    )


def audit_texts(
    texts: Sequence[str],
    labels: Sequence[str],
    classes: Sequence[str],
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = 42,
    features: Any = None,
    c: float = 4.0,
    on_fold: Callable[[], None] | None = None,
) -> AuditResult:
    """The whole audit of labelled texts: features (TF-IDF unless given) → out-of-fold probabilities → cleanlab.

    Call :func:`check_folds` first for a message that names the recipe's setting.
    """
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[lb] for lb in labels], dtype=np.int64)
    x = tfidf_features(texts) if features is None else features
    probs = out_of_fold_probs(x, y, len(classes), folds, seed, c=c, on_fold=on_fold)
    return confident_learning(y, probs)


def issues_frame(
    rows: pd.DataFrame, result: AuditResult, classes: Sequence[str], *, row_col: str | None, file_col: str | None
) -> pd.DataFrame:
    """The flagged rows as ``label_issues.csv`` holds them (:data:`ISSUE_COLUMNS`), most suspicious first.

    ``rows`` holds ``text``, ``label`` and ``split`` in the order the audit saw them; ``row_col``/``file_col``
    name its columns with the input row number and file (None: left empty).
    """
    picked = rows.iloc[result.issues]
    return pd.DataFrame(
        {
            "row": picked[row_col].to_numpy() if row_col else [None] * len(picked),
            "file": picked[file_col].to_numpy() if file_col else [None] * len(picked),
            "split": picked["split"].to_numpy(),
            "text": picked["text"].to_numpy(),
            "given_label": picked["label"].to_numpy(),
            "suggested_label": [classes[i] for i in result.suggested[result.issues]],
            "score": np.round(result.scores[result.issues], 6),
        },
        columns=list(ISSUE_COLUMNS),
    )


def read_issue_keys(path: Path, field: str) -> set[tuple[str, str]]:
    """The ``(text, given label)`` pairs of a ``label_issues.csv`` (matching by content survives any reordering).

    Raises:
        DataError: the file is missing or lacks the ``text``/``given_label`` columns (naming ``field``).
    """
    if not path.is_file():
        raise DataError(
            f"{field}: {path} not found; write it with `modelyard data audit RECIPE`, or set {field}: null to "
            "audit the training split during training"
        )
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("text", "given_label") if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(map(repr, missing))} (columns found: {', '.join(map(str, frame.columns))});"
            f" {field} must point at a label_issues.csv written by `modelyard data audit`"
        )
    return set(zip(frame["text"], frame["given_label"], strict=True))


def apply_label_issues(
    train: pd.DataFrame, labels: Sequence[str], mode: str, issues_file: str | None, base_dir: Path, seed: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``data.clean.label_issues``: flag training rows whose label looks wrong; ``drop`` removes them.

    Only the training split is ever audited or changed: dropping from valid/test would remove exactly the hard
    rows the model gets wrong and inflate the score. ``issues_file`` (a ``label_issues.csv`` from
    ``modelyard data audit``) is matched by cleaned text + given label; without one, the training split is
    audited here (TF-IDF + logistic regression, 5 folds, ``seed``).

    Returns:
        The training rows (fewer under ``drop``) and the ``label_issues`` entry of ``data_report.json``.
    """
    report: dict[str, Any] = {"mode": mode}
    if issues_file is not None:
        p = Path(issues_file).expanduser()
        path = p if p.is_absolute() else Path(base_dir) / p
        keys = read_issue_keys(path, "data.clean.label_issues_file")
        flagged = np.array([(t, lb) in keys for t, lb in zip(train["text"], train["label"], strict=True)], dtype=bool)
        suggested: list[str | None] = [None] * len(train)
        scores = np.full(len(train), np.nan)
        report |= {"source": str(path), "issues_in_file": len(keys)}
    else:
        check_folds(
            train["label"].tolist(),
            list(labels),
            DEFAULT_FOLDS,
            "data.clean.label_issues",
            "add training rows to that class, or run `modelyard data audit RECIPE --folds 2` and set "
            "data.clean.label_issues_file to its label_issues.csv",
        )
        classes = [c for c in labels if c in set(train["label"])]
        result = audit_texts(train["text"].tolist(), train["label"].tolist(), classes, seed=seed)
        flagged = np.zeros(len(train), dtype=bool)
        flagged[result.issues] = True
        suggested = [classes[i] for i in result.suggested]
        scores = result.scores
        report |= {
            "source": f"audit of the training split (tfidf, {DEFAULT_FOLDS} folds, seed {seed})",
            "cv_accuracy": round(result.accuracy, 4),
        }
    order = np.flatnonzero(flagged)
    if not np.isnan(scores).all():
        order = order[np.argsort(scores[order], kind="stable")]
    report |= {
        "train_rows": len(train),
        "flagged": int(flagged.sum()),
        "flagged_by_label": {lb: int((flagged & (train["label"] == lb).to_numpy()).sum()) for lb in labels},
        "dropped": int(flagged.sum()) if mode == "drop" else 0,
        "examples": [
            {
                "text": train["text"].iat[i],
                "given_label": train["label"].iat[i],
                **({"suggested_label": suggested[i], "score": round(float(scores[i]), 6)} if suggested[i] else {}),
            }
            for i in order[:_MAX_REPORTED]
        ],
    }
    if mode == "drop":
        kept = train[~flagged].reset_index(drop=True)
        missing = [lb for lb in labels if lb in set(train["label"]) and lb not in set(kept["label"])]
        if missing:
            raise DataError(
                f"data.clean.label_issues: drop would remove every training row of class {missing[0]!r}; "
                "use report, or fix that class's labels"
            )
        return kept, report
    return train, report
