"""The HTML report: self-contained, escaped, one figure per section, robust to missing data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.evaluation.metrics import compute_metrics
from modelyard.evaluation.report import MAX_MISTAKES, write_report

SCRIPT = "<script>alert(1)</script>"
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"
ALL_FIGURES = 5  # learning curves, confusion matrix, ROC, precision-recall, reliability
HISTORY = [
    {
        "epoch": e,
        "train_loss": 0.9 / e,
        "valid_loss": 1.0 / e,
        "valid_accuracy": 0.6 + 0.1 * e,
        "valid_macro_f1": 0.5 + 0.1 * e,
    }
    for e in (1, 2, 3)
]
STEPS = [
    {"step": s, "epoch": s / 100, "loss": 1.0 / (1 + s / 50), "lr": 4e-5 * (1 - s / 400)} for s in range(10, 310, 10)
]
INFO = {
    "run_id": "run-001",
    "backbone": "tiny-bert",
    "wall_time_s": 12.5,
    "device": "cpu",
    "data": "bundled:中文",
}


def _predictions(labels: list[str], n_per_split: int = 120, seed: int = 0, splits=("valid", "test")) -> pd.DataFrame:
    """Synthetic predictions; every text is unique and no text is a prefix of another."""
    rng = np.random.default_rng(seed)
    k = len(labels)
    frames = []
    for split in splits:
        y = rng.integers(0, k, size=n_per_split)
        logits = rng.normal(size=(n_per_split, k))
        logits[np.arange(n_per_split), y] += 1.0
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        frame = pd.DataFrame(
            {
                "split": split,
                "text": [f"{split}样本<{i:04d}>" for i in range(n_per_split)],
                "label": [labels[i] for i in y],
                "pred": [labels[i] for i in probs.argmax(axis=1)],
                "confidence": probs.max(axis=1),
            }
        )
        for j, label in enumerate(labels):
            frame[f"prob_{label}"] = probs[:, j]
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    # Put the script text on the most confident test mistake so it must appear in the table.
    wrong = df[(df["split"] == df["split"].iloc[-1]) & (df["label"] != df["pred"])]
    df.loc[wrong["confidence"].idxmax(), "text"] = f"evil {SCRIPT}"
    return df


def _metrics(df: pd.DataFrame, labels: list[str]) -> dict:
    out = {}
    for split, frame in df.groupby("split", sort=False):
        y = frame["label"].map({label: i for i, label in enumerate(labels)}).to_numpy()
        probs = frame[[f"prob_{label}" for label in labels]].to_numpy()
        out[split] = compute_metrics(y, probs, labels)
    return out


def _write(tmp_path: Path, labels: list[str], df: pd.DataFrame, history=HISTORY, steps=STEPS, name="report.html"):
    path = write_report(
        tmp_path / name,
        title="Report <b>title</b>",
        metrics=_metrics(df, labels) if len(df) else {},
        labels=labels,
        history=history,
        steps=steps,
        predictions=df,
        info=INFO,
    )
    return path, path.read_text(encoding="utf-8")


def _figure_count(html: str) -> int:
    return html.count("<svg") + html.count("data:image/png;base64")


def _assert_self_contained(html: str) -> None:
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.IGNORECASE)
    assert not re.search(r"<script\b", html, re.IGNORECASE)  # no JavaScript at all, inline or remote
    assert not re.search(r"<link\b", html, re.IGNORECASE)
    assert "@import" not in html
    assert not re.search(r"""url\(\s*["']?(?!#)""", html)  # only in-document references like url(#clip)


@pytest.fixture(scope="module")
def chinese_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, pd.DataFrame, list[str]]:
    labels = ["正面", "负面", "中性"]
    df = _predictions(labels)
    path, html = _write(tmp_path_factory.mktemp("zh"), labels, df)
    return path, html, df, labels


def test_chinese_multiclass_report(chinese_report) -> None:
    path, html, df, labels = chinese_report
    assert path.is_file()
    assert '<meta charset="utf-8">' in html
    _assert_self_contained(html)
    assert _figure_count(html) == ALL_FIGURES
    assert "data:image/png;base64" not in html  # figures are vector SVG
    for label in labels:
        assert f"<th>{label}</th>" in html  # per-class table, raw UTF-8
    assert "Report &lt;b&gt;title&lt;/b&gt;" in html
    assert "run-001" in html and "bundled:中文" in html
    for heading in ("Accuracy", "Macro-F1", "Micro-F1", "Weighted-F1", "ROC-AUC", "Log loss", "ECE"):
        assert f"<th>{heading}</th>" in html
    assert "<th>valid</th>" in html and "<th>test</th>" in html
    assert "no training history" not in html.lower()


def test_user_text_is_escaped(chinese_report) -> None:
    _, html, _, _ = chinese_report
    assert ESCAPED_SCRIPT in html
    assert SCRIPT not in html


def test_most_confident_mistakes_in_order(chinese_report) -> None:
    _, html, df, _ = chinese_report
    test = df[df["split"] == "test"]
    wrong = test[test["label"] != test["pred"]].sort_values("confidence", ascending=False)
    assert len(wrong) > MAX_MISTAKES  # the fixture must exercise the cut-off
    # Texts contain "<", so they appear escaped in the HTML.
    rendered = [str(t).replace("<", "&lt;").replace(">", "&gt;") for t in wrong["text"]]
    positions = [html.find(text) for text in rendered[:MAX_MISTAKES]]
    assert all(p >= 0 for p in positions)
    assert positions == sorted(positions)
    for text in rendered[MAX_MISTAKES:]:
        assert text not in html
    # Mistakes come from the test split only.
    assert "valid样本" not in html
    assert html.count('<tr class="mistake">') == MAX_MISTAKES


