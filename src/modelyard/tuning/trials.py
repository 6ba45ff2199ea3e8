"""One trial of a search (shared by the optuna and Ray backends): settings, the trial's recipe, running it.

Both backends ask this module; neither imports the other, and the search loop (:mod:`.search`) and the
report (:mod:`.report`) sit on top of it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from modelyard._internal.io import read_json
from modelyard._internal.layout import METRICS, PREDICTIONS
from modelyard._internal.rundir import INCOMPLETE, discard_run
from modelyard.config import (
    LOWER_IS_BETTER,
    ChoiceParam,
    IntParam,
    LogUniformParam,
    Recipe,
    UniformParam,
    recipe_from_dict,
)
from modelyard.data import prepare_data
from modelyard.errors import ConfigError, ModelyardError
from modelyard.kinds import get_kind
from modelyard.models import resolve_backbone
from modelyard.training.run import train

if TYPE_CHECKING:  # pragma: no cover
    import optuna

BACKENDS = ("optuna", "ray")
TRIALS_DIR = "trials"
STUDY_DB = "study.db"
# What a non-best trial loses after the search: everything large. Metrics, history and report stay.
_HEAVY = ("model", "checkpoints", "splits", PREDICTIONS)


class TuneSettings:
    """The resolved search settings shared by both backends."""

    def __init__(self, recipe: Recipe, trials: int | None) -> None:
        cfg = recipe.tune
        if not cfg.space:
            raise ConfigError(
                "tune.space is empty; add the recipe keys to search, e.g. "
                "`tune: {space: {train.learning_rate: {type: loguniform, low: 1.0e-5, high: 1.0e-3}}}`"
            )
        self.recipe = recipe
        self.space = cfg.space
        self.trials = cfg.trials if trials is None else trials
        if self.trials < 1:
            raise ModelyardError(f"--trials must be at least 1 (got {self.trials})")
        self.metric = cfg.metric or f"valid.{recipe.train.metric}"
        self.metric_name = self.metric.split(".", 1)[1]
        if cfg.direction == "auto":
            self.direction = "minimize" if self.metric_name in LOWER_IS_BETTER else "maximize"
        else:
            self.direction = cfg.direction
        self.tune_dir = tune_dir_for(recipe)
        self.trials_dir = self.tune_dir / TRIALS_DIR
        # train.report_to: mlflow — every trial is a nested run of the search's MLflow run (set by the search),
        # in the search's store and experiment (a trial's own output_dir would give it a store of its own).
        self.tracking_parent: str | None = None
        self.tracking_overrides: dict[str, Any] = {}

    def epoch_value(self, entry: dict[str, Any]) -> float | None:
        """The tuned metric in one history entry (``valid_<metric>``), or None when undefined."""
        key = "valid_loss" if self.metric_name == "loss" else f"valid_{self.metric_name}"
        value = entry.get(key)
        return None if value is None or not math.isfinite(float(value)) else float(value)


def tune_dir_for(recipe: Recipe) -> Path:
    """``<output_dir>/tune-<recipe name>``."""
    return recipe.resolve(recipe.output_dir) / f"tune-{recipe.name}"


# ---------------------------------------------------------------------- recipes per trial


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _portable_paths(recipe: Recipe, raw: dict[str, Any]) -> None:
    """Make the recipe's relative paths absolute, so the file loads the same from any folder."""
    data_path = raw["data"]["path"]
    if not str(data_path).startswith("bundled:"):
        raw["data"]["path"] = str(recipe.resolve(data_path).resolve())
    backbone = raw["model"].get("backbone")  # kinds trained from scratch (textcnn, bilstm …) have none
    if isinstance(backbone, str) and not backbone.startswith("bundled:") and recipe.resolve(backbone).exists():
        raw["model"]["backbone"] = str(recipe.resolve(backbone).resolve())
    raw["output_dir"] = str(recipe.resolve(raw["output_dir"]).resolve())


def trial_recipe(
    recipe: Recipe, params: dict[str, Any], *, output_dir: Path | None = None, source: str = "trial"
) -> Recipe:
    """A copy of ``recipe`` with dotted ``params`` applied and the tune section dropped, validated.

    Raises:
        ConfigError: the combination is invalid (the message names the key).
    """
    raw = recipe.model_dump(mode="json")
    raw.pop("tune", None)
    for key, value in params.items():
        _set_dotted(raw, key, value)
    if output_dir is not None:
        raw["output_dir"] = str(output_dir)
    return recipe_from_dict(raw, base_dir=recipe.base_dir, source=source)


def _check_space_values(recipe: Recipe) -> None:
    """Each bound and each choice must be a valid value for its key on its own (fail before any trial)."""
    for key, spec in recipe.tune.space.items():
        candidates = spec.values if isinstance(spec, ChoiceParam) else [spec.low, spec.high]
        for value in candidates:
            try:
                trial_recipe(recipe, {key: value}, source=f"tune.space.{key}")
            except ConfigError as err:
                raise ConfigError(f"tune.space.{key}: value {value!r} is not valid for `{key}`: {err}") from None


