"""A model kind defined entirely in this test goes through the whole product without touching ``src/``.

The kind (a nearest-centroid classifier over a bag of words) is written as a module into a temporary folder
and installed the way a third-party package is: a ``*.dist-info`` with a ``modelyard.models`` entry point on
``sys.path``. Then the ordinary entry points train, evaluate, predict, serve, register and promote it.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from modelyard import kinds
from modelyard.cli import app as cli_app
from modelyard.config import ServeConfig, load_recipe
from modelyard.errors import ConfigError
from modelyard.evaluation.evaluate import evaluate
from modelyard.models import load
from modelyard.registry import RegistryError
from modelyard.serving import create_app
from modelyard.training.run import train
from tests.production_helpers import bearer, make_registry, production_app, run, running

KIND_MODULE = textwrap.dedent(
    '''
    """nearest-centroid: mean bag-of-words vector per class; a text goes to the most cosine-similar centroid."""
    from __future__ import annotations

    import json
    from pathlib import Path
    from typing import Any, Literal

    import numpy as np
    from pydantic import Field

    from modelyard.config import ModelSettings
    from modelyard.kinds import FitContext, FitResult, ModelKind, register_kind


    class CentroidSettings(ModelSettings):
        """A nearest-centroid classifier over lower-cased whitespace tokens."""

        type: Literal["nearest-centroid"] = "nearest-centroid"
        min_count: int = Field(1, ge=1, description="Tokens seen fewer times in training are dropped.")
        sharpness: float = Field(10.0, gt=0, description="Softmax temperature⁻¹ over cosine similarities.")


    def _tokens(text: str) -> list[str]:
        return str(text).lower().split()


    class CentroidClassifier:
        def __init__(self, model_dir: Path, meta: dict[str, Any]) -> None:
            self.model_dir, self.meta = Path(model_dir), meta
            self.labels = list(meta["labels"])
            weights = json.loads((self.model_dir / "centroids.json").read_text(encoding="utf-8"))
            self.vocab = {t: i for i, t in enumerate(weights["vocab"])}
            self.centroids = np.asarray(weights["centroids"], dtype=np.float64)
            self.sharpness = float(weights["sharpness"])

        def _vectors(self, texts: list[str]) -> np.ndarray:
            x = np.zeros((len(texts), len(self.vocab)))
            for row, text in enumerate(texts):
                for tok in _tokens(text):
                    if tok in self.vocab:
                        x[row, self.vocab[tok]] += 1.0
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

        def predict_proba(self, texts: list[str]) -> np.ndarray:
            z = self.sharpness * (self._vectors(list(texts)) @ self.centroids.T)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            return z / z.sum(axis=1, keepdims=True)

        def predict(self, texts: list[str]) -> list[dict[str, Any]]:
            return [
                {"label": self.labels[int(p.argmax())], "scores": dict(zip(self.labels, map(float, p)))}
                for p in self.predict_proba(texts)
            ]

        def info(self) -> dict[str, Any]:
            return {"name": self.meta["name"], "backbone": "nearest-centroid", "labels": self.labels}


    def fit(ctx: FitContext) -> FitResult:
        cfg, data = ctx.recipe.model, ctx.data
        labels = list(data.labels)
        counts: dict[str, int] = {}
        for text in data.train["text"]:
            for tok in _tokens(text):
                counts[tok] = counts.get(tok, 0) + 1
        vocab = sorted(t for t, n in counts.items() if n >= cfg.min_count)
        index = {t: i for i, t in enumerate(vocab)}
        centroids = np.zeros((len(labels), len(vocab)))
        for text, label in zip(data.train["text"], data.train["label"]):
            for tok in _tokens(text):
                if tok in index:
                    centroids[labels.index(label), index[tok]] += 1.0
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        ctx.model_dir.mkdir(parents=True)
        weights = {"vocab": vocab, "centroids": centroids.tolist(), "sharpness": cfg.sharpness}
        (ctx.model_dir / "centroids.json").write_text(json.dumps(weights), encoding="utf-8")
        meta = {"format": 1, "name": ctx.recipe.name, "labels": labels, "model_type": "nearest-centroid",
                "text_column": ctx.recipe.data.text_column, "backbone": "nearest-centroid", "max_length": None}
        (ctx.model_dir / "modelyard.json").write_text(json.dumps(meta), encoding="utf-8")
        clf = CentroidClassifier(ctx.model_dir, meta)
        probs = {s: clf.predict_proba(getattr(data, s)["text"].tolist()) for s in ("valid", "test")}
        manifest = {"seed": {"data": ctx.recipe.data.seed}, "train_seconds": 0.0, "device": "cpu",
                    "precision": "fp64", "model": {"type": "nearest-centroid", "parameters": centroids.size}}
        return FitResult(probs=probs, info={"model": f"nearest-centroid · {len(vocab)} tokens"}, manifest=manifest)


    def check(model_dir: Path, meta: dict[str, Any]) -> None:
        if not (model_dir / "centroids.json").is_file():
            raise ValueError("no centroids.json")


    KIND = register_kind(ModelKind(
        name="nearest-centroid", settings=CentroidSettings, modality="text", fit=fit,
        load=lambda model_dir, meta, **_: CentroidClassifier(model_dir, meta), check_artifacts=check,
        supports=frozenset({"distill_teacher"}),
    ))
    '''
)

WORDS = {
    "pos": ["great", "superb", "lovely", "brilliant", "moving", "fun"],
    "neg": ["awful", "dull", "boring", "terrible", "bland", "tedious"],
}


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[None]:
    """Install the kind as a third-party package would: a module + a dist-info with the entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "centroid_kind.py").write_text(KIND_MODULE, encoding="utf-8")
    info = site / "modelyard_centroid-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: modelyard-centroid\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[modelyard.models]\nnearest-centroid = centroid_kind\n", encoding="utf-8")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("centroid_kind", None)
        kinds.unregister_kind("nearest-centroid")
        importlib.invalidate_caches()


