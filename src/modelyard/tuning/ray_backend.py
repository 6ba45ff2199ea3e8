"""The same search under Ray Tune (``backend="ray"``): a local Ray instance, ``OptunaSearch`` proposing.

Every trial runs :func:`modelyard.tuning.search.run_trial` in a Ray worker and reports the tuned
metric after each epoch. Ray keeps its own bookkeeping under ``<tune dir>/ray/``; when the search
ends every trial is copied into ``study.db`` (with its parameters, per-epoch values, state, run dir
and error), so the tables, best recipe, report and clean-up are exactly those of the Optuna backend.

On a cluster (``tune.ray_address``) Ray's scheduler spreads the trials over the nodes; a trial whose recipe
has a ``distributed`` section is itself a torchrun job on its node (Ray reserves its workers' CPUs) or a Ray
Train job across the cluster. Such trials report only their final value (the ranks cannot call back per epoch).

Not supported here: pruning (a Ray scheduler stops a trial by killing its worker, which would leave
a half-written run behind) and ``--resume``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from modelyard._internal.packages import install_command
from modelyard.errors import ModelyardError
from modelyard.tuning.trials import TuneSettings, _trial_line, distributions, run_trial

if TYPE_CHECKING:  # pragma: no cover
    import optuna

OBJECTIVE = "objective"


def _trainable(config: dict[str, Any], settings: TuneSettings) -> None:
    """One Ray trial: train with the sampled params, report per epoch, then the final objective."""
    import time

    from ray import tune as ray_tune

    trial_id = ray_tune.get_context().get_trial_id()
    trial_dir = settings.trials_dir / f"ray-{trial_id}"
    params = {key: config[key] for key in settings.space}
    t0 = time.perf_counter()

    def report(epoch: int, value: float) -> None:
        ray_tune.report({OBJECTIVE: value, "epoch": epoch, "final": False})

    try:
        value, run_dir, valid = run_trial(settings, params, trial_dir, report)
    except ModelyardError as err:
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / "error.txt").write_text(str(err), encoding="utf-8")
        raise
    ray_tune.report(
        {
            OBJECTIVE: value,
            "final": True,
            "run_dir": str(run_dir),
            "trial_dir": str(trial_dir),
            "duration_s": round(time.perf_counter() - t0, 2),
            **{f"valid_{k}": v for k, v in valid.items() if isinstance(v, (int, float))},
        }
    )


def run_ray(
    study: optuna.Study,
    settings: TuneSettings,
    n_trials: int,
    console: Console,
    baseline: dict[str, Any] | None = None,
) -> None:
    """Run ``n_trials`` trials with Ray Tune on a local, loopback-only Ray instance; record them in ``study``.

    ``baseline`` (the recipe's own values) is evaluated first, as Ray's ``points_to_evaluate``.
    """
    try:
        import ray
        from ray import tune as ray_tune
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ModelyardError(f"the ray backend needs Ray Tune: {install_command('ray')}") from None
    import optuna

    cfg = settings.recipe.tune
    # No usage-stats upload from an offline tool; set before ray.init reads it.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = False
    if not ray.is_initialized():
        if cfg.ray_address is None:
            ray.init(
                address="local",
                num_cpus=max(2, cfg.n_jobs),
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                logging_level="ERROR",
            )
        else:  # a cluster: its scheduler spreads the trials over the nodes
            ray.init(address=cfg.ray_address, log_to_driver=False, logging_level="ERROR")
        started = True
    try:
        search = OptunaSearch(
            space=distributions(settings.space),
            metric=OBJECTIVE,
            mode="min" if settings.direction == "minimize" else "max",
            sampler=optuna.samplers.TPESampler(seed=cfg.seed),
            points_to_evaluate=[baseline] if baseline else None,
        )
        trainable = ray_tune.with_resources(
            ray_tune.with_parameters(_trainable, settings=settings), trial_resources(settings.recipe)
        )
        tuner = ray_tune.Tuner(
            trainable,
            tune_config=ray_tune.TuneConfig(search_alg=search, num_samples=n_trials, max_concurrent_trials=cfg.n_jobs),
            run_config=ray_tune.RunConfig(name="ray", storage_path=str(settings.tune_dir.resolve()), verbose=0),
        )
        results = tuner.fit()
        _record(study, settings, results, console, baseline=baseline)
    finally:
        if started:
            ray.shutdown()


def trial_resources(recipe: Any) -> dict[str, float]:
    """What Ray reserves for one trial: a CPU, or the CPUs of the torchrun processes a distributed trial starts on
    its node (a ``distributed.backend: ray`` trial asks Ray for its workers itself)."""
    dist = recipe.distributed
    return {"cpu": float(dist.workers) if dist.backend == "torchrun" else 1.0}


def _record(
    study: optuna.Study,
    settings: TuneSettings,
    results: Any,
    console: Console,
    baseline: dict[str, Any] | None = None,
) -> None:
    """Copy Ray's results into the Optuna study (numbers continue after the trials already there)."""
    import optuna
    from optuna.trial import TrialState

    dists = distributions(settings.space)
    ordered = list(results)  # ResultGrid lists trials in the order Ray created them
    total = len(study.trials) + len(ordered)
    for result in ordered:
        params = {k: result.config[k] for k in settings.space if k in result.config}
        metrics = result.metrics or {}
        trial_dir = Path(metrics.get("trial_dir") or settings.trials_dir / f"ray-{metrics.get('trial_id', '')}")
        frame = result.metrics_dataframe
        intermediate: dict[int, float] = {}
        if frame is not None and "epoch" in frame:
            for _, row in frame[frame["final"] == False].iterrows():  # noqa: E712 (pandas mask)
                intermediate[int(row["epoch"])] = float(row[OBJECTIVE])
        user_attrs: dict[str, Any] = {"trial_dir": str(trial_dir), "backend": "ray"}
        if baseline is not None and params == baseline:
            user_attrs["baseline"] = True
            baseline = None  # only the first matching trial is the baseline
        if result.error is None and metrics.get("final"):
            state, value = TrialState.COMPLETE, float(metrics[OBJECTIVE])
            user_attrs |= {
                "run_dir": metrics["run_dir"],
                "duration_s": metrics.get("duration_s"),
                "valid_metrics": {k.removeprefix("valid_"): v for k, v in metrics.items() if k.startswith("valid_")},
            }
        else:
            state, value = TrialState.FAIL, None
            error_file = trial_dir / "error.txt"
            if error_file.is_file():
                user_attrs["error"] = error_file.read_text(encoding="utf-8").strip()
            else:  # not a ModelyardError: Ray's message ends with the exception line
                lines = str(result.error).strip().splitlines()
                user_attrs["error"] = lines[-1] if lines else "failed"
        frozen = optuna.trial.create_trial(
            state=state,
            value=value,
            params=params,
            distributions={k: dists[k] for k in params},
            user_attrs=user_attrs,
            intermediate_values=intermediate,
        )
        study.add_trial(frozen)
        added = study.get_trials(deepcopy=False)[-1]
        console.print(_trial_line(added, total))
