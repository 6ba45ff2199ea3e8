"""Multi-label through the shared training loop (issue #19 item 2): BCE, sigmoid, tuned thresholds, outputs, resume.

A character/word TextCNN trained from scratch stands in for every loop kind (hf-encoder, bilstm,
transformer-encoder share the loop, batch source, save and load).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from modelyard.config.recipe import recipe_from_dict
from modelyard.training import losses
from modelyard.training.run import train
from tests.test_multilabel import LABELS, toy_rows, write_delimited

QUIET = Console(quiet=True)


def cnn_recipe(tmp: Path, data: Path, **train_cfg) -> dict:
    return {
        "task": "multi-label-classification",
        "name": "ml-cnn",
        "model": {
            "type": "textcnn",
            "max_length": 32,
            "tokenizer": {"type": "wordpiece", "vocab_size": 200, "min_frequency": 1},
            "arch": {"embedding_dim": 16, "num_filters": 16},
        },
        "train": {"epochs": 6, "batch_size": 32, "learning_rate": 0.01, "metric": "micro_f1", **train_cfg},
        "data": {"path": str(data), "label_column": "tags"},
        "output_dir": str(tmp / "runs"),
    }


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("mlcnn")
    data = write_delimited(tmp / "d.csv", toy_rows(600))
    return train(recipe_from_dict(cnn_recipe(tmp, data), base_dir=tmp), console=QUIET)


def test_binary_cross_entropy_is_the_mean_per_label_log_loss():
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    p = torch.sigmoid(logits)
    manual = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert losses.binary_cross_entropy(logits, y).item() == pytest.approx(manual.item(), rel=1e-6)
    # all-zero logits: every label at p = 0.5, so the loss is ln 2 whatever the targets
    assert losses.binary_cross_entropy(torch.zeros(3, 4), torch.ones(3, 4)).item() == pytest.approx(math.log(2))


def test_loop_learns_label_sets(cnn_run):
    metrics = json.loads((cnn_run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["micro_f1"] >= 0.85 and test["macro_f1"] >= 0.8 and test["hamming_loss"] <= 0.1
    assert test["accuracy"] == test["subset_accuracy"] and test["roc_auc"] == test["macro_roc_auc"]
    assert 0 < test["loss"] < math.log(2)  # BCE, below the untrained model's
    history = json.loads((cnn_run / "history.json").read_text())
    assert len(history) == 6 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(h["valid_micro_f1"] is not None for h in history)


def test_run_outputs_thresholds_predictions_and_report(cnn_run):
    meta = json.loads((cnn_run / "model" / "modelyard.json").read_text())
    assert meta["task"] == "multi-label-classification" and sorted(meta["thresholds"]) == LABELS
    assert json.loads((cnn_run / "model" / "config.json").read_text())["problem_type"] == "multi_label_classification"
    metrics = json.loads((cnn_run / "metrics.json").read_text())
    for lb in LABELS:  # the thresholds tuned on valid are the ones the metrics and the model use
        assert metrics["test"]["per_label"][lb]["threshold"] == meta["thresholds"][lb]
    frame = pd.read_parquet(cnn_run / "predictions.parquet")
    assert list(frame.columns) == ["split", "text", "label", "pred", "errors", *(f"prob_{lb}" for lb in LABELS)]
    assert set(frame["split"]) == {"valid", "test"}
    test = frame[frame["split"] == "test"]
    y = np.array([[lb in set(s) for lb in LABELS] for s in test["label"]])
    pred = np.array([[lb in set(s) for lb in LABELS] for s in test["pred"]])
    assert (pred != y).sum() / y.size == pytest.approx(metrics["test"]["hamming_loss"])
    assert list(test["errors"]) == list((pred != y).sum(axis=1))
    html = (cnn_run / "report.html").read_text(encoding="utf-8")
    for needle in ("Per label (test)", "Label co-occurrence", "<svg", "P(b | a)", "Training history", *LABELS):
        assert needle in html


def test_loaded_model_predicts_the_sets_the_run_scored(cnn_run):
    from modelyard.models import load

    clf = load(cnn_run / "model")
    assert clf.multi_label
    frame = pd.read_parquet(cnn_run / "predictions.parquet")
    test = frame[frame["split"] == "test"].head(20)
    probs = clf.predict_proba(test["text"].tolist())
    assert probs.shape == (len(test), len(LABELS)) and not np.allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs, test[[f"prob_{lb}" for lb in LABELS]].to_numpy(), atol=1e-5)
    out = clf.predict(test["text"].tolist())
    assert [o["labels"] for o in out] == [list(p) for p in test["pred"]]
    assert set(out[0]["scores"]) == set(LABELS)


def test_interrupted_multi_label_run_resumes_to_the_same_result(tmp_path):
    from modelyard.errors import ModelyardError

    data = write_delimited(tmp_path / "d.csv", toy_rows(300))
    raw = cnn_recipe(tmp_path, data, epochs=2, checkpoint_every_steps=3)
    full = train(recipe_from_dict(raw, base_dir=tmp_path), console=QUIET)
    with pytest.raises(ModelyardError):
        train(recipe_from_dict(raw, base_dir=tmp_path), console=QUIET, stop_after_step=5)
    (broken,) = (tmp_path / "runs").glob("*.incomplete")
    resumed = train(recipe_from_dict(raw, base_dir=tmp_path), console=QUIET, resume=broken)
    a = json.loads((full / "metrics.json").read_text())["test"]
    b = json.loads((resumed / "metrics.json").read_text())["test"]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["micro_f1"] == a["micro_f1"]


def test_evaluate_rescores_the_run_and_a_new_file_with_the_saved_thresholds(cnn_run, tmp_path):
    from modelyard.errors import DataError
    from modelyard.evaluation.evaluate import evaluate

    before = json.loads((cnn_run / "metrics.json").read_text())
    out, metrics = evaluate(cnn_run, console=QUIET)
    assert out == cnn_run
    for key in ("micro_f1", "macro_f1", "hamming_loss", "subset_accuracy"):
        assert metrics["test"][key] == pytest.approx(before["test"][key], abs=1e-9)
    rows = [r for r in toy_rows(120, seed=7) if r[1]]
    fresh = write_delimited(tmp_path / "new.csv", rows)
    out, metrics = evaluate(cnn_run, fresh, console=QUIET)
    assert out.parent == cnn_run / "evaluations" and metrics["eval"]["n"] == len(rows)
    assert metrics["eval"]["micro_f1"] >= 0.8
    assert {"metrics.json", "predictions.parquet", "report.html"} <= {p.name for p in out.iterdir()}
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["pizza", "guitar"], "tags": ["food", "food|cooking"]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"\['cooking'\].*rows.*\[3\]"):
        evaluate(cnn_run, bad, console=QUIET)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["compress", "{run}", "--methods", "onnx"], "compression of multi-label models is not supported yet"),
        (["explain", "{run}", "--text", "pizza and a guitar"], "explanations of multi-label models are not supported"),
    ],
)
def test_stages_without_label_sets_refuse_in_one_line(cnn_run, args, needle):
    from typer.testing import CliRunner

    from modelyard.cli import app

    result = CliRunner().invoke(app, [a.format(run=cnn_run) for a in args])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())


def test_tuning_searches_a_multi_label_recipe(tmp_path):
    from modelyard.tuning.search import tune

    data = write_delimited(tmp_path / "d.csv", toy_rows(300))
    raw = cnn_recipe(tmp_path, data, epochs=2)
    raw["tune"] = {"trials": 2, "space": {"train.learning_rate": {"type": "choice", "values": [0.003, 0.01]}}}
    out = tune(recipe_from_dict(raw, base_dir=tmp_path), console=QUIET)
    trials = json.loads((out / "trials.json").read_text())
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:  # the objective is the multi-label metric, also per epoch (thresholds tuned on valid)
        assert t["value"] == t["valid_metrics"]["micro_f1"] and t["value"] > 0.5
        assert all(v > 0 for v in t["epoch_values"].values())
    from modelyard.config.recipe import load_recipe

    assert load_recipe(out / "best_recipe.yaml").task == "multi-label-classification"


def test_hf_encoder_learns_label_sets_and_plain_transformers_reads_them(tmp_path, tiny_backbone):
    """The pretrained-encoder kind: BCE through the same loop; the saved config says multi-label to transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from modelyard.models import load

    data = write_delimited(tmp_path / "d.csv", [r for r in toy_rows(200) if r[1]])
    raw = {
        "task": "multi-label-classification",
        "data": {"path": str(data), "label_column": "tags"},
        "model": {"type": "hf-encoder", "backbone": str(tiny_backbone), "max_length": 24},
        "train": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-2, "metric": "micro_f1"},
        "output_dir": str(tmp_path / "runs"),
    }
    run = train(recipe_from_dict(raw, base_dir=tmp_path), console=QUIET)
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and all(0 < h["train_loss"] < 1 for h in history)  # BCE per label, not CE over 4
    clf = load(run / "model")
    texts = ["pizza and a guitar", "football on a laptop"]
    hf = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert hf.config.problem_type == "multi_label_classification"
    tok = AutoTokenizer.from_pretrained(run / "model")
    with torch.no_grad():
        logits = hf(**tok(texts, padding=True, return_tensors="pt")).logits
    np.testing.assert_allclose(clf.predict_proba(texts), torch.sigmoid(logits).numpy(), atol=1e-5)


def test_server_answers_label_sets_of_a_loop_model(cnn_run):
    """The served TextCNN (a torch kind) answers sets with the thresholds it was trained with."""
    from modelyard.models import load
    from tests.test_multilabel_serving import PID, _plain

    texts = ["we ate pizza and played football", "a guitar"]
    predicted, feedback, _ = _plain(
        lambda: load(cnn_run / "model"),
        LABELS,
        [("/v1/predict", {"texts": texts}), ("/v1/feedback", {"prediction_id": PID, "labels": ["sports", "food"]})],
    )
    assert predicted.status_code == 200, predicted.text
    body = predicted.json()
    expected = load(cnn_run / "model").predict(texts)
    assert [p["labels"] for p in body["predictions"]] == [e["labels"] for e in expected]
    assert body["model"]["multi_label"] is True and sorted(body["model"]["thresholds"]) == LABELS
    assert feedback.status_code == 202 and feedback.json()["labels"] == ["food", "sports"]
