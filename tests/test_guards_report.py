"""Guard: every number report.html shows is the number in metrics.json, in the right row and column.

A real run (a one-shot ``tfidf-logreg`` fit and a from-scratch ``textcnn`` trained by the loop, the two ways a run
writes its report) on a 3-class task the models get only ~70-75% right, so the per-class cells and the off-diagonal
confusion counts are all different numbers. The valid and test splits have different sizes and scores, so a report
that swapped them (or showed one split twice) fails.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from modelyard.config import load_recipe
from modelyard.training.run import train

LABELS = ["alpha", "beta", "gamma"]
CUES = {"alpha": ["sunny", "bright", "warm"], "beta": ["rainy", "wet", "grey"], "gamma": ["snowy", "icy", "cold"]}
FILLER = ["today", "the", "weather", "was", "quite", "in", "town", "very", "and", "morning"]
MODELS: dict[str, dict[str, Any]] = {
    "tfidf-logreg": {"type": "tfidf-logreg", "tfidf": {"analyzer": "word", "min_df": 1}},
    "textcnn": {
        "type": "textcnn",
        "max_length": 32,
        "tokenizer": {"type": "wordpiece", "vocab_size": 200, "min_frequency": 1},
        "arch": {"embedding_dim": 16, "num_filters": 16, "dropout": 0.1},
    },
}


def noisy_weather(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Texts whose one cue word names the true class 75% of the time (else a random class): errors guaranteed."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        cue = label if rng.random() < 0.75 else rng.choice(LABELS)
        words = rng.sample(FILLER, rng.randint(3, 6))
        words.insert(rng.randint(0, len(words)), rng.choice(CUES[cue]))
        rows.append({"text": " ".join(words) + f" n{i}", "label": label})
    return pd.DataFrame(rows)


class _ReportParser(HTMLParser):
    """Tables (with the h2/h3 heading above them) and the SVG ``<text>`` elements of each h2 section."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.section: str | None = None  # id of the current <h2>
        self.heading = ""  # text of the last <h2>/<h3>
        self.tables: list[dict[str, Any]] = []
        self.svg_texts: dict[str, list[tuple[float, float, str]]] = {}
        self._capture: str | None = None  # "heading" | "cell" | "svgtext"
        self._buf: list[str] = []
        self._row: list[str] | None = None
        self._xy: tuple[float, float] = (0.0, 0.0)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "h2":
            self.section = a.get("id")
        if tag in ("h2", "h3"):
            self._capture, self._buf = "heading", []
        elif tag == "table":
            self.tables.append({"section": self.section, "heading": self.heading, "rows": []})
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._capture, self._buf = "cell", []
        elif tag == "text":
            self._capture, self._buf = "svgtext", []
            self._xy = (float(a.get("x") or 0.0), float(a.get("y") or 0.0))

    def handle_data(self, data: str) -> None:
        if self._capture:
            self._buf.append(data)

    def handle_endtag(self, tag: str) -> None:
        text = "".join(self._buf).strip()
        if tag in ("h2", "h3") and self._capture == "heading":
            self.heading, self._capture = text, None
        elif tag in ("td", "th") and self._capture == "cell" and self._row is not None:
            self._row.append(text)
            self._capture = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1]["rows"].append(self._row)
            self._row = None
        elif tag == "text" and self._capture == "svgtext":
            self.svg_texts.setdefault(self.section or "", []).append((*self._xy, text))
            self._capture = None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _assert_shown(cell: str, value: Any, where: str) -> None:
    """``cell`` is ``value`` as the report rounds it: integers exactly, floats to the decimals the cell shows."""
    if value is None:
        assert cell in ("—", "-", ""), f"{where}: {cell!r} shown for an undefined value"
        return
    if isinstance(value, int):
        assert cell == str(value), f"{where}: report {cell!r} != metrics.json {value}"
        return
    assert re.fullmatch(r"-?\d+\.\d+", cell), f"{where}: {cell!r} is not a decimal number"
    decimals = len(cell.split(".")[1])
    assert decimals >= 3, f"{where}: {cell!r} is rounded too coarsely to check"
    assert abs(float(cell) - value) <= 0.5 * 10**-decimals + 1e-12, f"{where}: report {cell} != metrics.json {value}"


def _confusion_from_svg(texts: list[tuple[float, float, str]], labels: list[str]) -> list[list[int]]:
    """Counts by (true, predicted) label, each cell placed by the tick labels drawn on the axes."""
    ticks = {lab: [(x, y) for x, y, t in texts if t == lab] for lab in labels}
    assert all(len(v) == 2 for v in ticks.values()), ticks  # one x tick and one y tick per label
    x_of = {lab: max(v, key=lambda p: p[1])[0] for lab, v in ticks.items()}  # x ticks sit below the grid
    y_of = {lab: min(v, key=lambda p: p[0])[1] for lab, v in ticks.items()}  # y ticks sit left of it
    cells = [(x, y, int(t)) for x, y, t in texts if re.fullmatch(r"\d+", t)]
    assert len(cells) == len(labels) ** 2, cells
    out = [[-1] * len(labels) for _ in labels]
    for x, y, count in cells:
        col = min(range(len(labels)), key=lambda j: abs(x - x_of[labels[j]]))
        row = min(range(len(labels)), key=lambda i: abs(y - y_of[labels[i]]))
        assert out[row][col] == -1, f"two counts in cell ({labels[row]}, {labels[col]})"
        out[row][col] = count
    return out


