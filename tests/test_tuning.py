"""Hyper-parameter search on the tiny seeded model: tables, best recipe, clean-up, resume, pruning, Ray."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from modelyard.config import load_recipe
from modelyard.errors import ConfigError, ModelyardError
from modelyard.tuning import tune
from tests.conftest import write_tiny_recipe

optuna = pytest.importorskip("optuna")

SPACE = {
    "train.learning_rate": {"type": "loguniform", "low": 1e-2, "high": 6e-2},
    "train.batch_size": {"type": "choice", "values": [8, 16]},
}


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> object:
    """The trials train with ``num_threads: 1``, which torch applies process-wide; later tests expect the default."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _recipe(
    tmp_path: Path, data: Path, backbone: Path, *, tune_section: dict, epochs: int = 2, **train: object
) -> Path:
    """The tiny recipe (240 rows, one torch thread: a trial takes a few seconds) plus a tune section."""
    path = write_tiny_recipe(tmp_path, data, backbone, epochs=epochs, log_every_steps=50, num_threads=1, **train)
    raw = yaml.safe_load(path.read_text())
    raw["tune"] = tune_section
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _study(tune_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{tune_dir / 'study.db'}")


def test_search_writes_tables_best_recipe_and_report(tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path) -> None:
    recipe = load_recipe(_recipe(tmp_path, sentiment_csv, tiny_backbone, tune_section={"space": SPACE, "seed": 1}))
    tune_dir = tune(recipe, trials=3)

    assert tune_dir == tmp_path / "runs" / "tune-tiny"
    with (tune_dir / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    assert set(rows[0]) >= {"number", "state", "value", "duration_s", "run_dir", "params.train.learning_rate"}
    records = json.loads((tune_dir / "trials.json").read_text())
    assert [r["number"] for r in records] == [0, 1, 2]
    # trial 0 is the recipe's own configuration, so the best can never be worse than the default
    assert [r["baseline"] for r in records] == [True, False, False]
    assert records[0]["params"] == {"train.learning_rate": 1e-2, "train.batch_size": 16}

    study = _study(tune_dir)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert complete, [r["state"] for r in records]
    best = max(complete, key=lambda t: t.value)  # accuracy: higher is better
    assert study.best_value == best.value
    if records[0]["state"] == "COMPLETE":
        assert best.value >= records[0]["value"]
    # The objective is the best epoch's validation metric of the trial's finished run.
    best_run = Path(best.user_attrs["run_dir"])
    assert best_run.parent.parent == tune_dir / "trials"
    assert json.loads((best_run / "metrics.json").read_text())["valid"]["accuracy"] == best.value
    assert best.intermediate_values and set(best.intermediate_values) <= {1, 2}

    # Only the best trial keeps its model; the others keep their small files.
    for r in records:
        if r["run_dir"] is None:
            continue
        run = Path(r["run_dir"])
        assert (run / "model").is_dir() == (r["number"] == best.number), r
        assert (run / "metrics.json").is_file()
    assert not list((tune_dir / "trials").rglob("*.incomplete"))

    best_recipe = load_recipe(tune_dir / "best_recipe.yaml")
    assert best_recipe.train.learning_rate == best.params["train.learning_rate"]
    assert best_recipe.train.batch_size == best.params["train.batch_size"]
    assert best_recipe.tune.space == {}  # the tune section is dropped
    assert best_recipe.resolve(best_recipe.output_dir) == tmp_path / "runs"

    html = (tune_dir / "tune_report.html").read_text()
    assert html.count("<svg") >= 2 and "Parameter importances" in html
    assert "baseline" in html and "trial 0 · " in html
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")

    # the best run's own report gets the search as a section
    run_html = (best_run / "report.html").read_text()
    assert run_html.count('<section id="stage-tuning">') == 1 and f"trial {best.number})" in run_html
    assert "Parameter importances" in run_html

    with pytest.raises(ModelyardError, match="--resume"):
        tune(recipe, trials=3)


def test_resume_marks_stale_running_trial_failed_and_runs_only_the_rest(
    tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path
) -> None:
    recipe = load_recipe(
        _recipe(tmp_path, sentiment_csv, tiny_backbone, tune_section={"space": SPACE, "pruner": "none"}, epochs=1)
    )
    tune_dir = tune(recipe, trials=2)
    # Simulate a search killed mid-trial: a trial asked for but never told.
    study = _study(tune_dir)
    stale = study.ask()
    assert study.trials[-1].state == optuna.trial.TrialState.RUNNING

    with pytest.raises(ModelyardError, match="--resume"):
        tune(recipe, trials=4)
    tune(recipe, trials=4, resume=True)

    trials = _study(tune_dir).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 4, states
    assert trials[stale.number].state == optuna.trial.TrialState.FAIL
    assert "abandoned" in trials[stale.number].user_attrs["error"]
    assert len(trials) == 5  # 2 + the stale one + 2 new: nothing ran twice
    run_dirs = [t.user_attrs.get("run_dir") for t in trials if t.user_attrs.get("run_dir")]
    assert len(run_dirs) == len(set(run_dirs)) == 4
    # The resumed sampler does not propose the first run's parameters again.
    params = [tuple(sorted(t.params.items())) for t in trials if t.state.name == "COMPLETE"]
    assert len(set(params)) == len(params)
    with (tune_dir / "trials.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 5


def test_pruning_hook_reports_every_epoch_and_discards_pruned_runs(
    tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path
) -> None:
    section = {
        "space": {"train.learning_rate": {"type": "choice", "values": [2e-2, 1e-9]}},
        "pruner": "median",
        "prune_startup_trials": 1,
        "prune_warmup_epochs": 0,
        "seed": 0,
    }
    path = _recipe(tmp_path, sentiment_csv, tiny_backbone, tune_section=section, epochs=2, batch_size=8)
    tune_dir = tune(load_recipe(path), trials=3)
    study = _study(tune_dir)
    # Seed 0 draws the bad rate, the good one, then the bad one again. The last one must be pruned exactly
    # when its value at some epoch falls below the median of the finished trials at that epoch (whether
    # the good rate learns in time depends on the tiny backbone, whose vocabulary varies per session).
    states = [t.state.name for t in study.trials]
    assert [t.params["train.learning_rate"] for t in study.trials] == [1e-9, 2e-2, 1e-9], states
    last, finished = study.trials[2], [t for t in study.trials[:2] if t.state.name == "COMPLETE"]
    below = [
        value < float(np.median([t.intermediate_values[epoch] for t in finished]))
        for epoch, value in sorted(last.intermediate_values.items())
    ]
    assert last.state.name == ("PRUNED" if any(below) else "COMPLETE"), (states, below)
    for t in study.trials:
        if t.state.name == "COMPLETE":
            assert sorted(t.intermediate_values) == [1, 2], t.intermediate_values
            history = json.loads((Path(t.user_attrs["run_dir"]) / "history.json").read_text())
            assert [t.intermediate_values[h["epoch"]] for h in history] == [h["valid_accuracy"] for h in history]
        elif t.state.name == "PRUNED":
            assert t.intermediate_values
            trial_dir = Path(t.user_attrs["trial_dir"])
            assert [p.name for p in trial_dir.iterdir()] == ["train.log"]  # the run was discarded
    assert not list((tune_dir / "trials").rglob("*.incomplete"))


def test_train_hook_exception_propagates_and_discards_the_run(
    tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path
) -> None:
    from modelyard.training.run import train

    recipe = load_recipe(write_tiny_recipe(tmp_path, sentiment_csv, tiny_backbone, epochs=3))
    seen: list[tuple[int, float]] = []

    def hook(epoch: int, entry: dict) -> None:
        seen.append((epoch, entry["valid_accuracy"]))
        if epoch == 2:
            raise optuna.TrialPruned("stop here")

    with pytest.raises(optuna.TrialPruned, match="stop here"):
        train(recipe, on_epoch_end=hook)
    assert [e for e, _ in seen] == [1, 2]
    assert not any((tmp_path / "runs").iterdir())  # no .incomplete left behind


def test_failed_trial_is_recorded_not_fatal(tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path) -> None:
    # Each value is valid on its own (checked up front), but warmup_steps and warmup_ratio together are
    # an invalid combination: every trial fails with that message and the search still runs them all.
    section = {
        "space": {
            "train.warmup_steps": {"type": "choice", "values": [2]},
            "train.warmup_ratio": {"type": "choice", "values": [0.1]},
        }
    }
    path = _recipe(tmp_path, sentiment_csv, tiny_backbone, tune_section=section, epochs=1)
    recipe = load_recipe(path, ["train.warmup_ratio=null"])
    with pytest.raises(ModelyardError, match="no trial finished"):
        tune(recipe, trials=2)
    records = json.loads((tmp_path / "runs" / "tune-tiny" / "trials.json").read_text())
    assert [r["state"] for r in records] == ["FAIL", "FAIL"]
    assert all("warmup_ratio and train.warmup_steps" in r["error"] for r in records), records
    assert (tmp_path / "runs" / "tune-tiny" / "tune_report.html").is_file()


@pytest.mark.parametrize(
    ("space", "fragment"),
    [
        ({"train.learnig_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}, "tune.space.train.learnig_rate"),
        ({"train.learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-5}}, "tune.space.train.learning_rate"),
        ({"train.epochs": {"type": "int", "low": 3, "high": 3}}, "tune.space.train.epochs"),
        ({"output_dir": {"type": "choice", "values": ["a"]}}, "tune.space.output_dir"),
        ({"train": {"type": "choice", "values": [1]}}, "is a section"),
        ({"train.batch_size": {"type": "choise", "values": [1]}}, "tune.space.train.batch_size"),
    ],
)
def test_tune_config_errors_name_the_key(tmp_path: Path, sentiment_csv: Path, space: dict, fragment: str) -> None:
    path = _recipe(tmp_path, sentiment_csv, Path("unused"), tune_section={"space": space})
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_recipe(path)


def test_tune_refuses_empty_space_test_metric_and_invalid_values(tmp_path: Path, sentiment_csv: Path) -> None:
    path = _recipe(tmp_path, sentiment_csv, Path("unused"), tune_section={})
    with pytest.raises(ConfigError, match="tune.space is empty"):
        tune(load_recipe(path))
    with pytest.raises(ConfigError, match="only validation metrics"):
        load_recipe(path, ["tune.metric=test.accuracy"])
    bad = {"train.learning_rate": {"type": "uniform", "low": 0.5, "high": 2.0}}  # lr ≤ 1 in TrainConfig
    path = _recipe(tmp_path, sentiment_csv, Path("unused"), tune_section={"space": bad})
    with pytest.raises(ConfigError, match=r"tune\.space\.train\.learning_rate: value 2\.0"):
        tune(load_recipe(path))
    recipe = load_recipe(path, ["tune.metric=loss"])
    assert recipe.tune.metric == "valid.loss"


def test_ray_backend_runs_two_local_trials(tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path) -> None:
    pytest.importorskip("ray.tune", reason='Ray Tune is an optional dependency: pip install "ray[tune]"')
    section = {"space": SPACE, "n_jobs": 2, "seed": 5}
    recipe = load_recipe(_recipe(tmp_path, sentiment_csv, tiny_backbone, tune_section=section, epochs=1))
    tune_dir = tune(recipe, trials=2, backend="ray")
    records = json.loads((tune_dir / "trials.json").read_text())
    assert len(records) == 2
    assert all(r["state"] == "COMPLETE" for r in records), records
    assert all(r["epoch_values"] for r in records)
    assert (tune_dir / "best_recipe.yaml").is_file() and (tune_dir / "tune_report.html").is_file()
    with_model = [r for r in records if (Path(r["run_dir"]) / "model").is_dir()]
    assert len(with_model) == 1


def test_baseline_params_only_when_the_recipe_lies_in_the_space(tmp_path: Path, sentiment_csv: Path) -> None:
    from modelyard.tuning.search import baseline_params

    recipe = load_recipe(_recipe(tmp_path, sentiment_csv, tmp_path, tune_section={"space": SPACE}))
    assert baseline_params(recipe, recipe.tune.space) == {"train.learning_rate": 0.01, "train.batch_size": 16}
    recipe.train.batch_size = 32  # not one of the choices
    assert baseline_params(recipe, recipe.tune.space) is None
    recipe.train.batch_size = 8
    recipe.train.learning_rate = 0.5  # above the range
    assert baseline_params(recipe, recipe.tune.space) is None
