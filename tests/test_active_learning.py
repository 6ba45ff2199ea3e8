"""Active learning: `modelyard label queue` (strategies, never an already-labelled row, errors) and the console's
"Label next" panel (answers stored as feedback that `retrain` learns from). A tiny tf-idf run keeps it fast."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from modelyard.cli import app as cli_app
from modelyard.errors import DataError, ModelyardError
from modelyard.ops.active import STRATEGIES, diverse_pick, label_queue, rank_queue, uncertainty
from modelyard.ops.feedback_data import build_training_data, text_key
from modelyard.rundir import RunDir
from tests.conftest import FILLER, synthetic_sentiment
from tests.production_helpers import bearer, make_registry, production_app, run, running
from tests.production_helpers import live_server as live_server_at

UNCERTAIN = "zzz qqq xxx"  # no word the model knows: its prediction is its prior, about 50:50


@pytest.fixture(scope="module")
def tfidf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelyard.config import load_recipe
    from modelyard.training.run import train

    tmp = tmp_path_factory.mktemp("al_run")
    synthetic_sentiment(200).to_csv(tmp / "train.csv", index=False)
    recipe = {
        "name": "al",
        "data": {"path": "train.csv", "valid_size": 0.2, "test_size": 0.2, "seed": 3},
        "model": {"type": "tfidf-logreg", "tfidf": {"analyzer": "word", "min_df": 1}},
        "output_dir": str(tmp / "runs"),
    }
    (tmp / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return train(load_recipe(tmp / "r.yaml"))


@pytest.fixture(scope="module")
def planted(tfidf_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """An unlabelled file: new texts, texts of each split (one re-spaced), an uncertain one and repeats."""
    splits = RunDir(tfidf_run).splits()
    labelled = [splits.train["text"].iloc[0], splits.valid["text"].iloc[0], splits.test["text"].iloc[0]]
    labelled.append("  " + splits.train["text"].iloc[1].replace(" ", "   ") + " ")  # same text, other spacing
    new = synthetic_sentiment(60, seed=9)["text"].map(lambda t: f"new {t}").tolist()
    texts = [*new[:30], *labelled, UNCERTAIN, *new[30:], new[0], new[1], ""]
    path = tmp_path_factory.mktemp("al_input") / "unlabelled.csv"
    pd.DataFrame({"id": range(len(texts)), "text": texts}).to_csv(path, index=False)
    return path, {text_key(t) for t in labelled}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_queues_k_distinct_unlabelled_rows(tfidf_run: Path, planted: Any, strategy: str) -> None:
    path, labelled = planted
    queue = label_queue(str(tfidf_run), path, k=40, strategy=strategy, seed=1)
    frame = queue.frame
    assert len(frame) == 40 and frame["row"].is_unique and frame["text"].map(text_key).is_unique
    assert not set(frame["text"].map(text_key)) & labelled  # planted split texts never come back
    assert queue.counts["in_splits"] == 4 and queue.counts["duplicates"] == 2 and queue.counts["empty"] == 1
    source = pd.read_csv(path, keep_default_na=False)
    for row in frame.itertuples():  # `row` is the 1-based data row of the input file
        assert source["text"].iloc[row.row - 1] == row.text
    assert frame["score"].is_monotonic_decreasing
    assert {"row", "text", "pred", "confidence", "margin", "entropy", "score"} <= set(frame.columns)
    # asking for more than is left returns what is left
    assert len(label_queue(str(tfidf_run), path, k=1000, strategy=strategy).frame) == queue.counts["candidates"] == 61


def test_margin_and_entropy_rank_the_uncertain_row_first(tfidf_run: Path, planted: Any) -> None:
    path, _ = planted
    for strategy in ("margin", "entropy"):
        frame = label_queue(str(tfidf_run), path, k=5, strategy=strategy).frame
        assert frame["text"].iloc[0] == UNCERTAIN, (strategy, frame.head())
        assert frame["margin"].iloc[0] < 0.2 and frame["entropy"].iloc[0] > 0.9
        assert frame["margin"].is_monotonic_increasing  # binary: entropy orders like the margin


def test_random_is_seeded(tfidf_run: Path, planted: Any) -> None:
    path, _ = planted
    a = label_queue(str(tfidf_run), path, k=10, strategy="random", seed=4).frame["row"].tolist()
    b = label_queue(str(tfidf_run), path, k=10, strategy="random", seed=4).frame["row"].tolist()
    c = label_queue(str(tfidf_run), path, k=10, strategy="random", seed=5).frame["row"].tolist()
    assert a == b and a != c


def test_diverse_does_not_queue_near_duplicates(tfidf_run: Path, tmp_path: Path) -> None:
    from modelyard.models.loading import load

    # 40 near-copies of one uncertain text, and 40 varied texts without a sentiment word (also uncertain)
    rng = np.random.default_rng(0)
    copies = [f"{UNCERTAIN} v{i}" for i in range(40)]  # unknown words only: the same features, the prior
    varied = [" ".join(rng.choice(FILLER, 4, replace=False)) + f" {i}" for i in range(40)]
    clf = load(tfidf_run)
    margin = rank_queue(clf, copies + varied, 8, strategy="margin").frame
    diverse = rank_queue(clf, copies + varied, 8, strategy="diverse", seed=0)
    assert margin["text"].str.startswith(UNCERTAIN).sum() >= 6, margin  # uncertainty alone: near-duplicates
    from_copies = diverse.frame["text"].str.startswith(UNCERTAIN).sum()
    assert from_copies <= 2, diverse.frame  # the copies are (at most) a cluster or two among eight
    assert diverse.frame["text"].iloc[0] == margin["text"].iloc[0]  # the most uncertain row is always kept
    assert diverse.frame["cluster"].nunique() == 8 and diverse.embedding == "the model's tf-idf features"


def test_diverse_uses_an_encoders_own_embeddings(tiny_trained_run: Path) -> None:
    from modelyard.models.loading import load

    texts = synthetic_sentiment(60, seed=21)["text"].map(lambda t: f"unseen {t}").tolist()
    queue = rank_queue(load(tiny_trained_run), texts, 6, strategy="diverse", seed=2)
    assert queue.embedding == "the model's encoder (hidden states, mean-pooled)"
    assert len(queue.frame) == 6 and queue.frame["row"].is_unique and queue.frame["cluster"].nunique() == 6


def test_diverse_pick_takes_the_most_uncertain_row_of_each_cluster() -> None:
    rng = np.random.default_rng(1)
    centres = np.eye(4)
    emb = np.concatenate([np.repeat(centres[:1], 20, axis=0), centres[1:] + rng.normal(0, 0.01, (3, 4))])
    uncertain = np.concatenate([np.linspace(0.9, 0.99, 20), [0.1, 0.2, 0.3]])
    picked, clusters = diverse_pick(emb, uncertain, 4, seed=0)
    assert sorted(picked.tolist()) == [19, 20, 21, 22] and len(set(clusters.tolist())) == 4
    # fewer distinct points than k: the missing picks are the next most uncertain rows
    picked, clusters = diverse_pick(np.repeat(centres[:1], 6, axis=0), np.arange(6.0), 3, seed=0)
    assert sorted(picked.tolist()) == [3, 4, 5] and -1 in clusters.tolist()


def test_multi_label_uncertainty_is_the_mean_over_labels() -> None:
    probs = np.array([[0.95, 0.02, 0.51], [0.9, 0.1, 0.95]])
    u = uncertainty(probs, ["a", "b", "c"], thresholds=np.array([0.5, 0.5, 0.5]))
    assert u["pred"] == ["a|c", "a|c"]
    assert u["margin"][0] < u["margin"][1]  # label c at 0.51 sits on its threshold
    assert u["entropy"][0] > u["entropy"][1]


def test_feedback_texts_are_not_queued(tfidf_run: Path, planted: Any, tmp_path: Path) -> None:
    import uuid
    from datetime import datetime, timezone

    path, _ = planted
    first = label_queue(str(tfidf_run), path, k=3).frame["text"].tolist()
    reg = make_registry(tmp_path, tfidf_run)
    pid, now = str(uuid.uuid4()), datetime.now(timezone.utc)
    row = {"id": pid, "at": now, "app": "demo", "version": 1, "key_id": None, "text": first[0], "label": "pos"}
    reg.log_predictions(
        [{**row, "scores": {"pos": 0.5, "neg": 0.5}, "latency_ms": 1.0}],
        [{"at": now, "prediction_id": pid, "app": "demo", "key_id": None, "label": "neg"}],
    )
    reg.close()
    store = tmp_path / "store"
    for run_arg, app in (("demo@production", None), (str(tfidf_run), "demo")):
        queue = label_queue(run_arg, path, k=3, store=store, app=app)
        assert first[0] not in queue.frame["text"].tolist() and queue.counts["with_feedback"] == 1
        assert queue.frame["text"].tolist()[:2] == first[1:]
    with pytest.raises(ModelyardError, match="--app"):
        label_queue(str(tfidf_run), path, k=3, store=store)


def test_queue_errors_name_the_file_and_columns(tfidf_run: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["a", "b"], "stars": [1, 2]}).to_csv(wrong, index=False)
    with pytest.raises(DataError, match=r"reviews\.csv: text column 'text' not found; columns found: review, stars"):
        label_queue(str(tfidf_run), wrong, k=2)
    empty = tmp_path / "empty.csv"
    empty.write_text("text\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.csv: .*no data rows"):
        label_queue(str(tfidf_run), empty, k=2)
    with pytest.raises(ModelyardError, match="--k must be at least 1"):
        label_queue(str(tfidf_run), wrong, k=0)
    with pytest.raises(ModelyardError, match="--strategy 'smart'"):
        label_queue(str(tfidf_run), wrong, k=2, strategy="smart")
    with pytest.raises(DataError, match="not found"):
        label_queue(str(tfidf_run), tmp_path / "missing.csv", k=2)


def test_cli_label_queue_and_label_file_both_work(tfidf_run: Path, planted: Any, tmp_path: Path) -> None:
    path, labelled = planted
    out = tmp_path / "q.csv"
    runner = CliRunner()
    args = ["label", "queue", str(tfidf_run), "--input", str(path), "--k", "7", "--strategy", "diverse", "-o", str(out)]
    result = runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    frame = pd.read_csv(out)
    assert len(frame) == 7 and not set(frame["text"].map(text_key)) & labelled
    bad = runner.invoke(cli_app, ["label", "queue", str(tfidf_run), "--input", str(path), "--k", "0"])
    assert bad.exit_code == 2 and "--k must be at least 1" in bad.output
    # `modelyard label RUN -i … -o …` (label a file) still works beside `label queue`
    labelled_out = tmp_path / "labelled.csv"
    result = runner.invoke(cli_app, ["label", str(tfidf_run), "-i", str(path), "-o", str(labelled_out)])
    assert result.exit_code == 0, result.output
    assert {"label", "confidence"} <= set(pd.read_csv(labelled_out).columns)


# ---------------------------------------------------------------------------------------------- console panel


def _console_app(reg: Any) -> Any:
    return production_app(reg, cfg={"mask_pii": False})


def test_label_next_panel_stores_answers_as_feedback_for_retrain(tfidf_run: Path, tmp_path: Path) -> None:
    from modelyard.ops.retrain import retrain

    reg = make_registry(tmp_path, tfidf_run)
    admin, client = reg.create_key(["admin"]), reg.create_key(["predict", "feedback"])
    texts = ["a strange new film", "nothing like it before", "a strange new film", UNCERTAIN]
    csv = pd.DataFrame({"row": [5, 9, 11, 12], "text": texts, "pred": ["pos"] * 4, "score": [0.9, 0.8, 0.7, 0.6]})

    async def main() -> dict[str, Any]:
        async with running(_console_app(reg)) as c:
            h = bearer(admin)
            out: dict[str, Any] = {
                "queue": await c.post("/admin/v1/label/queue", json={"csv": csv.to_csv(index=False)}, headers=h)
            }
            out["label"] = await c.post("/admin/v1/label", json={"text": texts[0], "label": "neg"}, headers=h)
            out["again"] = await c.post("/admin/v1/label/queue", json={"csv": csv.to_csv(index=False)}, headers=h)
            out["unknown"] = await c.post("/admin/v1/label", json={"text": "x", "label": "meh"}, headers=h)
            out["set"] = await c.post("/admin/v1/label", json={"text": "x", "labels": ["neg"]}, headers=h)
            out["both"] = await c.post("/admin/v1/label", json={"text": "x"}, headers=h)
            out["column"] = await c.post("/admin/v1/label/queue", json={"csv": "review,n\nok,1\n"}, headers=h)
            out["nokey"] = await c.post("/admin/v1/label", json={"text": "x", "label": "pos"})
            out["client"] = await c.post("/admin/v1/label", json={"text": "x", "label": "pos"}, headers=bearer(client))
            out["client_q"] = await c.post("/admin/v1/label/queue", json={"csv": "text\nx\n"}, headers=bearer(client))
            out["recent"] = await c.get("/admin/v1/predictions", headers=h)
            out["traffic"] = await c.get("/admin/v1/traffic", headers=h)
            out["page"] = await c.get("/")
            out["js"] = await c.get("/console/console.js")
            return out

    try:
        r = run(main())
        queue = r["queue"].json()
        assert r["queue"].status_code == 200, r["queue"].text
        assert queue["labels"] == ["neg", "pos"] and queue["multi_label"] is False and queue["rows_in_file"] == 4
        assert [i["text"] for i in queue["items"]] == [texts[0], texts[1], UNCERTAIN] and queue["duplicates"] == 1
        assert queue["items"][0] == {"row": 5, "text": texts[0], "pred": "pos", "score": 0.9}
        stored = r["label"].json()
        assert r["label"].status_code == 201, r["label"].text
        assert stored["status"] == "stored" and stored["label"] == "neg" and stored["model_label"] in ("neg", "pos")
        again = r["again"].json()  # reloading the same file resumes: the answered text is left out
        assert [i["text"] for i in again["items"]] == [texts[1], UNCERTAIN] and again["already_labelled"] == 2
        for name in ("unknown", "set", "both", "column"):
            assert r[name].status_code == 422, (name, r[name].text)
        assert "'meh' is not a label" in r["unknown"].json()["error"]["message"]
        assert "columns found: review, n" in r["column"].json()["error"]["message"]
        assert r["nokey"].status_code == 401 and r["client"].status_code == 403 and r["client_q"].status_code == 403
        # a person's label is not traffic: neither the recent list nor the traffic chart shows it
        assert r["recent"].json() == [] and r["traffic"].json()["total"] == 0
        assert reg.predictions("demo") == []  # what `modelyard monitor` compares with the reference
        assert 'id="label-next"' in r["page"].text and "/admin/v1/label/queue" in r["js"].text

        # the answer is in the prediction store (encrypted at rest) as feedback …
        feedback = reg.feedback("demo")
        assert [(f["text"], f["label"]) for f in feedback] == [(texts[0], "neg")]
        logged = reg.prediction(stored["prediction_id"])
        assert logged is not None and logged["key_id"].startswith("label:") and logged["text"] == texts[0]
        from sqlalchemy import text as sql

        with reg.engine.read() as session:
            raw = session.execute(sql("SELECT text, enc_key FROM predictions")).one()
        assert raw[1] is not None and texts[0] not in raw[0]
        # … the training-data builder adds it to the challenger's train split …
        splits = RunDir(tfidf_run).splits()
        data, _, counts = build_training_data(splits, feedback, ["neg", "pos"], holdout=0.0)
        assert counts["feedback_added"] == 1
        assert data.train[data.train["text"] == texts[0]]["label"].tolist() == ["neg"]
        # … and `modelyard retrain` trains on it
        decision = retrain(reg, "demo", holdout=0.0, output_dir=tmp_path / "retrain")
        assert decision["data"]["feedback_added"] == 1 and decision["challenger"] == 2
    finally:
        reg.close()


def test_serving_text_key_agrees_with_the_feedback_builder() -> None:
    from modelyard.serving.labelling import _text_key

    for text in ("  a\u3000b  c ", "ＡＢＣ", "x\ny", "", "好 的"):
        assert _text_key(text) == text_key(text)


def test_label_panel_multi_label_answers_are_sets(tmp_path: Path) -> None:
    from modelyard.serving.labelling import LabelRequest

    with pytest.raises(ValueError, match="exactly one"):
        LabelRequest(text="x", label="a", labels=["a"])
    assert LabelRequest(text="x", labels=[]).labels == []


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: apt-get install chromium")
def test_label_next_panel_in_headless_chromium(tfidf_run: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    reg = make_registry(tmp_path, tfidf_run)
    admin = reg.create_key(["admin"])
    texts = ["first text to label", "second one, skipped", "third text to label"]
    queue = tmp_path / "queue.csv"
    pd.DataFrame({"row": [3, 7, 9], "text": texts, "pred": ["pos", "neg", "pos"], "score": [0.9, 0.5, 0.2]}).to_csv(
        queue, index=False
    )
    try:
        with live_server_at(_console_app(reg)) as base, sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.set_default_timeout(20_000)
                messages: list[str] = []
                page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
                page.goto(base + "/")
                expect = sync_api.expect
                page.fill("#api-key", admin)
                page.click("#key-save")
                expect(page.locator("#key-status")).to_contain_text("Key accepted")

                page.set_input_files("#label-file", str(queue))
                page.click("#label-load")
                expect(page.locator("#label-text")).to_have_text(texts[0])
                expect(page.locator("#label-meta")).to_contain_text("row 3 · model says pos")
                expect(page.locator("#label-buttons button")).to_have_text(["neg", "pos"])
                page.click('#label-buttons button[data-label="neg"]')
                expect(page.locator("#label-text")).to_have_text(texts[1])
                page.click("#label-skip")
                expect(page.locator("#label-text")).to_have_text(texts[2])
                page.keyboard.press("2")  # the second label's button
                expect(page.locator("#label-card")).to_be_hidden()
                expect(page.locator("#label-status")).to_contain_text("2 labelled, 1 skipped, 0 left")

                # reloading the file resumes: only the skipped text is left
                page.click("#label-load")
                expect(page.locator("#label-text")).to_have_text(texts[1])
                expect(page.locator("#label-status")).to_contain_text("2 already labelled")
                assert not page.locator("#label-error").is_visible()
                bad = [m for m in messages if "Content Security Policy" in m or m.startswith("pageerror")]
                assert bad == [], bad
            finally:
                browser.close()
        assert sorted((f["text"], f["label"]) for f in reg.feedback("demo")) == [(texts[0], "neg"), (texts[2], "pos")]
    finally:
        reg.close()
