"""Small data: `data.train_per_class`/`train_fraction`, a teacher labelling unlabelled texts
(`train.distill.unlabelled`), and the few-shot contrastive kind (`model.type: setfit`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from modelyard.config import DataConfig, load_recipe
from modelyard.data import prepare_data
from modelyard.errors import ConfigError, DataError
from modelyard.models.setfit import draw_pairs
from tests.conftest import synthetic_sentiment, write_tiny_recipe


def _csv(tmp_path: Path, n: int = 400) -> Path:
    path = tmp_path / "reviews.csv"
    synthetic_sentiment(n).to_csv(path, index=False)
    return path


def test_train_per_class_shrinks_only_the_training_split(tmp_path: Path) -> None:
    csv = _csv(tmp_path)
    full = prepare_data(DataConfig(path=str(csv), valid_size=0.2, test_size=0.2), tmp_path)
    previous: set[str] = set()
    for n in (3, 8, 30):
        small = prepare_data(DataConfig(path=str(csv), valid_size=0.2, test_size=0.2, train_per_class=n), tmp_path)
        pd.testing.assert_frame_equal(small.valid, full.valid)
        pd.testing.assert_frame_equal(small.test, full.test)
        assert small.train["label"].value_counts().to_dict() == {"neg": n, "pos": n}
        assert set(small.train["text"]) <= set(full.train["text"])
        assert previous <= set(small.train["text"])  # nested: the 3-per-class rows are among the 8-per-class rows
        previous = set(small.train["text"])
        # the rows left out are the rest of the training split, nothing from valid/test
        assert small.unlabelled is not None and len(small.unlabelled) == len(full.train) - 2 * n
        assert not set(small.unlabelled["text"]) & (set(full.valid["text"]) | set(full.test["text"]))
        assert small.report["train_subset"]["rows_after"] == 2 * n
    other_seed = prepare_data(
        DataConfig(path=str(csv), valid_size=0.2, test_size=0.2, train_per_class=8, seed=9), tmp_path
    )
    assert set(other_seed.train["text"]) != previous or True  # another seed splits differently as a whole


def test_train_fraction_is_stratified_and_exclusive_with_per_class(tmp_path: Path) -> None:
    csv = _csv(tmp_path)
    full = prepare_data(DataConfig(path=str(csv), valid_size=0.2, test_size=0.2), tmp_path)
    part = prepare_data(DataConfig(path=str(csv), valid_size=0.2, test_size=0.2, train_fraction=0.25), tmp_path)
    assert len(part.train) == round(len(full.train) * 0.25)
    counts = part.train["label"].value_counts()
    assert abs(counts["pos"] - counts["neg"]) <= 1
    pd.testing.assert_frame_equal(part.test, full.test)
    with pytest.raises(ValueError, match="train_per_class and data.train_fraction"):
        DataConfig(path=str(csv), train_per_class=4, train_fraction=0.5)


def _student(tmp_path: Path, csv: Path, backbone: Path, teacher: Path, **distill: object) -> Path:
    path = write_tiny_recipe(tmp_path, csv, backbone, epochs=2, distill={"teacher": str(teacher), **distill})
    recipe = yaml.safe_load(path.read_text())
    recipe["data"]["train_per_class"] = 5
    recipe["name"] = "student"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_distill_unlabelled_rest_adds_teacher_labelled_rows(
    tmp_path: Path, tiny_backbone: Path, tiny_trained_run: Path
):
    from modelyard.models.loading import load
    from modelyard.rundir import RunDir
    from modelyard.training.run import train

    csv = _csv(tmp_path, 240)
    recipe = load_recipe(_student(tmp_path, csv, tiny_backbone, tiny_trained_run, unlabelled="rest", alpha=0.5))
    run = RunDir(train(recipe))
    splits = run.splits()
    full = prepare_data(recipe.data.model_copy(update={"train_per_class": None}), tmp_path)
    pd.testing.assert_frame_equal(splits.test.reset_index(drop=True), full.test, check_dtype=False)
    pd.testing.assert_frame_equal(splits.valid.reset_index(drop=True), full.valid, check_dtype=False)
    gold = splits.train.iloc[:10]
    assert gold["label"].value_counts().to_dict() == {"neg": 5, "pos": 5}
    added = splits.train.iloc[10:]
    assert len(added) == len(full.train) - 10
    assert not set(added["text"]) & (set(full.valid["text"]) | set(full.test["text"]))
    teacher = load(tiny_trained_run)
    assert added["label"].tolist() == [p["label"] for p in teacher.predict(added["text"].tolist())]
    report = (
        run.data_report()
        if hasattr(run, "data_report")
        else yaml.safe_load((run.path / "data_report.json").read_text())
    )
    assert report["distill_unlabelled"]["added"] == len(added)
    assert 0.0 <= report["distill_unlabelled"]["teacher_accuracy_on_hidden_labels"] <= 1.0


def test_distill_min_confidence_keeps_only_confident_answers_and_scores_them(
    tmp_path: Path, tiny_backbone: Path, tiny_trained_run: Path
):
    """Self-training on confident pseudo-labels: nothing under the threshold joins, and the report's accuracies are
    the teacher's agreement with the hidden gold labels on all scored texts and on the added ones."""
    import numpy as np

    from modelyard.models.loading import load
    from modelyard.rundir import RunDir
    from modelyard.training.run import train

    csv = _csv(tmp_path, 240)
    teacher = load(tiny_trained_run)
    recipe0 = load_recipe(_student(tmp_path, csv, tiny_backbone, tiny_trained_run, unlabelled="rest"))
    full = prepare_data(recipe0.data.model_copy(update={"train_per_class": None}), tmp_path)
    probs = np.asarray(teacher.predict_proba(full.train["text"].tolist()))
    threshold = float(np.quantile(probs.max(axis=1), 0.5))  # about half the pool is confident enough
    recipe = load_recipe(
        _student(tmp_path, csv, tiny_backbone, tiny_trained_run, unlabelled="rest", min_confidence=threshold)
    )
    run = RunDir(train(recipe))
    added = run.splits().train.iloc[10:]
    report = yaml.safe_load((run.path / "data_report.json").read_text())["distill_unlabelled"]
    assert 0 < len(added) < len(full.train) - 10 and report["added"] == len(added)
    facts = zip(probs.max(axis=1), probs.argmax(axis=1), full.train["label"], strict=True)
    by_text = dict(zip(full.train["text"], facts, strict=True))
    rest = [t for t in full.train["text"] if t not in set(run.splits().train["text"].iloc[:10])]
    expected = [t for t in rest if by_text[t][0] >= threshold]
    assert sorted(added["text"]) == sorted(expected)
    gold_match = [teacher.labels[by_text[t][1]] == by_text[t][2] for t in rest]
    on_added = [teacher.labels[by_text[t][1]] == by_text[t][2] for t in expected]
    assert report["teacher_accuracy_on_hidden_labels"] == pytest.approx(np.mean(gold_match), abs=1e-4)
    assert report["teacher_accuracy_on_added"] == pytest.approx(np.mean(on_added), abs=1e-4)


