"""Experiment tracking: a run also reported to MLflow and/or TensorBoard (``train.report_to``).

    Tracking              one per run (or per search): fans each call out to the trackers, isolates failures
      ├─ MlflowTracker        MlflowClient: params = the flattened recipe, metrics, tags = the manifest, artefacts
      └─ TensorBoardTracker   torch's SummaryWriter into ``<run>/tensorboard/``: scalars (+ hparams at the end)

Metric names, the same in both backends:

* every ``train.log_every_steps`` optimizer steps: ``train/loss``, ``train/lr``, ``train/samples_per_s``
  (x = the global step; the records of ``progress.jsonl``);
* after each epoch's validation: ``epoch/train_loss``, ``epoch/valid_loss``, ``epoch/valid_<metric>``,
  ``epoch/epoch_seconds`` (x = the global step at the end of the epoch; the entries of ``history.json``);
* at the end: ``valid_<metric>`` and ``test_<metric>``, the numbers of ``metrics.json``.

A tracker never loses a run: its first failure prints one warning and the run goes on without that
tracker (a tracking server that goes down mid-run leaves the run directory complete). The packages are
imported only when ``report_to`` names them; :func:`require_trackers` fails first, with the install command.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape

from modelyard._internal.layout import MANIFEST, METRICS, MODEL_DIR, REPORT
from modelyard.errors import ConfigError

__all__ = ["Tracker", "Tracking", "flatten", "require_trackers", "tracking_uri"]

# report_to name → (module to import, install command)
_PACKAGES = {
    "mlflow": ("mlflow", 'pip install "modelyard[mlflow]"'),
    "tensorboard": ("tensorboard", 'pip install "modelyard[tensorboard]"'),
}
PARAM_MAX = 500  # MLflow's historical limit on a param value (newer servers allow more; 500 works everywhere)
TAG_MAX = 5000
TENSORBOARD_DIR = "tensorboard"
ARTIFACTS = (REPORT, METRICS, MANIFEST, MODEL_DIR)


def require_trackers(names: Iterable[str]) -> None:
    """Import each tracker's package now, so a missing one fails before any data is read or trained.

    Raises:
        ConfigError: one line naming the tracker and the exact install command.
    """
    for name in names:
        module, command = _PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(
                f"train.report_to lists {name}, but the {module} package is not installed; install it: {command}"
            ) from None


def tracking_uri(recipe: Any) -> str:
    """Where MLflow runs go: ``train.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store
    ``<output_dir>/mlflow.db`` (MLflow 3 no longer accepts new ``file:`` stores without an opt-in)."""
    if recipe.train.tracking_uri:
        return str(recipe.train.tracking_uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = (recipe.resolve(recipe.output_dir) / "mlflow.db").resolve()
    return f"sqlite:///{db.as_posix()}"


def _text(value: Any) -> str:
    """A recipe/manifest value as a param or tag string: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"train.learning_rate": 5e-05, …}`` (lists and scalars are leaves)."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: obj} if prefix else {}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics dict (None, NaN, strings, nested values left out)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def recipe_params(recipe: Any) -> dict[str, str]:
    """The resolved recipe as MLflow params: dotted keys, string values of at most 500 characters."""
    return {k: _clip(_text(v), PARAM_MAX) for k, v in flatten(recipe.model_dump(mode="json")).items()}


def manifest_tags(manifest: dict[str, Any]) -> dict[str, str]:
    """The manifest as tags (dotted keys: ``run_id``, ``seed.train``, ``versions.torch``, ``git_commit``, …)."""
    fields = {k: v for k, v in manifest.items() if k not in ("files", "command")}
    tags = {k: _clip(_text(v), TAG_MAX) for k, v in flatten(fields).items() if v is not None}
    if manifest.get("command"):
        tags["command"] = _clip(" ".join(map(str, manifest["command"])), TAG_MAX)
    return tags


class Tracker(Protocol):
    """One tracking backend. Any exception it raises disables it for the rest of the run (with a warning)."""

    name: str

    def start(self, run_id: str, params: dict[str, str], tags: dict[str, str], resume_step: int | None) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_artifacts(self, paths: list[Path]) -> None: ...

    def finish(self, status: str) -> None: ...


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """MLflow and alembic log every schema migration of a new store at INFO; keep the console to our lines."""
    previous = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


