"""Drift signals one at a time: logged traffic that differs from the reference in exactly one respect
(confidence, predicted-class mix or text length) flags exactly that signal; in-distribution traffic is `ok`.
And the dashboard escapes hostile labels and messages (jinja2 autoescape, SVG charts)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from modelyard.ops.monitor import _chart, monitor, render_dashboard
from tests.conftest import synthetic_sentiment
from tests.production_helpers import make_registry

CASES = {
    "ok": set(),
    "confidence": {"confidence_psi", "confidence_ks"},
    "class-mix": {"class_mix_psi"},
    "text-length": {"text_length_psi", "text_length_ks"},
}
LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory, tiny_trained_run: Path):
    """One registry, one app per case (all serving the tiny run), each with 300 logged predictions."""
    from modelyard.models.loading import load

    tmp = tmp_path_factory.mktemp("drift_cases")
    reg = make_registry(tmp, tiny_trained_run)  # app `demo`, unused here
    for app in CASES:
        reg.promote(app, reg.register(tiny_trained_run, app).version)
    clf = load(reg.resolve("ok", "production").path)
    # Same generator as the training data; the model's own scores for them are the in-distribution baseline.
    texts = synthetic_sentiment(300, seed=11)["text"].tolist()
    probs = np.asarray(clf.predict_proba(texts), dtype=float)
    top, best = probs.max(axis=1), probs.argmax(axis=1)
    minority = int(np.argmin(np.bincount(best, minlength=2)))
    traffic = {
        "ok": (texts, probs),
        # the predicted class and the text kept, only the top score moved (to 0.99: above every reference value)
        "confidence": (texts, _probs(best, np.full(len(texts), 0.99))),
        # the confidence values and the texts kept, the predicted class mostly the reference's minority class
        "class-mix": (texts, _probs(np.where(np.arange(len(texts)) % 7 == 0, 1 - minority, minority), top)),
        # the scores and the words kept, each text said twice (twice the characters, the same vocabulary)
        "text-length": ([f"{t} {t}" for t in texts], probs),
    }
    for app, (logged_texts, logged_probs) in traffic.items():
        _log(reg, app, logged_texts, logged_probs)
    summaries = {app: monitor(reg, app, since="1h", output=tmp / app / "drift.html") for app in CASES}
    yield summaries
    reg.close()


def _probs(best: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Two-class probability rows whose argmax is ``best`` and whose maximum is ``top``."""
    out = np.column_stack([1.0 - top, 1.0 - top])
    out[np.arange(len(best)), best] = top
    return out


def _log(reg, app: str, texts: list[str], probs: np.ndarray) -> None:
    now = datetime.now(timezone.utc)
    reg.log_predictions(
        [
            {
                "id": str(uuid.uuid4()),
                "at": now,
                "app": app,
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


@pytest.mark.parametrize("case", list(CASES))
def test_exactly_the_shifted_signal_flags(drifted: dict, case: str) -> None:
    summary = drifted[case]
    signals = summary["signals"]
    assert summary["n_live"] == 300
    assert set(signals) == {
        "confidence_psi",
        "confidence_ks",
        "class_mix_psi",
        "text_length_psi",
        "text_length_ks",
        "embedding_cosine_distance",
    }
    flagged = {name for name, s in signals.items() if s["drift"]}
    assert flagged == CASES[case], signals
    assert summary["status"] == ("ok" if case == "ok" else "drift")
    for name, s in signals.items():  # the verdict is exactly value > threshold
        assert s["drift"] == (s["value"] > s["threshold"]), name


def test_class_mix_shift_is_reported_in_the_summary(drifted: dict) -> None:
    mix = drifted["class-mix"]["class_mix"]
    assert set(mix) == {"reference", "live"} and set(mix["live"]) == set(LABELS)
    assert max(mix["live"].values()) == pytest.approx(257 / 300, abs=1e-4)  # 6 of every 7 rows moved
    assert sum(mix["reference"].values()) == pytest.approx(1.0, abs=1e-3)


def test_dashboard_escapes_hostile_labels_and_messages(tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script>"
    summary = {
        "app": "demo",
        "version": 3,
        "since": "<b>7d</b>",
        "n_live": 40,
        "n_reference": 96,
        "at": "2026-01-01T00:00:00+00:00",
        "status": "drift",
        "message": '<img src=x onerror="alert(2)">',
        "signals": {"class_mix_psi": {"value": 0.5, "threshold": 0.2, "drift": True}},
        "class_mix": {"reference": {hostile: 0.5, "ok": 0.5}, "live": {hostile: 0.9, "ok": 0.1}},
    }
    chart = _chart(np.array([0.5, 0.5]), np.array([0.9, 0.1]), "predicted-class mix", categorical=[hostile, "ok"])
    page = render_dashboard(summary, [{"svg": chart, "caption": hostile}])

    assert "<script" not in page.lower() and "<img" not in page and "<b>7d" not in page
    # the label is shown, escaped: in the class-mix table and the caption, and (shortened) as the chart's tick
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 2
    assert page.count("&lt;script&gt;alert(1)&lt;/scrip") == 3
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in page and "&lt;b&gt;7d&lt;/b&gt;" in page
    assert page.count("<svg") == 1 and "DRIFT" in page and "0.5000" in page
