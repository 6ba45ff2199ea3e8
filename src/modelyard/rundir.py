"""``RunDir``: the one type that knows the layout of a run directory.

    runs/<run-id>/            (written as <run-id>.incomplete, renamed only when complete)
      recipe.yaml  manifest.json  data_report.json  fingerprints.json  splits/  progress.jsonl
      history.json  metrics.json  predictions.parquet  report.html  model/  checkpoints/
      compressed/  explanations/  evaluations/

Every stage reads a run through it (``RunDir(path).recipe()``, ``.splits()``, ``.model_dir``,
``.serve_settings()``); the file names are the constants of :mod:`modelyard._internal.layout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from modelyard._internal import layout
from modelyard._internal.integrity import read_checked
from modelyard._internal.io import read_json, read_jsonl
from modelyard._internal.rundir import find_run
from modelyard.config import Recipe, ServeConfig, apply_overrides, load_recipe
from modelyard.data import PreparedData
from modelyard.data.images import read_image_splits
from modelyard.errors import ConfigError, ModelyardError

# What to do about a damaged file of a finished run.
_FIX = "re-run `modelyard train` for this run, or restore the run directory from a backup"


@dataclass(frozen=True)
class RunDir:
    """A run directory (finished, or ``.incomplete`` while it is being written)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def finished(cls, path: str | Path) -> RunDir:
        """A finished run (has ``manifest.json`` and ``model/``); a clear error otherwise."""
        return cls(find_run(Path(path)))

    # ------------------------------------------------------------------ names
    @property
    def run_id(self) -> str:
        """The run's id: the directory name without ``.incomplete``."""
        return self.path.name.removesuffix(layout.INCOMPLETE).removeprefix(layout.STAGING)

    @property
    def is_incomplete(self) -> bool:
        """Whether the run is still being written (or was interrupted)."""
        return self.path.name.endswith(layout.INCOMPLETE) or self.path.name.startswith(layout.STAGING)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def recipe_path(self) -> Path:
        return self.path / layout.RECIPE

    @property
    def manifest_path(self) -> Path:
        return self.path / layout.MANIFEST

    @property
    def data_report_path(self) -> Path:
        return self.path / layout.DATA_REPORT

    @property
    def fingerprints_path(self) -> Path:
        return self.path / layout.FINGERPRINTS

    @property
    def splits_dir(self) -> Path:
        return self.path / layout.SPLITS_DIR

    @property
    def progress_path(self) -> Path:
        return self.path / layout.PROGRESS

    @property
    def history_path(self) -> Path:
        return self.path / layout.HISTORY

    @property
    def metrics_path(self) -> Path:
        return self.path / layout.METRICS

    @property
    def predictions_path(self) -> Path:
        return self.path / layout.PREDICTIONS

    @property
    def report_path(self) -> Path:
        return self.path / layout.REPORT

    @property
    def model_dir(self) -> Path:
        return self.path / layout.MODEL_DIR

    @property
    def model_meta_path(self) -> Path:
        return self.model_dir / layout.MODEL_META

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / layout.CHECKPOINTS_DIR

    @property
    def compressed_dir(self) -> Path:
        return self.path / layout.COMPRESSED_DIR

    @property
    def explanations_dir(self) -> Path:
        return self.path / layout.EXPLANATIONS_DIR

    @property
    def evaluations_dir(self) -> Path:
        return self.path / layout.EVALUATIONS_DIR

    @property
    def resumable(self) -> bool:
        """Whether the run has a last checkpoint to resume from."""
        return (self.checkpoints_dir / "last" / "trainer_state.json").is_file()

    # ------------------------------------------------------------------ contents
    def recipe(self, overrides: list[str] | None = None) -> Recipe:
        """The run's own fully resolved recipe (``recipe.yaml``), with optional dotted overrides."""
        if not self.recipe_path.is_file():
            raise ModelyardError(f"{self.path} has no {layout.RECIPE} (not a modelyard run directory?)")
        return load_recipe(self.recipe_path, overrides)

    def manifest(self) -> dict[str, Any]:
        return read_checked(self.manifest_path, read_json, _FIX)

    def metrics(self) -> dict[str, Any]:
        return read_checked(self.metrics_path, read_json, _FIX)

    def history(self) -> list[dict[str, Any]]:
        return read_checked(self.history_path, read_json, _FIX) if self.history_path.is_file() else []

    def steps(self) -> list[dict[str, Any]]:
        """The training-step records of ``progress.jsonl`` (evaluation events left out)."""
        return [r for r in read_jsonl(self.progress_path) if "event" not in r]

    def predictions(self) -> pd.DataFrame:
        return read_checked(self.predictions_path, pd.read_parquet, _FIX)

    def model_meta(self) -> dict[str, Any]:
        return read_checked(self.model_meta_path, read_json, _FIX)

    def splits(self) -> Any:
        """The exact train/valid/test splits (and labels, data report, fingerprints) the run was trained on."""
        if (self.splits_dir / "train.npz").is_file():
            return read_checked(self.path, read_image_splits, _FIX)
        if not (self.splits_dir / layout.LABELS).is_file():
            raise ModelyardError(f"{self.path} has no {layout.SPLITS_DIR}/ (not a modelyard run directory?)")
        frames = {
            n: read_checked(self.splits_dir / f"{n}.parquet", pd.read_parquet, _FIX) for n in ("train", "valid", "test")
        }
        return PreparedData(
            **frames,
            labels=read_checked(self.splits_dir / layout.LABELS, read_json, _FIX),
            report=read_checked(self.data_report_path, read_json, _FIX),
            fingerprints=read_checked(self.fingerprints_path, read_json, _FIX),
        )

    def serve_settings(self, overrides: list[str] | None = None) -> ServeConfig:
        """The run's ``serve`` section (defaults when the run has no recipe), with dotted ``serve.*`` overrides.

        The only reader of a run's serve settings: ``modelyard serve RUN serve.max_batch_size=64`` and the
        registry server both come here. Only the ``serve`` section is parsed, so a run whose recipe names a
        model kind that is not installed here can still be served by the kind registered with its model.
        """
        raw: dict[str, Any] = {}
        if self.recipe_path.is_file():
            try:
                loaded = yaml.safe_load(self.recipe_path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as err:
                raise ConfigError(f"{self.recipe_path}: cannot read the serve section: {err}") from None
            raw = dict(loaded.get("serve") or {}) if isinstance(loaded, dict) else {}
        for item in overrides or []:
            if not item.startswith("serve."):
                raise ConfigError(f"override '{item}': only serve.* keys can be overridden when serving a run")
        wrapped = apply_overrides({"serve": raw}, list(overrides or []))
        try:
            return ServeConfig.model_validate(wrapped["serve"])
        except ValidationError as err:
            problems = "; ".join(f"serve.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"{self.path}: invalid serve settings: {problems}") from None
