"""Multi-label text classification (issue #19 item 2): recipe keys, data layouts and split, metrics, TF-IDF path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.config import DataConfig
from modelyard.config.recipe import recipe_from_dict
from modelyard.data import label_sets, multi_hot, prepare_multilabel
from modelyard.errors import ConfigError, DataError

LABELS = ["food", "music", "sports", "tech"]
KEYWORDS = {"food": "pizza", "music": "guitar", "sports": "football", "tech": "laptop"}
FILLER = "the a today really some about my we they this was very new old good bad with and for".split()  # noqa: SIM905


def toy_rows(n: int = 400, seed: int = 0) -> list[tuple[str, tuple[str, ...]]]:
    """Texts of filler words plus one keyword per label of the row (1-2 labels each, some with none)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = int(rng.choice([0, 1, 1, 1, 2, 2]))
        chosen = tuple(sorted(rng.choice(LABELS, size=k, replace=False).tolist())) if k else ()
        words = rng.choice(FILLER, size=8).tolist() + [KEYWORDS[lb] for lb in chosen]
        rng.shuffle(words)
        rows.append((" ".join(words) + f" #{i}", chosen))
    return rows


def write_delimited(path: Path, rows, sep: str = "|") -> Path:
    pd.DataFrame({"text": [t for t, _ in rows], "tags": [sep.join(s) for _, s in rows]}).to_csv(path, index=False)
    return path


def write_columns(path: Path, rows) -> Path:
    frame = pd.DataFrame({"text": [t for t, _ in rows]})
    for lb in LABELS:
        frame[lb] = [int(lb in s) for _, s in rows]
    frame.to_csv(path, index=False)
    return path


def recipe(**data) -> dict:
    return {"task": "multi-label-classification", "model": {"type": "tfidf-logreg"}, "data": {"path": "x.csv", **data}}


# ---------------------------------------------------------------- config


def test_recipe_accepts_multi_label_task_and_keys():
    r = recipe_from_dict(recipe(label_column="tags", label_separator="|"))
    assert r.task == "multi-label-classification" and r.data.label_separator == "|"
    r = recipe_from_dict(recipe(label_columns=["a", "b"]))
    assert r.data.label_columns == ["a", "b"]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (recipe(label_columns=["a"]), "data.label_columns"),
        (recipe(label_columns=["a", "a"]), "data.label_columns"),
        (recipe(label_columns=["text", "a"]), "data.label_columns"),
        (recipe(label_separator=""), "data.label_separator"),
        ({"data": {"path": "x.csv", "label_columns": ["a", "b"]}}, "data.label_columns"),
        ({"data": {"path": "x.csv", "label_separator": "|"}}, "data.label_separator"),
        ({**recipe(), "model": {"type": "prompt"}}, "model.type"),
        (recipe(sample=100), "data.sample"),
        ({**recipe(), "train": {"label_smoothing": 0.1}}, "train.label_smoothing"),
        ({**recipe(), "train": {"rdrop_alpha": 1.0}}, "train.rdrop_alpha"),
        ({**recipe(), "train": {"metric": "log_loss"}}, "train.metric"),
        ({"data": {"path": "x.csv"}, "train": {"metric": "samples_f1"}}, "train.metric"),
    ],
)
def test_recipe_errors_name_the_field(raw, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        recipe_from_dict(raw)


# ---------------------------------------------------------------- data


def test_both_layouts_give_identical_splits(tmp_path):
    rows = toy_rows()
    a = prepare_multilabel(
        DataConfig(path=str(write_delimited(tmp_path / "d.csv", rows)), label_column="tags"), tmp_path
    )
    b = prepare_multilabel(
        DataConfig(path=str(write_columns(tmp_path / "c.csv", rows)), label_columns=LABELS), tmp_path
    )
    assert a.labels == b.labels == LABELS
    assert a.report["label_separator"] == "|" and b.report["layout"] == "columns"
    # an empty cell is a missing label (dropped); all-zero 0/1 cells are the empty set (kept)
    assert a.report["dropped"]["missing_label"] == b.report["empty_label_sets"] > 0
    # identical when no row has an empty label set
    rows = [r for r in rows if r[1]]
    a = prepare_multilabel(
        DataConfig(path=str(write_delimited(tmp_path / "d2.csv", rows)), label_column="tags"), tmp_path
    )
    b = prepare_multilabel(
        DataConfig(path=str(write_columns(tmp_path / "c2.csv", rows)), label_columns=LABELS), tmp_path
    )
    for name in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))


