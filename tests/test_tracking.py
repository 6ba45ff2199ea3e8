"""Experiment tracking (train.report_to) read back from a real MLflow store/server and TensorBoard event files;
``modelyard runs list|show|compare`` over run folders."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.config import load_recipe
from modelyard.errors import ConfigError
from modelyard.rundir import RunDir
from modelyard.training.run import train
from tests.conftest import synthetic_sentiment, write_tiny_recipe

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

HEADLINE_FINAL = ("accuracy", "macro_f1", "log_loss")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> object:
    """No MLFLOW_TRACKING_URI from the environment; torch's thread count restored (the runs use num_threads 1)."""
    import torch

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite MLflow store for the module (creating its schema takes seconds; experiments keep tests apart)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    synthetic_sentiment(240).to_csv(path, index=False)
    return path


def _recipe(tmp: Path, data: Path, backbone: Path, **train: object) -> Path:
    return write_tiny_recipe(tmp, data, backbone, **{"epochs": 1, "num_threads": 1, **train})


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path, data: Path, store: str) -> Path:
    tmp = tmp_path_factory.mktemp("tracked")
    path = _recipe(
        tmp, data, tiny_backbone, report_to=["mlflow", "tensorboard"], tracking_uri=store, experiment="tracked"
    )
    return train(load_recipe(path), console=Console(file=io.StringIO()))


def _only_run(client: MlflowClient, experiment: str) -> object:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _check_run_in_mlflow(client: MlflowClient, run: object, run_dir: Path) -> None:
    """Params, metrics, tags and artefacts of the MLflow run are those of the run directory."""
    rd = RunDir(run_dir)
    manifest, metrics = rd.manifest(), rd.metrics()
    info, data = run.info, run.data
    assert info.status == "FINISHED" and info.run_name == rd.run_id
    assert data.params["train.learning_rate"] == "0.01"
    assert data.params["train.epochs"] == "1"
    assert data.params["model.backbone"] == str(manifest["model"]["backbone"])
    assert all(len(v) <= 500 for v in data.params.values())
    assert data.tags["run_id"] == rd.run_id == data.tags["modelyard.run_id"]
    assert data.tags["seed.train"] == "7" and data.tags["seed.data"] == "3"
    assert data.tags["versions.torch"] == manifest["versions"]["torch"]
    (source, digest), *_ = manifest["data_fingerprints"].items()  # {data file: sha256}
    assert data.tags[f"data_fingerprints.{source}"] == digest
    # per-step loss: one point per progress.jsonl step line, at the same steps and values
    steps = rd.steps()
    history = client.get_metric_history(info.run_id, "train/loss")
    assert [m.step for m in history] == [s["step"] for s in steps] and len(steps) >= 4
    assert [m.value for m in history] == pytest.approx([s["loss"] for s in steps])
    assert len(client.get_metric_history(info.run_id, "train/lr")) == len(steps)
    epoch = client.get_metric_history(info.run_id, "epoch/valid_accuracy")
    assert [(m.step, m.value) for m in epoch] == [(h["step"], pytest.approx(h["valid_accuracy"])) for h in rd.history()]
    for split in ("valid", "test"):
        for name in HEADLINE_FINAL:
            assert data.metrics[f"{split}_{name}"] == pytest.approx(metrics[split][name]), (split, name)
    artefacts = {a.path for a in client.list_artifacts(info.run_id)}
    assert {"report.html", "metrics.json", "manifest.json", "model"} <= artefacts
    model_files = {a.path for a in client.list_artifacts(info.run_id, "model")}
    assert {"model/model.safetensors", "model/modelyard.json"} <= model_files
    logged = client.download_artifacts(info.run_id, "metrics.json", str(run_dir.parent))
    assert json.loads(Path(logged).read_text()) == metrics


