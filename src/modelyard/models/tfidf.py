"""The classical baseline ``tfidf-logreg``: TF-IDF n-grams + logistic regression trained by SGD (scikit-learn).

Not a torch model, so it is a one-shot fit (``ModelKind.fit``): the run writes the same directory as a
fine-tune from the probabilities it returns (``metrics.json``, ``predictions.parquet``, ``report.html`` …).

The model is saved without pickle: ``vectorizer.json`` (the analyzer settings) and ``weights.npz``
(vocabulary, idf, coefficients; loaded with ``allow_pickle=False``). Loading rebuilds the features with
scikit-learn's ``CountVectorizer`` on the fixed vocabulary, then applies the stored idf and L2 norm — the
same numbers ``TfidfVectorizer`` produced at training time.

Options (``model.tfidf``): ``word_ngram_max`` adds a second block of jieba word n-grams to the character
n-grams (each block L2-normalised, then scaled by 1/sqrt(2) so a text's row still has unit norm);
``nb_weighting`` scales every feature by its naive-Bayes log-count ratio before the regression (NBSVM, Wang &
Manning 2012). The ratio is folded into the saved coefficients (``(x * r) . w == x . (r * w)``), so a saved
model is always "features → one linear layer" and loading needs no extra arrays.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from modelyard._internal.io import read_json, write_json
from modelyard._internal.labels import MULTI_LABEL, label_predictions, label_set_predictions, model_thresholds
from modelyard._internal.layout import MANIFEST, MODEL_META
from modelyard.config import CleaningConfig, ModelSettings, TfidfConfig
from modelyard.data.chinese import segment
from modelyard.data.cleaning import clean_text
from modelyard.data.multilabel import multi_hot
from modelyard.errors import ModelError
from modelyard.kinds import FitContext, FitResult, ModelKind, register_kind
from modelyard.models.text_classifier import text_model_metadata

VECTORIZER_FILE = "vectorizer.json"
WEIGHTS_FILE = "weights.npz"
BLOCK_SCALE = float(1.0 / np.sqrt(2.0))  # two L2-normalised blocks side by side keep a unit-norm row


def _analyzer_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "analyzer": spec["analyzer"],
        "ngram_range": tuple(spec["ngram_range"]),
        "lowercase": spec["lowercase"],
        "dtype": np.float64,
    }
    if spec["analyzer"] == "word":
        # Whitespace tokens: keeps one-character Chinese words (jieba output) and punctuation.
        kwargs["token_pattern"] = r"(?u)\S+"
    return kwargs


def _vectorizer_spec(cfg: TfidfConfig) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "analyzer": "char_wb" if cfg.analyzer == "char" else "word",
        "ngram_range": [cfg.ngram_min, cfg.ngram_max],
        "lowercase": True,
        "sublinear_tf": cfg.sublinear_tf,
        "norm": "l2",
    }
    if cfg.word_ngram_max is not None:
        # The second block: jieba words of the (cleaned) text, same tf/idf/norm settings.
        spec["word"] = {
            "analyzer": "word",
            "ngram_range": [1, cfg.word_ngram_max],
            "lowercase": True,
            "sublinear_tf": cfg.sublinear_tf,
            "norm": "l2",
            "segment": "jieba",
        }
        spec["block_scale"] = BLOCK_SCALE
    if cfg.nb_weighting:
        spec["nb_weighting"] = True  # informational: the ratios are folded into the coefficients
    return spec


def _segment_all(texts: list[str]) -> list[str]:
    """jieba words separated by spaces (the input of the word block)."""
    return [segment(t) for t in texts]


def _tfidf_rows(counts: Any, idf: np.ndarray, sublinear: bool) -> Any:
    """Counts → (1 + log tf if sublinear) × idf → L2-normalised rows, exactly as ``TfidfVectorizer``."""
    from sklearn.preprocessing import normalize

    x = counts.astype(np.float64)
    if sublinear:
        x.data = np.log(x.data) + 1.0
    x = x.multiply(idf).tocsr()
    return normalize(x, norm="l2", copy=False)


def nb_ratios(x: Any, y: np.ndarray, n_classes: int, smoothing: float = 1.0) -> np.ndarray:
    """Naive-Bayes log-count ratios, one row per binary problem: ``log((p/|p|1) / (q/|q|1))``.

    ``p`` sums the feature values of the positive examples (+ ``smoothing``), ``q`` those of the rest. Two
    classes give one row (class 1 against class 0); more give one row per class (one-vs-rest).
    """
    targets = [1] if n_classes == 2 else list(range(n_classes))
    rows = []
    for k in targets:
        pos = y == k
        p = np.asarray(x[pos].sum(axis=0)).ravel() + smoothing
        q = np.asarray(x[~pos].sum(axis=0)).ravel() + smoothing
        rows.append(np.log((p / p.sum()) / (q / q.sum())))
    return np.vstack(rows)


def _proba(decision: np.ndarray) -> np.ndarray:
    """scikit-learn's probabilities of a log-loss linear model: sigmoid (binary) or normalised one-vs-rest."""
    from scipy.special import expit

    if decision.ndim == 1 or decision.shape[1] == 1:
        p = expit(decision.reshape(-1))
        return np.column_stack([1.0 - p, p])
    p = expit(decision)
    sums = p.sum(axis=1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[1])
    return np.where(sums > 0, p / np.where(sums > 0, sums, 1.0), uniform)