def test_split_is_stratified_deterministic_and_order_free(tmp_path):
    rows = toy_rows()
    cfg = DataConfig(path=str(write_columns(tmp_path / "c.csv", rows)), label_columns=LABELS)
    a = prepare_multilabel(cfg, tmp_path)
    shuffled = [rows[i] for i in np.random.default_rng(5).permutation(len(rows))]
    b = prepare_multilabel(
        DataConfig(path=str(write_columns(tmp_path / "s.csv", shuffled)), label_columns=LABELS), tmp_path
    )
    for name in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    n = sum(a.report["split_sizes"].values())
    assert abs(a.report["split_sizes"]["valid"] - 0.1 * n) <= 2
    for lb, total in a.report["class_balance"].items():
        for name, share in (("train", 0.8), ("valid", 0.1), ("test", 0.1)):
            assert abs(a.report["class_balance_by_split"][name][lb] - share * total) <= 2, (lb, name)
    assert all(isinstance(s, tuple) for s in a.train["label"])
    assert multi_hot(a.train["label"], a.labels).shape == (len(a.train), 4)


def test_splits_survive_parquet_roundtrip(tmp_path):
    data = prepare_multilabel(
        DataConfig(path=str(write_columns(tmp_path / "c.csv", toy_rows(120))), label_columns=LABELS), tmp_path
    )
    data.train.to_parquet(tmp_path / "train.parquet", index=False)
    back = pd.read_parquet(tmp_path / "train.parquet")
    assert label_sets(back["label"]) == list(data.train["label"])


def test_data_errors(tmp_path):
    rows = toy_rows(60)
    path = write_columns(tmp_path / "c.csv", rows)
    with pytest.raises(DataError, match="no 0/1 label column 'nope'"):
        prepare_multilabel(DataConfig(path=str(path), label_columns=["food", "nope"]), tmp_path)
    frame = pd.read_csv(path)
    frame.loc[3, "food"] = 7
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="'food' holds '7'"):
        prepare_multilabel(DataConfig(path=str(tmp_path / "bad.csv"), label_columns=LABELS), tmp_path)
    few = [(f"text {i}", ("a",) if i else ("a", "b")) for i in range(30)]
    with pytest.raises(DataError, match="'b' \\(1\\)"):
        prepare_multilabel(
            DataConfig(path=str(write_delimited(tmp_path / "f.csv", few)), label_column="tags", label_separator="|"),
            tmp_path,
        )


def test_conflicting_label_sets_are_dropped_and_counted(tmp_path):
    rows = toy_rows(200) + [("same text", ("food",)), ("same text", ("food", "tech"))]
    data = prepare_multilabel(
        DataConfig(path=str(write_delimited(tmp_path / "d.csv", rows)), label_column="tags"), tmp_path
    )
    assert data.report["dropped"]["conflicting_texts"] == 1
    assert "same text" not in set(pd.concat([data.train, data.valid, data.test])["text"])


# ---------------------------------------------------------------- metrics


def _random_case(seed: int, n: int = 200, n_labels: int = 5):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_labels)) < rng.uniform(0.1, 0.6, n_labels)).astype(int)
    p = np.clip(0.35 * y + rng.random((n, n_labels)) * 0.7, 0, 1)
    return y, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn(seed):
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        hamming_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    from modelyard.evaluation.multilabel_metrics import compute_multilabel_metrics, predict_sets

    y, p = _random_case(seed)
    labels = [f"l{j}" for j in range(y.shape[1])]
    thresholds = np.random.default_rng(seed).uniform(0.3, 0.7, y.shape[1])
    m = compute_multilabel_metrics(y, p, labels, thresholds)
    pred = (p >= thresholds).astype(int)
    assert (predict_sets(p, thresholds) == pred).all()
    for avg in ("micro", "macro", "samples", "weighted"):
        assert m[f"{avg}_f1"] == pytest.approx(f1_score(y, pred, average=avg, zero_division=0), abs=1e-12)
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, pred), abs=1e-12)
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    for j, lb in enumerate(labels):
        row = m["per_label"][lb]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (prec[j], rec[j], f1[j], sup[j]), abs=1e-12
        )
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)
    assert m["macro_roc_auc"] == pytest.approx(roc_auc_score(y, p, average="macro"), abs=1e-12)
    import json

    json.dumps(m, allow_nan=False)


def test_auc_undefined_for_a_constant_label_is_none():
    from modelyard.evaluation.multilabel_metrics import compute_multilabel_metrics

    y, p = _random_case(3, n_labels=3)
    y[:, 1] = 0
    m = compute_multilabel_metrics(y, p, ["a", "b", "c"])
    assert m["per_label"]["b"]["roc_auc"] is None and m["per_label"]["a"]["threshold"] == 0.5


