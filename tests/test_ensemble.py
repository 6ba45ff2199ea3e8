"""``model.type: ensemble``: weight selection, the run's artifacts, reload, config errors, cleanup, serving."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from modelyard.config import load_recipe
from modelyard.errors import ConfigError, ModelyardError
from modelyard.models.ensemble import select_weights
from modelyard.training.run import train

from .conftest import synthetic_sentiment

CHAR = {"type": "tfidf-logreg", "tfidf": {"analyzer": "char", "ngram_min": 2, "ngram_max": 4, "min_df": 1}}
WORD = {"type": "tfidf-logreg", "tfidf": {"analyzer": "word", "ngram_min": 1, "ngram_max": 2, "min_df": 1}}
RUN_FILES = {
    "data_report.json",
    "fingerprints.json",
    "history.json",
    "manifest.json",
    "members",
    "metrics.json",
    "model",
    "predictions.parquet",
    "recipe.yaml",
    "report.html",
    "splits",
}
MEMBER_RUN_FILES = RUN_FILES - {"members", "model"} | {"MODEL_MOVED.txt"}
TFIDF_FILES = {"modelyard.json", "vectorizer.json", "weights.npz"}


def write_recipe(tmp_path: Path, members: list[dict], **ensemble: object) -> Path:
    data = tmp_path / "reviews.csv"
    if not data.exists():
        synthetic_sentiment(240).to_csv(data, index=False)
    recipe = {
        "name": "ens",
        "data": {"path": "reviews.csv", "valid_size": 0.2, "test_size": 0.2, "seed": 3},
        "model": {"type": "ensemble", "members": members, **({"ensemble": ensemble} if ensemble else {})},
        "train": {"seed": 7},
        "output_dir": "runs",
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


# ------------------------------------------------------------------ select_weights


def _onehot(idx: np.ndarray, k: int, p: float = 0.9) -> np.ndarray:
    out = np.full((len(idx), k), (1 - p) / (k - 1))
    out[np.arange(len(idx)), idx] = p
    return out


def test_select_weights_perfect_member_gets_all_the_weight() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    noisy = _onehot(np.where(rng.random(200) < 0.6, y, (y + 1) % 3), 3)
    perfect = _onehot(y, 3)
    w = select_weights([noisy, perfect], y, rounds=10)
    np.testing.assert_array_equal(w, [0.0, 1.0])


def test_select_weights_uninformative_member_gets_zero_and_beats_the_best_member() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    constant = np.full((300, 2), 0.5)
    good = _onehot(np.where(rng.random(300) < 0.8, y, 1 - y), 2, 0.7)
    w = select_weights([constant, good], y, rounds=20)
    assert w[0] == 0.0 and w[1] == 1.0
    # Three imperfect members with independent errors: the blend is at least as good as the best alone.
    members = [_onehot(np.where(rng.random(300) < q, y, 1 - y), 2, 0.5 + q / 3) for q in (0.7, 0.75, 0.8)]
    w = select_weights(members, y, rounds=20)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()

    def acc(p: np.ndarray) -> float:
        return float(np.mean(p.argmax(1) == y))

    blend = sum(wi * p for wi, p in zip(w, members, strict=True))
    assert acc(blend) >= max(acc(p) for p in members)
    np.testing.assert_array_equal(w, select_weights(members, y, rounds=20))  # deterministic
    # pick counts / length of the best prefix (some r <= rounds)
    assert any(np.allclose(w * r, np.round(w * r), atol=1e-9) for r in range(1, 21))


def test_select_weights_ties_go_to_the_lower_index() -> None:
    y = np.array([0, 1, 0, 1])
    p = _onehot(y, 2)
    np.testing.assert_array_equal(select_weights([p, p.copy()], y, rounds=5), [1.0, 0.0])


# ------------------------------------------------------------------ a full run


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ensemble")
    return train(load_recipe(write_recipe(tmp, [CHAR, WORD], selection_rounds=10)))


def test_ensemble_run_artifacts_weights_and_metrics(ensemble_run: Path) -> None:
    from modelyard.evaluation.metrics import compute_metrics

    run = ensemble_run
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert {p.name for p in (run / "members").iterdir()} == {"0-tfidf-logreg", "1-tfidf-logreg"}
    for member in (run / "members").iterdir():
        assert {p.name for p in member.iterdir()} == MEMBER_RUN_FILES
    assert {p.name for p in (run / "model").iterdir()} == {"modelyard.json", "members"}
    assert {p.name for p in (run / "model" / "members").iterdir()} == {"0", "1"}
    for i in ("0", "1"):
        assert {p.name for p in (run / "model" / "members" / i).iterdir()} == TFIDF_FILES
    meta = json.loads((run / "model" / "modelyard.json").read_text())
    assert meta["model_type"] == "ensemble" and meta["labels"] == ["neg", "pos"]
    assert [m["path"] for m in meta["members"]] == ["members/0", "members/1"]
    weights = np.array([m["weight"] for m in meta["members"]])
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    member_seeds = [
        json.loads((run / "members" / d / "manifest.json").read_text())["seed"]["train"]
        for d in ("0-tfidf-logreg", "1-tfidf-logreg")
    ]
    assert member_seeds == [7, 8]

    metrics = json.loads((run / "metrics.json").read_text())
    labels = meta["labels"]
    cols = [f"prob_{lab}" for lab in labels]
    member_preds = [
        pd.read_parquet(run / "members" / d / "predictions.parquet") for d in ("0-tfidf-logreg", "1-tfidf-logreg")
    ]
    for split in ("valid", "test"):
        rows = [f[f["split"] == split] for f in member_preds]
        blend = sum(w * r[cols].to_numpy() for w, r in zip(weights, rows, strict=True))
        y = np.array([labels.index(x) for x in rows[0]["label"]])
        loss = float(-np.mean(np.log(np.clip(blend[np.arange(len(y)), y], 1e-12, 1.0))))
        expected = compute_metrics(y, blend, labels, loss=loss)
        for key in ("accuracy", "macro_f1", "log_loss", "loss", "ece"):
            assert metrics[split][key] == pytest.approx(expected[key], abs=1e-12), (split, key)
        assert metrics[split]["confusion_matrix"] == expected["confusion_matrix"]
    # By construction the ensemble's valid score is at least the best member's.
    member_valid = [
        json.loads((run / "members" / d / "metrics.json").read_text())["valid"]["accuracy"]
        for d in ("0-tfidf-logreg", "1-tfidf-logreg")
    ]
    assert metrics["valid"]["accuracy"] >= max(member_valid)
    assert metrics["test"]["accuracy"] >= 0.8


LOAD_SCRIPT = """
import json, sys
import modelyard
run, texts = sys.argv[1], json.loads(sys.argv[2])
clf = modelyard.load(run)
print(json.dumps({"type": type(clf).__name__, "probs": clf.predict_proba(texts).tolist()}))
"""


def test_ensemble_load_is_the_weighted_sum_of_its_members(ensemble_run: Path) -> None:
    import modelyard
    from modelyard.models.loading import load

    run = ensemble_run
    texts = pd.read_parquet(run / "predictions.parquet").query("split == 'test'")["text"].tolist()
    meta = json.loads((run / "model" / "modelyard.json").read_text())
    expected = sum(m["weight"] * load(run / "model" / m["path"]).predict_proba(texts) for m in meta["members"])
    clf = modelyard.load(run)
    assert type(clf).__name__ == "EnsembleClassifier"
    probs = clf.predict_proba(texts)
    np.testing.assert_allclose(probs, expected, atol=1e-9)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    saved = pd.read_parquet(run / "predictions.parquet").query("split == 'test'")
    np.testing.assert_allclose(probs, saved[["prob_neg", "prob_pos"]], atol=1e-9)
    assert [p["label"] for p in clf.predict(texts[:3])] == [["neg", "pos"][i] for i in probs[:3].argmax(1)]
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(run), json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh["type"] == "EnsembleClassifier"
    np.testing.assert_allclose(fresh["probs"], expected, atol=1e-9)


def test_ensemble_member_with_other_labels_is_refused(ensemble_run: Path, tmp_path: Path) -> None:
    import shutil

    from modelyard.errors import ModelError
    from modelyard.models.loading import load

    model = tmp_path / "model"
    shutil.copytree(ensemble_run / "model", model)
    meta_path = model / "members" / "1" / "modelyard.json"
    meta = json.loads(meta_path.read_text())
    meta["labels"] = ["pos", "neg"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"ensemble member 1 \(members/1\)"):
        load(model)


def test_ensemble_evaluate_predict_and_unsupported_stages(ensemble_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from modelyard.cli import app
    from modelyard.compression.variants import source_model_dir
    from modelyard.errors import ModelError
    from modelyard.evaluation.evaluate import evaluate
    from modelyard.explain import explain
    from modelyard.explain.core import ExplainUnsupportedError
    from modelyard.models.loading import load

    before = json.loads((ensemble_run / "metrics.json").read_text())
    _, metrics = evaluate(ensemble_run)
    assert metrics["test"]["accuracy"] == pytest.approx(before["test"]["accuracy"])
    inp = tmp_path / "in.csv"
    pd.DataFrame({"text": ["the film was great", "awful and dull"]}).to_csv(inp, index=False)
    result = CliRunner().invoke(app, ["predict", str(ensemble_run), "-i", str(inp), "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["pred"].tolist() == ["pos", "neg"]
    with pytest.raises(ModelError, match="model.type ensemble"):
        source_model_dir(ensemble_run)
    with pytest.raises(ExplainUnsupportedError, match="model.type ensemble.*members/<i>"):
        explain(load(ensemble_run), ["great film"], method="occlusion")


# ------------------------------------------------------------------ config errors and cleanup


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ({"type": "ensemble", "members": [CHAR]}, r"at least 2 entries in model\.members"),
        (
            {"type": "ensemble", "members": [CHAR, {"type": "ensemble", "members": [CHAR, WORD]}]},
            r"model\.members\[1\] is itself an ensemble",
        ),
        (
            {"type": "ensemble", "members": [CHAR, {"type": "cnn-small"}]},
            r"model\.members\[1\] has type 'cnn-small'; ensemble members must be text classifiers \(.*prompt.*\)",
        ),
        ({"type": "hf-encoder", "members": [CHAR, WORD]}, r"model\.members is only used with model\.type 'ensemble'"),
    ],
)
def test_ensemble_config_errors_name_model_members(tmp_path: Path, model: dict, match: str) -> None:
    path = write_recipe(tmp_path, [])
    raw = yaml.safe_load(path.read_text())
    raw["model"] = model
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=match):
        load_recipe(path)


def test_ensemble_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.ensemble.selection_rounds"):
        load_recipe(write_recipe(tmp_path, [CHAR, WORD]), ["model.ensemble.selection_rounds=0"])


def test_failing_member_leaves_no_run_directory(tmp_path: Path) -> None:
    # The second member fails after the run directory exists (min_df above the corpus size: no features).
    bad = {"type": "tfidf-logreg", "tfidf": {"min_df": 100_000}}
    recipe = load_recipe(write_recipe(tmp_path, [CHAR, bad]))
    with pytest.raises(ModelyardError, match="min_df"):
        train(recipe)
    assert list((tmp_path / "runs").iterdir()) == []


def test_missing_member_backbone_fails_before_a_run_directory(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, [CHAR, {"type": "hf-encoder", "backbone": "no-such-backbone"}]))
    with pytest.raises(ModelyardError, match="no-such-backbone"):
        train(recipe)
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


# ------------------------------------------------------------------ serving


def test_ensemble_is_served(ensemble_run: Path) -> None:
    import modelyard
    from modelyard.serving import create_app

    from .test_serving import make_cfg, run, running

    app = create_app(lambda: modelyard.load(ensemble_run), make_cfg())

    async def go() -> dict:
        async with running(app) as client:
            r = await client.post("/v1/predict", json={"texts": ["a great and lovely film", "boring, awful plot"]})
            assert r.status_code == 200, r.text
            return r.json()

    body = run(go())
    assert [p["label"] for p in body["predictions"]] == ["pos", "neg"]
    assert body["model"]["backbone"].startswith("ensemble")
    assert [m["type"] for m in body["model"]["members"]] == ["tfidf-logreg", "tfidf-logreg"]


def test_registry_checks_each_ensemble_member(ensemble_run: Path, tmp_path: Path) -> None:
    """Nested member folders are accepted; each member passes its own kind's check (tfidf: JSON + pickle-free .npz)."""
    import shutil

    from modelyard.registry.artifacts import validate_model_dir
    from modelyard.registry.names import RegistryError

    model = tmp_path / "model"
    shutil.copytree(ensemble_run / "model", model)
    files = validate_model_dir(model)  # two tfidf-logreg members, admitted in their own format
    assert {Path(f"members/{i}/{n}") for i in (0, 1) for n in TFIDF_FILES} <= set(files)
    assert not any(f.suffix == ".safetensors" for f in files)

    (model / "members" / "1" / "weights.npz").unlink()
    with pytest.raises(RegistryError, match=r"members\[1\] at members/1: no weights.npz"):
        validate_model_dir(model)
    shutil.copy(ensemble_run / "model" / "members" / "1" / "weights.npz", model / "members" / "1" / "weights.npz")
    with np.load(model / "members" / "0" / "weights.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(model / "members" / "0" / "weights.npz", **{**arrays, "coef": arrays["coef"][:, :-1]})
    with pytest.raises(RegistryError, match=r"members\[0\] at members/0: weights.npz: coef \(1, \d+\)"):
        validate_model_dir(model)


def test_identical_hf_encoder_members_train_with_different_seeds(tmp_path: Path, tiny_backbone: Path) -> None:
    """train.* applies to every neural member; member i uses train.seed + i (a few seconds on the tiny BERT)."""
    import modelyard

    hf = {"type": "hf-encoder", "backbone": str(tiny_backbone), "max_length": 32}
    path = write_recipe(tmp_path, [hf, hf, CHAR])
    raw = yaml.safe_load(path.read_text())
    raw["train"] = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-2, "seed": 7, "metric": "accuracy"}
    path.write_text(yaml.safe_dump(raw))
    run = train(load_recipe(path))
    names = ["0-hf-encoder", "1-hf-encoder", "2-tfidf-logreg"]
    assert sorted(p.name for p in (run / "members").iterdir()) == names
    manifests = [json.loads((run / "members" / n / "manifest.json").read_text()) for n in names]
    assert [m["seed"]["train"] for m in manifests] == [7, 8, 9]
    weights = [(run / "model" / "members" / i / "model.safetensors").read_bytes() for i in ("0", "1")]
    assert weights[0] != weights[1]
    meta = json.loads((run / "model" / "modelyard.json").read_text())
    assert meta["max_length"] == 32
    texts = ["a great film", "an awful plot"]
    expected = sum(
        m["weight"] * modelyard.load(run / "model" / m["path"]).predict_proba(texts) for m in meta["members"]
    )
    np.testing.assert_allclose(modelyard.load(run).predict_proba(texts), expected, atol=1e-9)
