"""Hyper-parameter search over a recipe (``modelyard tune``): Optuna in process, or Ray Tune locally."""

from __future__ import annotations

from modelyard.tuning.search import load_trials, trial_recipe, tune, tune_dir_for

__all__ = ["tune", "tune_dir_for", "trial_recipe", "load_trials"]
