"""The CLI contract: bad input → one clear line, exit 2, no run directory; happy paths end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml
from typer.testing import CliRunner

from modelyard.cli import app
from tests.conftest import synthetic_sentiment, write_tiny_recipe

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _assert_clean_failure(result, tmp_path: Path, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    err = " ".join(result.stderr.split())  # rich may wrap long lines
    assert err.startswith("error:"), result.stderr
    for f in fragments:
        assert f in err, (f, result.stderr)
    assert "Traceback" not in result.stderr
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def _recipe(tmp_path: Path, data: Path, backbone: Path, **data_keys: object) -> Path:
    path = write_tiny_recipe(tmp_path, data, backbone)
    raw = yaml.safe_load(path.read_text())
    raw["data"].update(data_keys)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_missing_file(tmp_path: Path, tiny_backbone: Path) -> None:
    r = _run("train", _recipe(tmp_path, tmp_path / "nope.csv", tiny_backbone))
    _assert_clean_failure(r, tmp_path, "not found", "nope.csv")


def test_empty_file(tmp_path: Path, tiny_backbone: Path) -> None:
    data = tmp_path / "empty.csv"
    data.write_text("")
    _assert_clean_failure(_run("train", _recipe(tmp_path, data, tiny_backbone)), tmp_path, "empty.csv", "empty")


def test_missing_column_lists_found_columns(tmp_path: Path, tiny_backbone: Path) -> None:
    data = tmp_path / "d.csv"
    synthetic_sentiment(60).rename(columns={"text": "review"}).to_csv(data, index=False)
    r = _run("train", _recipe(tmp_path, data, tiny_backbone))
    _assert_clean_failure(r, tmp_path, "'text'", "review", "label", "data.text_column")


def test_class_too_small_for_split(tmp_path: Path, tiny_backbone: Path) -> None:
    frame = pd.concat([synthetic_sentiment(60), pd.DataFrame({"text": ["odd one", "odd two"], "label": "rare"})])
    data = tmp_path / "d.csv"
    frame.to_csv(data, index=False)
    _assert_clean_failure(_run("train", _recipe(tmp_path, data, tiny_backbone)), tmp_path, "rare")


def test_single_class(tmp_path: Path, tiny_backbone: Path) -> None:
    data = tmp_path / "d.csv"
    synthetic_sentiment(60).assign(label="pos").to_csv(data, index=False)
    _assert_clean_failure(_run("train", _recipe(tmp_path, data, tiny_backbone)), tmp_path, "pos")


def test_all_texts_empty_after_cleaning(tmp_path: Path, tiny_backbone: Path) -> None:
    data = tmp_path / "d.csv"
    pd.DataFrame({"text": ["   ", "\u3000", "", "\t\n"] * 5, "label": ["a", "b"] * 10}).to_csv(data, index=False)
    _assert_clean_failure(_run("train", _recipe(tmp_path, data, tiny_backbone)), tmp_path, "no usable texts")


def test_malformed_yaml(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("data: [unclosed\n")
    _assert_clean_failure(_run("train", p), tmp_path, "malformed YAML")


def test_unknown_key_and_negative_lr(tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path) -> None:
    p = _recipe(tmp_path, sentiment_csv, tiny_backbone)
    _assert_clean_failure(_run("train", p, "train.epoks=2"), tmp_path, "train.epoks", "train.epochs")
    _assert_clean_failure(_run("train", p, "train.learning_rate=-0.1"), tmp_path, "train.learning_rate")


def test_nonexistent_backbone(tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path) -> None:
    p = _recipe(tmp_path, sentiment_csv, tiny_backbone)
    _assert_clean_failure(_run("train", p, "model.backbone=./no/such/model"), tmp_path, "model.backbone", "not found")
    _assert_clean_failure(_run("train", p, "model.backbone=bundled:gpt-17"), tmp_path, "bundled:minilm-l6")
    _assert_clean_failure(_run("train", p, "model.backbone=someorg/uncached-model"), tmp_path, "local cache")


def test_train_predict_evaluate_init_round_trip(tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path) -> None:
    r = _run("train", _recipe(tmp_path, sentiment_csv, tiny_backbone), "train.epochs=4")
    assert r.exit_code == 0, r.stderr
    run_dir = Path(r.stdout.strip().splitlines()[-1])
    assert run_dir.is_dir() and (run_dir / "manifest.json").is_file()
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"]["epochs"] == 4

    # predict: same format out, input columns kept, label + per-class probabilities added
    for ext in ("csv", "jsonl", "parquet"):
        inp = tmp_path / f"in.{ext}"
        frame = pd.DataFrame({"id": [1, 2], "text": ["great fun film", "boring and dull"]})
        if ext == "csv":
            frame.to_csv(inp, index=False)
        elif ext == "jsonl":
            frame.to_json(inp, orient="records", lines=True)
        else:
            frame.to_parquet(inp)
        out = tmp_path / f"out.{ext}"
        r = _run("predict", run_dir, "--input", inp, "--output", out)
        assert r.exit_code == 0, r.stderr
        got = {
            "csv": pd.read_csv,
            "jsonl": lambda p: pd.read_json(p, lines=True),
            "parquet": pd.read_parquet,
        }[ext](out)
        assert list(got.columns) == ["id", "text", "pred", "confidence", "prob_neg", "prob_pos"]
        assert got["pred"].tolist() == ["pos", "neg"]
        assert (got["prob_neg"] + got["prob_pos"]).round(9).eq(1).all()

    # evaluate on the run's test split and on another labelled file
    r = _run("evaluate", run_dir)
    assert r.exit_code == 0, r.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["n"] == 48
    other = tmp_path / "other.csv"
    synthetic_sentiment(40, seed=9).to_csv(other, index=False)
    r = _run("evaluate", run_dir, "--data", other)
    assert r.exit_code == 0, r.stderr
    m = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    assert m["eval"]["n"] == 40 and m["eval"]["accuracy"] >= 0.8
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["x"], "label": ["neutral"]}).to_csv(bad, index=False)
    r = _run("evaluate", run_dir, "--data", bad)
    assert r.exit_code == 2 and "neutral" in r.stderr

    # explain: HTML heat map + JSON in the run, top units printed; bad usage is one clear line
    r = _run("explain", run_dir, "--text", "the film was great fun", "--method", "occlusion")
    assert r.exit_code == 0, r.stderr
    html = Path(r.stdout.strip().splitlines()[-1])
    assert html.parent == run_dir / "explanations" and html.suffix == ".html"
    (exp,) = json.loads(html.with_suffix(".json").read_text())["explanations"]
    assert exp["units"] == ["the", "film", "was", "great", "fun"] and len(exp["attributions"]) == 5
    assert _run("explain", run_dir).exit_code == 2
    assert _run("explain", run_dir, "--text", "x", "--method", "magic").exit_code == 2

    # init writes an annotated recipe that loads and points at the data
    out = tmp_path / "sub" / "recipe.yaml"
    out.parent.mkdir()
    r = _run("init", "--task", "text-classification", "--data", sentiment_csv, "-o", out)
    assert r.exit_code == 0, r.stderr
    text = out.read_text()
    assert text.startswith("# modelyard recipe — run it with:")
    from modelyard.config import load_recipe

    rec = load_recipe(out)
    assert rec.resolve(rec.data.path).resolve() == sentiment_csv.resolve()
    assert (rec.data.text_column, rec.data.label_column) == ("text", "label")
    assert _run("init", "--data", sentiment_csv, "-o", out).exit_code == 2  # no silent overwrite


def test_unfinished_run_is_refused_by_predict(tmp_path: Path) -> None:
    d = tmp_path / "runs" / "20260101-000000-abcdef.incomplete"
    d.mkdir(parents=True)
    r = _run("predict", d, "--input", "x.csv", "--output", "y.csv")
    assert r.exit_code == 2 and "unfinished run" in r.stderr


def test_sigterm_mid_training_keeps_a_resumable_run_and_resume_finishes_it(
    tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path
) -> None:
    import signal
    import subprocess
    import sys
    import time

    recipe = _recipe(tmp_path, sentiment_csv, tiny_backbone)
    cmd = [
        sys.executable,
        "-m",
        "modelyard.cli",
        "train",
        str(recipe),
        "train.epochs=12",
        "train.checkpoint_every_steps=2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 120
    while True:  # wait until at least one checkpoint exists, then kill the run like a scheduler would
        ckpts = list(runs.glob("*.incomplete/checkpoints/last/trainer_state.json"))
        if ckpts or proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "resume" in err
    (partial,) = list(runs.glob("*.incomplete"))
    assert [p for p in runs.iterdir() if not p.name.endswith(".incomplete")] == []
    done = json.loads((partial / "checkpoints" / "last" / "trainer_state.json").read_text())["global_step"]
    assert 0 < done < 12 * 9

    r = _run("train", recipe, "train.epochs=12", "train.checkpoint_every_steps=2", "--resume", partial)
    assert r.exit_code == 0, r.stderr
    final = Path(r.stdout.strip().splitlines()[-1])
    assert final.name == partial.name.removesuffix(".incomplete") and not partial.exists()
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["total_steps"] == 12 * 9 or manifest["stopped_early"]


def test_tune_verb_runs_a_search_and_refuses_a_second_without_resume(
    tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path
) -> None:
    path = _recipe(tmp_path, sentiment_csv, tiny_backbone)
    raw = yaml.safe_load(path.read_text())
    raw["train"].update(epochs=1, num_threads=1)
    raw["tune"] = {"space": {"train.learning_rate": {"type": "choice", "values": [1e-2, 1e-9]}}, "pruner": "none"}
    path.write_text(yaml.safe_dump(raw))
    r = _run("tune", path, "--trials", "2")
    assert r.exit_code == 0, r.stderr
    tune_dir = Path(r.stdout.strip().splitlines()[-1])
    assert {"study.db", "best_recipe.yaml", "trials.csv", "tune_report.html"} <= {p.name for p in tune_dir.iterdir()}
    assert len(pd.read_csv(tune_dir / "trials.csv")) == 2
    again = _run("tune", path, "--trials", "2")
    assert again.exit_code == 2 and "--resume" in again.stderr
    assert _run("tune", path, "--trials", "2", "--backend", "spark").exit_code == 2
