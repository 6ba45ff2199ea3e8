"""Generative kinds (vae, gan) on tiny seeded models: losses fall, seeded conditional generation, exact resume,
generated data only in the training split, and the VAE's out-of-distribution score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.config import recipe_from_dict
from modelyard.errors import ConfigError, ModelyardError
from modelyard.evaluation.generative_metrics import frechet_distance, precision_recall
from modelyard.models.loading import load
from modelyard.training.run import TrainingInterrupted, train


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads() -> Any:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _recipe(tmp: Path, kind: str, **over: Any) -> Any:
    """scikit-learn's 8×8 digits (1,797 images): a VAE/GAN learns them in seconds."""
    raw: dict[str, Any] = {
        "name": f"tiny-{kind}",
        "task": "image-generation",
        "data": {"path": "bundled:digits", "valid_size": 0.2, "test_size": 0.2},
        "model": {"type": kind, "width": 16, "latent_dim": 8, "eval_samples": 200},
        "train": {
            "epochs": 6,
            "batch_size": 32,
            "learning_rate": 0.003 if kind == "vae" else 0.001,
            "weight_decay": 0.0,
            "log_every_steps": 20,
            "seed": 1,
            "num_threads": 1,
        },
        "output_dir": str(tmp / "runs"),
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        raw[section][field] = value
    return recipe_from_dict(raw, base_dir=tmp)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(_recipe(tmp_path_factory.mktemp("vae"), "vae"))


def test_vae_run_has_the_exact_artifacts_and_its_losses_fall(vae_run: Path) -> None:
    assert sorted(p.name for p in vae_run.iterdir()) == [
        "data_report.json", "fingerprints.json", "history.json", "manifest.json", "metrics.json", "model",
        "progress.jsonl", "quality_model", "recipe.yaml", "report.html", "samples", "splits",
    ]  # fmt: skip
    assert sorted(p.name for p in (vae_run / "samples").iterdir()) == [
        *(f"epoch-{e:03d}.png" for e in range(1, 7)),
        "final.png",
    ]
    history = json.loads((vae_run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert history[-1]["valid_loss"] < history[0]["valid_loss"]
    assert min(h["valid_fd_proxy"] for h in history) < history[0]["valid_fd_proxy"]
    metrics = json.loads((vae_run / "metrics.json").read_text())
    assert set(metrics) == {"valid", "test"}
    assert {"fd_proxy", "precision", "recall", "class_accuracy", "loss"} <= set(metrics["test"])
    manifest = json.loads((vae_run / "manifest.json").read_text())
    assert manifest["task"] == "image-generation" and manifest["model"]["type"] == "vae"
    report = (vae_run / "report.html").read_text()
    for section in ("FID-style proxy", "Samples per epoch", "Reconstructions", "Latent interpolation"):
        assert section in report
    assert report.count("data:image/png;base64,") >= 9  # 6 epochs + final + reconstructions + interpolation


def test_conditional_generation_is_seeded_and_returns_the_requested_class(vae_run: Path) -> None:
    gen = load(vae_run)
    a, names = gen.generate(40, "7", seed=3)
    b, _ = gen.generate(40, "7", seed=3)
    c, _ = gen.generate(40, "7", seed=4)
    assert a.shape == (40, 1, 8, 8) and a.dtype == np.uint8
    assert names == ["7"] * 40
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # the run's own feature classifier gives most generated images the class they were asked for (chance: 0.1)
    import modelyard.models.cnn_small  # noqa: F401 - registers the architecture of the feature classifier
    from modelyard.models.image_base import ImageModel

    clf = ImageModel.from_pretrained(vae_run / "quality_model")
    hits = []
    for k, label in enumerate(gen.labels):
        images, _ = gen.generate(30, label, seed=k)
        with torch.no_grad():
            pred = clf(pixel_values=torch.from_numpy(images).float() / 255).logits.argmax(1).numpy()
        hits.append((pred == k).mean())
    assert np.mean(hits) >= 0.5 and sum(h > 0.5 for h in hits) >= 6, hits
    metrics = json.loads((vae_run / "metrics.json").read_text())
    assert metrics["test"]["class_accuracy"] >= 0.4


def test_generate_cli_writes_images_grid_and_record_and_refuses_bad_input(vae_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "sevens"
    res = runner.invoke(app, ["generate", str(vae_run), "--n", "12", "--class", "7", "-o", str(out), "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{i:04d}-7.png" for i in range(12)] + ["grid.png", "generated.json"]
    )
    record = json.loads((out / "generated.json").read_text())
    assert record["seed"] == 5 and record["class"] == "7" and len(record["files"]) == 12
    res = runner.invoke(app, ["generate", str(vae_run), "--class", "seven", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "'seven' is not a class" in res.output and "0, 1, 2" in res.output
    assert not (tmp_path / "x").exists()
    res = runner.invoke(app, ["generate", str(vae_run), "-o", str(out)])
    assert res.exit_code == 2 and "not an empty folder" in res.output


def test_the_vae_score_separates_a_planted_out_of_distribution_set(vae_run: Path) -> None:
    from sklearn.metrics import roc_auc_score

    from modelyard.rundir import RunDir

    gen = load(vae_run)
    test = RunDir(vae_run).splits().test.images
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, test.shape, dtype=np.uint8)
    inverted = 255 - test  # the same strokes, dark on light: unlike every training image
    s_in, s_noise, s_inv = gen.anomaly_scores(test), gen.anomaly_scores(noise), gen.anomaly_scores(inverted)
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_in))]
    assert roc_auc_score(y, np.r_[s_in, s_noise]) > 0.99
    assert roc_auc_score(y, np.r_[s_in, s_inv]) > 0.95
    meta = json.loads((vae_run / "model" / "modelyard.json").read_text())
    threshold = meta["ood"]["threshold"]
    assert gen.ood_threshold == threshold
    assert (s_in > threshold).mean() < 0.05 and (s_inv > threshold).mean() > 0.9


def test_gan_resume_is_exact(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "gan", train__epochs=2, train__checkpoint_every_steps=10)
    full = train(recipe)
    with pytest.raises(TrainingInterrupted):
        train(_recipe(tmp_path / "b", "gan", train__epochs=2, train__checkpoint_every_steps=10), stop_after_step=40)
    partial = next((tmp_path / "b" / "runs").glob("*.incomplete"))
    assert (partial / "checkpoints" / "last" / "optimizer-generator.safetensors").is_file()
    assert (partial / "checkpoints" / "last" / "optimizer-discriminator.safetensors").is_file()
    resumed = train(_recipe(tmp_path / "b", "gan", train__epochs=2), resume=partial)
    a = load_file(str(full / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and any("generator_ema" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert json.loads((full / "metrics.json").read_text()) == json.loads((resumed / "metrics.json").read_text())
    history = json.loads((full / "history.json").read_text())
    assert all(np.isfinite(h["train_loss"]) for h in history)
    steps = [json.loads(line) for line in (full / "progress.jsonl").read_text().splitlines()]
    assert {"g_loss", "d_loss", "d_real", "d_fake"} <= set(steps[0])


def test_generated_images_enter_the_training_split_only(vae_run: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from modelyard.data.images import prepare_images
    from modelyard.training.loop import FineTuneRecipe

    recipe = recipe_from_dict(
        {
            "name": "digits-aug",
            "task": "image-classification",
            "data": {"path": "bundled:digits", "valid_size": 0.2, "test_size": 0.2},
            "model": {"type": "cnn-small", "width": 8, "depth": 1},
            "train": {"epochs": 1, "batch_size": 64, "num_threads": 1,
                      "augment": {"generated": {"from": str(vae_run), "per_class": 7}}},
            "output_dir": str(tmp_path / "runs"),
        },
        base_dir=tmp_path,
    )  # fmt: skip
    assert recipe.train.augment.generated.from_run == str(vae_run)
    assert "from:" in recipe.to_yaml()
    data = prepare_images(recipe.data, recipe.base_dir)
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    ft = FineTuneRecipe(recipe, run_dir, data, Console(quiet=True))
    ft.setup()
    assert len(ft.splits["train"].labels) == len(data.train.labels) + 70
    assert np.bincount(ft.splits["train"].labels[len(data.train.labels) :]).tolist() == [7] * 10
    assert sum(t.startswith("generated:") for t in ft.splits["train"].texts) == 70
    for split in ("valid", "test"):
        assert len(ft.splits[split].labels) == len(getattr(data, split).labels)
        assert not any(t.startswith("generated:") for t in ft.splits[split].texts)
        assert np.array_equal(ft.splits[split].images.numpy(), getattr(data, split).images)
    run = train(recipe)
    saved = np.load(run / "splits" / "train.npz", allow_pickle=False)
    assert len(saved["labels"]) == len(data.train.labels)  # the run's splits/ hold real images only


def test_configs_that_cannot_work_are_refused(tmp_path: Path, vae_run: Path) -> None:
    with pytest.raises(ConfigError, match="generates images; set task: image-generation"):
        recipe_from_dict({"task": "image-classification", "data": {"path": "bundled:digits"}, "model": {"type": "gan"}})
    with pytest.raises(ConfigError, match="task image-generation needs a generative model; .*gan"):
        recipe_from_dict(
            {"task": "image-generation", "data": {"path": "bundled:digits"}, "model": {"type": "cnn-small"}}
        )
    with pytest.raises(ConfigError, match="train.augment.generated .* needs task: image-classification"):
        recipe_from_dict(
            {
                "task": "image-generation",
                "data": {"path": "bundled:digits"},
                "model": {"type": "vae"},
                "train": {"augment": {"generated": {"from": "x", "per_class": 3}}},
            }
        )
    with pytest.raises(ModelyardError, match="not a generative one|does not classify"):
        load(vae_run).predict_proba([np.zeros((8, 8), np.uint8)])


def test_quality_measures_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 4))
    # identical Gaussians: distance ~0; a mean shift of 3 in one dimension: ~9
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + np.array([3, 0, 0, 0])) == pytest.approx(9, rel=1e-6)
    # a generator that covers only one mode: high precision, low recall
    real = np.r_[rng.normal(0, 1, (300, 2)), rng.normal(10, 1, (300, 2))]
    fake = rng.normal(0, 1, (600, 2))
    precision, recall = precision_recall(real, fake)
    assert precision > 0.9 and 0.3 < recall < 0.6


def _png_bytes(a: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_the_server_flags_unlike_inputs_and_monitor_reports_their_share(vae_run: Path, tmp_path: Path) -> None:
    import base64

    from modelyard.config import load_recipe
    from modelyard.ops.monitor import Thresholds, monitor
    from modelyard.rundir import RunDir
    from tests.production_helpers import bearer, make_registry, production_app, run, running
    from tests.test_images import _digits_recipe

    classifier = train(load_recipe(_digits_recipe(tmp_path, epochs=1)))
    reg = make_registry(tmp_path, classifier)
    key = reg.create_key(["predict", "feedback"])
    digits = RunDir(vae_run).splits().test.images[:20, 0]
    noise = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    b64 = [base64.b64encode(_png_bytes(a)).decode() for a in [*digits, *noise]]

    async def main() -> tuple[list[Any], Any]:
        app = production_app(reg, cfg={"ood_from": str(vae_run)})
        async with running(app) as c:
            answers = [
                await c.post("/v1/predict", json={"images": b64[i : i + 10]}, headers=bearer(key)) for i in (0, 10, 20)
            ]
            first = answers[0].json()["predictions"][0]
            feedback = await c.post(
                "/v1/feedback",
                json={"prediction_id": first["id"], "label": first["label"], "image": b64[0]},
                headers=bearer(key),
            )
            assert app.state.predlog.flush(10)
            return answers, feedback

    answers, feedback = run(main())
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert feedback.status_code == 202, feedback.text  # the logged description still names the image
    preds = [p for a in answers for p in a.json()["predictions"]]
    assert all(set(p["ood"]) == {"score", "threshold", "flagged"} and p["label"] for p in preds)
    flagged = [p["ood"]["flagged"] for p in preds]
    assert sum(flagged[:20]) <= 2 and all(flagged[20:])  # digits pass, every noise image is flagged (still answered)
    row = reg.prediction(preds[25]["id"])
    assert row is not None and row["text"].endswith("ood_flagged=1")
    summary = monitor(reg, "demo", since=None, thresholds=Thresholds(min_samples=10, ood_share=0.2))
    share = summary["signals"]["ood_flagged_share"]
    assert share["value"] == pytest.approx(sum(flagged) / 30) and share["drift"] is True
    assert summary["status"] == "drift" and summary["ood"] == {"scored": 30, "flagged": sum(flagged)}
    assert {"confidence_psi", "confidence_ks", "class_mix_psi"} <= set(summary["signals"])


def test_serving_with_an_ood_run_that_cannot_score_is_refused_at_start(tmp_path: Path) -> None:
    from modelyard.config import ServeConfig
    from modelyard.serving.ood import OodFlagger

    gan = train(_recipe(tmp_path, "gan", train__epochs=1))
    with pytest.raises(ConfigError, match="is not a vae run"):
        OodFlagger(gan)
    with pytest.raises(ConfigError, match="serve.ood_from .*not found"):
        OodFlagger(tmp_path / "nope")
    assert ServeConfig(ood_from="x").ood_from == "x"


@pytest.mark.parametrize("verb", ["serve", "predict", "evaluate", "compress", "explain"])
def test_classifier_verbs_refuse_a_generative_run_in_one_line(vae_run: Path, tmp_path: Path, verb: str) -> None:
    args = {
        "serve": ["serve", str(vae_run)],
        "predict": ["predict", str(vae_run), "--input", str(tmp_path), "--output", str(tmp_path / "p.csv")],
        "evaluate": ["evaluate", str(vae_run)],
        "compress": ["compress", str(vae_run)],
        "explain": ["explain", str(vae_run), "--text", "x"],
    }[verb]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "generat" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("name", ["fashion_mnist_gan.yaml", "fashion_mnist_vae.yaml"])
def test_shipped_generative_recipes_train_shrunk_and_generate(name: str, tmp_path: Path) -> None:
    """The shipped recipes as shipped (kind, data source, conditioning), shrunk to seconds; then `generate`."""
    from modelyard.config import load_recipe

    examples = Path(__file__).resolve().parents[1] / "examples"
    overrides = [
        "data.sample=400",
        "model.width=8",
        "model.eval_samples=100",
        "train.epochs=1",
        "train.log_every_steps=5",
        f"output_dir={tmp_path / 'runs'}",
    ]
    run_dir = train(load_recipe(examples / name, overrides))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"fd_proxy", "precision", "recall", "class_accuracy"} <= set(metrics["test"])
    res = CliRunner().invoke(
        app, ["generate", str(run_dir), "--n", "4", "--class", "Sneaker", "-o", str(tmp_path / "g")]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "g" / "generated.json").read_text())["files"][0]["class"] == "Sneaker"
