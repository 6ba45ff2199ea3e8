"""modelyard: one recipe from labelled text to a trained, measured, served model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load", "train", "evaluate", "load_recipe", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from modelyard.models.text_classifier import Classifier


def load(run_dir: Any) -> Classifier:
    """Load a finished run (or its ``model/`` directory) for prediction. See :func:`modelyard.models.loading.load`."""
    from modelyard.models.loading import load as _load

    return _load(run_dir)


def __getattr__(name: str) -> Any:
    # Lazy imports keep `import modelyard` (and the CLI's --help) fast: torch loads only when needed.
    if name == "train":
        from modelyard.training.run import train

        return train
    if name == "evaluate":
        from modelyard.evaluation.evaluate import evaluate

        return evaluate
    if name == "load_recipe":
        from modelyard.config import load_recipe

        return load_recipe
    raise AttributeError(name)