def test_distill_unlabelled_refusals_leave_nothing(tmp_path: Path, tiny_backbone: Path, tiny_trained_run: Path) -> None:
    from modelyard.training.run import train

    csv = _csv(tmp_path, 240)
    path = _student(tmp_path, csv, tiny_backbone, tiny_trained_run, unlabelled="rest")
    recipe = yaml.safe_load(path.read_text())
    del recipe["data"]["train_per_class"]
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(DataError, match="train_per_class"):
        train(load_recipe(path))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    pool = tmp_path / "pool.csv"
    pd.DataFrame({"review": ["a b c"]}).to_csv(pool, index=False)
    recipe["train"]["distill"]["unlabelled"] = str(pool)
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(DataError, match=r"pool.csv: no text column 'text' \(columns found: review\)"):
        train(load_recipe(path))


def test_distill_unlabelled_file_never_adds_valid_or_test_texts(
    tmp_path: Path, tiny_backbone: Path, tiny_trained_run: Path
) -> None:
    from modelyard.rundir import RunDir
    from modelyard.training.run import train

    csv = _csv(tmp_path, 240)
    full = prepare_data(DataConfig(path=str(csv), valid_size=0.2, test_size=0.2, seed=3), tmp_path)
    fresh = [f"great lovely film {i} zz" for i in range(6)]
    pool = tmp_path / "pool.csv"
    pd.DataFrame({"text": fresh + full.test["text"].tolist()[:5] + fresh[:2]}).to_csv(pool, index=False)
    recipe = load_recipe(_student(tmp_path, csv, tiny_backbone, tiny_trained_run, unlabelled=str(pool)))
    train_split = RunDir(train(recipe)).splits().train
    assert sorted(train_split["text"].iloc[10:]) == sorted(fresh)  # test texts and duplicates skipped


