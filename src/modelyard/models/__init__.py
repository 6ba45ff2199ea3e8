"""Model builders, looked up by name (``model.type``) in a registry; one model family per file."""

from modelyard.models.bundled import BUNDLED_BACKBONES, resolve_backbone
from modelyard.models.registry import ModelBuilder, build_model, get_builder, register_model

# Importing the family modules registers their builders.
from modelyard.models import hf_encoder as _hf_encoder  # noqa: E402,F401  isort: skip

__all__ = [
    "BUNDLED_BACKBONES",
    "ModelBuilder",
    "build_model",
    "get_builder",
    "register_model",
    "resolve_backbone",
]