@pytest.fixture(autouse=True, scope="module")
def _tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """textcnn caches its trained tokenizer under $MODELYARD_CACHE: keep it out of the home folder."""
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_CACHE", str(tmp_path_factory.mktemp("modelyard_cache")))
        yield
    torch.set_num_threads(threads)  # num_threads: 1 below is process-wide


@pytest.fixture(scope="module", params=list(MODELS))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp(f"report-{request.param}")
    noisy_weather().to_csv(tmp / "weather.csv", index=False)
    recipe = {
        "name": "report-guard",
        "data": {"path": str(tmp / "weather.csv"), "valid_size": 0.25, "test_size": 0.2, "seed": 3},
        "model": MODELS[request.param],
        "train": {
            "epochs": 3,
            "batch_size": 16,
            "learning_rate": 1e-2,
            "warmup_ratio": 0.0,
            "seed": 7,
            "num_threads": 1,
        },
        "output_dir": str(tmp / "runs"),
    }
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return train(load_recipe(tmp / "recipe.yaml"))


@pytest.fixture(scope="module")
def parsed(run: Path) -> tuple[dict[str, Any], _ReportParser]:
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    parser = _ReportParser()
    parser.feed((run / "report.html").read_text(encoding="utf-8"))
    # Preconditions that make a valid/test swap visible.
    assert set(metrics) == {"valid", "test"}
    assert (metrics["valid"]["n"], metrics["test"]["n"]) == (75, 60)
    assert metrics["valid"]["accuracy"] != metrics["test"]["accuracy"]
    assert 0.5 < metrics["test"]["accuracy"] < 0.95  # imperfect: off-diagonal counts exist
    return metrics, parser


def test_headline_table_equals_metrics_json(parsed: tuple[dict[str, Any], _ReportParser]) -> None:
    metrics, parser = parsed
    (table,) = [t for t in parser.tables if t["section"] == "metrics"]
    header, *rows = table["rows"]
    assert header[0] == "split"
    by_norm = {_norm(k): k for k in metrics["test"]}
    keys = [by_norm[_norm(h)] for h in header[1:]]  # every column shown is a metrics.json key
    assert {"accuracy", "macro_f1", "micro_f1", "weighted_f1", "log_loss", "n"} <= set(keys), keys
    assert sorted(r[0] for r in rows) == ["test", "valid"]
    for split, *cells in rows:
        assert len(cells) == len(keys)
        for key, cell in zip(keys, cells, strict=True):
            _assert_shown(cell, metrics[split][key], f"headline {split}/{key}")


def test_per_class_tables_equal_metrics_json(parsed: tuple[dict[str, Any], _ReportParser]) -> None:
    metrics, parser = parsed
    tables = [t for t in parser.tables if t["section"] == "per-class"]
    assert [t["heading"] for t in tables] == ["valid", "test"]
    for table in tables:
        split = table["heading"]
        header, *rows = table["rows"]
        assert [_norm(h) for h in header] == ["label", "precision", "recall", "f1", "support"]
        assert [r[0] for r in rows] == LABELS
        for label, *cells in rows:
            expected = metrics[split]["per_class"][label]
            for key, cell in zip(("precision", "recall", "f1", "support"), cells, strict=True):
                _assert_shown(cell, expected[key], f"per-class {split}/{label}/{key}")
    # the two splits' tables differ, so showing one split's numbers under the other's heading is caught
    assert tables[0]["rows"] != tables[1]["rows"]


def test_confusion_matrix_counts_equal_metrics_json(run: Path, parsed: tuple[dict[str, Any], _ReportParser]) -> None:
    metrics, parser = parsed
    texts = parser.svg_texts["confusion"]
    titles = [t for _, _, t in texts if t.startswith("Confusion matrix")]
    assert titles == [f"Confusion matrix (test, n = {metrics['test']['n']})"]
    assert {"True label", "Predicted label"} <= {t for _, _, t in texts}
    shown = _confusion_from_svg(texts, LABELS)
    assert shown == metrics["test"]["confusion_matrix"]
    assert shown != metrics["valid"]["confusion_matrix"]
    assert sum(shown[i][j] for i in range(3) for j in range(3) if i != j) > 0
    # and metrics.json's matrices are the counts of predictions.parquet (rows = true, columns = predicted)
    predictions = pd.read_parquet(run / "predictions.parquet")
    for split in ("valid", "test"):
        frame = predictions[predictions["split"] == split]
        counts = pd.crosstab(frame["label"], frame["pred"]).reindex(index=LABELS, columns=LABELS, fill_value=0)
        assert counts.to_numpy().tolist() == metrics[split]["confusion_matrix"], split
