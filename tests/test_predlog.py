"""Prediction log and feedback: UUIDv4 ids, PII masking, a writer that never blocks requests and counts
drops, feedback only for the key's own predictions, and the new Prometheus series."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from modelyard.serving.predlog import PredictionLog, mask_pii
from tests.production_helpers import bearer, make_registry, production_app, run, running


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, tiny_trained_run: Path):
    r = make_registry(tmp_path_factory.mktemp("predlog"), tiny_trained_run)
    yield r
    r.close()


def test_mask_pii() -> None:
    text = "mail bob.smith@example.com, call +44 20 7946 0958 or 555-123-4567, card 4111 1111 1111 1111, ip 10.0.0.1"
    masked = mask_pii(text)
    assert masked == "mail <EMAIL>, call <PHONE> or <PHONE>, card <BANK_CARD>, ip <IP>"
    assert mask_pii("a good film from 2019, 10/10") == "a good film from 2019, 10/10"


def test_predictions_are_logged_and_feedback_is_key_bound(reg) -> None:
    alice = reg.create_key(["predict", "feedback"], name="alice")
    bob = reg.create_key(["predict", "feedback"], name="bob")
    texts = ["a good film, write to me at a@b.io", "dull and boring"]

    async def main() -> list[str]:
        async with running(production_app(reg)) as c:
            r = await c.post("/v1/predict", json={"texts": texts}, headers=bearer(alice))
            assert r.status_code == 200, r.text
            ids = [p["id"] for p in r.json()["predictions"]]
            assert all(uuid.UUID(i).version == 4 for i in ids) and len(set(ids)) == 2
            # feedback right away (before the writer has necessarily flushed)
            fb = await c.post("/v1/feedback", json={"prediction_id": ids[0], "label": "neg"}, headers=bearer(alice))
            assert fb.status_code == 202 and fb.json() == {
                "status": "accepted",
                "prediction_id": ids[0],
                "label": "neg",
            }
            # another key cannot see or label alice's prediction: same answer as for an unknown id
            other = await c.post("/v1/feedback", json={"prediction_id": ids[1], "label": "pos"}, headers=bearer(bob))
            unknown = await c.post(
                "/v1/feedback", json={"prediction_id": str(uuid.uuid4()), "label": "pos"}, headers=bearer(bob)
            )
            assert other.status_code == unknown.status_code == 404
            assert other.json()["error"]["code"] == "prediction_not_found"
            bad = await c.post(
                "/v1/feedback", json={"prediction_id": "not-a-uuid", "label": "pos"}, headers=bearer(alice)
            )
            assert bad.status_code == 422
            v1 = str(uuid.uuid1())
            bad = await c.post("/v1/feedback", json={"prediction_id": v1, "label": "pos"}, headers=bearer(alice))
            assert bad.status_code == 422
            bad = await c.post("/v1/feedback", json={"prediction_id": ids[1], "label": "meh"}, headers=bearer(alice))
            assert bad.status_code == 422 and "not a label" in bad.json()["error"]["message"]
            assert c._transport.app.state.predlog.flush(10)  # type: ignore[attr-defined]
            # after the flush the database answers (not the in-memory map): restart-safe ownership
            c._transport.app.state.predlog._recent.clear()  # type: ignore[attr-defined]
            fb = await c.post("/v1/feedback", json={"prediction_id": ids[1], "label": "neg"}, headers=bearer(alice))
            assert fb.status_code == 202
            other = await c.post("/v1/feedback", json={"prediction_id": ids[1], "label": "pos"}, headers=bearer(bob))
            assert other.status_code == 404
            return ids

    ids = run(main())
    rows = {i: reg.prediction(i) for i in ids}
    alice_id = alice.split("_")[1]
    assert rows[ids[0]]["text"] == "a good film, write to me at <EMAIL>"  # PII masked before it is stored
    assert rows[ids[1]]["text"] == "dull and boring"
    for i in ids:
        row = rows[i]
        assert row["key_id"] == alice_id and row["app"] == "demo" and row["version"] == 1
        assert set(row["scores"]) == {"neg", "pos"} and abs(sum(row["scores"].values()) - 1) < 1e-6
        assert row["label"] == max(row["scores"], key=row["scores"].get) and row["latency_ms"] > 0
    feedback = {f["prediction_id"]: f["label"] for f in reg.feedback("demo")}
    assert feedback == {ids[0]: "neg", ids[1]: "neg"}


class _SlowRegistry:
    """Stands in for the registry: each write blocks until the gate opens."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.rows: list[dict] = []

    def log_predictions(self, rows, feedback=(), images=()) -> None:  # noqa: ANN001
        assert self.gate.wait(20)
        self.rows.extend(rows)


def test_writer_never_blocks_and_counts_drops() -> None:
    slow = _SlowRegistry()
    log = PredictionLog(slow, capacity=5, batch_size=2)  # type: ignore[arg-type]
    log.start()
    start = time.perf_counter()
    accepted = [log.log_prediction({"id": str(i), "app": "a"}, ("x",)) for i in range(50)]
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, elapsed  # the database is stuck, the request path is not
    assert log.dropped == accepted.count(False) and log.dropped >= 50 - 5 - 2
    slow.gate.set()
    assert log.flush(10)
    log.close()
    assert len(slow.rows) == accepted.count(True) == log.written
    assert len(slow.rows) + log.dropped == 50  # every row is either written or counted


def test_log_drops_are_exported_and_served_requests_still_succeed(reg) -> None:
    key = reg.create_key(["predict", "admin"])
    app = production_app(reg, log_capacity=1)
    gate = threading.Event()
    real = reg.log_predictions

    def stuck(rows, feedback=()):  # noqa: ANN001, ANN202
        gate.wait(20)
        return real(rows, feedback)

    app.state.predlog.registry = type("R", (), {"log_predictions": staticmethod(stuck)})()

    async def main() -> str:
        async with running(app) as c:
            codes = [
                (await c.post("/v1/predict", json={"texts": ["a", "b", "c"]}, headers=bearer(key))).status_code
                for _ in range(5)
            ]
            assert codes == [200] * 5
            text = (await c.get("/metrics", headers=bearer(key))).text
            gate.set()
            return text

    metrics = run(main())
    dropped = next(line for line in metrics.splitlines() if line.startswith("modelyard_predlog_dropped "))
    assert float(dropped.split()[1]) >= 10
    assert "modelyard_model_version 1.0" in metrics
    assert "modelyard_predlog_queue_depth" in metrics
    assert 'version="1"' in metrics  # modelyard_model_info carries the registry version too
