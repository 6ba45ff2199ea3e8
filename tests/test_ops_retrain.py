"""The retrain gate, through the ``modelyard retrain`` CLI, with a small margin (0.01): a challenger trained
on sabotaged (flipped) feedback is refused, the production alias stays put and the refusal is in the
audit trail; a challenger trained on correct feedback is promoted. The champion is the shared tiny-BERT run
(test accuracy 1.0 on synthetic sentiment); each challenger trains in seconds."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.cli import app as cli_app
from tests.conftest import synthetic_sentiment
from tests.production_helpers import make_registry

MARGIN = "0.01"


def _give_feedback(reg, texts: list[str], labels: list[str]) -> None:
    """Log one prediction per text and a feedback row giving it ``label`` (what POST /v1/feedback stores)."""
    now = datetime.now(timezone.utc)
    rows, feedback = [], []
    for text, label in zip(texts, labels, strict=True):
        pid = str(uuid.uuid4())
        rows.append(
            {
                "id": pid,
                "at": now,
                "app": "demo",
                "version": 1,
                "key_id": "k",
                "text": text,
                "label": label,
                "scores": {"neg": 0.5, "pos": 0.5},
                "latency_ms": 1.0,
            }
        )
        feedback.append({"at": now, "prediction_id": pid, "app": "demo", "key_id": "k", "label": label})
    reg.log_predictions(rows, feedback)


def _retrain_cli(store: Path, out: Path) -> tuple[dict, str]:
    r = CliRunner().invoke(
        cli_app, ["retrain", "demo", "--margin", MARGIN, "--store", str(store), "--output-dir", str(out)]
    )
    assert r.exit_code == 0, r.output
    *_, decision_line, served = r.stdout.strip().splitlines()
    return json.loads(decision_line), served


def test_retrain_cli_refuses_a_challenger_trained_on_flipped_feedback(tiny_trained_run: Path, tmp_path: Path) -> None:
    from modelyard.training.run import load_splits

    reg = make_registry(tmp_path, tiny_trained_run)
    try:
        champion = reg.resolve("demo", "production")
        train = load_splits(champion.path).train
        flipped = ["neg" if label == "pos" else "pos" for label in train["label"]]
        _give_feedback(reg, train["text"].tolist(), flipped)  # every training text, wrongly labelled

        decision, served = _retrain_cli(reg.store, tmp_path / "retrain")

        assert served == "demo@1"  # the CLI names the version that keeps serving
        assert decision["promoted"] is False and decision["champion"] == 1 and decision["challenger"] == 2
        assert decision["margin"] == pytest.approx(0.01) and decision["checks"]["test"] is False
        champ, chal = decision["scores"]["champion"]["test"], decision["scores"]["challenger"]["test"]
        assert champ["macro_f1"] == pytest.approx(1.0)
        assert chal["macro_f1"] < champ["macro_f1"] - 0.01  # genuinely worse, beyond the margin
        assert decision["data"]["conflicts_resolved_for_feedback"] > 0
        # production unchanged; the challenger is registered but carries no alias
        assert reg.resolve("demo", "production").version == 1
        assert {v.version: v.aliases for v in reg.list_versions("demo")} == {1: ("production",), 2: ()}
        assert [e["version"] for e in reg.audit_trail("demo", "promote")] == [1]
        [refusal] = reg.audit_trail("demo", "retrain")
        assert refusal["version"] == 2 and refusal["actor"] == "retrain"
        assert refusal["detail"]["promoted"] is False and refusal["detail"]["checks"] == decision["checks"]
        assert refusal["detail"]["scores"] == decision["scores"]
    finally:
        reg.close()


def test_retrain_cli_promotes_a_challenger_trained_on_correct_feedback(tiny_trained_run: Path, tmp_path: Path) -> None:
    reg = make_registry(tmp_path, tiny_trained_run)
    try:
        fresh = synthetic_sentiment(80, seed=21)  # same generator, texts the champion never saw
        _give_feedback(reg, fresh["text"].tolist(), fresh["label"].tolist())

        decision, served = _retrain_cli(reg.store, tmp_path / "retrain")

        assert served == "demo@2"
        assert decision["promoted"] is True and decision["checks"] == {"test": True, "feedback": True}
        assert decision["data"]["feedback_texts"] == 80 and decision["data"]["feedback_holdout"] >= 1
        for part in ("test", "feedback"):
            champ, chal = decision["scores"]["champion"][part], decision["scores"]["challenger"][part]
            assert chal["macro_f1"] >= champ["macro_f1"] - 0.01
        assert reg.resolve("demo", "production").version == 2
        promotes = reg.audit_trail("demo", "promote")
        assert [e["version"] for e in promotes] == [1, 2]
        assert promotes[-1]["detail"] == {"alias": "production", "from": 1, "to": 2, "reason": "retrain", "champion": 1}
        [verdict] = reg.audit_trail("demo", "retrain")
        assert verdict["detail"]["promoted"] is True
    finally:
        reg.close()
