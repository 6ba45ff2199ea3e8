"""``modelyard compare``: several recipes on the identical split → leaderboard.md/.json/.html."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from modelyard.cli import app

from .test_chinese import synthetic_zh


@pytest.fixture(autouse=True, scope="module")
def _tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Trained tokenizers are cached under $MODELYARD_CACHE: keep this module's out of the home folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_CACHE", str(tmp_path_factory.mktemp("modelyard_cache")))
        yield


runner = CliRunner()


def _recipe(tmp_path: Path, name: str, model: dict, clean: dict | None = None) -> Path:
    recipe = {
        "name": name,
        "data": {
            "path": "unused.csv",  # --data replaces it
            "valid_size": 0.2,
            "test_size": 0.2,
            "seed": 5,
            "clean": {"chinese": clean or {}},
        },
        "model": {"max_length": 32, **model},
        "train": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-2, "num_threads": 1, "metric": "accuracy"},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def test_compare_writes_a_leaderboard_on_one_split(tmp_path: Path) -> None:
    data = tmp_path / "zh.csv"
    synthetic_zh(200).to_csv(data, index=False)
    tfidf = _recipe(tmp_path, "tfidf", {"type": "tfidf-logreg", "tfidf": {"min_df": 1}})
    # a word-level model: its own cleaning segments with jieba, on the same rows
    words = _recipe(tmp_path, "tfidf-words", {"type": "tfidf-logreg", "tfidf": {"analyzer": "word", "min_df": 1}},
                    clean={"segment": "jieba"})  # fmt: skip
    cnn = _recipe(
        tmp_path,
        "cnn",
        {
            "type": "textcnn",
            "tokenizer": {"type": "char", "vocab_size": 200, "min_frequency": 1},
            "arch": {"embedding_dim": 16, "num_filters": 16},
        },
    )
    out = tmp_path / "board"
    result = runner.invoke(
        app,
        ["compare", str(tfidf), str(words), str(cnn), "--data", str(data), "-o", str(out), "--latency-texts", "5"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out / "leaderboard.md")
    board = json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))
    assert {r["model"] for r in board["rows"]} == {"tfidf", "tfidf-words", "cnn"}
    assert board["split_sizes"] == {"train": 120, "valid": 40, "test": 40}
    for row in board["rows"]:
        assert 0 <= row["accuracy"] <= 1 and row["parameters"] > 0 and row["size_mb"] > 0
        assert row["latency_p50_ms"] > 0 and row["train_time_s"] >= 0
    f1 = [r["macro_f1"] for r in board["rows"]]
    assert f1 == sorted(f1, reverse=True)

    # identical rows in every run's test split; the word model saw them segmented
    tests = {r["model"]: pd.read_parquet(Path(r["run_dir"]) / "splits" / "test.parquet") for r in board["rows"]}
    assert list(tests["tfidf"]["label"]) == list(tests["cnn"]["label"])
    assert list(tests["tfidf"]["text"]) == list(tests["cnn"]["text"])
    assert [t.replace(" ", "") for t in tests["tfidf-words"]["text"]] == [
        t.replace(" ", "") for t in tests["tfidf"]["text"]
    ]
    assert any(" " in t for t in tests["tfidf-words"]["text"])

    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "| model | type | test accuracy | test macro-F1 |" in md and md.count("\n| ") >= 4
    page = (out / "leaderboard.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and page.count("<tr>") == 4


def test_compare_bad_recipe_is_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["compare", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "recipe not found" in result.output
