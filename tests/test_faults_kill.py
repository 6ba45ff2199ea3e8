"""Kills at random moments of each stage (``make test-faults``; ``.ci/run`` runs it after ``make test``).

For every stage that writes: time one clean run, then start it again several times and ``SIGKILL`` it at a
random moment (seeded) within that time. After each kill the visible state on disk must be the previous one
or the complete new one, never a half-written file, folder or registry row; and a re-run must just work.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import synthetic_sentiment
from tests.fault_helpers import REPO, copy_run, modelyard, visible

pytestmark = pytest.mark.faults_slow

KILLS = 4  # random kill points per stage
SEED = 20261203


def _spawn(*args: str | Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "modelyard", *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _timed(*args: str | Path) -> float:
    t0 = time.monotonic()
    res = modelyard(*args)
    assert res.rc == 0, res.stderr[-2000:]
    return time.monotonic() - t0


def kill_at_random(args: list[str | Path], duration: float, check: Callable[[int], None], stage: str) -> list[float]:
    """Start ``args`` ``KILLS`` times, SIGKILL each at a random moment in ``duration``; ``check(i)`` after each."""
    rng = random.Random(f"{SEED}-{stage}")
    moments = sorted(rng.uniform(0.3, duration * 1.05) for _ in range(KILLS))
    for i, at in enumerate(moments):
        proc = _spawn(*args)
        try:
            proc.wait(timeout=at)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        check(i)
    return moments


@pytest.fixture
def run(tiny_trained_run: Path, tmp_path: Path) -> Path:
    return copy_run(tiny_trained_run, tmp_path)


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "texts.csv"
    synthetic_sentiment(400, seed=11).to_csv(path, index=False)
    return path


def test_predict_killed_leaves_no_or_a_complete_output(run: Path, texts: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "preds.csv"
    duration = _timed("predict", run, "-i", texts, "-o", out)
    complete = pd.read_csv(out)
    out.unlink()

    def check(i: int) -> None:
        if out.exists():
            pd.testing.assert_frame_equal(pd.read_csv(out), complete)
        assert visible(out.parent) in ([], ["preds.csv"])

    kill_at_random(["predict", run, "-i", texts, "-o", out], duration, check, "predict")
    assert modelyard("predict", run, "-i", texts, "-o", out).rc == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), complete)


def test_label_killed_leaves_no_or_a_complete_output(run: Path, texts: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "labelled.csv"
    duration = _timed("label", run, "-i", texts, "-o", out)
    complete = pd.read_csv(out)
    out.unlink()

    def check(i: int) -> None:
        if out.exists():
            pd.testing.assert_frame_equal(pd.read_csv(out), complete)

    kill_at_random(["label", run, "-i", texts, "-o", out], duration, check, "label")
    assert modelyard("label", run, "-i", texts, "-o", out).rc == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), complete)


def test_evaluate_killed_leaves_only_complete_evaluations(run: Path, texts: Path) -> None:
    duration = _timed("evaluate", run, "--data", texts)
    expected = set(os.listdir(run / "evaluations" / visible(run / "evaluations")[0]))

    def check(i: int) -> None:
        for name in visible(run / "evaluations"):
            assert set(os.listdir(run / "evaluations" / name)) == expected, name
            json.loads((run / "evaluations" / name / "metrics.json").read_text())
        json.loads((run / "metrics.json").read_text())

    kill_at_random(["evaluate", run, "--data", texts], duration, check, "evaluate")
    assert modelyard("evaluate", run, "--data", texts).rc == 0
    assert modelyard("evaluate", run).rc == 0


def test_compress_killed_leaves_complete_variants_and_a_readable_summary(run: Path) -> None:
    args: list[str | Path] = ["compress", run, "--methods", "onnx,prune", "--recovery-steps", "2"]
    args += ["--latency-repeats", "2"]
    duration = _timed(*args)
    from modelyard.compression.variants import check_variant

    def check(i: int) -> None:
        for method in visible(run / "compressed"):
            check_variant(run, method)  # every file of a visible variant is the one recorded
        if (run / "compression.json").exists():
            json.loads((run / "compression.json").read_text())

    kill_at_random(args, duration, check, "compress")
    assert modelyard(*args).rc == 0  # the lock of a killed run is released by the kernel
    assert visible(run / "compressed") == ["onnx", "prune"]


def test_explain_killed_leaves_pages_with_their_data(run: Path) -> None:
    args: list[str | Path] = ["explain", run, "--text", "a good film", "--text", "an awful plot", "--method", "ig"]
    duration = _timed(*args)

    def check(i: int) -> None:
        for name in visible(run / "explanations"):
            if name.endswith(".html"):
                page = run / "explanations" / name
                data = json.loads(page.with_suffix(".json").read_text())  # the data beside every page
                assert len(data["explanations"]) == 2

    kill_at_random(args, duration, check, "explain")
    assert modelyard(*args).rc == 0


def test_register_and_promote_killed_keep_the_registry_consistent(run: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert modelyard("registry", "register", run, "--app", "demo", "--store", store).rc == 0
    assert modelyard("registry", "promote", "demo", "1", "--store", store).rc == 0
    duration = _timed("registry", "register", run, "--app", "demo", "--store", store)

    def check(i: int) -> None:
        listed = modelyard("registry", "list", "demo", "--json", "--store", store)
        assert listed.rc == 0, listed.stderr
        versions = [json.loads(line)["version"] for line in listed.stdout.splitlines()]
        assert visible(store / "models" / "demo") == sorted(f"v{v}" for v in versions)  # no row without files
        ok = modelyard("registry", "check", "--store", store)
        assert ok.rc == 0, ok.stderr

    kill_at_random(["registry", "register", run, "--app", "demo", "--store", store], duration, check, "register")
    last = json.loads(modelyard("registry", "list", "demo", "--json", "--store", store).stdout.splitlines()[-1])

    def aliases(i: int) -> None:
        rows = [
            json.loads(x) for x in modelyard("registry", "list", "demo", "--json", "--store", store).stdout.splitlines()
        ]
        production = [r["version"] for r in rows if "production" in r["aliases"]]
        assert production in ([1], [last["version"]]), production

    promote_args = ["registry", "promote", "demo", str(last["version"]), "--store", store]
    kill_at_random(promote_args, _timed(*promote_args) + 0.5, aliases, "promote")
    assert modelyard("registry", "register", run, "--app", "demo", "--store", store).rc == 0


def test_pretrain_killed_leaves_no_half_backbone(tmp_path: Path) -> None:
    from tests.test_pretrain import write_pretrain_recipe

    recipe = write_pretrain_recipe(tmp_path)
    runs = tmp_path / "runs"
    duration = _timed("pretrain", recipe)
    [complete] = visible(runs)
    expected = set(os.listdir(runs / complete))

    def check(i: int) -> None:
        for name in visible(runs):
            assert not name.endswith(".incomplete"), name  # an interrupted pretraining is removed, not kept
            assert set(os.listdir(runs / name)) == expected, name

    kill_at_random(["pretrain", recipe], duration, check, "pretrain")
    assert modelyard("pretrain", recipe).rc == 0


def test_tune_killed_resumes(tmp_path: Path, tiny_backbone: Path) -> None:
    from tests.conftest import write_tiny_recipe

    data = tmp_path / "reviews.csv"
    synthetic_sentiment(120).to_csv(data, index=False)
    recipe = write_tiny_recipe(tmp_path, data, tiny_backbone, epochs=1)
    space = "tune.space={train.learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}}"
    args: list[str | Path] = ["tune", recipe, "tune.trials=3", space, f"output_dir={tmp_path / 'runs'}"]
    duration = _timed(*args)
    tune_dir = tmp_path / "runs" / "tune-tiny"
    for extra in tune_dir.iterdir():  # start the search over, then kill it at random moments
        if extra.is_dir():
            import shutil

            shutil.rmtree(extra)
        else:
            extra.unlink()

    def check(i: int) -> None:
        if (tune_dir / "trials.json").exists():
            json.loads((tune_dir / "trials.json").read_text())

    kill_at_random(args, duration, check, "tune")
    res = modelyard(*args, "--resume")
    assert res.rc == 0, res.stderr[-2000:]
    trials = json.loads((tune_dir / "trials.json").read_text())
    assert sum(1 for t in trials if t.get("state") in ("COMPLETE", "PRUNED")) >= 3, trials