class MlflowTracker:
    """A run in an MLflow tracking store or server, through :class:`mlflow.tracking.MlflowClient`.

    No global MLflow state is touched (no ``mlflow.start_run``), so parallel tuning trials are safe.
    A nested run (a tuning trial, an ensemble member) carries its parent's id as ``mlflow.parentRunId``,
    which is what ``mlflow.start_run(nested=True)`` records too.
    """

    name = "mlflow"

    def __init__(self, uri: str, experiment: str, parent_run_id: str | None = None) -> None:
        self.uri, self.experiment, self.parent_run_id = uri, experiment, parent_run_id
        self.client: Any = None
        self.run_id: str | None = None  # MLflow's id of the run

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        location = None
        if self.uri.startswith("sqlite:///"):  # artefacts beside the database, not in the working directory
            db = Path(self.uri.removeprefix("sqlite:///"))
            location = (db.parent.resolve() / "mlartifacts").as_uri()
        try:
            return str(self.client.create_experiment(self.experiment, artifact_location=location))
        except Exception:  # created meanwhile by a parallel trial
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return str(found.experiment_id)

    def start(self, run_id: str, params: dict[str, str], tags: dict[str, str], resume_step: int | None) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with _quiet("mlflow", "alembic"):
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment_id = self._experiment_id()
        if resume_step is not None:  # continue the MLflow run of the interrupted run, if there is one
            found = self.client.search_runs(
                [experiment_id], filter_string=f"tags.`modelyard.run_id` = '{run_id}'", max_results=1
            )
            if found:
                self.run_id = found[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                return
        all_tags = dict(tags)
        if self.parent_run_id:
            all_tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client.create_run(experiment_id, tags=all_tags, run_name=run_id)
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i : i + 100])

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


