"""The production server logs image predictions like text ones: a description instead of the text."""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from modelyard.config import load_recipe
from tests.production_helpers import bearer, make_registry, production_app, run, running
from tests.test_images import _digits_recipe


@pytest.fixture(scope="module")
def image_reg(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from modelyard.training.run import train

    threads = torch.get_num_threads()  # the recipe trains with num_threads: 1, which torch applies process-wide
    tmp = tmp_path_factory.mktemp("image_reg")
    digits_run = train(load_recipe(_digits_recipe(tmp, epochs=1)))
    torch.set_num_threads(threads)
    reg = make_registry(tmp, digits_run)
    yield reg, digits_run
    reg.close()


def _png(seed: int) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_image_predictions_are_logged_with_a_description(image_reg: Any) -> None:
    reg, _ = image_reg
    key = reg.create_key(["predict", "feedback"])
    key_id = key.split("_")[1]
    pngs = [_png(0), _png(1), _png(2)]

    async def main() -> tuple[list[Any], Any, Any, Any]:
        app = production_app(reg)
        async with running(app) as c:
            multipart = await c.post(
                "/v1/predict",
                files=[("file", ("a.png", pngs[0], "image/png")), ("file", ("b.png", pngs[1], "image/png"))],
                headers=bearer(key),
            )
            b64 = await c.post(
                "/v1/predict", json={"images": [base64.b64encode(pngs[2]).decode()]}, headers=bearer(key)
            )
            refused = await c.post(
                "/v1/predict", files=[("file", ("x.txt", b"not an image", "text/plain"))], headers=bearer(key)
            )
            pid = multipart.json()["predictions"][0]["id"]
            label = multipart.json()["predictions"][0]["label"]
            feedback = await c.post("/v1/feedback", json={"prediction_id": pid, "label": label}, headers=bearer(key))
            assert app.state.predlog.flush(10)
            return [multipart, b64], refused, feedback, app.state.predlog

    (multipart, b64), refused, feedback, predlog = run(main())
    assert multipart.status_code == 200 and b64.status_code == 200, (multipart.text, b64.text)
    assert refused.status_code == 415
    assert feedback.status_code == 202, feedback.text
    preds = multipart.json()["predictions"] + b64.json()["predictions"]
    assert predlog.dropped == 0
    assert reg.count("predictions") == 3  # the refused request is not logged
    for png, pred in zip(pngs, preds, strict=True):
        assert uuid.UUID(pred["id"]).version == 4
        row = reg.prediction(pred["id"])
        assert row is not None, pred
        assert row["text"] == f"image/png 8x8 sha256:{hashlib.sha256(png).hexdigest()}"
        assert row["label"] == pred["label"] and row["scores"] == pytest.approx(pred["scores"])
        assert row["key_id"] == key_id and row["version"] == 1 and row["app"] == "demo"
        assert row["latency_ms"] > 0
    assert [f["prediction_id"] for f in reg.feedback("demo")] == [preds[0]["id"]]


def test_registry_serves_an_image_version(image_reg: Any) -> None:
    from modelyard.serving.production import load_version

    reg, digits_run = image_reg
    model = load_version(reg.resolve("demo", "production"), "production")  # smoke-tested with a blank image
    assert model.info()["task"] == "image-classification" and model.info()["version"] == 1
    assert model.predict_proba([np.zeros((8, 8), dtype=np.uint8)]).shape == (1, len(model.labels))
    assert Path(model.version.path).is_dir() and model.version.run_id == Path(digits_run).name
