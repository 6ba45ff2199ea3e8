"""Hyper-parameter search over a recipe: every trial is an ordinary ``train()`` run with a few keys changed.

Layout of one search (``<output_dir>/tune-<recipe name>/``)::

    study.db            Optuna RDB storage (sqlite); study name = recipe name. Resumable.
    trials/trial-0003/  one folder per trial: train.log + the trial's run directory
    best_recipe.yaml    the recipe with the best parameters applied (no tune section; absolute paths)
    trials.csv          one row per trial: number, state, value, duration, run dir, error, params.*
    trials.json         the same, plus the per-epoch values the pruner saw
    tune_report.html    optimisation history, parameter importances, per-epoch curves (self-contained)

After the search only the best trial keeps its model: the other trials' run directories lose
``model/``, ``checkpoints/``, ``splits/`` and ``predictions.parquet`` (their metrics, history,
manifest and report stay, a few kB each).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console
from rich.table import Table

from modelyard._internal.io import atomic_write_text, write_json
from modelyard._internal.layout import REPORT
from modelyard.config import (
    Recipe,
)
from modelyard.errors import ModelyardError
from modelyard.evaluation.report import add_stage_section
from modelyard.training.tracking import Tracking, require_trackers, status_of
from modelyard.tuning.ray_backend import run_ray
from modelyard.tuning.report import write_tune_report
from modelyard.tuning.trials import (
    _HEAVY,
    BACKENDS,
    STUDY_DB,
    TuneSettings,
    _check_space_values,
    _fmt,
    _portable_paths,
    _preflight,
    _quiet_optuna,
    _remove_incomplete,
    _trial_line,
    baseline_params,
    distributions,
    run_trial,
    suggest,
    trial_recipe,
    tune_dir_for,
)

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["tune", "tune_dir_for", "trial_recipe", "TuneSettings", "run_trial", "distributions", "baseline_params"]


def tune(
    recipe: Recipe,
    *,
    trials: int | None = None,
    backend: str = "optuna",
    resume: bool = False,
    console: Console | None = None,
) -> Path:
    """Search the recipe's ``tune.space`` and return the tune directory (see the module docstring).

    Each trial trains the recipe with the sampled values into ``trials/trial-NNNN/``; its objective
    is the best epoch's validation metric (``metrics.json`` valid split). Trials that fail with a
    :class:`ModelyardError` (e.g. an invalid combination) are recorded as FAIL with the message and
    the search goes on.

    Args:
        trials: Total trials (finished + pruned) the study should hold; default ``tune.trials``.
        backend: ``optuna`` (in process, resumable, pruning) or ``ray`` (Ray Tune + OptunaSearch, local).
        resume: Continue the study in ``study.db``: trials left RUNNING by a killed process become
            FAIL and only the missing trials run.

    Raises:
        ConfigError: empty or invalid search space.
        ModelyardError: a study exists and ``resume`` is off (or the reverse), bad data/backbone,
            or no trial finished.
    """
    import optuna

    console = console or Console(stderr=True)
    if backend not in BACKENDS:
        raise ModelyardError(f"unknown tuning backend '{backend}'; use one of {', '.join(BACKENDS)}")
    settings = TuneSettings(recipe, trials)
    _check_space_values(recipe)
    require_trackers(recipe.train.report_to)
    tune_dir = settings.tune_dir
    db = tune_dir / STUDY_DB
    if db.exists() and not resume:
        raise ModelyardError(
            f"{tune_dir} already holds a search (study.db); pass --resume to continue it, "
            "or remove the directory to start over"
        )
    if resume and not db.exists():
        raise ModelyardError(f"--resume: there is no search to resume in {tune_dir}; run without --resume")
    if resume and backend != "optuna":
        raise ModelyardError("--resume is only supported by the optuna backend")
    _preflight(recipe)
    tune_dir.mkdir(parents=True, exist_ok=True)
    settings.trials_dir.mkdir(exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    # train.report_to: mlflow — one parent run for this search; each trial is a nested run under it
    search_run = Tracking.for_search(recipe, tune_dir, console)
    settings.tracking_parent, settings.tracking_overrides = search_run.mlflow_run_id, search_run.overrides
    try:
        tune_dir, study = _search(settings, storage, resume=resume, backend=backend, console=console)
    except BaseException as err:
        search_run.finish(status_of(err))
        raise
    search_run.log_metrics({f"best_{settings.metric_name}": study.best_value, "trials": len(study.trials)}, step=0)
    search_run.log_artifacts([tune_dir / n for n in ("tune_report.html", "trials.csv", "best_recipe.yaml")])
    search_run.finish("FINISHED")
    return tune_dir


def _search(
    settings: TuneSettings, storage: Any, *, resume: bool, backend: str, console: Console
) -> tuple[Path, optuna.Study]:
    """Open (or resume) the study, run the missing trials, write the outputs: ``(tune_dir, study)``."""
    recipe, tune_dir = settings.recipe, settings.tune_dir
    with _quiet_optuna():
        study = _open_study(settings, storage, resume=resume, console=console)
        baseline = None
        if not resume and recipe.tune.baseline_first:
            baseline = baseline_params(recipe, settings.space)
            if baseline is None:
                console.print("[yellow]the recipe's own values lie outside the search space: no baseline trial[/]")
            else:
                console.print(f"trial 0 runs the recipe's own configuration (the baseline): {baseline}")
                if backend == "optuna":
                    study.enqueue_trial(baseline, user_attrs={"baseline": True})
        done = len(study.get_trials(deepcopy=False, states=(_state().COMPLETE, _state().PRUNED)))
        remaining = max(settings.trials - done, 0)
        space = ", ".join(f"{k} ({s.type})" for k, s in settings.space.items())
        console.print(
            f"[bold]tune[/] {recipe.name}: {remaining} trial(s) to run"
            + (f" ({done} already done)" if done else "")
            + f" · {settings.direction} {settings.metric} · space {space} · backend {backend} → {tune_dir}"
        )
        t0 = time.time()
        if remaining:
            if backend == "optuna":
                _optimize(study, settings, remaining, console)
            else:
                run_ray(study, settings, remaining, console, baseline=baseline)
        return _finish(study, settings, console, time.time() - t0), study


def _state() -> Any:
    from optuna.trial import TrialState

    return TrialState


def _open_study(settings: TuneSettings, storage: Any, *, resume: bool, console: Console) -> optuna.Study:
    import optuna

    cfg = settings.recipe.tune
    name = settings.recipe.name
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=cfg.prune_startup_trials,
            # Epochs are reported as steps 1, 2, …; a step below n_warmup_steps is never pruned.
            n_warmup_steps=cfg.prune_warmup_epochs + 1,
        )
        if cfg.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    if resume:
        try:
            optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            # the search was stopped (killed) before its study was created: there is nothing to resume, so
            # resuming is starting it
            console.print(f"--resume: no study '{name}' in {settings.tune_dir / STUDY_DB} yet; starting the search")
            resume = False
    if not resume:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=settings.direction,
            sampler=optuna.samplers.TPESampler(seed=cfg.seed),
            pruner=pruner,
        )
        study.set_user_attr("metric", settings.metric)
        study.set_user_attr("space", {k: v.model_dump(mode="json") for k, v in settings.space.items()})
        return study

    existing = optuna.load_study(study_name=name, storage=storage)
    if existing.direction.name.lower() != settings.direction or existing.user_attrs.get("metric") != settings.metric:
        raise ModelyardError(
            f"--resume: the study optimises {existing.direction.name.lower()} "
            f"{existing.user_attrs.get('metric')}, the recipe asks for {settings.direction} {settings.metric}; "
            "keep the metric or start a new search"
        )
    # A fresh sampler seeded as in the first run would propose the first run's trials again; offset
    # the seed by the trials already in the study (still deterministic for a given history).
    sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(existing.trials))
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    # Resume means the process that ran this search is gone (killed, crashed, Ctrl-C'd). Its RUNNING
    # trials will never report back; left RUNNING they would count as neither done nor failed and
    # TPE would treat them as in-flight forever. Mark them FAIL and drop their half-written runs.
    # (This assumes no other process is working on the same study right now.)
    study_id = storage.get_study_id_from_name(name)
    for stale in study.get_trials(deepcopy=False, states=(_state().RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, stale.number)
        storage.set_trial_user_attr(trial_id, "error", "abandoned: still RUNNING when the search was resumed")
        storage.set_trial_state_values(trial_id, _state().FAIL)
        _remove_incomplete(settings.trials_dir / f"trial-{stale.number:04d}")
        console.print(f"[yellow]trial {stale.number} was left running by a stopped search; marked FAIL[/]")
    return study


def _optimize(study: optuna.Study, settings: TuneSettings, n_trials: int, console: Console) -> None:
    import optuna

    def objective(trial: optuna.Trial) -> float:
        params = {key: suggest(trial, key, spec) for key, spec in settings.space.items()}
        trial_dir = settings.trials_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("trial_dir", str(trial_dir))

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch} ({settings.metric} {value:.4f})")

        t0 = time.perf_counter()
        try:
            value, run_dir, valid = run_trial(settings, params, trial_dir, report)
        except ModelyardError as err:
            trial.set_user_attr("error", str(err))
            raise
        finally:
            trial.set_user_attr("duration_s", round(time.perf_counter() - t0, 2))
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("valid_metrics", _jsonable(valid))
        return value

    total = len(study.trials) + n_trials

    def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        console.print(_trial_line(trial, total))

    cfg = settings.recipe.tune
    try:
        study.optimize(
            objective,
            n_trials=n_trials,
            n_jobs=cfg.n_jobs,
            catch=(ModelyardError,),
            callbacks=[progress],
            gc_after_trial=True,
        )
    except KeyboardInterrupt:
        console.print(f"[yellow]search interrupted; continue it with --resume (study: {settings.tune_dir})[/]")
        raise


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, type(None)))}


# ---------------------------------------------------------------------- outputs


def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per trial: number, state, value, duration_s, run_dir, error, params, epoch values."""
    out = []
    for t in study.get_trials(deepcopy=False):
        out.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "duration_s": t.user_attrs.get("duration_s"),
                "run_dir": t.user_attrs.get("run_dir"),
                "error": t.user_attrs.get("error"),
                "params": dict(t.params),
                "epoch_values": {int(k): v for k, v in sorted(t.intermediate_values.items())},
                "valid_metrics": t.user_attrs.get("valid_metrics"),
                "baseline": bool(t.user_attrs.get("baseline", False)),
            }
        )
    return out