class TfidfClassifier:
    """A saved ``tfidf-logreg`` model with the same ``predict``/``predict_proba`` as the neural classifiers."""

    def __init__(self, model_dir: Path, **_: Any) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        self.model_dir = Path(model_dir)
        try:
            self.meta: dict[str, Any] = read_json(self.model_dir / MODEL_META)
            self.spec: dict[str, Any] = read_json(self.model_dir / VECTORIZER_FILE)
            with np.load(self.model_dir / WEIGHTS_FILE, allow_pickle=False) as w:
                terms, self.idf, self.coef, self.intercept = w["terms"], w["idf"], w["coef"], w["intercept"]
        except (OSError, KeyError, ValueError) as err:
            raise ModelError(f"cannot load the tfidf-logreg model in {self.model_dir}: {err}") from None
        self.labels: list[str] = list(self.meta["labels"])
        self.multi_label = self.meta.get("task") == MULTI_LABEL
        self.thresholds = model_thresholds(self.meta, self.labels)
        self.max_length = int(self.meta.get("max_length") or 0)
        self.device = "cpu"
        self._cleaning = CleaningConfig.model_validate(self.meta.get("cleaning", {}))
        self._clean = clean_text
        vocabulary = {str(t): i for i, t in enumerate(terms.tolist())}
        self.vectorizer = CountVectorizer(vocabulary=vocabulary, **_analyzer_kwargs(self.spec))
        self.word_vectorizer: CountVectorizer | None = None
        if self.spec.get("word"):
            try:
                with np.load(self.model_dir / WEIGHTS_FILE, allow_pickle=False) as w:
                    word_terms, self.word_idf = w["word_terms"], w["word_idf"]
            except (OSError, KeyError, ValueError) as err:
                raise ModelError(f"cannot load the word block of {self.model_dir}: {err}") from None
            word_vocabulary = {str(t): i for i, t in enumerate(word_terms.tolist())}
            self.word_vectorizer = CountVectorizer(vocabulary=word_vocabulary, **_analyzer_kwargs(self.spec["word"]))
        n_features = len(vocabulary) + (len(self.word_vectorizer.vocabulary) if self.word_vectorizer else 0)
        if self.coef.shape[1] != n_features:
            raise ModelError(f"{self.model_dir}: {self.coef.shape[1]} coefficients per class for {n_features} features")

    def features(self, texts: list[str]) -> Any:
        """TF-IDF rows (sparse, L2-normalised) of already-cleaned texts (both blocks when there is a word block)."""
        import scipy.sparse as sp

        x = _tfidf_rows(self.vectorizer.transform(texts), self.idf, self.spec["sublinear_tf"])
        if self.word_vectorizer is None:
            return x
        word_spec = self.spec["word"]
        w = _tfidf_rows(self.word_vectorizer.transform(_segment_all(texts)), self.word_idf, word_spec["sublinear_tf"])
        scale = float(self.spec["block_scale"])
        return sp.hstack([x * scale, w * scale], format="csr")

    def info(self) -> dict[str, Any]:
        """JSON-able description of the model (served in responses)."""
        run_dir = self.model_dir.parent
        return {
            "name": self.meta.get("name"),
            "run_id": run_dir.name if (run_dir / MANIFEST).is_file() else None,
            "backbone": "tfidf-logreg",
            "labels": self.labels,
            "max_length": self.max_length,
        }

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), len(labels))``."""
        if isinstance(texts, str):
            raise TypeError("predict_proba expects a list of texts, not a single string")
        if not texts:
            return np.zeros((0, len(self.labels)))
        clean = [self._clean(str(t), self._cleaning) for t in texts]
        x = self.features(clean)
        decision = np.asarray(x @ self.coef.T) + self.intercept
        if self.multi_label:
            from scipy.special import expit

            return expit(decision)  # one independent probability per label
        return _proba(decision)

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Predicted label and per-class scores for each text; multi-label: the label set and per-label scores."""
        if self.multi_label:
            return label_set_predictions(self.labels, self.predict_proba(texts), self.thresholds)
        return label_predictions(self.labels, self.predict_proba(texts))