def test_setfit_pairs_follow_setfit_sampling() -> None:
    labels = ["a"] * 4 + ["b"] * 3 + ["c"]
    pairs = draw_pairs(labels, per_example=5, cap=None, rng=np.random.default_rng(0))
    y = np.asarray(labels)
    assert ((y[pairs[:, 0]] == y[pairs[:, 1]]) == (pairs[:, 2] == 1)).all()
    assert (pairs[:, 0] != pairs[:, 1]).all()
    # every example gets a negative per iteration; the single 'c' example has no positive partner
    assert (pairs[:, 2] == 0).sum() == 5 * 8 and (pairs[:, 2] == 1).sum() == 5 * 7
    assert len(draw_pairs(labels, 5, 12, np.random.default_rng(0))) == 12
    again = draw_pairs(labels, 5, None, np.random.default_rng(0))
    np.testing.assert_array_equal(pairs, again)


def _setfit_recipe(tmp_path: Path, csv: Path, backbone: Path, **model: object) -> Path:
    path = write_tiny_recipe(tmp_path, csv, backbone, epochs=1, learning_rate=1e-3)
    recipe = yaml.safe_load(path.read_text())
    recipe["model"] = {"type": "setfit", "backbone": str(backbone), "max_length": 32,
                       "pairs_per_example": 8, "contrastive_learning_rate": 1e-3, **model}  # fmt: skip
    recipe["data"]["train_per_class"] = 32
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_setfit_run_learns_from_few_labels_and_serves_as_a_normal_model(tmp_path: Path, tiny_backbone: Path) -> None:
    from modelyard.models.loading import load
    from modelyard.rundir import RunDir
    from modelyard.training.run import train

    csv = _csv(tmp_path, 400)
    run = RunDir(train(load_recipe(_setfit_recipe(tmp_path, csv, tiny_backbone, contrastive_epochs=10))))
    metrics = run.metrics()
    assert metrics["test"]["accuracy"] >= 0.85  # one sentiment word decides the label: learnable from 32 labels
    assert (run.model_dir / "model.safetensors").is_file() and (run.model_dir / "config.json").is_file()
    clf = load(run.path)
    assert clf.labels == ["neg", "pos"]
    assert clf.predict_proba(["great lovely"]).shape == (1, 2)


def test_setfit_contrastive_phase_lowers_its_loss_and_head_is_the_logistic_fit(tiny_backbone: Path) -> None:
    import torch

    from modelyard.models.hf_encoder import hf_encoder
    from modelyard.models.setfit import SetFitSettings, _embedder, contrastive_phase, fit_head

    data = synthetic_sentiment(64, seed=4)
    cfg = SetFitSettings(backbone=str(tiny_backbone), max_length=32, pairs_per_example=4,
                         contrastive_epochs=6, contrastive_learning_rate=3e-3)  # fmt: skip
    model, tok = hf_encoder(cfg.model_copy(update={"finetune": "full"}), ["neg", "pos"], Path("."))
    losses = contrastive_phase(model, tok, cfg, data["text"].tolist(), data["label"].tolist())
    assert losses[-1] < 0.2 * losses[0]  # seeded: 0.37 → 0.01 at this rate
    fit_head(model, tok, cfg, data["text"].tolist(), data["label"].tolist(), ["neg", "pos"])
    batch = tok(data["text"].tolist(), padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits
    assert (logits.argmax(-1).numpy() == (data["label"] == "pos").to_numpy()).mean() >= 0.95
    assert _embedder(model) is not None


def test_setfit_refuses_dp_and_unknown_heads(tmp_path: Path, tiny_backbone: Path) -> None:
    from modelyard.training.run import train

    csv = _csv(tmp_path, 120)
    path = _setfit_recipe(tmp_path, csv, tiny_backbone)
    recipe = yaml.safe_load(path.read_text())
    recipe["train"]["privacy"] = {"noise_multiplier": 1.0}
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="outside DP-SGD's guarantee"):
        train(load_recipe(path))
