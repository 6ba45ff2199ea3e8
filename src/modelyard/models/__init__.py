"""The model kinds (one file each, registered in :mod:`modelyard.kinds`) and loading a trained model.

Importing this package stays light: a kind's module (and torch/transformers) is imported when the kind
is first looked up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard.errors import ModelError
from modelyard.kinds import get_kind
from modelyard.llm.backbones import BUNDLED_BACKBONES, resolve_backbone
from modelyard.models.loading import load, model_dir_of, read_model_meta


def build_model(cfg: Any, labels: list[str], base_dir: Path, **facts: Any) -> tuple[Any, Any]:
    """Build ``(torch module, tokenizer)`` for a model section of a kind that trains in the shared loop.

    ``facts`` reach builders that need facts about the data (``texts`` for kinds that learn a tokenizer;
    ``image_shape`` and ``normalization`` for image kinds, whose second element is ``None``).
    """
    kind = get_kind(cfg.type)
    if kind.build is None:
        raise ModelError(f"model.type '{cfg.type}' is a one-shot fit; it has no network to build")
    return kind.build(cfg, labels, base_dir, **facts)


__all__ = ["BUNDLED_BACKBONES", "build_model", "load", "model_dir_of", "read_model_meta", "resolve_backbone"]