def _fit_vectorizer(spec: dict[str, Any], texts: list[str], cfg: TfidfConfig) -> tuple[Any, Any]:
    """Fit one TF-IDF block; returns ``(vectorizer, rows)``."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(
        **_analyzer_kwargs(spec),
        min_df=cfg.min_df,
        max_features=cfg.max_features,
        sublinear_tf=spec["sublinear_tf"],
        norm="l2",
    )
    try:
        return vec, vec.fit_transform(texts)
    except ValueError as err:  # e.g. min_df leaves no n-gram
        raise ModelError(f"model.tfidf: no features could be built ({err}); lower model.tfidf.min_df") from None


def _terms(vec: Any) -> np.ndarray:
    terms = np.empty(len(vec.vocabulary_), dtype=object)
    for term, i in vec.vocabulary_.items():
        terms[i] = term
    return terms.astype(str)  # fixed-width unicode: loads with allow_pickle=False


def fit_tfidf(texts: list[str], y: np.ndarray, cfg: TfidfConfig, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the vectorizer(s) and the SGD logistic regression; return ``(vectorizer spec, arrays to save)``.

    With ``cfg.nb_weighting`` each binary problem (one for two classes, one per class otherwise) is fitted on
    the features scaled by its naive-Bayes ratios, and the ratios are folded into the saved coefficients.
    """
    import scipy.sparse as sp
    from sklearn.linear_model import SGDClassifier

    spec = _vectorizer_spec(cfg)
    vec, x = _fit_vectorizer(spec, texts, cfg)
    arrays: dict[str, Any] = {"terms": _terms(vec), "idf": vec.idf_.astype(np.float64)}
    if "word" in spec:
        word_vec, w = _fit_vectorizer(spec["word"], _segment_all(texts), cfg)
        arrays |= {"word_terms": _terms(word_vec), "word_idf": word_vec.idf_.astype(np.float64)}
        x = sp.hstack([x * spec["block_scale"], w * spec["block_scale"]], format="csr")

    def sgd() -> Any:
        return SGDClassifier(loss="log_loss", alpha=cfg.alpha, max_iter=cfg.max_iter, tol=1e-4, random_state=seed)

    if y.ndim == 2:  # multi-label: one binary logistic regression per label (one-vs-rest on the multi-hot y)
        coef, intercept = np.zeros((y.shape[1], x.shape[1])), np.zeros(y.shape[1])
        for j in range(y.shape[1]):
            col = y[:, j].astype(np.int64)
            if col.min() == col.max():  # always/never present in train: a constant score
                intercept[j] = 10.0 if col[0] else -10.0
                continue
            r = nb_ratios(x, col, 2)[0] if cfg.nb_weighting else np.ones(x.shape[1])
            clf = sgd().fit(x @ sp.diags(r) if cfg.nb_weighting else x, col)
            coef[j], intercept[j] = clf.coef_[0] * r, clf.intercept_[0]
    elif not cfg.nb_weighting:
        clf = sgd().fit(x, y)
        coef, intercept = clf.coef_, clf.intercept_
    else:
        n_classes = int(y.max()) + 1 if len(y) else 0
        ratios = nb_ratios(x, y, max(n_classes, 2))
        targets = [1] if ratios.shape[0] == 1 else list(range(ratios.shape[0]))
        coef = np.zeros_like(ratios)
        intercept = np.zeros(ratios.shape[0])
        for row, k in enumerate(targets):
            clf = sgd().fit(x @ sp.diags(ratios[row]), (y == k).astype(np.int64))
            coef[row] = clf.coef_[0] * ratios[row]  # fold the ratios in: (x * r) . w == x . (r * w)
            intercept[row] = clf.intercept_[0]
    arrays |= {"coef": np.asarray(coef, dtype=np.float64), "intercept": np.asarray(intercept, dtype=np.float64)}
    return spec, arrays


