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


def test_feedback_may_carry_the_image_back_which_must_be_the_predicted_one(image_reg: Any) -> None:
    """``POST /v1/feedback`` with ``image``: stored once (content-addressed) when its sha256 is the
    prediction's; another image → 422 ``image_mismatch``; bad base64 → 422 ``invalid_base64``."""
    reg, _ = image_reg
    key = reg.create_key(["predict", "feedback"])
    png, other = _png(10), _png(11)
    b64 = base64.b64encode(png).decode()
    before = reg.count("feedback_images")

    async def main() -> dict[str, Any]:
        app = production_app(reg)
        async with running(app) as c:
            [pred] = (await c.post("/v1/predict", json={"images": [b64]}, headers=bearer(key))).json()["predictions"]
            [again] = (await c.post("/v1/predict", json={"images": [b64]}, headers=bearer(key))).json()["predictions"]

            async def fb(pid: str, image: str | None) -> Any:
                body = {"prediction_id": pid, "label": pred["label"], **({"image": image} if image else {})}
                return await c.post("/v1/feedback", json=body, headers=bearer(key))

            out = {
                "ok": await fb(pred["id"], b64),
                "data_url": await fb(again["id"], "data:image/png;base64," + b64),
                "mismatch": await fb(pred["id"], base64.b64encode(other).decode()),
                "not_base64": await fb(pred["id"], "@@@"),
            }
            assert app.state.predlog.flush(10)
            return out

    out = run(main())
    assert out["ok"].status_code == 202 and out["data_url"].status_code == 202, out["ok"].text
    for name, code in (("mismatch", "image_mismatch"), ("not_base64", "invalid_base64")):
        assert out[name].status_code == 422 and out[name].json()["error"]["code"] == code, out[name].text
    assert reg.count("feedback_images") == before + 1  # the same image twice is stored once
    assert reg.feedback_image(hashlib.sha256(png).hexdigest()) == ("image/png", png)
    assert reg.feedback_image(hashlib.sha256(other).hexdigest()) is None


def test_feedback_with_an_image_on_a_text_prediction_is_refused(tiny_trained_run: Path, tmp_path: Path) -> None:
    reg = make_registry(tmp_path, tiny_trained_run)
    key = reg.create_key(["predict", "feedback"])

    async def main() -> Any:
        async with running(production_app(reg)) as c:
            [pred] = (await c.post("/v1/predict", json={"texts": ["fine"]}, headers=bearer(key))).json()["predictions"]
            body = {"prediction_id": pred["id"], "label": pred["label"], "image": base64.b64encode(_png(3)).decode()}
            return await c.post("/v1/feedback", json=body, headers=bearer(key))

    try:
        r = run(main())
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
        assert "not an image" in r.json()["error"]["message"]
    finally:
        reg.close()


def test_retrain_of_an_image_model_needs_feedback_that_carries_images(image_reg: Any, tmp_path: Path) -> None:
    """Labels alone (no image sent back) cannot retrain an image model: refused with the request to send."""
    from modelyard.ops.retrain import retrain
    from modelyard.registry import RegistryError

    _, digits_run = image_reg
    reg = make_registry(tmp_path, digits_run)
    key = reg.create_key(["predict", "feedback"])

    async def main() -> None:
        app = production_app(reg)
        async with running(app) as c:
            body = {"images": [base64.b64encode(_png(20)).decode()]}
            [pred] = (await c.post("/v1/predict", json=body, headers=bearer(key))).json()["predictions"]
            r = await c.post("/v1/feedback", json={"prediction_id": pred["id"], "label": "3"}, headers=bearer(key))
            assert r.status_code == 202, r.text
            assert app.state.predlog.flush(10)

    try:
        run(main())
        with pytest.raises(RegistryError, match=r"none of its 1 feedback items carries its image.*\"image\""):
            retrain(reg, "demo", output_dir=tmp_path / "retrain")
        assert reg.audit_trail("demo", "retrain") == [] and reg.resolve("demo", "production").version == 1
    finally:
        reg.close()


def test_registering_an_image_run_copies_its_splits_and_refuses_an_object_array_in_them(
    image_reg: Any, tmp_path: Path
) -> None:
    import shutil

    from modelyard.registry import RegistryError, open_registry

    reg, digits_run = image_reg
    registered = reg.resolve("demo", "production").path
    assert sorted(p.name for p in (registered / "splits").iterdir()) == [
        "labels.json",
        "test.npz",
        "train.npz",
        "valid.npz",
    ]
    bad = tmp_path / digits_run.name
    shutil.copytree(digits_run, bad)
    np.savez(bad / "splits" / "valid.npz", images=np.array([{"x": 1}], dtype=object), labels=np.zeros(1))
    other = open_registry(tmp_path / "store")
    try:
        with pytest.raises(RegistryError, match=r"valid\.npz.*(pickle|object)"):
            other.register(bad, "demo")
        assert other.count("model_versions") == 0
    finally:
        other.close()


def test_openapi_of_an_image_model_documents_the_image_bodies(image_reg: Any) -> None:
    from modelyard.config import ServeConfig

    reg, _ = image_reg
    cfg = ServeConfig()

    async def main() -> Any:
        async with running(production_app(reg)) as c:
            return (await c.get("/openapi.json")).json()

    doc = run(main())
    op = doc["paths"]["/v1/predict"]["post"]
    content = op["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    images = content["application/json"]["schema"]["properties"]["images"]
    assert images["maxItems"] == cfg.max_images_per_request and images["items"]["contentEncoding"] == "base64"
    assert content["multipart/form-data"]["schema"]["properties"]["file"]["items"]["format"] == "binary"
    assert "image_too_large" in op["responses"]["413"]["description"]
    assert "unsupported_image" in op["responses"]["415"]["description"]
    assert "image_mismatch" in doc["paths"]["/v1/feedback"]["post"]["responses"]["422"]["description"]
    assert "image" in doc["components"]["schemas"]["FeedbackRequest"]["properties"]
