"""The text side of out-of-distribution detection: a VAE over the served encoder's sentence embeddings."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from modelyard.cli import app as cli_app
from modelyard.ops.text_ood import fit_text_ood
from tests.conftest import synthetic_sentiment
from tests.production_helpers import make_registry

LABELS = ["neg", "pos"]


def test_the_embedding_vae_ranks_planted_outliers_above_inliers() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    basis = rng.normal(size=(4, 32))  # the training vectors live near a 4-dimensional subspace
    inside = lambda n: rng.normal(size=(n, 4)) @ basis + 0.05 * rng.normal(size=(n, 32))  # noqa: E731
    train, valid, test = inside(1500), inside(300), inside(300)
    outside = rng.normal(size=(300, 32)) * 2.0
    fitted = fit_text_ood(train, valid, seed=0, steps=1500)
    s_in, s_out = fitted.scores(test), fitted.scores(outside)
    assert roc_auc_score(np.r_[np.zeros(300), np.ones(300)], np.r_[s_in, s_out]) > 0.99
    assert (s_in > fitted.threshold).mean() < 0.05 and (s_out > fitted.threshold).mean() > 0.95
    again = fit_text_ood(train, valid, seed=0, steps=1500)
    assert np.array_equal(again.scores(outside), s_out) and again.threshold == fitted.threshold  # seeded


def _log(reg, texts: list[str], probs: np.ndarray) -> None:
    now = datetime.now(timezone.utc)
    reg.log_predictions(
        [
            {
                "id": str(uuid.uuid4()),
                "at": now,
                "app": "demo",
                "version": 1,
                "key_id": None,
                "text": text,
                "label": LABELS[int(p.argmax())],
                "scores": dict(zip(LABELS, map(float, p), strict=True)),
                "latency_ms": 1.0,
            }
            for text, p in zip(texts, probs, strict=True)
        ]
    )


@pytest.mark.parametrize("traffic", ["in-distribution", "chinese"])
def test_monitor_text_ood_flags_texts_unlike_the_training_texts(
    traffic: str, tiny_trained_run: Path, tmp_path: Path
) -> None:
    from modelyard.models.loading import load

    reg = make_registry(tmp_path, tiny_trained_run)
    clf = load(reg.resolve("demo", "production").path)
    if traffic == "in-distribution":
        texts = synthetic_sentiment(200, seed=11)["text"].tolist()  # the training data's generator
    else:
        texts = [f"这家酒店的房间很干净，服务也很好，第{i}次入住" for i in range(200)]
    _log(reg, texts, clf.predict_proba(texts))
    out = tmp_path / "drift.html"
    args = ["monitor", "demo", "--since", "1h", "--store", str(reg.store), "-o", str(out), "--text-ood"]
    result = CliRunner().invoke(cli_app, args)
    summary = json.loads(out.with_suffix(".json").read_text())
    share = summary["signals"]["text_ood_flagged_share"]
    assert summary["text_ood"]["scored"] == 200 and summary["text_ood"]["threshold"] > 0
    if traffic == "in-distribution":
        assert share["value"] <= 0.05 and not share["drift"]
    else:
        assert share["value"] > 0.9 and share["drift"] and result.exit_code == 1
    # without --text-ood the signal set is the usual one
    plain = CliRunner().invoke(cli_app, ["monitor", "demo", "--since", "1h", "--store", str(reg.store), "-o", str(out)])
    assert (
        plain.exit_code in (0, 1)
        and "text_ood_flagged_share" not in json.loads(out.with_suffix(".json").read_text())["signals"]
    )
    reg.close()
