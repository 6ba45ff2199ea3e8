"""The shipped multi-label recipe and its data script: examples/make_shopping_baskets.py writes a well-formed,
deterministic composition of real online_shopping_10_cats reviews (read in place from ``../shared/data``), in
both layouts, and examples/chinese_multilabel.yaml validates and trains on a shrunk copy of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from modelyard.config import load_recipe
from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "make_shopping_baskets.py"
RECIPE = ROOT / "examples" / "chinese_multilabel.yaml"
SHOPPING = SHARED / "online_shopping_10_cats.zip"
CATEGORIES = ["书籍", "平板", "手机", "水果", "洗发水", "热水器", "蒙牛", "衣服", "计算机", "酒店"]
needs_zip = pytest.mark.skipif(not SHOPPING.is_file(), reason=f"{SHOPPING} is not present")


def _make(out: Path, *args: str) -> Path:
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--source", str(SHOPPING), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == str(out) and out.is_file()
    return out


def test_the_shipped_recipe_validates_without_its_data() -> None:
    recipe = load_recipe(RECIPE)  # runs/data/shopping_baskets.csv need not exist (a clean clone)
    assert recipe.task == "multi-label-classification" and recipe.model.type == "tfidf-logreg"
    assert recipe.data.label_column == "labels" and recipe.data.label_separator == "|"
    assert recipe.resolve(recipe.data.path).resolve() == (ROOT / "runs" / "data" / "shopping_baskets.csv").resolve()
    assert recipe.data.clean.chinese is not None and recipe.data.clean.chinese.traditional_to_simplified


@needs_zip
def test_baskets_are_well_formed_and_deterministic(tmp_path: Path) -> None:
    a = _make(tmp_path / "a.csv", "--rows", "400", "--seed", "7")
    b = _make(tmp_path / "b.csv", "--rows", "400", "--seed", "7")
    c = _make(tmp_path / "c.csv", "--rows", "400", "--seed", "8")
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    frame = pd.read_csv(a, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["text", "labels"] and len(frame) == 400
    sets = [s.split("|") for s in frame["labels"]]
    assert all(1 <= len(s) <= 3 and len(set(s)) == len(s) and s == sorted(s) for s in sets)
    assert {lb for s in sets for lb in s} == set(CATEGORIES)  # the rare categories appear too
    sizes = pd.Series([len(s) for s in sets]).value_counts(normalize=True)
    assert 0.4 < sizes[1] < 0.6 and 0.25 < sizes[2] < 0.45 and 0.08 < sizes[3] < 0.22
    assert frame["text"].is_unique and (frame["text"].str.strip() != "").all()
    assert not list(tmp_path.glob(".*"))  # the atomic write left no temporary file

    cols = pd.read_csv(_make(tmp_path / "cols.csv", "--rows", "400", "--seed", "7", "--layout", "columns"))
    assert list(cols.columns) == ["text", *CATEGORIES] and cols["text"].tolist() == frame["text"].tolist()
    assert [sorted(c for c in CATEGORIES if row[c] == 1) for _, row in cols.iterrows()] == sets


@needs_zip
def test_the_shipped_recipe_trains_on_a_shrunk_copy(tmp_path: Path) -> None:
    from modelyard.training.run import train

    data = _make(tmp_path / "baskets.csv", "--rows", "600")
    recipe = load_recipe(RECIPE, [f"data.path={data}", f"output_dir={tmp_path / 'runs'}"])
    run = train(recipe)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["micro_f1"] > 0.5 and len(metrics["test"]["per_label"]) == len(CATEGORIES)
