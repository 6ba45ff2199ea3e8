"""Models trained from scratch (textcnn, bilstm, transformer-encoder) and the tfidf-logreg baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from modelyard.config import load_recipe
from modelyard.training.run import train

from .test_chinese import synthetic_zh


@pytest.fixture(autouse=True, scope="module")
def _tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Trained tokenizers are cached under $MODELYARD_CACHE: keep this module's out of the home folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_CACHE", str(tmp_path_factory.mktemp("modelyard_cache")))
        yield


RUN_FILES = {
    "data_report.json",
    "fingerprints.json",
    "history.json",
    "manifest.json",
    "metrics.json",
    "model",
    "predictions.parquet",
    "progress.jsonl",
    "recipe.yaml",
    "report.html",
    "splits",
}
NEURAL_MODEL_FILES = {"config.json", "model.safetensors", "modelyard.json", "tokenizer.json", "tokenizer_config.json"}
ARCH = {"embedding_dim": 16, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_filters": 16, "dropout": 0.1}


def zh_recipe(tmp_path: Path, model_type: str, **model: object) -> Path:
    data = tmp_path / "zh.csv"
    if not data.exists():
        synthetic_zh(240).to_csv(data, index=False)
    lr = 3e-3 if model_type == "transformer-encoder" else 1e-2
    recipe = {
        "name": f"zh-{model_type}",
        "data": {"path": str(data), "valid_size": 0.2, "test_size": 0.2, "seed": 3, "clean": {"chinese": {}}},
        # Each kind takes only its own keys: tfidf-logreg has no tokenizer, arch or max_length.
        "model": {"type": model_type, **model}
        if model_type == "tfidf-logreg"
        else {
            "type": model_type,
            "max_length": 32,
            "tokenizer": {"type": "char", "vocab_size": 200, "min_frequency": 1},
            "arch": ARCH,
            **model,
        },
        "train": {
            "epochs": 4,
            "batch_size": 16,
            "learning_rate": lr,
            "warmup_ratio": 0.0,
            "seed": 7,
            "metric": "accuracy",
            "log_every_steps": 2,
            "num_threads": 1,
        },
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / f"{model_type}.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


LOAD_SCRIPT = """
import json, sys
import modelyard
out = {}
for run, texts in json.loads(sys.argv[1]).items():
    clf = modelyard.load(run)
    out[run] = {"type": type(clf).__name__, "probs": clf.predict_proba(texts).tolist(), "labels": clf.labels}
print(json.dumps(out))
"""
SCRATCH = {
    "textcnn": "TextCNNForSequenceClassification",
    "bilstm": "BiLSTMForSequenceClassification",
    "transformer-encoder": "BertForSequenceClassification",
}


def load_in_fresh_process(requests: dict[str, list[str]]) -> dict:
    """Load several runs with ``modelyard.load`` in one new interpreter and return their probabilities."""
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, json.dumps(requests, ensure_ascii=False)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def scratch_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One finished run per from-scratch family (trained once for the module)."""
    tmp = tmp_path_factory.mktemp("scratch_runs")
    runs = {}
    for model_type in SCRATCH:
        # The tiny transformer sits on a plateau for a few epochs before it breaks symmetry.
        extra = ["train.epochs=12", "train.learning_rate=0.001"] if model_type == "transformer-encoder" else []
        runs[model_type] = train(load_recipe(zh_recipe(tmp, model_type), extra))
    return runs


