"""The training recipe on a tiny seeded model: falling loss, exact artifacts, exact resume, parity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from modelyard.config import load_recipe
from modelyard.training.loop import TrainingInterrupted
from modelyard.training.run import train
from tests.conftest import write_tiny_recipe

EXPECTED_RUN_FILES = {
    "recipe.yaml",
    "manifest.json",
    "data_report.json",
    "fingerprints.json",
    "metrics.json",
    "history.json",
    "progress.jsonl",
    "predictions.parquet",
    "report.html",
    "splits/train.parquet",
    "splits/valid.parquet",
    "splits/test.parquet",
    "splits/labels.json",
    "model/config.json",
    "model/model.safetensors",
    "model/modelyard.json",
    "model/tokenizer.json",
    "model/tokenizer_config.json",
}


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    from tests.conftest import synthetic_sentiment

    tmp = tmp_path_factory.mktemp("trained")
    data = tmp / "reviews.csv"
    synthetic_sentiment(240).to_csv(data, index=False)
    return train(load_recipe(write_tiny_recipe(tmp, data, tiny_backbone)))


def test_loss_falls_and_model_learns(trained_run: Path) -> None:
    history = json.loads((trained_run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < losses[0] * 0.7, losses
    steps = [json.loads(x) for x in (trained_run / "progress.jsonl").read_text().splitlines()]
    step_losses = [s["loss"] for s in steps if "event" not in s]
    assert all(np.isfinite(step_losses))
    assert np.mean(step_losses[-3:]) < np.mean(step_losses[:3])
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(metrics) == {"valid", "test"}
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]
    assert metrics["test"]["n"] == 48


def test_run_directory_has_exactly_the_expected_files(trained_run: Path) -> None:
    files = _files(trained_run)
    # Tokenizer helpers vary by transformers version (special_tokens_map.json); all else is exact.
    optional = {"model/special_tokens_map.json", "model/generation_config.json"}
    assert files >= EXPECTED_RUN_FILES
    assert files - EXPECTED_RUN_FILES <= optional, files - EXPECTED_RUN_FILES
    assert not list(trained_run.parent.glob("*.incomplete"))
    assert not (trained_run / "checkpoints").exists()


def test_progress_and_manifest_are_machine_readable(trained_run: Path) -> None:
    lines = [json.loads(x) for x in (trained_run / "progress.jsonl").read_text().splitlines()]
    step_lines = [x for x in lines if "event" not in x]
    assert {"step", "total_steps", "epoch", "loss", "lr", "samples_per_s", "eta_s"} <= set(step_lines[0])
    assert step_lines[-1]["step"] == step_lines[-1]["total_steps"] == 3 * 9
    assert step_lines[-1]["eta_s"] == 0
    assert sum(1 for x in lines if x.get("event") == "eval") == 3
    manifest = json.loads((trained_run / "manifest.json").read_text())
    assert manifest["seed"] == {"train": 7, "data": 3}
    assert manifest["versions"]["torch"] and manifest["versions"]["transformers"]
    (fp,) = manifest["data_fingerprints"].values()
    assert len(fp) == 64
    assert manifest["wall_time_s"] > 0 and manifest["best_epoch"] in (1, 2, 3)


def test_saved_model_loads_with_plain_transformers_in_a_fresh_process(trained_run: Path) -> None:
    """The exported model needs no modelyard: a fresh interpreter with transformers alone reproduces it."""
    import modelyard

    texts = ["the film was great fun", "a dull and boring story"]
    ours = modelyard.load(trained_run).predict_proba(texts)
    code = (
        "import json,sys,torch\n"
        "from transformers import AutoModelForSequenceClassification as M, AutoTokenizer as T\n"
        f"d={str(trained_run / 'model')!r}\n"
        "m=M.from_pretrained(d).eval(); t=T.from_pretrained(d)\n"
        f"b=t({texts!r}, padding=True, return_tensors='pt')\n"
        "with torch.no_grad(): p=m(**b).logits.softmax(-1).tolist()\n"
        "print(json.dumps({'p': p, 'labels': [m.config.id2label[i] for i in range(m.config.num_labels)]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    assert theirs["labels"] == ["neg", "pos"]
    np.testing.assert_allclose(np.array(theirs["p"]), ours, atol=1e-5)
    preds = modelyard.load(trained_run).predict(texts)
    assert [p["label"] for p in preds] == ["pos", "neg"]
    assert all(abs(sum(p["scores"].values()) - 1) < 1e-9 for p in preds)


def test_same_seed_gives_identical_weights(tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path) -> None:
    recipe = load_recipe(write_tiny_recipe(tmp_path, sentiment_csv, tiny_backbone, epochs=1))
    a = load_file(str(train(recipe) / "model" / "model.safetensors"))
    b = load_file(str(train(recipe) / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize(
    "extra",
    [{}, {"ema_decay": 0.9, "layer_lr_decay": 0.8}],
    ids=["plain", "ema+layer-decay"],
)
def test_resume_after_interruption_matches_uninterrupted_run(
    tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path, extra: dict
) -> None:
    recipe = load_recipe(
        write_tiny_recipe(tmp_path, sentiment_csv, tiny_backbone, epochs=2, checkpoint_every_steps=4, **extra)
    )
    reference = train(recipe)

    # Stop at step 11 (epoch 2, mid-epoch); the last checkpoint is step 9's (end of epoch 1) — steps
    # 10-11 are redone after resume, from the restored RNG and data position.
    with pytest.raises(TrainingInterrupted):
        train(recipe, stop_after_step=11)
    (partial,) = list((tmp_path / "runs").glob("*.incomplete"))
    assert not (partial / "manifest.json").exists()  # an interrupted run never looks finished
    state = json.loads((partial / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["global_step"] == 9 and state["epoch"] == 1

    resumed = train(recipe, resume=partial)
    assert not partial.exists() and resumed.name == partial.name.removesuffix(".incomplete")
    a = load_file(str(reference / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0, err_msg=k)
    assert json.loads((resumed / "manifest.json").read_text())["resumed_from"] == str(partial)


def test_layer_lr_decay_scales_learning_rate_by_depth(tiny_backbone: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from modelyard.training.loop import param_groups

    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=2)
    n_layers = model.config.num_hidden_layers  # 2
    lr_of = {id(p): g["lr"] for g in param_groups(model, 1e-3, 0.01, 0.5) for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["classifier.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(named["bert.encoder.layer.1.output.dense.weight"])] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(named["bert.encoder.layer.0.output.dense.weight"])] == pytest.approx(1e-3 * 0.25)
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1e-3 * 0.5 ** (n_layers + 1))
    wd_of = {id(p): g["weight_decay"] for g in param_groups(model, 1e-3, 0.01, None) for p in g["params"]}
    assert wd_of[id(named["classifier.bias"])] == 0.0 and wd_of[id(named["classifier.weight"])] == 0.01
    assert {g["lr"] for g in param_groups(model, 1e-3, 0.01, None)} == {1e-3}


def test_ema_weights_are_what_gets_saved(tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = train(load_recipe(write_tiny_recipe(tmp_path / "a", sentiment_csv, tiny_backbone, epochs=1)))
    ema = train(load_recipe(write_tiny_recipe(tmp_path / "b", sentiment_csv, tiny_backbone, epochs=1, ema_decay=0.5)))
    a = load_file(str(plain / "model" / "model.safetensors"))
    b = load_file(str(ema / "model" / "model.safetensors"))
    # Same seed and batches: the raw weights are identical, so any difference is the averaging.
    assert a.keys() == b.keys()
    assert any(not np.array_equal(a[k], b[k]) for k in a if k.endswith("weight"))
    ema_metrics = json.loads((ema / "metrics.json").read_text())
    assert ema_metrics["valid"]["n"] > 0 and np.isfinite(ema_metrics["valid"]["loss"])


def test_early_stopping_stops_and_keeps_best_epoch(tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path) -> None:
    # learning rate so small nothing improves after epoch 1 → patience 1 stops at epoch 2
    recipe = load_recipe(
        write_tiny_recipe(
            tmp_path,
            sentiment_csv,
            tiny_backbone,
            epochs=6,
            patience=1,
            learning_rate=1e-9,
            metric="accuracy",
        )
    )
    run = train(recipe)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stopped_early"] is True
    assert manifest["epochs_completed"] == 2 and manifest["best_epoch"] == 1


def test_distillation_without_gold_labels_learns_from_the_teacher(
    tmp_path: Path, trained_run: Path, tiny_backbone: Path
) -> None:
    from modelyard.data import PreparedData
    from modelyard.training.run import load_splits

    # Gold labels of the training split flipped: with alpha=0 they are never used, so a student that
    # still learns the task can only have learned it from the teacher's probabilities.
    splits = load_splits(trained_run)
    flipped = splits.train.assign(label=splits.train["label"].map({"pos": "neg", "neg": "pos"}))
    data = PreparedData(flipped, splits.valid, splits.test, splits.labels, splits.report, splits.fingerprints)
    recipe = load_recipe(
        write_tiny_recipe(
            tmp_path,
            tmp_path / "unused.csv",
            tiny_backbone,
            epochs=3,
            distill={"teacher": str(trained_run), "temperature": 2.0, "alpha": 0.0},
        )
    )
    student = train(recipe, data=data)
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]
    # the student trained on exactly the given splits
    assert len(json.loads((student / "data_report.json").read_text())) > 0
    assert (student / "splits" / "train.parquet").is_file()

    # and the same flipped labels with alpha=1 (gold only) learn the inverted task
    recipe.train.distill.alpha = 1.0
    history = json.loads((train(recipe, data=data) / "history.json").read_text())
    assert history[-1]["valid_accuracy"] <= 0.2, history


def test_distillation_teacher_with_other_labels_is_a_clear_error(
    tmp_path: Path, trained_run: Path, tiny_backbone: Path
) -> None:
    from modelyard.errors import ModelyardError

    data = tmp_path / "topics.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},{'abc'[i % 3]}\n" for i in range(60)))
    recipe = load_recipe(write_tiny_recipe(tmp_path, data, tiny_backbone, distill={"teacher": str(trained_run)}))
    with pytest.raises(ModelyardError, match="distillation needs the same label set"):
        train(recipe)
    assert not list((tmp_path / "runs").glob("*"))  # nothing left behind


def test_rdrop_loss_is_mean_ce_plus_alpha_symmetric_kl() -> None:
    import types

    import torch

    from modelyard.training.loop import FineTuneRecipe

    labels = np.array([0, 1, 1])
    obj = types.SimpleNamespace(
        multi_label=False,
        cfg=types.SimpleNamespace(rdrop_alpha=0.7, label_smoothing=0.0, distill=None),
        splits={"train": types.SimpleNamespace(labels=labels, soft=None)},
    )
    obj._loss = lambda logits, idx: FineTuneRecipe._loss(obj, logits, idx)
    a = torch.tensor([[2.0, -1.0], [0.5, 0.2], [-1.0, 1.5]])
    b = torch.tensor([[1.0, 0.0], [-0.3, 0.9], [0.0, 2.5]])
    got = FineTuneRecipe.loss(obj, torch.cat([a, b]), np.arange(3))
    y = torch.as_tensor(labels)
    p, q = a.softmax(-1), b.softmax(-1)
    kl_pq = (p * (p.log() - q.log())).sum(-1).mean()
    kl_qp = (q * (q.log() - p.log())).sum(-1).mean()
    ce = 0.5 * (torch.nn.functional.cross_entropy(a, y) + torch.nn.functional.cross_entropy(b, y))
    assert torch.allclose(got, ce + 0.7 * 0.5 * (kl_pq + kl_qp), atol=1e-6)
    # identical passes (no dropout): R-Drop is plain cross-entropy
    same = FineTuneRecipe.loss(obj, torch.cat([a, a]), np.arange(3))
    assert torch.allclose(same, torch.nn.functional.cross_entropy(a, y), atol=1e-6)


def test_rdrop_without_dropout_trains_exactly_like_plain(
    tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path
) -> None:
    import shutil

    # The same backbone with every dropout off: both passes of the doubled batch are identical, the KL term is
    # zero and the averaged loss equals the plain one, so the weights must match a plain run's.
    backbone = tmp_path / "nodrop"
    shutil.copytree(tiny_backbone, backbone)
    config = json.loads((backbone / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (backbone / "config.json").write_text(json.dumps(config))
    runs = {}
    for name, alpha in (("plain", 0.0), ("rdrop", 1.0)):
        (tmp_path / name).mkdir()
        recipe = load_recipe(write_tiny_recipe(tmp_path / name, sentiment_csv, backbone, epochs=1, rdrop_alpha=alpha))
        recipe.model.dropout = 0.0
        runs[name] = load_file(str(train(recipe) / "model" / "model.safetensors"))
    for k in runs["plain"]:
        np.testing.assert_allclose(runs["rdrop"][k], runs["plain"][k], atol=1e-5, err_msg=k)


def test_rdrop_trains_with_dropout(
    tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.training.loop import FineTuneRecipe

    seen: list[tuple[int, int]] = []
    original = FineTuneRecipe.loss

    def spy(self: FineTuneRecipe, logits: object, idx: np.ndarray) -> object:
        seen.append((len(logits), len(idx)))  # type: ignore[arg-type]
        return original(self, logits, idx)  # type: ignore[arg-type]

    monkeypatch.setattr(FineTuneRecipe, "loss", spy)
    run = train(load_recipe(write_tiny_recipe(tmp_path, sentiment_csv, tiny_backbone, rdrop_alpha=1.0)))
    assert seen and all(n_logits == 2 * n for n_logits, n in seen)  # every training batch ran twice
    history = json.loads((run / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] >= 0.8