def test_thresholds_are_tuned_per_label_on_valid():
    from sklearn.metrics import f1_score

    from modelyard.evaluation.multilabel_metrics import tune_thresholds

    rng = np.random.default_rng(7)
    n = 400
    y = (rng.random((n, 3)) < 0.3).astype(int)
    # label 0 scores are low overall, label 2 high: the best cut-offs differ
    p = np.column_stack(
        [
            0.05 + 0.25 * y[:, 0] + 0.1 * rng.random(n),
            0.2 + 0.5 * y[:, 1] + 0.2 * rng.random(n),
            0.6 + 0.3 * y[:, 2] + 0.1 * rng.random(n),
        ]
    )
    t = tune_thresholds(y, p)
    assert t.shape == (3,) and len(set(np.round(t, 3))) == 3
    assert t[0] < 0.35 and t[2] > 0.65
    for j in range(3):
        tuned = f1_score(y[:, j], p[:, j] >= t[j])
        assert tuned == pytest.approx(1.0)  # separable: the tuned threshold separates perfectly
        # no threshold among the observed scores does better
        best = max(f1_score(y[:, j], p[:, j] >= c) for c in np.unique(p[:, j]))
        assert tuned >= best - 1e-12
    y[:, 1] = 0
    assert tune_thresholds(y, p)[1] == 0.5


def test_tuned_thresholds_maximise_valid_f1_on_noisy_scores():
    from sklearn.metrics import f1_score

    from modelyard.evaluation.multilabel_metrics import tune_thresholds

    y, p = _random_case(11, n=300, n_labels=4)
    t = tune_thresholds(y, p)
    for j in range(4):
        best = max(f1_score(y[:, j], p[:, j] >= c) for c in np.unique(p[:, j]))
        assert f1_score(y[:, j], p[:, j] >= t[j]) == pytest.approx(best, abs=1e-12)


# ---------------------------------------------------------------- TF-IDF path


def _fit_tfidf(tmp_path, rows):
    from rich.console import Console

    from modelyard.kinds import FitContext, get_kind
    from modelyard.training.multilabel import write_multilabel_run

    path = write_columns(tmp_path / "c.csv", rows)
    r = recipe_from_dict(
        {**recipe(label_columns=LABELS), "data": {"path": str(path), "label_columns": LABELS}}, base_dir=tmp_path
    )
    data = prepare_multilabel(r.data, r.base_dir)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ctx = FitContext(r, data, run_dir, run_dir / "model", Console(quiet=True), lambda *_: run_dir)
    result = get_kind("tfidf-logreg").fit(ctx)
    metrics = write_multilabel_run(run_dir, r, "run", 0.0, data, result)
    return data, ctx.model_dir, result, metrics


def test_tfidf_learns_keyword_labels_and_returns_label_sets(tmp_path):
    import json

    from modelyard.kinds import get_kind
    from modelyard.models.tfidf import _check_artifacts

    data, model_dir, result, metrics = _fit_tfidf(tmp_path, toy_rows(500))
    assert result.probs["test"].shape == (len(data.test), 4)
    assert metrics["test"]["micro_f1"] >= 0.9 and metrics["test"]["macro_f1"] >= 0.9
    meta = json.loads((model_dir / "modelyard.json").read_text())
    assert meta["task"] == "multi-label-classification" and set(meta["thresholds"]) == set(LABELS)
    _check_artifacts(model_dir, meta)
    clf = get_kind("tfidf-logreg").load(model_dir, meta)
    out = clf.predict(["we ate pizza and played football", "the weather was very good today"])
    assert out[0]["labels"] == ["food", "sports"]
    assert out[1]["labels"] == []
    assert set(out[0]["scores"]) == set(LABELS) and all(0 <= v <= 1 for v in out[0]["scores"].values())
    # the saved thresholds are the ones the classifier applies
    assert list(clf.thresholds) == [meta["thresholds"][lb] for lb in LABELS]
    assert (
        json.loads((tmp_path / "run" / "metrics.json").read_text())["valid"]["per_label"]["food"]["threshold"]
        == (meta["thresholds"]["food"])
    )


def test_train_runs_a_multi_label_recipe(tmp_path):
    import json

    from rich.console import Console

    from modelyard.models import load as load_classifier
    from modelyard.training.run import train

    path = write_delimited(tmp_path / "d.csv", [r for r in toy_rows(300) if r[1]])
    r = recipe_from_dict(
        {**recipe(), "data": {"path": str(path), "label_column": "tags"}, "output_dir": str(tmp_path / "runs")},
        base_dir=tmp_path,
    )
    run = train(r, console=Console(quiet=True))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["micro_f1"] >= 0.9
    assert "label_separator" in json.loads((run / "data_report.json").read_text())
    clf = load_classifier(run / "model")
    assert clf.predict(["a laptop and a guitar"])[0]["labels"] == ["music", "tech"]
