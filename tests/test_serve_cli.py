"""`modelyard serve RUN_DIR` as a real process: readiness, predictions from the trained model, limits, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from modelyard.config import load_recipe
from modelyard.training.run import train
from tests.conftest import synthetic_sentiment, write_tiny_recipe


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    tmp = tmp_path_factory.mktemp("serve")
    data = tmp / "reviews.csv"
    synthetic_sentiment(240).to_csv(data, index=False)
    return train(load_recipe(write_tiny_recipe(tmp, data, tiny_backbone)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("runtime", ["torch", "onnx-int8"])
def test_serve_process_end_to_end(tiny_run: Path, runtime: str) -> None:
    if runtime != "torch":
        from typer.testing import CliRunner

        from modelyard.cli import app

        r = CliRunner().invoke(app, ["compress", str(tiny_run), "--methods", runtime, "--latency-repeats", "2"])
        assert r.exit_code == 0, r.stderr
        rows = {row["method"]: row for row in json.loads((tiny_run / "compression.json").read_text())["rows"]}
        assert rows[runtime]["agreement"] >= 0.99  # the documented tolerance (compression.TOLERANCES)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard.cli", "serve", str(tiny_run), "--port", str(port), "--runtime", runtime],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                r = httpx.get(f"{base}/readyz", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.2)
        assert r.json()["model"]["labels"] == ["neg", "pos"]
        assert httpx.get(f"{base}/healthz").status_code == 200

        r = httpx.post(f"{base}/v1/predict", json={"texts": ["the film was great fun", "a dull and boring story"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [p["label"] for p in body["predictions"]] == ["pos", "neg"]
        assert body["model"]["run_id"] == tiny_run.name
        assert body["model"].get("runtime", "torch") == runtime
        assert all(abs(sum(p["scores"].values()) - 1) < 1e-6 for p in body["predictions"])

        r = httpx.post(f"{base}/v1/predict", json={"texts": ["x"] * 65})
        assert r.status_code == 413 and r.json()["error"]["limit"] == 64
        r = httpx.post(f"{base}/v1/predict", content=b"not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"
        assert "/v1/predict" in httpx.get(f"{base}/openapi.json").json()["paths"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    # uvicorn re-raises SIGTERM after a clean shutdown (exit -15/143); anything else is a crash.
    assert proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), proc.stderr.read() if proc.stderr else ""


def test_serve_refuses_missing_variant(tiny_run: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "serve", str(tiny_run), "--runtime", "prune"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "modelyard compress" in out.stderr


def test_serve_refuses_bad_paths(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "serve", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "not found" in out.stderr