def _preflight(recipe: Recipe) -> None:
    """Fail once, up front, on data or backbone problems that would fail every trial."""

    keys = recipe.tune.space
    if not any(k.startswith("data.") for k in keys):
        prepare_data(recipe.data, recipe.base_dir)
    if get_kind(recipe.model.type).can("pretrained_backbone") and "model.backbone" not in keys:
        resolve_backbone(recipe.model.backbone, recipe.base_dir)


# ---------------------------------------------------------------------- one trial (both backends)


def _remove_incomplete(trial_dir: Path) -> None:
    for path in trial_dir.glob(f"*{INCOMPLETE}"):
        discard_run(path)


def run_trial(
    settings: TuneSettings,
    params: dict[str, Any],
    trial_dir: Path,
    report: Callable[[int, float], None],
) -> tuple[float, Path, dict[str, Any]]:
    """Train one trial into ``trial_dir``; return (objective, run dir, valid metrics).

    ``report(epoch, value)`` is called after every epoch with the tuned metric; it may raise to stop
    the trial (pruning), which discards the trial's run. Training output goes to ``trial_dir/train.log``.

    Raises:
        ModelyardError: invalid parameter combination, diverged training, undefined metric.
    """

    trial_dir.mkdir(parents=True, exist_ok=True)

    def on_epoch_end(epoch: int, entry: dict[str, Any]) -> None:
        value = settings.epoch_value(entry)
        if value is not None:
            report(epoch, value)

    with (trial_dir / "train.log").open("a", encoding="utf-8") as log:
        console = Console(file=log, width=120, force_terminal=False, color_system=None)
        try:
            recipe = trial_recipe(
                settings.recipe,
                {**params, **settings.tracking_overrides},
                output_dir=trial_dir,
                source=f"trial {trial_dir.name}",
            )
            run_dir = train(
                recipe, console=console, on_epoch_end=on_epoch_end, tracking_parent=settings.tracking_parent
            )
        except BaseException as err:
            console.print(f"trial stopped: {type(err).__name__}: {err}")
            # A run that failed after its first checkpoint is left resumable by train(); a trial is
            # never resumed on its own, so remove it.
            _remove_incomplete(trial_dir)
            raise
    valid = read_json(run_dir / METRICS)["valid"]
    value = valid.get(settings.metric_name)
    if value is None or not math.isfinite(float(value)):
        raise ModelyardError(f"{settings.metric} is undefined for this trial ({value}); tune another metric")
    return float(value), run_dir, valid


def baseline_params(recipe: Recipe, space: dict[str, Any]) -> dict[str, Any] | None:
    """The recipe's current value of every searched key, or None if any of them lies outside the space."""
    raw = recipe.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key, spec in space.items():
        node: Any = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if isinstance(spec, (LogUniformParam, UniformParam, IntParam)):
            if isinstance(node, bool) or not isinstance(node, (int, float)) or not spec.low <= node <= spec.high:
                return None
            if isinstance(spec, IntParam) and node != int(node):
                return None
            out[key] = int(node) if isinstance(spec, IntParam) else float(node)
        else:
            if node not in spec.values:
                return None
            out[key] = node
    return out


def suggest(trial: optuna.Trial, key: str, spec: Any) -> Any:
    """Sample one parameter on an Optuna trial."""
    if isinstance(spec, LogUniformParam):
        return trial.suggest_float(key, spec.low, spec.high, log=True)
    if isinstance(spec, UniformParam):
        return trial.suggest_float(key, spec.low, spec.high)
    if isinstance(spec, IntParam):
        return trial.suggest_int(key, spec.low, spec.high, log=spec.log)
    return trial.suggest_categorical(key, spec.values)


def distributions(space: dict[str, Any]) -> dict[str, Any]:
    """The search space as Optuna distributions (the Ray backend and ``create_trial`` need them)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, LogUniformParam):
            out[key] = FloatDistribution(spec.low, spec.high, log=True)
        elif isinstance(spec, UniformParam):
            out[key] = FloatDistribution(spec.low, spec.high)
        elif isinstance(spec, IntParam):
            out[key] = IntDistribution(spec.low, spec.high, log=spec.log)
        else:
            out[key] = CategoricalDistribution(spec.values)
    return out


# ---------------------------------------------------------------------- the search


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO (and failures with tracebacks); we print our own lines instead."""
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _trial_line(trial: optuna.trial.FrozenTrial, total: int) -> str:
    state = trial.state.name
    colour = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(state, "white")
    value = "" if trial.value is None else f" value {trial.value:.4f}"
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    duration = trial.user_attrs.get("duration_s")
    took = f" · {duration:.1f}s" if duration is not None else ""
    error = f" · {trial.user_attrs['error']}" if state == "FAIL" and trial.user_attrs.get("error") else ""
    return f"trial {trial.number} ({trial.number + 1}/{total}) [{colour}]{state}[/]{value} · {params}{took}{error}"