def _write_tables(tune_dir: Path, records: list[dict[str, Any]], keys: list[str]) -> None:
    write_json(tune_dir / "trials.json", records)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["number", "state", "value", "duration_s", "run_dir", "error", *(f"params.{k}" for k in keys)])
    for r in records:
        writer.writerow(
            [
                r["number"],
                r["state"],
                "" if r["value"] is None else r["value"],
                "" if r["duration_s"] is None else r["duration_s"],
                r["run_dir"] or "",
                r["error"] or "",
                *(r["params"].get(k, "") for k in keys),
            ]
        )
    atomic_write_text(tune_dir / "trials.csv", buf.getvalue())


def _prune_artifacts(records: list[dict[str, Any]], best_number: int | None) -> None:
    """Free disk: only the best trial keeps its model (and checkpoints, splits, predictions)."""
    for r in records:
        if r["number"] == best_number or not r["run_dir"]:
            continue
        run_dir = Path(r["run_dir"])
        for name in _HEAVY:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()


def _write_best_recipe(settings: TuneSettings, best: optuna.trial.FrozenTrial) -> Path:
    recipe = settings.recipe
    best_recipe = trial_recipe(recipe, best.params, source="best_recipe.yaml")
    raw = best_recipe.model_dump(mode="json")
    raw.pop("tune", None)
    _portable_paths(recipe, raw)
    header = (
        f"# Best of the '{recipe.name}' search: trial {best.number}, {settings.metric} = {best.value:.6g}\n"
        + "".join(f"#   {k}: {_fmt(v)}\n" for k, v in best.params.items())
        + f"# Trained run: {best.user_attrs.get('run_dir')}\n"
        "# The tune section is removed and paths are absolute: `modelyard train best_recipe.yaml` retrains it.\n"
    )
    path = settings.tune_dir / "best_recipe.yaml"
    atomic_write_text(path, header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def _finish(study: optuna.Study, settings: TuneSettings, console: Console, seconds: float) -> Path:

    tune_dir = settings.tune_dir
    records = trial_records(study)
    keys = list(settings.space)
    complete = [t for t in study.get_trials(deepcopy=False, states=(_state().COMPLETE,))]
    best = study.best_trial if complete else None
    _write_tables(tune_dir, records, keys)
    _prune_artifacts(records, best.number if best else None)
    if best is not None:
        _write_best_recipe(settings, best)
    report = write_tune_report(tune_dir / "tune_report.html", study, settings, records)
    if best is not None and best.user_attrs.get("run_dir"):
        best_run = Path(best.user_attrs["run_dir"])
        add_stage_section(
            best_run / REPORT,
            "tuning",
            f"Hyper-parameter search (this run is trial {best.number})",
            report.read_text(encoding="utf-8"),
            link=os.path.relpath(report, best_run),
        )

    table = Table(title=f"tune {settings.recipe.name} · {settings.direction} {settings.metric}")
    for col in ("trial", "state", "value", *keys, "seconds"):
        table.add_column(col, justify="left" if col == "state" else "right")
    for r in records:
        mark = " ★" if best is not None and r["number"] == best.number else ""
        mark += " (baseline)" if r["baseline"] else ""
        table.add_row(
            f"{r['number']}{mark}",
            r["state"],
            "-" if r["value"] is None else f"{r['value']:.4f}",
            *(_fmt(r["params"].get(k, "-")) for k in keys),
            "-" if r["duration_s"] is None else f"{r['duration_s']:.1f}",
        )
    console.print(table)
    counts = {s: sum(r["state"] == s for r in records) for s in ("COMPLETE", "PRUNED", "FAIL")}
    console.print(
        f"{counts['COMPLETE']} complete · {counts['PRUNED']} pruned · {counts['FAIL']} failed · {seconds:.0f}s"
    )
    if best is None:
        raise ModelyardError(
            f"no trial finished; see {settings.trials_dir}/trial-*/train.log and {tune_dir / 'trials.csv'}"
        )
    console.print(f"best: trial {best.number} · {settings.metric} {best.value:.4f} · {best.user_attrs['run_dir']}")
    base = next((r for r in records if r["baseline"] and r["value"] is not None), None)
    if base is not None:
        console.print(f"baseline (the recipe's values): trial {base['number']} · {settings.metric} {base['value']:.4f}")
    console.print(f"best recipe: {tune_dir / 'best_recipe.yaml'} · report: {tune_dir / 'tune_report.html'}")
    return tune_dir


def load_trials(tune_dir: Path) -> list[dict[str, Any]]:
    """Read ``trials.json`` of a finished search."""
    return json.loads((Path(tune_dir) / "trials.json").read_text(encoding="utf-8"))
