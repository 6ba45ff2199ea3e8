"""Fault injection: faults of the machine, not of the input, each met with one line and nothing lost.

Every case runs the real ``modelyard`` command as a subprocess against a real fault and asserts four things:
a non-zero exit status, one line on stderr without a traceback, the path (or mount) named in it, and the state
on disk afterwards (the previous state intact, or the new one complete; never half-written).

The faults are real: a full disk is a small tmpfs filled up to a chosen margin (root only; skipped otherwise),
a read-only folder is a read-only bind mount as root (permission bits do not stop root) or ``chmod`` otherwise,
damaged files are truncated or garbled copies, and memory is capped with ``RLIMIT_AS``. Kills at random
moments of each stage are in ``tests/test_faults_kill.py`` (marked ``faults_slow``: ``make test-faults``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import synthetic_sentiment, write_tiny_recipe
from tests.fault_helpers import (
    IS_ROOT,
    assert_one_line_error,
    copy_run,
    full_disk,
    garble,
    modelyard,
    read_only,
    snapshot,
    truncate,
    visible,
)

# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    """A one-epoch recipe of the tiny backbone on 120 synthetic reviews (seconds to train)."""
    tmp = tmp_path_factory.mktemp("fault_recipe")
    data = tmp / "reviews.csv"
    synthetic_sentiment(120).to_csv(data, index=False)
    return write_tiny_recipe(tmp, data, tiny_backbone, epochs=1, log_every_steps=50)


@pytest.fixture
def run(tiny_trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished tiny run (cases damage it)."""
    return copy_run(tiny_trained_run, tmp_path)


@pytest.fixture
def texts_csv(tmp_path: Path) -> Path:
    path = tmp_path / "texts.csv"
    synthetic_sentiment(40, seed=5)[["text"]].to_csv(path, index=False)
    return path


def _train(recipe: Path, *overrides: str) -> object:
    return modelyard("train", recipe, *overrides, timeout=600)


# ----------------------------------------------------------------------------- output paths of `train`


def test_train_output_dir_under_proc_is_one_line(tiny_recipe: Path) -> None:
    res = _train(tiny_recipe, "output_dir=/proc/modelyard-runs")
    assert_one_line_error(res, "cannot create output_dir /proc/modelyard-runs", "choose")


