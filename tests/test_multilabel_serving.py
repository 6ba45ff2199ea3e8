"""Multi-label models through predict, serve, the prediction log, monitor, feedback and retrain (issue #19 item 2).

One small ``tfidf-logreg`` multi-label run (module fixture) goes through ``modelyard predict``, the registry, the
production server (``/v1/predict`` answers ``{labels, scores, id}``; ``/v1/feedback`` takes ``labels``), the drift
monitor on the logged label sets, and ``modelyard retrain`` on label-set feedback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from modelyard.cli import app as cli_app
from modelyard.config.recipe import recipe_from_dict
from modelyard.models.loading import load
from modelyard.ops.feedback_data import holdout_score, text_key
from modelyard.ops.monitor import NO_LABEL, Thresholds, monitor
from modelyard.ops.retrain import retrain
from modelyard.training.run import load_splits, train
from tests.production_helpers import bearer, make_registry, production_app, run, running
from tests.test_multilabel import LABELS, toy_rows, write_delimited

# texts none of the training rows has (each ends in a unique marker), with the label set we give as feedback
FEEDBACK = [
    (f"we had pizza while the guitar played #fb{i}", ["food", "music"]) if i % 3 == 0 else
    (f"a new laptop for football stats #fb{i}", ["sports", "tech"]) if i % 3 == 1 else
    (f"the weather was very good today #fb{i}", [])
    for i in range(12)
]  # fmt: skip


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ml-serving")
    path = write_delimited(tmp / "tags.csv", [r for r in toy_rows(300) if r[1]])
    recipe = recipe_from_dict(
        {
            "name": "tags",
            "task": "multi-label-classification",
            "model": {"type": "tfidf-logreg"},
            "data": {"path": str(path), "label_column": "tags", "label_separator": "|"},
            "output_dir": str(tmp / "runs"),
        },
        base_dir=tmp,
    )
    return train(recipe, console=Console(quiet=True))


def _predict_cli(run_dir: Path, tmp_path: Path, suffix: str) -> pd.DataFrame:
    texts = ["we ate pizza and played football", "the weather was very good today", "a laptop and a guitar"]
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": texts}).to_csv(src, index=False)
    out = tmp_path / f"out{suffix}"
    result = CliRunner().invoke(cli_app, ["predict", str(run_dir), "-i", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return pd.read_csv(out, keep_default_na=False) if suffix == ".csv" else pd.read_json(out, lines=True)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predict_cli_writes_label_sets_and_per_label_probabilities(ml_run: Path, tmp_path: Path, suffix: str) -> None:
    frame = _predict_cli(ml_run, tmp_path, suffix)
    assert list(frame.columns) == ["text", "pred", *(f"prob_{lb}" for lb in LABELS)]  # no `confidence`
    clf = load(ml_run)
    expected = clf.predict(frame["text"].tolist())
    assert [p.split("|") if p else [] for p in frame["pred"]] == [e["labels"] for e in expected]
    assert frame["pred"].tolist() == ["food|sports", "", "music|tech"]
    probs = frame[[f"prob_{lb}" for lb in LABELS]].to_numpy()
    np.testing.assert_allclose(probs, clf.predict_proba(frame["text"].tolist()), atol=1e-6)
    assert not np.allclose(probs.sum(axis=1), 1.0)  # independent per-label probabilities


def test_label_and_compressed_serving_refuse_a_multi_label_model(ml_run: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": ["pizza"]}).to_csv(src, index=False)
    result = CliRunner().invoke(cli_app, ["label", str(ml_run), "-i", str(src), "-o", str(tmp_path / "o.csv")])
    assert result.exit_code != 0 and "multi-label" in result.output and "modelyard predict" in result.output
    result = CliRunner().invoke(cli_app, ["serve", str(ml_run), "--runtime", "onnx"])
    assert result.exit_code != 0 and "multi-label" in result.output and "--runtime torch" in result.output


def _serve(reg: Any, key: str, texts: list[str], feedback: list[dict[str, Any]]) -> tuple[Any, list[Any], Any]:
    async def main() -> tuple[Any, list[Any], Any]:
        app = production_app(reg)
        async with running(app) as client:
            predicted = await client.post("/v1/predict", json={"texts": texts}, headers=bearer(key))
            ids = [p.get("id") for p in predicted.json().get("predictions", [])]
            answers = []
            for item in feedback:
                body = {"prediction_id": ids[item.pop("i")], **item}
                answers.append(await client.post("/v1/feedback", json=body, headers=bearer(key)))
            spec = (await client.get("/openapi.json", headers=bearer(key))).json()
            assert app.state.predlog.flush(30)
            return predicted, answers, spec

    return run(main(), timeout=60)


def test_serve_feedback_monitor_and_retrain(ml_run: Path, tmp_path: Path) -> None:
    reg = make_registry(tmp_path, ml_run)
    try:
        version = reg.resolve("demo", "production")
        assert version.labels == LABELS
        key = reg.create_key(["predict", "feedback"])
        live = [t for t, _ in toy_rows(40, seed=3)]
        texts = [t for t, _ in FEEDBACK] + live
        feedback = [{"i": i, "labels": labels} for i, (_, labels) in enumerate(FEEDBACK)]
        feedback += [
            {"i": 0, "labels": ["food", "cooking"]},  # unknown label: 422 naming it
            {"i": 0, "label": "food", "labels": ["food"]},  # both: 422
            {"i": 12, "label": "tech"},  # `label` on a multi-label prediction: the set ["tech"]
        ]
        predicted, answers, spec = _serve(reg, key, texts, feedback)

        assert predicted.status_code == 200, predicted.text
        body = predicted.json()
        assert body["model"]["multi_label"] is True and set(body["model"]["thresholds"]) == set(LABELS)
        clf = load(ml_run)
        for pred, want in zip(body["predictions"], clf.predict(texts), strict=True):
            assert set(pred) == {"labels", "scores", "id"}, pred
            assert pred["labels"] == want["labels"] and set(pred["scores"]) == set(LABELS)
            assert pred["scores"] == pytest.approx(want["scores"])
        assert body["predictions"][0]["labels"] == ["food", "music"]

        assert [r.status_code for r in answers[:12]] == [202] * 12, [r.text for r in answers]
        assert answers[0].json() == {"status": "accepted", "prediction_id": body["predictions"][0]["id"],
                                     "labels": ["food", "music"]}  # fmt: skip
        assert answers[2].json()["labels"] == []
        unknown = answers[12]
        assert unknown.status_code == 422 and "'cooking'" in unknown.json()["error"]["message"], unknown.text
        assert unknown.json()["error"]["details"][0]["loc"] == ["body", "labels", 1]
        assert answers[13].status_code == 422 and "exactly one of" in answers[13].text
        assert answers[14].status_code == 202 and answers[14].json()["label"] == "tech"

        # the OpenAPI document describes both prediction shapes and the `labels` feedback, and links to it
        schemas = spec["components"]["schemas"]
        assert "LabelSetPrediction" in schemas and "Prediction" in schemas
        assert "labels" in schemas["FeedbackRequest"]["properties"]
        assert schemas["FeedbackRequest"]["examples"][0]["labels"] == [LABELS[0]]
        link = spec["paths"]["/v1/predict"]["post"]["responses"]["200"]["links"]["Feedback"]["requestBody"]
        assert link["labels"] == "$response.body#/predictions/0/labels" and "label" not in link

        # the log: the predicted set joined by | in `label`, every label's score in `scores`; feedback likewise
        logged = {r["id"]: r for r in reg.predictions("demo")}
        assert len(logged) == len(texts)
        first = logged[body["predictions"][0]["id"]]
        assert first["label"] == "food|music" and set(first["scores"]) == set(LABELS)
        stored = {f["prediction_id"]: f["label"] for f in reg.feedback("demo")}
        assert stored[body["predictions"][0]["id"]] == "food|music"
        assert stored[body["predictions"][2]["id"]] == ""
        assert stored[body["predictions"][12]["id"]] == "tech"

        summary = monitor(reg, "demo", since=None, output=tmp_path / "drift.html", thresholds=Thresholds(min_samples=5))
        assert summary["status"] in ("ok", "drift") and summary["n_live"] == len(texts)
        assert set(summary["class_mix"]["live"]) == {*LABELS, NO_LABEL}
        assert sum(summary["class_mix"]["live"].values()) == pytest.approx(1.0, abs=1e-3)
        assert {"confidence_psi", "class_mix_psi"} <= set(summary["signals"])
        traffic = reg.traffic("demo", since=pd.Timestamp("2000-01-01", tz="UTC").to_pydatetime(), bucket_s=3600)
        assert traffic["class_mix"]["food|music"] >= 1

        decision = retrain(reg, "demo", output_dir=tmp_path / "retrain", holdout=0.3)
        assert decision["challenger"] == 2 and decision["data"]["feedback_texts"] == 13, decision["data"]
        assert decision["data"]["feedback_unknown_label"] == 0
        assert "test" in decision["checks"] and decision["scores"]["challenger"]["test"]["macro_f1"] > 0.8
        challenger = reg.get_version("demo", 2)
        meta = json.loads((challenger.path / "model" / "modelyard.json").read_text())
        assert meta["task"] == "multi-label-classification" and challenger.labels == LABELS
        new = load(Path(decision["run"]))
        assert new.multi_label and new.predict(["pizza"])[0].keys() == {"labels", "scores"}
        train_split = load_splits(Path(decision["run"])).train
        by_text = {t: tuple(lb) for t, lb in zip(train_split["text"], train_split["label"], strict=True)}
        learned = [(t, tuple(lbs)) for t, lbs in FEEDBACK if holdout_score(text_key(t)) >= 0.3]
        assert learned and all(by_text[t] == lbs for t, lbs in learned)  # the sets users sent, empty ones too
        held = [t for t, _ in FEEDBACK if holdout_score(text_key(t)) < 0.3]
        assert not any(t in by_text for t in held)  # the feedback hold-out is never trained on
    finally:
        reg.close()


class _FakeLog:
    """The prediction log the feedback route needs: every prediction is the caller's; feedback rows are kept."""

    def __init__(self, labels: list[str]) -> None:
        self.labels, self.rows = tuple(labels), []

    def recent(self, pid: str) -> tuple[None, str, tuple[str, ...], None]:
        return None, "demo", self.labels, None

    def log_feedback(self, row: dict[str, Any], image: Any = None) -> bool:
        self.rows.append(row)
        return True


