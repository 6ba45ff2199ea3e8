"""The `tune` section: the search space and what is optimised."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    field_validator,
)

from modelyard.config._base import _Stage
from modelyard.config.train import VALID_METRICS


class LogUniformParam(_Stage):
    """A float sampled log-uniformly in [low, high] (learning rates, weight decay)."""

    type: Literal["loguniform"] = Field(..., description="`loguniform`.")
    low: float = Field(..., gt=0, description="Smallest value (> 0).")
    high: float = Field(..., gt=0, description="Largest value.")


class UniformParam(_Stage):
    """A float sampled uniformly in [low, high] (dropout, warm-up ratio)."""

    type: Literal["uniform"] = Field(..., description="`uniform`.")
    low: float = Field(..., description="Smallest value.")
    high: float = Field(..., description="Largest value.")


class IntParam(_Stage):
    """An integer in [low, high], both included (epochs, max_length)."""

    type: Literal["int"] = Field(..., description="`int`.")
    low: int = Field(..., description="Smallest value.")
    high: int = Field(..., description="Largest value (included).")
    log: bool = Field(False, description="Sample on a log scale (needs low ≥ 1).")


class ChoiceParam(_Stage):
    """One of a list of values (batch sizes, backbones)."""

    type: Literal["choice"] = Field(..., description="`choice`.")
    values: list[str | int | float | bool | None] = Field(..., min_length=1, description="The candidate values.")


ParamSpec = Annotated[
    LogUniformParam | UniformParam | IntParam | ChoiceParam,
    Field(discriminator="type"),
]
# Sections a search may not vary: the search itself, where runs go, and settings that do not affect training.
_UNTUNABLE = ("tune", "output_dir", "name", "task", "serve", "pretrain", "distributed")


class TuneConfig(_Stage):
    """Hyper-parameter search (`modelyard tune`): which recipe keys vary and what is optimised."""

    space: dict[str, ParamSpec] = Field(
        default_factory=dict,
        description="Search space keyed by dotted recipe key, e.g. `train.learning_rate: "
        "{type: loguniform, low: 1e-5, high: 1e-3}`; types loguniform, uniform, int (low, high, log), "
        "choice (values).",
    )
    metric: str | None = Field(
        None,
        description="Validation metric optimised, `valid.<metric>`; null = `valid.` + train.metric. "
        "Test metrics are never tuned on.",
    )
    direction: Literal["auto", "maximize", "minimize"] = Field(
        "auto", description="`auto` minimises loss, log_loss and ece and maximises the rest."
    )
    trials: int = Field(8, ge=1, description="Trials in the search (finished + pruned; failed ones do not count).")
    pruner: Literal["median", "none"] = Field(
        "median", description="Stop a trial early when its epoch metric is below the median of earlier trials."
    )
    prune_startup_trials: int = Field(
        3, ge=0, description="Trials that always run to the end before the pruner may stop any."
    )
    prune_warmup_epochs: int = Field(1, ge=0, description="Epochs every trial completes before it may be pruned.")
    seed: int = Field(42, description="Seed of the TPE sampler (the same seed proposes the same trials).")
    baseline_first: bool = Field(
        True,
        description="Trial 0 runs the recipe's own values (where they lie in the space), so the search is "
        "measured against the default and never reports a best worse than it.",
    )
    n_jobs: int = Field(
        1, ge=1, description="Trials run in parallel (threads; results are then not bit-for-bit reproducible)."
    )
    ray_address: str | None = Field(
        None,
        description="--backend ray: an existing Ray cluster (`auto`, `ray://head:10001`) whose nodes run the trials; "
        "null starts a local loopback-only instance. The recipe's output_dir must then be on storage every node sees.",
    )

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, Any]) -> dict[str, Any]:
        # The keys themselves are checked by the recipe (model.* keys depend on the model kind).
        for key, spec in space.items():
            if isinstance(spec, ChoiceParam):
                continue
            if not spec.low < spec.high:
                raise ValueError(
                    f"`tune.space.{key}`: low ({spec.low}) must be below high ({spec.high}); "
                    "for a single value set it in the recipe instead"
                )
            if isinstance(spec, IntParam) and spec.log and spec.low < 1:
                raise ValueError(f"`tune.space.{key}`: a log-scale int range needs low ≥ 1 (got {spec.low})")
        return space

    @field_validator("metric")
    @classmethod
    def _metric(cls, metric: str | None) -> str | None:
        if metric is None:
            return None
        split, _, name = metric.rpartition(".")
        if split not in ("", "valid"):
            raise ValueError(
                f"tune.metric '{metric}': only validation metrics can be tuned on (`valid.<metric>`); "
                "tuning on test would leak the test set into the model choice"
            )
        if name not in VALID_METRICS:
            close = difflib.get_close_matches(name, sorted(VALID_METRICS), n=1)
            hint = f"; did you mean 'valid.{close[0]}'?" if close else ""
            raise ValueError(
                f"tune.metric '{metric}' is not a metric; use valid.<one of {', '.join(sorted(VALID_METRICS))}>{hint}"
            )
        return f"valid.{name}"
