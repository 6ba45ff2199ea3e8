"""The recipe: one typed pydantic model per stage, loaded from YAML with ``key=value`` overrides.

The field descriptions are the single source of truth for the annotated starter recipe
(``modelyard init``), the CLI help and the docs. Every model forbids unknown keys, so a typo
fails at load time with the key named and the closest valid key suggested. The ``model`` section is
validated by the settings model of its kind (:mod:`modelyard.kinds`), so a key that belongs to another
kind is an error naming that kind.

One module per section (``data``, ``model``, ``train``, ``serve``, ``tune``) and the whole recipe
(``recipe``); everything is importable from ``modelyard.config``.
"""

from __future__ import annotations

from modelyard.config._base import NAME_PATTERN
from modelyard.config.data import ChineseCleaningConfig, CleaningConfig, DataConfig, ExtraTrainData
from modelyard.config.model import (
    ArchConfig,
    EnsembleConfig,
    LoraSettings,
    ModelSettings,
    OpenAIBackendConfig,
    PromptConfig,
    TfidfConfig,
    TokenizerConfig,
    default_model_settings,
    validate_model_settings,
)
from modelyard.config.recipe import Recipe, annotated_yaml, apply_overrides, load_recipe, recipe_from_dict
from modelyard.config.serve import ServeConfig
from modelyard.config.train import (
    LOWER_IS_BETTER,
    VALID_METRICS,
    AugmentConfig,
    DistillConfig,
    PretrainConfig,
    PrivacyConfig,
    TrainConfig,
)
from modelyard.config.tune import ChoiceParam, IntParam, LogUniformParam, ParamSpec, TuneConfig, UniformParam

__all__ = [
    "LOWER_IS_BETTER",
    "NAME_PATTERN",
    "VALID_METRICS",
    "ArchConfig",
    "AugmentConfig",
    "ChineseCleaningConfig",
    "ChoiceParam",
    "CleaningConfig",
    "DataConfig",
    "DistillConfig",
    "EnsembleConfig",
    "ExtraTrainData",
    "IntParam",
    "LogUniformParam",
    "LoraSettings",
    "ModelSettings",
    "OpenAIBackendConfig",
    "ParamSpec",
    "PretrainConfig",
    "PrivacyConfig",
    "PromptConfig",
    "Recipe",
    "ServeConfig",
    "TfidfConfig",
    "TokenizerConfig",
    "TrainConfig",
    "TuneConfig",
    "UniformParam",
    "annotated_yaml",
    "apply_overrides",
    "default_model_settings",
    "load_recipe",
    "recipe_from_dict",
    "validate_model_settings",
]
