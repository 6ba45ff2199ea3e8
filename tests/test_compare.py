"""``modelyard compare``: several recipes on the identical split → leaderboard.md/.json/.html."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
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
HOSTILE = "<script>alert(1)</script>"


class _Table(HTMLParser):
    """The text of every ``<td>`` cell of a page, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(page: str) -> list[list[str]]:
    """Rows of ``<td>`` texts (header rows, which hold only ``<th>``, are dropped)."""
    parser = _Table()
    parser.feed(page)
    return [row for row in parser.rows if row]


def assert_rows_show_the_json(page: str, board: dict) -> None:
    """Every leaderboard cell is its leaderboard.json value, rounded as displayed."""
    rows = table_rows(page)
    assert len(rows) == len(board["rows"])
    for cells, row in zip(rows, board["rows"], strict=True):
        model, kind, accuracy, macro_f1, train_time, parameters, size_mb, latency = cells
        assert (model, kind) == (row["model"], row["type"])
        assert accuracy == f"{row['accuracy']:.4f}" and macro_f1 == f"{row['macro_f1']:.4f}"
        assert int(parameters.replace(",", "")) == row["parameters"]
        timed = [(train_time, row["train_time_s"]), (size_mb, row["size_mb"]), (latency, row["latency_p50_ms"])]
        for text, value in timed:
            decimals = len(text.split(".")[1])  # 1 decimal from 1 up, 3 below
            assert decimals == (1 if value >= 1 else 3)
            assert float(text) == pytest.approx(value, abs=0.51 * 10**-decimals)


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
        # max_length is a key of the neural model types only (tfidf-logreg rejects it)
        "model": model if model["type"] == "tfidf-logreg" else {"max_length": 32, **model},
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
    assert_rows_show_the_json(page, board)
    assert page.count("<svg") == 1  # the score chart, drawn by the evaluation report's figure helpers


def test_leaderboard_html_escapes_names_and_shows_the_json_numbers(tmp_path: Path) -> None:
    from modelyard._internal.io import read_json, write_json
    from modelyard.ops.compare import render_html

    row = {"type": "tfidf-logreg", "parameters": 1234567, "train_time_s": 12.34, "size_mb": 0.0421}
    board = {
        "data": f"bundled:{HOSTILE}",
        "split_sizes": {"train": 120, "valid": 40, "test": 40},
        "labels": ["a", HOSTILE],
        "latency_texts": 5,
        "rows": [
            row | {"model": HOSTILE, "accuracy": 0.87654, "macro_f1": 0.86543, "latency_p50_ms": 0.1234},
            row | {"model": "plain", "accuracy": 0.5, "macro_f1": 1 / 3, "latency_p50_ms": 7.25, "parameters": 12},
        ],
    }
    write_json(tmp_path / "leaderboard.json", board)
    board = read_json(tmp_path / "leaderboard.json")
    page = render_html(board)
    assert "<script" not in page and "alert(1)</" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 2  # data path + table cell
    chart = page.split("<svg", 1)[1]
    assert "&lt;script&gt;alert(1)&lt;/scrip…</text>" in chart  # the chart's tick label, truncated
    bar_labels = re.findall(r">(\d\.\d{4})</text>", chart)
    assert sorted(bar_labels) == sorted(f"{r[k]:.4f}" for r in board["rows"] for k in ("accuracy", "macro_f1"))
    assert_rows_show_the_json(page, board)
    assert table_rows(page)[0][:4] == [HOSTILE, "tfidf-logreg", "0.8765", "0.8654"]
    assert table_rows(page)[1][4:] == ["12.3", "12", "0.042", "7.2"]


def test_compare_bad_recipe_is_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["compare", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "recipe not found" in result.output
