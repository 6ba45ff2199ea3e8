"""Retraining from feedback: data assembly (dedup, feedback wins conflicts, hold-out), and the end-to-end
loop train → register → promote → serve → 200 predictions → 20 feedback labels → retrain → decision
recorded → the served version changes with zero failed requests (SQLite, and PostgreSQL when available)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from modelyard.data import PreparedData
from modelyard.ops.retrain import build_training_data
from tests.conftest import synthetic_sentiment
from tests.production_helpers import bearer, make_registry, production_app, run, running
from tests.test_registry import POSTGRES_URL, _fresh_postgres_db


def _splits() -> PreparedData:
    return PreparedData(
        train=pd.DataFrame(
            {"text": ["good film", "bad film", "fine  film", "odd film"], "label": ["pos", "neg", "pos", "neg"]}
        ),
        valid=pd.DataFrame({"text": ["nice film"], "label": ["pos"]}),
        test=pd.DataFrame({"text": ["great film", "awful film"], "label": ["pos", "neg"]}),
        labels=["neg", "pos"],
    )


def test_training_data_feedback_wins_conflicts_dedups_and_holds_out() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    fb = [
        {"text": "bad film", "label": "pos", "at": t0},  # conflicts with train → feedback wins …
        {"text": "bad  film", "label": "neg", "at": t0 + timedelta(seconds=1)},  # … the latest label, same text
        {"text": "fine film", "label": "pos", "at": t0},  # agrees with train (after whitespace normalisation)
        {"text": "great film", "label": "neg", "at": t0},  # in the original test split: never trained on
        {"text": "brand new text", "label": "pos", "at": t0},
        {"text": "weird", "label": "maybe", "at": t0},  # not a label of the model
    ]
    data, hold, counts = build_training_data(_splits(), fb, ["neg", "pos"], holdout=0.0)
    train = dict(zip(data.train["text"].map(lambda t: " ".join(t.split())), data.train["label"], strict=True))
    assert train == {
        "good film": "pos",
        "bad film": "neg",
        "fine film": "pos",
        "odd film": "neg",
        "brand new text": "pos",
    }
    assert hold.empty and counts["feedback_unknown_label"] == 1 and counts["feedback_in_test_ignored"] == 1
    assert counts["feedback_added"] == 1 and data.test.equals(_splits().test)

    fb2 = [{"text": "bad film", "label": "pos", "at": t0}, {"text": "new one", "label": "neg", "at": t0}]
    data, hold, counts = build_training_data(_splits(), fb2, ["neg", "pos"], holdout=0.0)
    assert counts["conflicts_resolved_for_feedback"] == 1
    assert dict(zip(data.train["text"], data.train["label"], strict=True))["bad film"] == "pos"
    # a full hold-out: feedback texts are evaluated on and removed from training
    data, hold, counts = build_training_data(_splits(), fb2, ["neg", "pos"], holdout=0.999999)
    assert sorted(hold["text"]) == ["bad film", "new one"] and "bad film" not in set(data.train["text"])


def _loop(reg, tmp_path: Path) -> None:
    key = reg.create_key(["predict", "feedback"])
    app = production_app(reg, poll_s=0.1)
    texts = synthetic_sentiment(200, seed=5)
    statuses: list[int] = []
    versions: list[int] = []

    async def client_loop(c, stop: asyncio.Event) -> None:  # noqa: ANN001
        i = 0
        while not stop.is_set():
            r = await c.post("/v1/predict", json={"texts": [f"a good story {i}"]}, headers=bearer(key))
            statuses.append(r.status_code)
            if r.status_code == 200:
                versions.append(r.json()["model"]["version"])
            i += 1
            await asyncio.sleep(0.01)

    async def main() -> dict:
        async with running(app) as c:
            ids: list[str] = []
            for start in range(0, 200, 20):
                chunk = texts["text"].tolist()[start : start + 20]
                r = await c.post("/v1/predict", json={"texts": chunk}, headers=bearer(key))
                assert r.status_code == 200, r.text
                ids += [p["id"] for p in r.json()["predictions"]]
            assert len(set(ids)) == 200
            for pid, label in zip(ids[:20], texts["label"][:20], strict=True):
                r = await c.post("/v1/feedback", json={"prediction_id": pid, "label": label}, headers=bearer(key))
                assert r.status_code == 202, r.text
            assert app.state.predlog.flush(20)
            assert reg.count("predictions") == 200 and len(reg.feedback("demo")) == 20
            stop = asyncio.Event()
            tasks = [asyncio.create_task(client_loop(c, stop)) for _ in range(3)]
            from modelyard.ops.retrain import retrain

            decision = await asyncio.to_thread(
                retrain, reg, "demo", margin=1.0, output_dir=tmp_path / "retrain", overrides=["train.epochs=1"]
            )
            deadline = time.monotonic() + 60
            while not (versions and versions[-1] == decision["challenger"]):
                assert time.monotonic() < deadline, "the promoted challenger was never served"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*tasks)
            return decision

    decision = run(main(), timeout=400)
    assert decision["promoted"] and decision["champion"] == 1 and decision["challenger"] == 2
    assert decision["data"]["feedback_texts"] == 20 and decision["data"]["feedback_holdout"] >= 1
    for who in ("champion", "challenger"):
        assert 0 <= decision["scores"][who]["test"]["macro_f1"] <= 1
        assert decision["scores"][who]["feedback"]["n"] == decision["data"]["feedback_holdout"]
    recorded = reg.audit_trail("demo", "retrain")
    assert len(recorded) == 1 and recorded[0]["detail"]["promoted"] is True
    assert recorded[0]["detail"]["scores"] == decision["scores"]
    assert reg.resolve("demo", "production").version == 2
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert 1 in versions and versions[-1] == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_end_to_end_feedback_retrain_promote_hot_swap(backend: str, tmp_path: Path, tiny_trained_run: Path) -> None:
    if backend == "postgres" and not POSTGRES_URL:
        pytest.skip("MODELYARD_TEST_POSTGRES_URL is not set (start one with: source .ci/postgres.sh)")
    db = _fresh_postgres_db() if backend == "postgres" else None
    reg = make_registry(tmp_path, tiny_trained_run, db=db)
    try:
        _loop(reg, tmp_path)
    finally:
        reg.close()