def _describe(spec: dict[str, Any]) -> str:
    """``char_wb 1-4-grams + jieba word 1-2-grams, NB-weighted`` — for logs and the report."""
    lo, hi = spec["ngram_range"]
    text = f"{spec['analyzer']} {lo}-{hi}-grams"
    if spec.get("word"):
        wlo, whi = spec["word"]["ngram_range"]
        text += f" + jieba word {wlo}-{whi}-grams"
    if spec.get("nb_weighting"):
        text += ", NB-weighted"
    return text


def save_tfidf_model(path: Path, recipe: Any, labels: list[str], spec: dict[str, Any], arrays: dict) -> None:
    """Write ``modelyard.json``, ``vectorizer.json`` and ``weights.npz`` (no pickle) into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path / WEIGHTS_FILE, **arrays)  # the fixed-width term arrays compress well
    write_json(path / VECTORIZER_FILE, spec)
    meta = text_model_metadata(recipe, labels, backbone="tfidf-logreg", model_type="tfidf-logreg")
    write_json(path / MODEL_META, meta | {"tfidf": recipe.model.tfidf.model_dump(mode="json")})


def fit_tfidf_run(ctx: FitContext) -> FitResult:
    """Fit, save ``model/`` and return the valid/test probabilities of the saved model."""
    recipe, data = ctx.recipe, ctx.data
    labels = list(data.labels)
    index = {label: i for i, label in enumerate(labels)}
    cfg = recipe.model.tfidf
    train_texts = data.train["text"].tolist()
    if recipe.task == MULTI_LABEL:
        y_train = multi_hot(data.train["label"], labels)
    else:
        y_train = np.array([index[x] for x in data.train["label"]], dtype=np.int64)
    s0 = time.perf_counter()
    spec, arrays = fit_tfidf(train_texts, y_train, cfg, recipe.train.seed)
    train_seconds = time.perf_counter() - s0
    save_tfidf_model(ctx.model_dir, recipe, labels, spec, arrays)
    clf = TfidfClassifier(ctx.model_dir)
    n_params = int(arrays["coef"].size + arrays["intercept"].size)
    n_features = len(arrays["terms"]) + len(arrays.get("word_terms", ()))
    ctx.console.print(
        f"[bold]model[/] tfidf-logreg ({_describe(spec)}, {n_features} features, {n_params:,} weights) "
        f"· fitted on {len(train_texts)} texts in {train_seconds:.1f}s"
    )
    probs = {split: clf.predict_proba(getattr(data, split)["text"].tolist()) for split in ("valid", "test")}
    info = {
        "model": f"tfidf-logreg · {_describe(spec)}",
        "features": n_features,
        "parameters": f"{n_params:,}",
        "train time (s)": round(train_seconds, 2),
    }
    manifest = {
        "seed": {"train": recipe.train.seed, "data": recipe.data.seed},
        "train_seconds": train_seconds,
        "device": "cpu",
        "precision": "fp64",
        "model": {"type": "tfidf-logreg", "backbone": "tfidf-logreg", "parameters": n_params},
    }
    return FitResult(probs=probs, info=info, manifest=manifest)


class TfidfSettings(ModelSettings):
    """TF-IDF n-grams + SGD logistic regression (`tfidf-logreg`), the classical baseline."""

    type: Literal["tfidf-logreg"] = "tfidf-logreg"
    tfidf: TfidfConfig = Field(default_factory=TfidfConfig, description="Features and regression settings.")


def _load(model_dir: Path, meta: dict[str, Any], *, device: str = "auto", batch_size: int = 64) -> TfidfClassifier:
    return TfidfClassifier(model_dir)


def _check_artifacts(model_dir: Path, meta: dict[str, Any]) -> None:
    """The registry's admission check: ``vectorizer.json`` parses and ``weights.npz`` loads without pickle.

    Every array of ``weights.npz`` is read with ``np.load(..., allow_pickle=False)`` (an object array, which numpy
    stores as a pickle, is refused by numpy itself), and the arrays must be the ones :class:`TfidfClassifier`
    loads, with matching shapes: one idf per term, one coefficient per feature and class row, one intercept per row.

    Raises:
        ValueError: naming the file and the problem.
    """
    spec_path, weights_path = model_dir / VECTORIZER_FILE, model_dir / WEIGHTS_FILE
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise ValueError(f"no {path.name}; a tfidf-logreg model is {VECTORIZER_FILE} + {WEIGHTS_FILE}")
    try:
        spec = read_json(spec_path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{VECTORIZER_FILE} is not valid JSON ({err})") from None
    missing = [k for k in ("analyzer", "ngram_range", "sublinear_tf") if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise ValueError(f"{VECTORIZER_FILE} lacks the analyzer settings {missing}")
    needed = ["terms", "idf", "coef", "intercept"] + (["word_terms", "word_idf"] if spec.get("word") else [])
    try:
        with np.load(weights_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}  # reads every array: object arrays raise here
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{WEIGHTS_FILE} cannot be loaded without pickle ({err})") from None
    if missing := [name for name in needed if name not in arrays]:
        raise ValueError(f"{WEIGHTS_FILE} lacks the arrays {missing} (has {sorted(arrays)})")
    n_features = 0
    for terms, idf in (("terms", "idf"), ("word_terms", "word_idf")):
        if terms not in needed:
            continue
        if arrays[terms].dtype.kind != "U" or arrays[idf].shape != arrays[terms].shape:
            raise ValueError(f"{WEIGHTS_FILE}: {terms} must be strings with one {idf} value each")
        n_features += len(arrays[terms])
    coef, intercept = arrays["coef"], arrays["intercept"]
    n_labels = len(meta.get("labels") or [])
    rows = 1 if n_labels == 2 and meta.get("task") != MULTI_LABEL else n_labels
    if coef.ndim != 2 or coef.shape != (rows, n_features) or intercept.shape != (rows,):
        raise ValueError(
            f"{WEIGHTS_FILE}: coef {coef.shape} / intercept {intercept.shape} do not fit {n_features} features and "
            f"{n_labels} labels (expected coef ({rows}, {n_features}), intercept ({rows},))"
        )


KIND = register_kind(
    ModelKind(
        name="tfidf-logreg",
        settings=TfidfSettings,
        modality="text",
        fit=fit_tfidf_run,
        load=_load,
        check_artifacts=_check_artifacts,
        display_name=lambda cfg: "tfidf-logreg",
        supports=frozenset({"distill_teacher", "ensemble_member", "multi_label"}),
    )
)