def test_binary_report(tmp_path: Path) -> None:
    labels = ["neg", "pos"]
    df = _predictions(labels, seed=1)
    _, html = _write(tmp_path, labels, df)
    _assert_self_contained(html)
    assert _figure_count(html) == ALL_FIGURES
    assert "positive class pos" in html  # one ROC / PR curve, for labels[1]
    assert ESCAPED_SCRIPT in html and SCRIPT not in html


def test_no_history_says_so(tmp_path: Path) -> None:
    labels = ["a", "b", "c"]
    df = _predictions(labels, seed=2, splits=("eval",))
    _, html = _write(tmp_path, labels, df, history=[], steps=[])
    assert "no training history" in html.lower()
    assert _figure_count(html) == ALL_FIGURES - 1
    assert "<th>eval</th>" in html  # arbitrary split names in the metrics table
    assert "<strong>eval</strong>" in html  # figures fall back to the only split present


def test_all_correct_and_single_class(tmp_path: Path) -> None:
    labels = ["a", "b", "c"]
    df = _predictions(labels, seed=3, splits=("test",))
    df["label"] = "a"
    df["pred"] = "a"
    df["prob_a"], df["prob_b"], df["prob_c"] = 0.9, 0.05, 0.05
    df["confidence"] = 0.9
    _, html = _write(tmp_path, labels, df)
    assert "No mistakes" in html
    assert "only one class" in html  # ROC and PR are undefined and say so
    assert _figure_count(html) == ALL_FIGURES - 2


def test_many_classes_and_awkward_labels(tmp_path: Path) -> None:
    labels = [f"${i}" if i % 2 else f"_class {i}" for i in range(30)]
    df = _predictions(labels, n_per_split=300, seed=4, splits=("test",))
    _, html = _write(tmp_path, labels, df, history=[], steps=STEPS)
    assert _figure_count(html) == ALL_FIGURES
    assert "less frequent class(es)" in html  # legend capped


def test_no_predictions_and_no_metrics(tmp_path: Path) -> None:
    empty = pd.DataFrame(columns=["split", "text", "label", "pred", "confidence"])
    _, html = _write(tmp_path, ["a", "b"], empty, history=[], steps=[])
    assert "no training history" in html.lower()
    assert "No predictions" in html and "No metrics" in html
    assert _figure_count(html) == 0


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    labels = ["a", "b"]
    df = _predictions(labels, n_per_split=30, seed=5)
    target = tmp_path / "out" / "report.html"
    target.parent.mkdir()
    target.write_text("old", encoding="utf-8")
    path = write_report(target, title="t", metrics={}, labels=labels, history=[], steps=[], predictions=df, info={})
    assert path == target and path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temp file left behind


def test_unknown_label_is_rejected(tmp_path: Path) -> None:
    df = _predictions(["a", "b"], n_per_split=10, seed=6)
    df.loc[df.index[-1], "label"] = "zzz"  # a test row: the figures use the test split
    with pytest.raises(ValueError, match="zzz"):
        write_report(
            tmp_path / "r.html",
            title="t",
            metrics={},
            labels=["a", "b"],
            history=[],
            steps=[],
            predictions=df,
            info={},
        )
    assert not list(tmp_path.iterdir())


def test_missing_or_broken_probabilities_degrade_to_notes(tmp_path: Path) -> None:
    labels = ["a", "b"]
    df = _predictions(labels, n_per_split=30, seed=7, splits=("test",))
    kwargs = {"title": "t", "metrics": {}, "labels": labels, "history": [], "steps": [], "info": {}}
    html = write_report(tmp_path / "a.html", predictions=df.drop(columns=["prob_b"]), **kwargs).read_text("utf-8")
    assert "missing prob_b" in html
    assert _figure_count(html) == 1  # the confusion matrix needs only label and pred
    df.loc[df.index[0], "prob_a"] = np.nan
    html = write_report(tmp_path / "b.html", predictions=df, **kwargs).read_text("utf-8")
    assert "missing or infinite" in html
    assert _figure_count(html) == 1


def test_stage_sections_are_added_once_and_replaced(tmp_path: Path) -> None:
    from modelyard.evaluation.report import STAGE_SECTIONS_MARKER, add_stage_section

    labels = ["neg", "pos"]
    path, html = _write(tmp_path, labels, _predictions(labels, seed=1))
    assert STAGE_SECTIONS_MARKER in html
    page = (
        "<html><head><style>x</style></head><body><h1>Stage</h1><h2>table</h2>"
        "<table><tr><td>1</td></tr></table></body></html>"
    )
    assert add_stage_section(path, "compression", "Compression <b>", page, link="compression.html")
    once = path.read_text(encoding="utf-8")
    assert once.count('<section id="stage-compression">') == 1
    assert "<h2>Compression &lt;b&gt;</h2>" in once and "<h3>table</h3>" in once and "<h1>Stage</h1>" not in once
    assert '<a href="compression.html">' in once and "<style>x</style>" not in once
    # sections go before the footer, in the order the stages ran; a re-run replaces its own section
    assert add_stage_section(path, "tuning", "Tuning", page.replace("1", "two"))
    assert add_stage_section(path, "compression", "Compression", page.replace("1", "three"))
    final = path.read_text(encoding="utf-8")
    assert final.count('id="stage-compression"') == 1 and "<td>three</td>" in final and "<td>1</td>" not in final
    assert final.index('id="stage-compression"') < final.index('id="stage-tuning"') < final.index(STAGE_SECTIONS_MARKER)
    assert final.count("</body>") == 1
    # no report, or a key that is not a slug: nothing written
    assert not add_stage_section(tmp_path / "missing.html", "x", "X", page)
    assert not add_stage_section(path, "bad key", "X", page)