@pytest.mark.parametrize("model_type", list(SCRATCH))
def test_scratch_model_trains_with_falling_loss_and_exact_artifacts(
    scratch_runs: dict[str, Path], model_type: str
) -> None:
    run = scratch_runs[model_type]
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert {p.name for p in (run / "model").iterdir()} == NEURAL_MODEL_FILES
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["architectures"] == [SCRATCH[model_type]]
    history = json.loads((run / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # the loss falls
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["valid"]["accuracy"] >= 0.75
    assert json.loads((run / "manifest.json").read_text())["model"]["type"] == model_type


def test_scratch_models_load_in_a_fresh_process(scratch_runs: dict[str, Path]) -> None:
    """A new interpreter loads every family through modelyard.load (Auto classes registered by modelyard,
    no remote code) and reproduces the probabilities written at training time."""
    tests = {}
    for run in scratch_runs.values():
        preds = pd.read_parquet(run / "predictions.parquet")
        tests[str(run)] = preds[preds["split"] == "test"].head(8)
    loaded = load_in_fresh_process({run: t["text"].tolist() for run, t in tests.items()})
    for run, t in tests.items():
        assert loaded[run]["labels"] == ["neg", "pos"]
        np.testing.assert_allclose(np.array(loaded[run]["probs"]), t[["prob_neg", "prob_pos"]].to_numpy(), atol=1e-5)
    assert {v["type"] for v in loaded.values()} == {"Classifier"}


def test_transformer_encoder_dir_loads_with_plain_transformers(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = train(load_recipe(zh_recipe(tmp_path, "transformer-encoder", tokenizer={"type": "wordpiece"})))
    tok = AutoTokenizer.from_pretrained(run / "model")
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    logits = model(**tok(["这个产品很好"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)


def load_modelyard_run(run: Path, texts: list[str]) -> object:
    import modelyard

    return modelyard.load(run)


def test_tfidf_logreg_run_and_reload(tmp_path: Path) -> None:
    run = train(load_recipe(zh_recipe(tmp_path, "tfidf-logreg", tfidf={"min_df": 1})))
    assert {p.name for p in run.iterdir()} == RUN_FILES - {"progress.jsonl"}
    assert {p.name for p in (run / "model").iterdir()} == {"modelyard.json", "vectorizer.json", "weights.npz"}
    with np.load(run / "model" / "weights.npz", allow_pickle=False) as w:  # no pickled objects inside
        assert w["terms"].dtype.kind == "U" and w["coef"].shape[0] == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"valid", "test"}
    assert {"accuracy", "macro_f1", "roc_auc", "log_loss", "ece", "confusion_matrix"} <= set(metrics["test"])
    assert metrics["test"]["accuracy"] >= 0.9
    assert (run / "report.html").read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")

    preds = pd.read_parquet(run / "predictions.parquet")
    test = preds[preds["split"] == "test"]
    loaded = load_modelyard_run(run, test["text"].tolist())
    assert type(loaded).__name__ == "TfidfClassifier"
    np.testing.assert_allclose(loaded.predict_proba(test["text"].tolist()), test[["prob_neg", "prob_pos"]], atol=1e-9)


def test_tfidf_matches_scikit_learn_probabilities(tmp_path: Path) -> None:
    """The no-pickle reload computes exactly what the fitted TfidfVectorizer + SGDClassifier compute."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier

    from modelyard.config import TfidfConfig
    from modelyard.models.tfidf import TfidfClassifier, fit_tfidf, save_tfidf_model

    frame = synthetic_zh(120, seed=5)
    texts, y = frame["text"].tolist(), (frame["label"] == "pos").to_numpy().astype(int)
    for labels, target in ((["neg", "pos"], y), (["a", "b", "c"], np.arange(len(frame)) % 3)):
        cfg = TfidfConfig(min_df=1, max_iter=5)
        spec, arrays = fit_tfidf(texts, target, cfg, seed=0)
        recipe = load_recipe(zh_recipe(tmp_path, "tfidf-logreg"))
        save_tfidf_model(tmp_path / "m", recipe, labels, spec, arrays)
        ours = TfidfClassifier(tmp_path / "m").predict_proba(texts)
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, min_df=1)
        x = vec.fit_transform(texts)
        ref = SGDClassifier(loss="log_loss", alpha=cfg.alpha, max_iter=5, tol=1e-4, random_state=0).fit(x, target)
        # the loaded model cleans texts first (chinese normalisation: ！ → !), so compare on cleaned text
        from modelyard.data.cleaning import clean_text

        cleaned = [clean_text(t, recipe.data.clean) for t in texts]
        np.testing.assert_allclose(ours, ref.predict_proba(vec.transform(cleaned)), atol=1e-6)


def test_scratch_builder_without_texts_is_a_config_error(tmp_path: Path) -> None:
    from modelyard.errors import ConfigError
    from modelyard.models import build_model

    recipe = load_recipe(zh_recipe(tmp_path, "textcnn"))
    with pytest.raises(ConfigError, match="trains its tokenizer on the training texts"):
        build_model(recipe.model, ["neg", "pos"], tmp_path)


def test_arch_validation_names_the_key(tmp_path: Path) -> None:
    from modelyard.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.arch\.hidden_size \(30\) must be divisible"):
        load_recipe(zh_recipe(tmp_path, "transformer-encoder"), ["model.arch.hidden_size=30", "model.arch.num_heads=4"])
    with pytest.raises(ConfigError, match="model.tokenizer.type"):
        load_recipe(zh_recipe(tmp_path, "textcnn"), ["model.tokenizer.type=sentencepiece"])


def test_tfidf_model_is_served(tmp_path: Path) -> None:
    """The same HTTP API serves the scikit-learn baseline (normalisation applied server-side)."""
    import modelyard
    from modelyard.serving import create_app

    from .test_serving import make_cfg, run, running

    model_run = train(load_recipe(zh_recipe(tmp_path, "tfidf-logreg", tfidf={"min_df": 1})))
    app = create_app(lambda: modelyard.load(model_run), make_cfg())

    async def go() -> dict:
        async with running(app) as client:
            r = await client.post("/v1/predict", json={"texts": ["這個產品質量很好，推薦！", "很差，退货"]})
            assert r.status_code == 200, r.text
            return r.json()

    body = run(go())
    assert [p["label"] for p in body["predictions"]] == ["pos", "neg"]
    assert body["model"]["backbone"] == "tfidf-logreg"


def test_scratch_run_resumes_with_the_same_tokenizer(tmp_path: Path) -> None:
    """An interrupted textcnn run resumes to the same weights: the retrained tokenizer comes from the cache."""
    from safetensors.numpy import load_file

    from modelyard.training.loop import TrainingInterrupted

    recipe = load_recipe(zh_recipe(tmp_path, "textcnn"), ["train.epochs=2", "train.checkpoint_every_steps=4"])
    reference = train(recipe)
    with pytest.raises(TrainingInterrupted):
        train(recipe, stop_after_step=14)
    (partial,) = list((tmp_path / "runs").glob("*.incomplete"))
    resumed = train(recipe, resume=partial)
    assert (reference / "model" / "tokenizer.json").read_text() == (resumed / "model" / "tokenizer.json").read_text()
    a = load_file(str(reference / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0, err_msg=k)


def _reference_union_nb(texts: list[str], target: np.ndarray, cfg: object, seed: int, query: list[str]) -> np.ndarray:
    """Independent NBSVM-style reference: char + jieba-word TF-IDF blocks, NB ratios, one SGD per binary problem."""
    import scipy.sparse as sp
    from scipy.special import expit
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier

    from modelyard.data.chinese import segment

    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, min_df=1)
    word = TfidfVectorizer(analyzer="word", token_pattern=r"(?u)\S+", ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    s = 1 / np.sqrt(2)
    x = sp.hstack([char.fit_transform(texts) * s, word.fit_transform([segment(t) for t in texts]) * s]).tocsr()
    q = sp.hstack([char.transform(query) * s, word.transform([segment(t) for t in query]) * s]).tocsr()
    classes = [1] if target.max() == 1 else list(range(int(target.max()) + 1))
    scores = []
    for k in classes:
        yk = (target == k).astype(int)
        p = np.asarray(x[yk == 1].sum(0)).ravel() + 1
        n = np.asarray(x[yk == 0].sum(0)).ravel() + 1
        r = np.log((p / p.sum()) / (n / n.sum()))
        clf = SGDClassifier(loss="log_loss", alpha=cfg.alpha, max_iter=cfg.max_iter, tol=1e-4, random_state=seed)
        clf.fit(x @ sp.diags(r), yk)
        scores.append(clf.decision_function(q @ sp.diags(r)))
    if len(classes) == 1:
        p1 = expit(scores[0])
        return np.column_stack([1 - p1, p1])
    p = expit(np.column_stack(scores))
    return p / p.sum(axis=1, keepdims=True)


def test_tfidf_word_union_and_nb_weighting_match_a_reference(tmp_path: Path) -> None:
    """char + jieba-word blocks with NB weighting: the saved (folded) model reproduces an independent reference."""
    from modelyard.config import TfidfConfig
    from modelyard.data.cleaning import clean_text
    from modelyard.models.tfidf import TfidfClassifier, fit_tfidf, save_tfidf_model

    frame = synthetic_zh(120, seed=5)
    recipe = load_recipe(zh_recipe(tmp_path, "tfidf-logreg"))
    texts = [clean_text(t, recipe.data.clean) for t in frame["text"]]  # the model cleans its inputs the same way
    y = (frame["label"] == "pos").to_numpy().astype(int)
    for labels, target in ((["neg", "pos"], y), (["a", "b", "c"], np.arange(len(frame)) % 3)):
        cfg = TfidfConfig(min_df=1, max_iter=5, word_ngram_max=2, nb_weighting=True)
        spec, arrays = fit_tfidf(texts, target, cfg, seed=0)
        assert spec["word"]["ngram_range"] == [1, 2] and spec["nb_weighting"] is True
        assert arrays["coef"].shape == (1 if len(labels) == 2 else 3, len(arrays["terms"]) + len(arrays["word_terms"]))
        save_tfidf_model(tmp_path / "m", recipe, labels, spec, arrays)
        ours = TfidfClassifier(tmp_path / "m").predict_proba(texts)
        ref = _reference_union_nb(texts, target, cfg, 0, texts)
        np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_tfidf_word_union_run_reloads_in_a_fresh_process_and_serves_the_same(tmp_path: Path) -> None:
    run = train(
        load_recipe(zh_recipe(tmp_path, "tfidf-logreg", tfidf={"min_df": 1, "word_ngram_max": 2, "nb_weighting": True}))
    )
    assert {p.name for p in (run / "model").iterdir()} == {"modelyard.json", "vectorizer.json", "weights.npz"}
    with np.load(run / "model" / "weights.npz", allow_pickle=False) as w:
        assert w["word_terms"].dtype.kind == "U" and w["word_idf"].shape == w["word_terms"].shape
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] >= 0.9
    test = pd.read_parquet(run / "predictions.parquet").query("split == 'test'")
    fresh = load_in_fresh_process({str(run): test["text"].tolist()})[str(run)]
    assert fresh["type"] == "TfidfClassifier"
    np.testing.assert_allclose(fresh["probs"], test[["prob_neg", "prob_pos"]], atol=1e-9)


def test_tfidf_word_union_needs_char_analyzer(tmp_path: Path) -> None:
    from modelyard.errors import ConfigError

    with pytest.raises(ConfigError, match="word_ngram_max adds word n-grams to character n-grams"):
        load_recipe(zh_recipe(tmp_path, "tfidf-logreg"), ["model.tfidf.analyzer=word", "model.tfidf.word_ngram_max=2"])