def _recipe(tmp_path: Path, **model: object) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        label = "pos" if i % 2 else "neg"
        words = list(rng.choice(WORDS[label], size=3)) + list(rng.choice(["the", "film", "plot", "was"], size=2))
        rng.shuffle(words)
        rows.append({"text": " ".join(words) + f" r{i}", "label": label})
    pd.DataFrame(rows).to_csv(tmp_path / "reviews.csv", index=False)
    recipe = {
        "name": "centroid-demo",
        "data": {"path": "reviews.csv", "valid_size": 0.25, "test_size": 0.25, "seed": 1},
        "model": {"type": "nearest-centroid", **model},
        "output_dir": "runs",
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_a_kind_defined_in_a_test_trains_evaluates_predicts_serves_registers_and_promotes(
    plugin: None, tmp_path: Path
) -> None:
    assert "nearest-centroid" in kinds.available_kinds()  # discovered through the entry point, not imported
    recipe = load_recipe(_recipe(tmp_path, sharpness=8.0))
    assert type(recipe.model).__name__ == "CentroidSettings" and recipe.model.sharpness == 8.0

    run_dir = train(recipe)  # a one-shot fit through the ordinary run machinery
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        ["data_report.json", "fingerprints.json", "history.json", "manifest.json", "metrics.json", "model",
         "predictions.parquet", "recipe.yaml", "report.html", "splits"]
    )  # fmt: skip
    metrics = yaml.safe_load((run_dir / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.95  # the classes share no sentiment word: nearly separable

    _, again = evaluate(run_dir)  # re-scores the saved splits through the kind's loader
    assert again["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])

    clf = load(run_dir)
    assert [p["label"] for p in clf.predict(["a superb and lovely film", "dull tedious plot"])] == ["pos", "neg"]

    out = tmp_path / "pred.csv"
    pd.DataFrame({"text": ["great fun", "boring"]}).to_csv(tmp_path / "in.csv", index=False)
    result = CliRunner().invoke(cli_app, ["predict", str(run_dir), "-i", str(tmp_path / "in.csv"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["pred"].tolist() == ["pos", "neg"]

    plain = create_app(lambda: load(run_dir), ServeConfig(max_wait_ms=2.0))

    async def ask_plain() -> tuple[int, dict]:
        async with running(plain) as client:
            r = await client.post("/v1/predict", json={"texts": ["brilliant and moving"]})
            return r.status_code, r.json()

    status, body = run(ask_plain())
    assert status == 200 and body["predictions"][0]["label"] == "pos"

    reg = make_registry(tmp_path, run_dir)  # register (the kind's own artefact check) + promote v1
    assert reg.resolve("demo", "production").version == 1
    key = reg.create_key(["predict"])
    app = production_app(reg)

    async def ask_production() -> tuple[int, dict]:
        async with running(app) as client:
            r = await client.post("/v1/predict", json={"texts": ["terrible and bland"]}, headers=bearer(key))
            return r.status_code, r.json()

    status, body = run(ask_production())
    assert status == 200 and body["predictions"][0]["label"] == "neg"


def test_a_plugin_kind_validates_its_own_section_and_its_artefacts(plugin: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.backbone is only used with model.type 'hf-encoder'"):
        load_recipe(_recipe(tmp_path, backbone="bundled:minilm-l6"))
    with pytest.raises(ConfigError, match="model.sharpness"):
        load_recipe(_recipe(tmp_path, sharpness=-1))
    run_dir = train(load_recipe(_recipe(tmp_path)))
    (run_dir / "model" / "centroids.json").unlink()
    with pytest.raises(RegistryError, match="no centroids.json"):
        make_registry(tmp_path, run_dir)


def test_unknown_kinds_are_named_with_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.type 'nearest-centroid' is not a registered model kind.*hf-encoder"):
        load_recipe(_recipe(tmp_path))