def test_mlflow_store_receives_params_metrics_tags_and_artefacts(tracked_run: Path, store: str) -> None:
    client = MlflowClient(store)
    _check_run_in_mlflow(client, _only_run(client, "tracked"), tracked_run)
    # artefacts live beside the SQLite store, not in the working directory
    exp = client.get_experiment_by_name("tracked")
    assert exp.artifact_location == (Path(store.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()


def test_tensorboard_event_file_holds_step_epoch_and_final_scalars(tracked_run: Path) -> None:
    rd = RunDir(tracked_run)
    events = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/samples_per_s", "epoch/train_loss", "epoch/valid_loss"} <= tags
    assert {"epoch/valid_accuracy", "epoch/valid_macro_f1", "test_accuracy", "valid_macro_f1"} <= tags
    steps = rd.steps()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [s["step"] for s in steps]
    assert [e.value for e in loss] == pytest.approx([s["loss"] for s in steps], rel=1e-6)
    (epoch,) = events.Scalars("epoch/valid_macro_f1")  # one epoch
    assert epoch.step == rd.history()[0]["step"] == steps[-1]["step"]
    assert events.Scalars("test_macro_f1")[0].value == pytest.approx(rd.metrics()["test"]["macro_f1"], rel=1e-6)
    assert set(events.PluginTagToContent("hparams")) >= {"_hparams_/experiment", "_hparams_/session_start_info"}


def test_a_failing_tracker_warns_once_and_the_run_finishes(
    tmp_path: Path, tiny_backbone: Path, data: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.training import tracking

    calls = []

    def broken(self: object, metrics: dict, step: int) -> None:
        calls.append(step)
        raise ConnectionError("tracking server went away\nsecond line")

    monkeypatch.setattr(tracking.MlflowTracker, "log_metrics", broken)
    out = io.StringIO()
    path = _recipe(
        tmp_path, data, tiny_backbone, report_to=["mlflow", "tensorboard"], tracking_uri=store, experiment="broken"
    )
    run_dir = train(load_recipe(path), console=Console(file=out, width=300))
    assert (run_dir / "model" / "model.safetensors").is_file() and not run_dir.name.endswith(".incomplete")
    text = out.getvalue()
    assert len(calls) == 1  # dropped after its first failure: no retry storm against a dead server
    assert text.count("warning: mlflow tracking failed") == 1
    assert (
        "(ConnectionError: tracking server went away); the run goes on without it" in text and "second line" not in text
    )
    # the other tracker carries on
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert "test_accuracy" in events.Tags()["scalars"]


def test_unreachable_tracking_uri_does_not_lose_the_run(tmp_path: Path, tiny_backbone: Path, data: Path) -> None:
    out = io.StringIO()
    path = _recipe(tmp_path, data, tiny_backbone, report_to=["mlflow"], tracking_uri="nosuchscheme://x")
    run_dir = train(load_recipe(path), console=Console(file=out, width=300))
    assert RunDir(run_dir).metrics()["test"]["accuracy"] >= 0
    assert out.getvalue().count("warning: mlflow tracking failed") == 1


def test_missing_mlflow_fails_in_one_line_before_anything_is_written(
    tmp_path: Path, tiny_backbone: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    path = _recipe(tmp_path, data, tiny_backbone, report_to=["mlflow"])
    with pytest.raises(ConfigError, match=r'pip install "modelyard\[mlflow\]"'):
        train(load_recipe(path), console=Console(file=io.StringIO()))
    assert not (tmp_path / "runs").exists()
    result = runner.invoke(app, ["train", str(path)])
    err = " ".join(result.stderr.split())  # rich wraps long lines
    assert result.exit_code == 2 and err.startswith("error:") and "Traceback" not in err, result.stderr
    assert err.endswith('install it: pip install "modelyard[mlflow]"'), err
    assert not (tmp_path / "runs").exists()


def test_report_to_is_validated_in_the_recipe(tmp_path: Path, tiny_backbone: Path, data: Path) -> None:
    with pytest.raises(ConfigError, match="report_to"):
        load_recipe(_recipe(tmp_path, data, tiny_backbone, report_to=["wandb"]))
    # a single name on the command line is a list of one
    assert load_recipe(_recipe(tmp_path, data, tiny_backbone), ["train.report_to=mlflow"]).train.report_to == ["mlflow"]


def test_one_shot_kind_reports_params_final_metrics_and_artefacts(tmp_path: Path, data: Path, store: str) -> None:
    recipe = {
        "name": "tfidf",
        "data": {"path": str(data), "valid_size": 0.2, "test_size": 0.2, "seed": 3},
        "model": {"type": "tfidf-logreg", "tfidf": {"min_df": 1}},
        "train": {"report_to": ["mlflow", "tensorboard"], "tracking_uri": store, "experiment": "one-shot"},
        "output_dir": str(tmp_path / "runs"),
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    run_dir = train(load_recipe(tmp_path / "r.yaml"), console=Console(file=io.StringIO()))
    client = MlflowClient(store)
    run = _only_run(client, "one-shot")
    metrics = RunDir(run_dir).metrics()
    assert run.info.status == "FINISHED" and run.data.params["model.type"] == "tfidf-logreg"
    assert run.data.metrics["test_macro_f1"] == pytest.approx(metrics["test"]["macro_f1"])
    assert {"report.html", "model", "manifest.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert events.Scalars("test_accuracy")[0].value == pytest.approx(metrics["test"]["accuracy"], rel=1e-6)


def test_ensemble_members_are_nested_runs_in_the_ensembles_experiment(tmp_path: Path, data: Path, store: str) -> None:
    member = {"type": "tfidf-logreg", "tfidf": {"min_df": 1}}
    recipe = {
        "name": "ens",
        "data": {"path": str(data), "valid_size": 0.2, "test_size": 0.2, "seed": 3},
        "model": {"type": "ensemble", "members": [member, {**member, "tfidf": {"min_df": 1, "analyzer": "word"}}]},
        "train": {"report_to": ["mlflow"], "tracking_uri": store, "experiment": "ensemble"},
        "output_dir": str(tmp_path / "runs"),
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    train(load_recipe(tmp_path / "r.yaml"), console=Console(file=io.StringIO()))
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("ensemble").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.data.params["model.type"] == "ensemble" and len(children) == 2 == len(runs) - 1
    assert all(c.info.status == "FINISHED" and "test_accuracy" in c.data.metrics for c in children)


def test_resumed_run_continues_its_mlflow_run(tmp_path: Path, tiny_backbone: Path, data: Path, store: str) -> None:
    from modelyard.training.loop import TrainingInterrupted

    path = _recipe(
        tmp_path,
        data,
        tiny_backbone,
        epochs=2,
        checkpoint_every_steps=4,
        report_to=["mlflow", "tensorboard"],
        tracking_uri=store,
        experiment="resumed",
    )
    recipe = load_recipe(path)
    with pytest.raises(TrainingInterrupted):
        train(recipe, stop_after_step=11, console=Console(file=io.StringIO()))
    client = MlflowClient(store)
    assert _only_run(client, "resumed").info.status == "FAILED"
    (partial,) = (tmp_path / "runs").glob("*.incomplete")
    run_dir = train(recipe, resume=partial, console=Console(file=io.StringIO()))
    run = _only_run(client, "resumed")  # the same MLflow run, not a second one
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps[-1] == RunDir(run_dir).steps()[-1]["step"] == 18
    # TensorBoard drops the steps past the checkpoint that were logged before the interruption
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tb_steps = [e.step for e in events.Scalars("train/loss")]
    assert tb_steps == sorted(set(tb_steps)) and tb_steps[-1] == 18


def test_tuning_trials_are_nested_under_one_search_run(tmp_path: Path, tiny_backbone: Path, data: Path) -> None:
    from modelyard.tuning import tune

    path = _recipe(tmp_path, data, tiny_backbone, report_to=["mlflow"], log_every_steps=50)
    raw = yaml.safe_load(path.read_text())
    raw["tune"] = {"space": {"train.learning_rate": {"type": "loguniform", "low": 1e-2, "high": 3e-2}}, "seed": 1}
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    tune_dir = tune(load_recipe(path), trials=2, console=Console(file=io.StringIO()))
    # the default store: SQLite in the recipe's output_dir, shared by the search and its trials
    store = f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"
    assert not list(tune_dir.rglob("mlflow.db"))
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tiny")  # experiment = the recipe's name
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    (parent,) = parents
    assert parent.info.run_name == "tune-tiny" and parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    trials = json.loads((tune_dir / "trials.json").read_text())
    by_dir = {c.data.tags["modelyard.run_dir"]: c for c in children}
    for t in trials:
        child = by_dir[str(Path(t["run_dir"]).resolve())]
        assert float(child.data.params["train.learning_rate"]) == pytest.approx(t["params"]["train.learning_rate"])
        assert child.data.metrics["valid_accuracy"] == pytest.approx(t["value"])
    assert parent.data.metrics["best_accuracy"] == pytest.approx(max(t["value"] for t in trials))
    assert "tune_report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_mlflow_tracking_server_receives_the_run(tmp_path: Path, tiny_backbone: Path, data: Path) -> None:
    """``mlflow server`` on loopback (artefacts proxied through it). MODELYARD_TEST_MLFLOW names another
    ``mlflow`` executable (e.g. from a venv with the full package when this one has only mlflow-skinny)."""
    exe = os.environ.get("MODELYARD_TEST_MLFLOW") or str(Path(sys.executable).with_name("mlflow"))
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    cmd += ["--artifacts-destination", str(tmp_path / "server-artefacts")]
    log = (tmp_path / "server.log").open("wb")
    try:
        server = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env, start_new_session=True
        )
    except OSError as err:
        pytest.skip(f"no mlflow executable to run a server: {err}")
    try:
        import httpx

        deadline = time.time() + 90
        while True:
            text = (tmp_path / "server.log").read_text(errors="replace")
            if server.poll() is not None or "ModuleNotFoundError" in text:  # mlflow-skinny: no server parts
                missing = [x for x in text.splitlines() if "ModuleNotFoundError" in x] or [text[-300:]]
                pytest.skip(f"this mlflow cannot run a tracking server (only mlflow-skinny?): {missing[0]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "mlflow server did not answer /health within 90 s"
            time.sleep(0.5)
        uri = f"http://127.0.0.1:{port}"
        path = _recipe(tmp_path, data, tiny_backbone, report_to=["mlflow"], tracking_uri=uri, experiment="served")
        run_dir = train(load_recipe(path), console=Console(file=io.StringIO()))
        client = MlflowClient(uri)
        _check_run_in_mlflow(client, _only_run(client, "served"), run_dir)
        assert (tmp_path / "server-artefacts").is_dir()  # the artefacts went through the server
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited already (mlflow-skinny: no server)
            os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


# ---------------------------------------------------------------------- modelyard runs


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path, data: Path) -> Path:
    """Two finished runs in one folder (the tiny encoder after one epoch, near chance; tf-idf, near perfect),
    plus a damaged, a hidden and an unfinished folder, and a folder that holds no run."""
    tmp = tmp_path_factory.mktemp("two_runs")
    train(load_recipe(_recipe(tmp, data, tiny_backbone)), console=Console(file=io.StringIO()))
    raw = yaml.safe_load((tmp / "recipe.yaml").read_text())
    raw |= {"name": "tfidf", "model": {"type": "tfidf-logreg", "tfidf": {"min_df": 1}}, "train": {}}
    (tmp / "tfidf.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    train(load_recipe(tmp / "tfidf.yaml"), console=Console(file=io.StringIO()))
    runs = tmp / "runs"
    (runs / "20990101-000000-dead00").mkdir()
    (runs / "20990101-000000-dead00" / "manifest.json").write_text("{not json")
    (runs / "20990101-000000-dead00" / "metrics.json").write_text("{}")
    (runs / ".hidden").mkdir()
    (runs / ".hidden" / "manifest.json").write_text("{}")
    (runs / "20990101-000000-beef00.incomplete").mkdir()
    (runs / "tune-x").mkdir()
    return runs


def test_runs_list_shows_finished_runs_newest_first(two_runs: Path) -> None:
    result = runner.invoke(app, ["runs", "list", str(two_runs), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    good = [r for r in rows if r["note"] is None]
    assert len(good) == 2 and len(rows) == 3
    assert [r["finished_at"] for r in good] == sorted((r["finished_at"] for r in good), reverse=True)
    assert [r["model_type"] for r in good] == ["tfidf-logreg", "hf-encoder"]  # trained second, listed first
    for r in good:
        metrics = RunDir(Path(r["path"])).metrics()
        assert r["test_accuracy"] == metrics["test"]["accuracy"]
        assert r["test_macro_f1"] == metrics["test"]["macro_f1"]
    (damaged,) = [r for r in rows if r["note"]]
    assert damaged["run_id"] == "20990101-000000-dead00" and "unreadable" in damaged["note"]

    table = runner.invoke(app, ["runs", "list", str(two_runs)])
    assert table.exit_code == 0, table.output
    assert all(r["run_id"] in table.stdout for r in rows)
    assert table.stdout.index(good[0]["run_id"]) < table.stdout.index(good[1]["run_id"])
    assert f"{good[0]['test_accuracy']:.4f}" in table.stdout and "hidden" not in table.stdout


def test_runs_compare_ranks_by_the_sort_metric(two_runs: Path) -> None:
    rows = [
        r for r in json.loads(runner.invoke(app, ["runs", "list", str(two_runs), "--json"]).stdout) if not r["note"]
    ]
    result = runner.invoke(app, ["runs", "compare", *(r["path"] for r in rows), "--sort", "test_macro_f1", "--json"])
    assert result.exit_code == 0, result.output
    ranked = json.loads(result.stdout)
    assert [r["rank"] for r in ranked] == [1, 2]
    assert ranked[0]["test_macro_f1"] > ranked[1]["test_macro_f1"] and ranked[0]["model_type"] == "tfidf-logreg"
    # lower is better for log-loss; run ids resolve in --dir
    by_loss = json.loads(
        runner.invoke(
            app,
            [
                "runs",
                "compare",
                *(r["run_id"] for r in rows),
                "--dir",
                str(two_runs),
                "--sort",
                "test_log_loss",
                "--json",
            ],
        ).stdout
    )
    assert by_loss[0]["test_log_loss"] < by_loss[1]["test_log_loss"]
    table = runner.invoke(app, ["runs", "compare", "--all", str(two_runs)])
    assert table.exit_code == 0, table.output
    lines = table.stdout
    best, worst = sorted(rows, key=lambda r: -r["test_macro_f1"])
    assert lines.index(best["run_id"]) < lines.index(worst["run_id"]) < lines.index("20990101-000000-dead00")
    assert f"{best['test_macro_f1']:.4f}" in lines and f"{worst['test_macro_f1']:.4f}" in lines
    assert "test macro f1 ▼" in lines
    bad = runner.invoke(app, ["runs", "compare", "--all", str(two_runs), "--sort", "speed"])
    assert bad.exit_code == 2 and "--sort speed" in bad.output
    neither = runner.invoke(app, ["runs", "compare"])
    assert neither.exit_code == 2 and "--all" in neither.output


def test_runs_show_prints_the_manifest_summary_and_metrics(two_runs: Path) -> None:
    rows = json.loads(runner.invoke(app, ["runs", "list", str(two_runs), "--json"]).stdout)
    run = next(r for r in rows if r["model_type"] == "hf-encoder")
    result = runner.invoke(app, ["runs", "show", run["run_id"], "--dir", str(two_runs)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert run["run_id"] in out and "hf-encoder" in out and "train 7, data 3" in out
    assert f"{run['test_accuracy']:.4f}" in out
    raw = json.loads(runner.invoke(app, ["runs", "show", run["path"], "--json"]).stdout)
    assert raw["metrics"]["test"]["accuracy"] == run["test_accuracy"]
    missing = runner.invoke(app, ["runs", "show", "nope", "--dir", str(two_runs)])
    assert missing.exit_code == 2 and "run not found: nope" in missing.output
