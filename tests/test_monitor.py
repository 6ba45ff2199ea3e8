"""Drift monitoring: PSI/KS maths, and `modelyard monitor` on in-distribution vs shifted logged traffic
(HTML dashboard + JSON summary, exit 1 above thresholds, no verdict without enough traffic)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from modelyard.cli import app as cli_app
from modelyard.ops.monitor import categorical_psi, psi
from tests.conftest import synthetic_sentiment
from tests.production_helpers import make_registry


def test_psi_is_zero_for_same_distribution_and_large_for_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 5000)
    assert psi(ref, rng.normal(0, 1, 5000)) < 0.02
    assert psi(ref, rng.normal(1.5, 1, 5000)) > 0.5
    assert categorical_psi([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert categorical_psi([0.5, 0.5], [0.95, 0.05]) > 0.5


def _log(reg, texts: list[str], probs: np.ndarray) -> None:
    now = datetime.now(timezone.utc)
    rows = [
        {
            "id": str(uuid.uuid4()),
            "at": now,
            "app": "demo",
            "version": 1,
            "key_id": None,
            "text": t,
            "label": ["neg", "pos"][int(p.argmax())],
            "scores": {"neg": float(p[0]), "pos": float(p[1])},
            "latency_ms": 1.0,
        }
        for t, p in zip(texts, probs, strict=True)
    ]
    reg.log_predictions(rows)


@pytest.fixture()
def reg_and_model(tmp_path: Path, tiny_trained_run: Path):
    from modelyard.models.loading import load

    reg = make_registry(tmp_path, tiny_trained_run)
    yield reg, load(reg.resolve("demo", "production").path)
    reg.close()


def test_monitor_cli_ok_then_drift(reg_and_model, tmp_path: Path) -> None:
    reg, clf = reg_and_model
    store = str(reg.store)
    runner = CliRunner()
    # too little traffic: no verdict, exit 0
    r = runner.invoke(cli_app, ["monitor", "demo", "--store", store])
    assert r.exit_code == 0, r.output
    assert json.loads(Path(r.stdout.strip().splitlines()[-1]).with_suffix(".json").read_text())["status"] == (
        "insufficient_data"
    )

    live = synthetic_sentiment(300, seed=11)["text"].tolist()  # same generator as the training data
    _log(reg, live, clf.predict_proba(live))
    out = tmp_path / "ok.html"
    r = runner.invoke(cli_app, ["monitor", "demo", "--since", "1h", "--store", store, "-o", str(out)])
    summary = json.loads(out.with_suffix(".json").read_text())
    assert r.exit_code == 0, (r.output, summary)
    assert summary["status"] == "ok" and summary["n_live"] == 300
    assert set(summary["signals"]) == {
        "confidence_psi",
        "confidence_ks",
        "class_mix_psi",
        "text_length_psi",
        "text_length_ks",
        "embedding_cosine_distance",
    }
    page = out.read_text()
    # three inline SVG charts (the report's figure helpers), no raster images, nothing external
    assert page.count("<svg") == 3 and "data:image/png" not in page and "confidence_psi" in page

    # shifted traffic: long texts of unseen words, all scored with one class
    shifted = [" ".join(["zebra quantum invoice"] * 12) + f" {i}" for i in range(600)]
    _log(reg, shifted, clf.predict_proba(shifted))
    out = tmp_path / "drift.html"
    r = runner.invoke(cli_app, ["monitor", "demo", "--store", store, "-o", str(out)])
    summary = json.loads(out.with_suffix(".json").read_text())
    assert r.exit_code == 1, (r.output, summary)
    assert summary["status"] == "drift"
    assert summary["signals"]["text_length_psi"]["drift"] and summary["signals"]["text_length_ks"]["drift"]
    assert "DRIFT" in out.read_text()
