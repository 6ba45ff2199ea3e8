"""Model builders, looked up by name (``model.type``) in a registry; one model family per file."""

from modelyard.models.bundled import BUNDLED_BACKBONES, resolve_backbone
from modelyard.models.registry import ModelBuilder, build_model, get_builder, register_model

# Importing the family modules registers their builders.
from modelyard.models import hf_encoder as _hf_encoder  # noqa: E402,F401  isort: skip
from modelyard.models import textcnn as _textcnn  # noqa: E402,F401  isort: skip
from modelyard.models import bilstm as _bilstm  # noqa: E402,F401  isort: skip
from modelyard.models import transformer_encoder as _transformer_encoder  # noqa: E402,F401  isort: skip
from modelyard.models import cnn_small as _cnn_small  # noqa: E402,F401  isort: skip
from modelyard.models import resnet_mini as _resnet_mini  # noqa: E402,F401  isort: skip
from modelyard.models import vit_tiny as _vit_tiny  # noqa: E402,F401  isort: skip

__all__ = [
    "BUNDLED_BACKBONES",
    "ModelBuilder",
    "build_model",
    "get_builder",
    "register_model",
    "resolve_backbone",
]