def test_train_output_dir_that_is_a_file_is_one_line(tiny_recipe: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    res = _train(tiny_recipe, f"output_dir={blocker}")
    assert_one_line_error(res, f"cannot create output_dir {blocker}", "a file of that name exists")
    assert blocker.read_text() == "not a folder"


def test_train_output_dir_below_a_file_is_one_line(tiny_recipe: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = _train(tiny_recipe, f"output_dir={blocker}/runs")
    assert_one_line_error(res, f"cannot create output_dir {blocker}/runs", "not a folder")


def test_train_into_a_read_only_folder_is_one_line(tiny_recipe: Path, tmp_path: Path) -> None:
    with read_only(tmp_path / "ro") as ro:
        res = _train(tiny_recipe, f"output_dir={ro}/runs")
        line = assert_one_line_error(res, f"output_dir {ro}/runs", "writable output_dir")
        assert ("read-only" in line) or ("permission denied" in line)
    assert visible(ro) == []


@pytest.mark.parametrize("leave_kb", [0, 24, 160, 420])
def test_train_on_a_full_disk_is_one_line_and_leaves_no_half_run(tiny_recipe: Path, leave_kb: int) -> None:
    """The disk fills at a different stage for each margin: the inputs, a checkpoint, the weights, the report."""
    with full_disk(3072, leave_kb) as mnt:
        res = _train(tiny_recipe, f"output_dir={mnt}/runs")
        assert_one_line_error(res, f"no space left on {mnt}", "free space there or choose another output_dir")
        left = visible(mnt / "runs")
        # nothing, or an unfinished run that can be resumed once space is freed (its checkpoint is complete)
        assert all(name.endswith(".incomplete") for name in left), left
        for name in left:
            last = mnt / "runs" / name / "checkpoints" / "last"
            assert (last / "trainer_state.json").is_file(), sorted(p.name for p in (mnt / "runs" / name).iterdir())


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing(tiny_recipe: Path) -> None:
    with full_disk(3072, 160) as mnt:
        res = _train(tiny_recipe, f"output_dir={mnt}/runs")
        line = assert_one_line_error(res, f"no space left on {mnt}", "needs ~", "free")
        assert "checkpoint" in line or "model/" in line, line


# ------------------------------------------------------------------------------------------------ predict


def test_predict_into_a_missing_folder_creates_it(run: Path, texts_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "preds.csv"
    res = modelyard("predict", run, "-i", texts_csv, "-o", out)
    assert res.rc == 0, res.stderr
    assert len(pd.read_csv(out)) == 40


def test_predict_into_a_read_only_folder_is_one_line(run: Path, texts_csv: Path, tmp_path: Path) -> None:
    with read_only(tmp_path / "ro") as ro:
        res = modelyard("predict", run, "-i", texts_csv, "-o", ro / "preds.csv")
        assert_one_line_error(res, str(ro), "read-only" if IS_ROOT else "permission denied", "writable --output")
    assert visible(ro) == []


def test_predict_on_a_full_disk_keeps_the_previous_output(run: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    frame = synthetic_sentiment(3000, seed=9)[["text"]]
    frame["text"] = frame["text"] + " " + "padding " * 40
    frame.to_csv(big, index=False)
    with full_disk(3072, 200) as mnt:
        out = mnt / "preds.csv"
        out.write_text("text,pred\nold,row\n")
        res = modelyard("predict", run, "-i", big, "-o", out)
        assert_one_line_error(res, f"no space left on {mnt}", str(out))
        assert out.read_text() == "text,pred\nold,row\n"  # the previous file is intact
        assert visible(mnt) == ["preds.csv"]  # no temporary file left beside it
        assert [p.name for p in mnt.iterdir() if p.name.startswith(".") and p.name != ".filler"] == []


def test_label_into_a_read_only_folder_is_one_line(run: Path, texts_csv: Path, tmp_path: Path) -> None:
    with read_only(tmp_path / "ro") as ro:
        res = modelyard("label", run, "-i", texts_csv, "-o", ro / "labelled.csv")
        assert_one_line_error(res, str(ro), "writable --output")
    assert visible(ro) == []


# --------------------------------------------------------------------------------- evaluate, explain, compress


def test_evaluate_a_read_only_run_is_one_line_and_changes_nothing(run: Path) -> None:
    before = snapshot(run)
    with read_only(run):
        res = modelyard("evaluate", run)
        assert_one_line_error(res, str(run))
    assert snapshot(run) == before


def test_evaluate_a_file_on_a_full_disk_leaves_no_half_evaluation(tiny_trained_run: Path, texts_csv: Path) -> None:
    labelled = texts_csv.with_name("labelled.csv")
    synthetic_sentiment(40, seed=5).to_csv(labelled, index=False)
    with full_disk(3072, 2500) as mnt:
        run = copy_run(tiny_trained_run, mnt)
        (mnt / ".filler").unlink()
        with open(mnt / ".filler", "wb") as f:  # fill up again, leaving a little room
            import shutil

            f.write(b"\0" * max(0, shutil.disk_usage(mnt).free - 60 * 1024))
        res = modelyard("evaluate", run, "--data", labelled)
        assert_one_line_error(res, f"no space left on {mnt}")
        assert visible(run / "evaluations") == []


def test_explain_into_a_read_only_run_is_one_line(run: Path) -> None:
    with read_only(run):
        res = modelyard("explain", run, "--text", "a good film", "--method", "attention")
        assert_one_line_error(res, str(run))


def test_compress_a_read_only_run_is_one_line(run: Path) -> None:
    before = snapshot(run)
    with read_only(run):
        res = modelyard("compress", run, "--methods", "prune", "--recovery-steps", "0", "--latency-repeats", "1")
        assert_one_line_error(res, str(run))
    assert snapshot(run) == before


def test_two_compress_runs_on_one_run_directory_never_collide(run: Path) -> None:
    """The second one is refused at once (the first holds the run's compress lock) or runs after it."""
    args = [sys.executable, "-m", "modelyard", "compress", str(run), "--methods", "onnx", "--latency-repeats", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.monotonic() + 60
    while not (run / ".compress.lock").is_file() and first.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = modelyard("compress", run, "--methods", "onnx", "--latency-repeats", "1")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    if second.rc != 0:
        assert_one_line_error(second, "another `modelyard compress`", str(run), "wait for it to finish")
    result = json.loads((run / "compression.json").read_text())
    assert [r["method"] for r in result["rows"]][-1] == "onnx"
    assert visible(run / "compressed") == ["onnx"]


# ------------------------------------------------------------------------------------------ damaged files


PREDICT_DAMAGE = [
    ("model/model.safetensors", "truncate"),
    ("model/model.safetensors", "garble"),
    ("model/model.safetensors", "garble-head"),
    ("model/modelyard.json", "truncate"),
    ("model/modelyard.json", "garble"),
    ("model/modelyard.json", "delete"),
    ("model/config.json", "garble"),
    ("model/tokenizer.json", "truncate"),
    ("model/tokenizer_config.json", "garble"),
    ("manifest.json", "truncate"),
]


def _damage(path: Path, how: str) -> None:
    if how == "truncate":
        truncate(path, 0.5)
    elif how == "garble":
        garble(path, 0.5, 16)
    elif how == "garble-head":
        garble(path, 0.0, 16)
    elif how == "delete":
        path.unlink()
    else:  # pragma: no cover
        raise ValueError(how)


@pytest.mark.parametrize(("rel", "how"), PREDICT_DAMAGE, ids=[f"{r}-{h}" for r, h in PREDICT_DAMAGE])
def test_predict_with_a_damaged_run_file_names_it(
    run: Path, texts_csv: Path, tmp_path: Path, rel: str, how: str
) -> None:
    _damage(run / rel, how)
    out = tmp_path / "preds.csv"
    res = modelyard("predict", run, "-i", texts_csv, "-o", out)
    line = assert_one_line_error(res, str(run / rel))
    assert ("damaged" in line) or ("missing" in line), line
    assert ("re-run" in line) or ("restore" in line), line
    assert not out.exists()


def test_a_bare_model_folder_with_truncated_weights_is_named(run: Path, texts_csv: Path, tmp_path: Path) -> None:
    """Without a run's recorded checksums, the safetensors structure itself is checked."""
    model = run / "model"
    truncate(model / "model.safetensors", 0.9)
    res = modelyard("predict", model, "-i", texts_csv, "-o", tmp_path / "p.csv")
    assert_one_line_error(res, str(model / "model.safetensors"), "damaged", "truncated")


@pytest.mark.parametrize("rel", ["splits/test.parquet", "recipe.yaml", "splits/labels.json"])
def test_evaluate_with_a_damaged_run_file_names_it(run: Path, rel: str) -> None:
    garble(run / rel, 0.0, 24) if rel.endswith(".parquet") else (run / rel).write_text("{{{: [", encoding="utf-8")
    before = (run / "metrics.json").read_bytes()
    res = modelyard("evaluate", run)
    assert_one_line_error(res, str(run / rel))
    assert (run / "metrics.json").read_bytes() == before


@pytest.mark.parametrize(
    "name", ["model.safetensors", "optimizer.safetensors", "trainer_state.json", "rng.safetensors"]
)
def test_resume_from_a_damaged_checkpoint_names_it(tiny_recipe: Path, tmp_path: Path, name: str) -> None:
    from modelyard.config import load_recipe
    from modelyard.errors import ModelyardError
    from modelyard.training.run import train

    recipe = load_recipe(tiny_recipe, [f"output_dir={tmp_path / 'runs'}", "train.epochs=3"])
    with pytest.raises(ModelyardError):
        train(recipe, stop_after_step=7)  # epoch 1 (5 steps) is checkpointed, then the run stops
    [unfinished] = list((tmp_path / "runs").iterdir())
    target = unfinished / "checkpoints" / "last" / name
    truncate(target, 0.6) if name.endswith(".safetensors") else target.write_text('{"step": ', encoding="utf-8")
    res = modelyard("train", tiny_recipe, f"output_dir={tmp_path / 'runs'}", "--resume", unfinished)
    assert_one_line_error(res, str(target), "damaged", "start a new run")
    assert unfinished.is_dir()  # the unfinished run is left as it was


def test_registering_a_damaged_run_is_one_line_and_adds_nothing(run: Path, tmp_path: Path) -> None:
    garble(run / "model" / "model.safetensors", 0.5, 16)
    store = tmp_path / "store"
    res = modelyard("registry", "register", run, "--app", "demo", "--store", store)
    assert_one_line_error(res, str(run / "model" / "model.safetensors"), "damaged")
    listed = modelyard("registry", "list", "--store", store)
    assert listed.rc == 0 and "demo" not in listed.stdout
    assert visible(store / "models" / "demo") == []


@pytest.mark.parametrize("how", ["garble-head", "truncate", "garble"])
def test_a_damaged_registry_database_is_one_line(tiny_trained_run: Path, tmp_path: Path, how: str) -> None:
    store = tmp_path / "store"
    ok = modelyard("registry", "register", tiny_trained_run, "--app", "demo", "--store", store)
    assert ok.rc == 0, ok.stderr
    db = store / "registry.db"
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    if how == "garble":  # the page holding the versions' rows (its b-tree header and cells), not the file header
        import sqlite3

        with sqlite3.connect(db) as con:
            page = con.execute("PRAGMA page_size").fetchone()[0]
            root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'model_versions'").fetchone()[0]
        con.close()
        garble(db, (root - 1) * page / db.stat().st_size, 512)
    else:
        _damage(db, how)
    res = modelyard("registry", "list", "--store", store)
    if res.rc == 0 and how == "garble":  # damage to free pages is invisible to a read: verify it explicitly
        res = modelyard("registry", "check", "--store", store)
    line = assert_one_line_error(res, str(db))
    assert "damaged" in line and "restore" in line, line


def test_serving_a_damaged_registered_version_refuses_to_start(tiny_trained_run: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert modelyard("registry", "register", tiny_trained_run, "--app", "demo", "--store", store).rc == 0
    assert modelyard("registry", "promote", "demo", "1", "--store", store).rc == 0
    garble(store / "models" / "demo" / "v1" / "model" / "model.safetensors", 0.5, 8)
    res = modelyard("serve", "demo@production", "--store", store, "--port", "0", timeout=120)
    assert_one_line_error(res, "demo", "v1")


def test_a_damaged_onnx_variant_names_it(run: Path) -> None:
    assert modelyard("compress", run, "--methods", "onnx", "--latency-repeats", "1").rc == 0
    onnx = run / "compressed" / "onnx" / "model.onnx"
    truncate(onnx, 0.5)
    res = modelyard("serve", run, "--runtime", "onnx", "--port", "0", timeout=120)
    assert_one_line_error(res, str(onnx), "damaged", f"modelyard compress {run} --methods onnx")


# ------------------------------------------------------------------------------------------- resources


def test_a_port_in_use_is_one_line(run: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = modelyard("serve", run, "--port", str(port), timeout=120)
    assert_one_line_error(res, f"port {port}", "in use", "--port")


def test_running_out_of_memory_is_one_line(tiny_recipe: Path, tmp_path: Path) -> None:
    """A worker whose address space is capped (RLIMIT_AS) just above what it holds after start-up: the run fails
    on its first large allocations, with one line naming what to lower, and leaves no run directory."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import os, resource\n"
        "if os.environ.get('MODELYARD_TEST_HEADROOM'):\n"
        "    import torch, transformers, tokenizers, pandas, sklearn  # noqa: F401 - loaded before the cap\n"
        "    import modelyard.cli, modelyard.training.run, modelyard.registry  # noqa: F401\n"
        "    pages = int(open('/proc/self/statm').read().split()[0])\n"
        "    cap = pages * os.sysconf('SC_PAGE_SIZE') + int(os.environ['MODELYARD_TEST_HEADROOM'])\n"
        "    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
    )
    env = {"PYTHONPATH": str(shim), "MODELYARD_TEST_HEADROOM": str(8 * 1024 * 1024)}
    res = modelyard("train", tiny_recipe, f"output_dir={tmp_path / 'runs'}", env=env)
    assert_one_line_error(res, "ran out of memory", "train.batch_size", "model.max_length")
    assert visible(tmp_path / "runs") == []


def test_a_missing_optional_package_names_the_install_command(run: Path, tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    (shim / "onnxruntime").mkdir(parents=True)
    (shim / "onnxruntime" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'onnxruntime'\", name='onnxruntime')\n"
    )
    res = modelyard("compress", run, "--methods", "onnx", "--latency-repeats", "1", env={"PYTHONPATH": str(shim)})
    assert_one_line_error(res, "onnxruntime", "pip install onnxruntime")
    assert visible(run / "compressed") == []


def test_cuda_without_a_gpu_is_one_line(tiny_recipe: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    res = _train(tiny_recipe, f"output_dir={tmp_path / 'runs'}", "train.device=cuda")
    assert_one_line_error(res, "train.device", "cuda", "no CUDA GPU")
    assert visible(tmp_path / "runs") == []


# ------------------------------------------------------------------------------------ concurrency, bugs


def test_two_trainings_into_one_output_dir_never_collide(tiny_recipe: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "modelyard", "train", str(tiny_recipe), f"output_dir={runs}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    procs = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-1500:] for _, e in outs]
    finished = [Path(o.strip().splitlines()[-1]) for o, _ in outs]
    assert finished[0] != finished[1] and sorted(visible(runs)) == sorted(f.name for f in finished)
    for f in finished:
        assert (f / "model" / "model.safetensors").is_file()


def test_an_unexpected_error_prints_one_line_and_where_the_traceback_is(
    run: Path, texts_csv: Path, tmp_path: Path
) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('MODELYARD_TEST_BUG'):\n"
        "    import modelyard.models.loading as loading\n"
        "    def load(*a, **k):\n"
        "        return {}['a bug']\n"
        "    loading.load = load\n"
    )
    env = {"PYTHONPATH": str(shim), "MODELYARD_TEST_BUG": "1", "TMPDIR": str(tmp_path)}
    res = modelyard("predict", run, "-i", texts_csv, "-o", tmp_path / "p.csv", env=env)
    assert res.rc == 1 and "Traceback" not in res.stderr, res.stderr
    line = res.error_line
    assert line.startswith("unexpected error: KeyError") and "--debug" in line, line
    log = Path(line.split("the full traceback is in ", 1)[1].split(" ", 1)[0])
    assert log.is_file() and "Traceback" in log.read_text() and "a bug" in log.read_text()
    debug = modelyard("--debug", "predict", run, "-i", texts_csv, "-o", tmp_path / "p.csv", env=env)
    assert debug.rc == 1 and "Traceback" in debug.stderr and "a bug" in debug.stderr


# ------------------------------------------------------------------------- other commands' output paths


def test_init_into_a_read_only_folder_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "reviews.csv"
    synthetic_sentiment(40).to_csv(data, index=False)
    with read_only(tmp_path / "ro") as ro:
        res = modelyard("init", "--data", data, "-o", ro / "recipe.yaml")
        assert_one_line_error(res, str(ro / "recipe.yaml"))
    assert visible(ro) == []


def test_explain_output_into_a_read_only_folder_is_one_line(run: Path, tmp_path: Path) -> None:
    with read_only(tmp_path / "ro") as ro:
        res = modelyard("explain", run, "--text", "a good film", "--method", "attention", "-o", ro / "e.html")
        assert_one_line_error(res, str(ro / "e"))
    assert visible(ro) == []


def test_a_read_only_registry_store_is_one_line(tiny_trained_run: Path, tmp_path: Path) -> None:
    with read_only(tmp_path / "ro") as ro:
        res = modelyard("registry", "register", tiny_trained_run, "--app", "demo", "--store", ro / "store")
        assert_one_line_error(res, str(ro / "store"), "--store")


def test_tune_into_a_read_only_folder_is_one_line(tiny_recipe: Path, tmp_path: Path) -> None:
    with read_only(tmp_path / "ro") as ro:
        space = "tune.space={train.learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}}"
        res = modelyard("tune", tiny_recipe, f"output_dir={ro}/runs", "tune.trials=1", space)
        assert_one_line_error(res, str(ro))
    assert visible(ro) == []


def test_compare_into_an_impossible_folder_is_one_line(tiny_recipe: Path) -> None:
    res = modelyard("compare", tiny_recipe, "-o", "/proc/modelyard-board", "--set", "train.epochs=1")
    assert_one_line_error(res, "/proc/modelyard-board")


def test_predict_output_that_is_a_folder_is_one_line(run: Path, texts_csv: Path, tmp_path: Path) -> None:
    (tmp_path / "preds.csv").mkdir()
    res = modelyard("predict", run, "-i", texts_csv, "-o", tmp_path / "preds.csv")
    assert_one_line_error(res, str(tmp_path / "preds.csv"))
    assert (tmp_path / "preds.csv").is_dir()


def test_a_one_shot_fit_killed_leaves_nothing_visible_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    """A run that cannot be resumed (pretraining, a one-shot fit) is staged hidden; after a SIGKILL the next
    run into the folder removes the dead writer's staging folder, never a live one."""
    import signal
    import time

    from modelyard._internal.rundir import discard_run, finish_run, start_run

    runs = tmp_path / "runs"
    # a live writer (this process) holds its staging folder: another start_run must keep it
    run_id, live = start_run(runs, resumable=False)
    assert live.name == f".staging-{run_id}" and visible(runs) == []
    _, other = start_run(runs, resumable=False)
    assert live.is_dir()
    discard_run(other)
    assert not other.exists()
    (live / "manifest.json").write_text("{}")
    (live / "model").mkdir()
    final = finish_run(live)
    assert final.name == run_id and not live.exists()
    assert sorted(p.name for p in runs.iterdir()) == [run_id]  # no staging folder, no lock file

    # a writer killed with SIGKILL (no except, no finally) leaves a hidden folder the next run removes
    code = (
        "import sys, time; from pathlib import Path; from modelyard._internal.rundir import start_run;"
        f"_, p = start_run(Path({str(runs)!r}), resumable=False); (p / 'half.bin').write_bytes(b'x');"
        "print(p, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    dead = Path(proc.stdout.readline().strip())
    assert dead.is_dir()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert dead.is_dir() and visible(runs) == [run_id]
    time.sleep(0.05)
    _, nxt = start_run(runs, resumable=False)
    assert not dead.exists() and not dead.with_name(dead.name + ".lock").exists()
    discard_run(nxt)
    assert sorted(p.name for p in runs.iterdir()) == [run_id]
