"""Data-parallel training on real engines: torchrun/DDP (gloo) and Ray Train, tiny seeded models on CPU.

The parity tests switch dropout off: then a 2-process step over the same global batch is the 1-process step, so
the final weights must agree within 1e-5 (float sums in another order are the only difference).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from modelyard.config import load_recipe
from modelyard.errors import ModelyardError
from modelyard.training.run import train
from tests.conftest import synthetic_sentiment, write_tiny_recipe
from tests.production_helpers import free_port

pytestmark = pytest.mark.distributed
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def no_dropout_backbone(tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("nodrop") / "backbone"
    shutil.copytree(tiny_backbone, path)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return path


def _recipe(tmp: Path, data: Path, backbone: Path, *overrides: str, **train_keys: object):
    tmp.mkdir(parents=True, exist_ok=True)
    return load_recipe(write_tiny_recipe(tmp, data, backbone, **train_keys), list(overrides))


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, no_dropout_backbone: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("one")
    data = tmp / "reviews.csv"
    synthetic_sentiment(240).to_csv(data, index=False)
    return data, train(_recipe(tmp / "one", data, no_dropout_backbone, "model.dropout=0.0", epochs=1))


@pytest.mark.parametrize("backend", ["torchrun", "ray"])
def test_two_workers_end_with_the_one_process_weights(
    backend: str, one_process: tuple[Path, Path], no_dropout_backbone: Path, tmp_path: Path
) -> None:
    data, reference = one_process
    recipe = _recipe(
        tmp_path,
        data,
        no_dropout_backbone,
        "model.dropout=0.0",
        f"distributed.backend={backend}",
        "distributed.workers=2",
        epochs=1,
    )
    run = train(recipe)
    assert _max_diff(_weights(run), _weights(reference)) <= 1e-5
    # the weights did move: parity is not two untouched initialisations
    assert _max_diff(_weights(run), {k: v * 0 for k, v in _weights(run).items()}) > 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["distributed"]["backend"] == backend
    assert [w["rank"] for w in manifest["distributed"]["workers"]] == [0, 1]
    assert _files(run) == _files(reference)  # rank 0 alone wrote: the same artefacts as a one-process run
    steps = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    beats = [r["ranks"] for r in steps if "ranks" in r]
    assert beats and {b["rank"] for b in beats[-1]} == {0, 1}  # per-rank heartbeats in progress.jsonl
    ref_steps = [json.loads(line) for line in (reference / "progress.jsonl").read_text().splitlines()]
    ref_losses = [r["loss"] for r in ref_steps if "loss" in r]
    losses = [r["loss"] for r in steps if "loss" in r]
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)  # logged losses are the global batch's, not rank 0's


def test_interrupted_two_process_run_resumes_exactly(tiny_backbone: Path, tmp_path: Path) -> None:
    """Dropout on: the resumed run must restore every rank's own RNG stream to land on the same weights."""
    data = tmp_path / "reviews.csv"
    synthetic_sentiment(240).to_csv(data, index=False)
    dist = ("distributed.backend=torchrun", "distributed.workers=2")
    reference = train(_recipe(tmp_path / "ref", data, tiny_backbone, *dist, epochs=2, checkpoint_every_steps=4))
    recipe = _recipe(tmp_path / "cut", data, tiny_backbone, *dist, epochs=2, checkpoint_every_steps=4)
    with pytest.raises(ModelyardError, match=r"rank \d .*stopped after step 11"):
        train(recipe, stop_after_step=11)
    (partial,) = list((tmp_path / "cut" / "runs").glob("*.incomplete"))
    assert not (partial / "manifest.json").exists()
    state = json.loads((partial / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["global_step"] == 9 and len(state["ranks"]) == 2
    assert state["ranks"][0]["torch_cpu"] != state["ranks"][1]["torch_cpu"]  # each rank's own dropout stream
    resumed = train(recipe, resume=partial)
    assert _max_diff(_weights(resumed), _weights(reference)) <= 1e-6


def test_torchrun_two_nodes_on_one_machine(tiny_backbone: Path, tmp_path: Path) -> None:
    """`torchrun --nnodes 2`: two launchers (one per "node") meet at a loopback c10d rendezvous."""
    data = tmp_path / "reviews.csv"
    synthetic_sentiment(240).to_csv(data, index=False)
    recipe = write_tiny_recipe(tmp_path, data, tiny_backbone, epochs=1)
    port = free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(rank),
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"127.0.0.1:{port}",
                "--rdzv_id",
                "two-nodes",
                "--local_addr",
                "127.0.0.1",
                "-m",
                "modelyard",
                "train",
                str(recipe),
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in nodes]
    for p, (_, err) in zip(nodes, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    (run,) = [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]
    assert not run.name.endswith(".incomplete")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["distributed"]["backend"] == "torchrun"
    assert outs[0][0].strip().splitlines()[-1] == str(run)  # rank 0 prints the run directory, as `train` does


@pytest.mark.parametrize(("how", "within_s"), [(signal.SIGKILL, 60), (signal.SIGSTOP, 90)], ids=["dies", "stalls"])
def test_a_lost_worker_fails_the_run_naming_its_rank(
    how: signal.Signals, within_s: float, tiny_backbone: Path, tmp_path: Path
) -> None:
    data = tmp_path / "reviews.csv"
    synthetic_sentiment(240).to_csv(data, index=False)
    recipe = write_tiny_recipe(tmp_path, data, tiny_backbone, epochs=500, log_every_steps=1, checkpoint_every_steps=5)
    cmd = [sys.executable, "-m", "modelyard", "train", str(recipe)]
    cmd += ["distributed.backend=torchrun", "distributed.workers=2", "distributed.timeout_s=15"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, deadline = None, time.time() + 180
    while victim is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        for progress in (tmp_path / "runs").glob("*.incomplete/progress.jsonl"):
            for line in progress.read_text().splitlines()[-3:]:
                record = json.loads(line)
                ranks = {b["rank"]: b for b in record.get("ranks", [])}
                if record.get("step", 0) > 6 and 1 in ranks:
                    victim = ranks[1]["pid"]
    assert victim is not None, "the run never reported rank 1's heartbeat"
    os.kill(victim, how)
    t0 = time.time()
    try:
        _, err = proc.communicate(timeout=within_s)
    finally:
        if how == signal.SIGSTOP:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        proc.kill()
    assert time.time() - t0 < within_s
    assert proc.returncode != 0
    assert "rank 1" in err and ("SIGKILL" in err if how == signal.SIGKILL else "stopped responding" in err), err[-2000:]
    (run,) = list((tmp_path / "runs").iterdir())
    assert run.name.endswith(".incomplete") and not (run / "manifest.json").exists()  # never looks finished
    assert (run / "checkpoints" / "last" / "trainer_state.json").is_file()  # and stays resumable


@pytest.fixture(scope="module")
def served_run(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    tmp = tmp_path_factory.mktemp("served")
    data = tmp / "reviews.csv"
    synthetic_sentiment(240).to_csv(data, index=False)
    return train(load_recipe(write_tiny_recipe(tmp, data, tiny_backbone)))


def test_ray_serve_two_replicas_keep_the_http_contract(served_run: Path, tmp_path: Path) -> None:
    """`serve RUN --backend ray --replicas 2`: the uvicorn server's statuses, bodies, limits and API keys."""
    import httpx

    from modelyard.registry import open_registry

    registry = open_registry(tmp_path / "store")
    key = registry.create_key(["predict"])
    port = free_port()
    cmd = [sys.executable, "-m", "modelyard", "serve", str(served_run), "serve.auth=true", "--store"]
    cmd += [str(tmp_path / "store"), "--backend", "ray", "--replicas", "2", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                r = httpx.get(f"{base}/readyz", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Ray Serve deployment never became ready"
            time.sleep(0.5)
        assert r.json()["model"]["labels"] == ["neg", "pos"]
        texts = {"texts": ["the film was great fun", "a dull and boring story"]}
        r = httpx.post(f"{base}/v1/predict", json=texts)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        for _ in range(6):  # several requests: both replicas answer, and answer alike
            r = httpx.post(f"{base}/v1/predict", json=texts, headers=auth)
            assert r.status_code == 200, r.text
            body = r.json()
            assert [p["label"] for p in body["predictions"]] == ["pos", "neg"]
            assert body["model"]["run_id"] == served_run.name
        r = httpx.post(f"{base}/v1/predict", json={"texts": ["x"] * 65}, headers=auth)
        assert r.status_code == 413 and r.json()["error"]["limit"] == 64
        r = httpx.post(f"{base}/v1/predict", content=b"not json", headers={**auth, "content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"
        assert httpx.get(f"{base}/openapi.json").json()["paths"].keys() >= {"/v1/predict", "/readyz"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err[-2000:]
    assert "2 replica(s)" in err


def test_each_tuning_trial_can_itself_be_a_distributed_run(tiny_backbone: Path, tmp_path: Path) -> None:
    """A search whose recipe trains with 2 torchrun processes: every trial is a finished 2-worker run."""
    import yaml

    from modelyard.tuning import tune
    from modelyard.tuning.ray_backend import trial_resources

    data = tmp_path / "reviews.csv"
    synthetic_sentiment(240).to_csv(data, index=False)
    path = write_tiny_recipe(tmp_path, data, tiny_backbone, epochs=1)
    raw = yaml.safe_load(path.read_text())
    raw["tune"] = {"space": {"train.learning_rate": {"type": "loguniform", "low": 1e-3, "high": 3e-2}}, "seed": 1}
    raw["distributed"] = {"backend": "torchrun", "workers": 2}
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    recipe = load_recipe(path)
    assert trial_resources(recipe) == {"cpu": 2.0}  # Ray reserves the trial's torchrun processes on its node
    tune_dir = tune(recipe, trials=2)
    records = json.loads((tune_dir / "trials.json").read_text())
    assert [r["state"] for r in records] == ["COMPLETE", "COMPLETE"]
    for record in records:
        manifest = json.loads((Path(record["run_dir"]) / "manifest.json").read_text())
        assert manifest["world_size"] == 2