def _plain(load_classifier: Any, labels: list[str], calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    from modelyard.serving import create_app
    from modelyard.serving.feedback import feedback_router
    from tests.test_serving import make_cfg
    from tests.test_serving import running as plain_running

    log = _FakeLog(labels)
    app = create_app(load_classifier, make_cfg(), routers=[feedback_router(None, log, "demo")])  # type: ignore[arg-type]

    async def main() -> list[Any]:
        async with plain_running(app) as client:
            return [await client.post(path, json=body) for path, body in calls] + [log.rows]

    return run(main(), timeout=30)


PID = "2f0c6a1e-8d5b-4c1e-9a57-0d1f2b3c4d5e"


def test_single_label_answers_are_unchanged_and_refuse_labels_feedback() -> None:
    from tests.test_serving import LABELS as SL_LABELS
    from tests.test_serving import FakeClassifier

    predicted, wrong, right, rows = _plain(
        FakeClassifier,
        list(SL_LABELS),
        [
            ("/v1/predict", {"texts": ["good"]}),
            ("/v1/feedback", {"prediction_id": PID, "labels": [SL_LABELS[0]]}),
            ("/v1/feedback", {"prediction_id": PID, "label": SL_LABELS[0]}),
        ],
    )
    assert predicted.status_code == 200 and set(predicted.json()["predictions"][0]) == {"label", "scores", "id"}
    assert wrong.status_code == 422 and "send `label`" in wrong.json()["error"]["message"]
    assert right.status_code == 202 and right.json() == {"status": "accepted", "prediction_id": PID,
                                                         "label": SL_LABELS[0]}  # fmt: skip
    assert [r["label"] for r in rows] == [SL_LABELS[0]]


def test_plain_server_answers_label_sets_and_records_feedback_in_label_order(ml_run: Path) -> None:
    predicted, ok, empty, rows = _plain(
        lambda: load(ml_run),
        LABELS,
        [
            ("/v1/predict", {"texts": ["a laptop and a guitar", "the weather was very good today"]}),
            ("/v1/feedback", {"prediction_id": PID, "labels": ["tech", "music", "tech"]}),
            ("/v1/feedback", {"prediction_id": PID, "labels": []}),
        ],
    )
    assert predicted.status_code == 200, predicted.text
    assert [p["labels"] for p in predicted.json()["predictions"]] == [["music", "tech"], []]
    assert ok.status_code == 202 and ok.json()["labels"] == ["music", "tech"]
    assert empty.status_code == 202 and empty.json()["labels"] == []
    assert [r["label"] for r in rows] == ["music|tech", ""]


def test_hot_swap_refuses_to_change_between_single_and_multi_label(ml_run: Path) -> None:
    from modelyard.serving.metrics import ServingMetrics
    from modelyard.serving.runtime import ModelRuntime

    runtime = ModelRuntime(ServingMetrics(8))
    clf = load(ml_run)
    runtime._load(lambda: clf)
    assert runtime.status == "ready" and runtime.loaded is not None and runtime.loaded.multi_label

    class SingleLabel:
        labels = LABELS

        def info(self) -> dict[str, Any]:
            return {"name": "single"}

    with pytest.raises(ValueError, match="multi-label"):
        runtime.swap(SingleLabel())  # type: ignore[arg-type]
    assert runtime.swap(clf)["multi_label"] is True