class TensorBoardTracker:
    """Scalars in ``<run>/tensorboard/`` (torch's SummaryWriter); ``tensorboard --logdir runs/`` shows every run."""

    name = "tensorboard"

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.writer: Any = None
        self.params: dict[str, str] = {}
        self.final: dict[str, float] = {}

    def start(self, run_id: str, params: dict[str, str], tags: dict[str, str], resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # after a resume, what was logged past the checkpoint's step (before the interruption) is dropped
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        self.params = params

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        if not any(k.startswith("train/") for k in metrics):  # epoch ends and final numbers: on disk now
            self.writer.flush()
            self.final.update({k: v for k, v in metrics.items() if "/" not in k})

    def set_tags(self, tags: dict[str, str]) -> None:
        rows = "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in tags.items())
        self.writer.add_text("manifest", "| key | value |\n|---|---|\n" + rows)

    def log_artifacts(self, paths: list[Path]) -> None:
        """Nothing to copy: the event files live in the run directory next to the artefacts."""

    def finish(self, status: str) -> None:
        if self.writer is None:
            return
        if status == "FINISHED" and self.final:
            self._hparams()
        self.writer.close()
        self.writer = None

    def _hparams(self) -> None:
        """The HParams dashboard: the model/train settings against the final metrics (best effort)."""
        from torch.utils.tensorboard.summary import hparams

        chosen = {k: _scalar(v) for k, v in self.params.items() if k.startswith(("train.", "model."))}
        chosen = {k: v for k, v in chosen.items() if v is not None}
        try:
            for summary in hparams(chosen, {k: v for k, v in self.final.items()}):
                self.writer._get_file_writer().add_summary(summary)
        except Exception:  # the scalars are written; the hparams view is an extra
            return


def _scalar(text: str) -> Any:
    """A param string back as the number/bool/string it was (for HParams), or None for null, lists and dicts."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (bool, int, float, str)) else None


class Tracking:
    """The trackers of one run: each call goes to every tracker; one that fails warns once and is dropped."""

    def __init__(self, trackers: list[Any], console: Console) -> None:
        self.trackers = trackers
        self.console = console
        self.overrides: dict[str, Any] = {}  # for_search: recipe keys that send the trials to the same place

    @classmethod
    def for_recipe(cls, recipe: Any, run_dir: Path, console: Console, parent_run_id: str | None = None) -> Tracking:
        """The trackers ``recipe.train.report_to`` asks for (none: every call is a no-op)."""
        trackers: list[Any] = []
        for name in recipe.train.report_to:
            if name == "mlflow":
                experiment = recipe.train.experiment or recipe.name
                trackers.append(MlflowTracker(tracking_uri(recipe), experiment, parent_run_id))
            elif name == "tensorboard":
                trackers.append(TensorBoardTracker(run_dir / TENSORBOARD_DIR))
        return cls(trackers, console)

    @classmethod
    def for_search(cls, recipe: Any, tune_dir: Path, console: Console) -> Tracking:
        """The MLflow parent run of a hyper-parameter search (started here; trials nest under it).

        ``overrides`` then holds the recipe keys that send every trial to the same store and experiment.
        """
        require_trackers(recipe.train.report_to)
        tracking = cls([], console)
        if "mlflow" in recipe.train.report_to:
            uri, experiment = tracking_uri(recipe), recipe.train.experiment or recipe.name
            tracking.trackers.append(MlflowTracker(uri, experiment))
            tracking.overrides = {"train.tracking_uri": uri, "train.experiment": experiment}
            tracking.start(f"tune-{recipe.name}", recipe, tune_dir)
            tracking._each("set_tags", {"modelyard.search": "optuna", "modelyard.trials_dir": str(tune_dir)})
        return tracking

    @property
    def mlflow_run_id(self) -> str | None:
        """MLflow's id of this run (the parent of nested runs), or None without a working MLflow tracker."""
        return next((t.run_id for t in self.trackers if isinstance(t, MlflowTracker)), None)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:
                self.trackers.remove(tracker)
                detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
                self._warn(f"{tracker.name} tracking failed ({type(err).__name__}: {detail})")

    def _warn(self, what: str) -> None:
        self.console.print(f"[yellow]warning: {escape(what)}; the run goes on without it[/]", highlight=False)

    def start(self, run_id: str, recipe: Any, final_dir: Path, resume_step: int | None = None) -> None:
        """Open the backend runs: the recipe as params, what the run is as tags."""
        if not self.trackers:
            return
        tags = {
            "modelyard.run_id": run_id,
            "modelyard.recipe": recipe.name,
            "modelyard.task": recipe.task,
            "modelyard.model_type": recipe.model.type,
            "modelyard.run_dir": str(final_dir.resolve()),
        }
        self._each("start", run_id, recipe_params(recipe), tags, resume_step)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        """Finite numbers only; nothing is sent when none are left."""
        numbers = _numbers(metrics)
        if numbers and self.trackers:
            self._each("log_metrics", numbers, int(step))

    def log_progress(self, record: dict[str, Any]) -> None:
        """One record of the training loop: a step line of ``progress.jsonl`` or an epoch's history entry."""
        if record.get("event") == "eval":
            skip = ("event", "time", "epoch", "step")
            self.log_metrics({f"epoch/{k}": v for k, v in record.items() if k not in skip}, record["step"])
        else:
            names = {"loss": "train/loss", "lr": "train/lr", "samples_per_s": "train/samples_per_s"}
            self.log_metrics({new: record[old] for old, new in names.items() if old in record}, record["step"])

    def log_artifacts(self, paths: list[Path]) -> None:
        """Copy files or folders into the backend runs (those that exist)."""
        if self.trackers:
            self._each("log_artifacts", [p for p in paths if p.exists()])

    def complete(self, run_dir: Path, step: int) -> None:
        """The finished run: final metrics, manifest tags, the artefacts, status FINISHED."""
        if not self.trackers:
            return
        from modelyard._internal.io import read_json

        try:
            metrics, manifest = read_json(run_dir / METRICS), read_json(run_dir / MANIFEST)
        except (OSError, ValueError) as err:  # not for tracking to fail the run over; its own checks will
            self._warn(f"tracking could not read the run's metrics/manifest ({err})")
            metrics, manifest = {}, {}
        final = {f"{split}_{k}": v for split in ("valid", "test") for k, v in _numbers(metrics.get(split, {})).items()}
        self.log_metrics(final, step)
        tags = manifest_tags(manifest)
        if manifest.get("git_commit"):
            tags["mlflow.source.git.commit"] = str(manifest["git_commit"]).removesuffix("-dirty")
        self._each("set_tags", tags)
        self.log_artifacts([run_dir / name for name in ARTIFACTS])
        self.finish("FINISHED")

    def finish(self, status: str) -> None:
        """Close the backend runs with MLflow's status names: FINISHED, FAILED or KILLED (may be called again)."""
        self._each("finish", status)


def status_of(err: BaseException) -> str:
    """MLflow's run status for a run that stopped with ``err``."""
    return "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
