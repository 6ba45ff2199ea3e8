"""Registering an image architecture as a model kind: settings, save, load and the registry's weight check."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from modelyard._internal.io import write_json
from modelyard._internal.layout import MODEL_META
from modelyard.kinds import ModelKind, register_kind
from modelyard.models.image_base import ImageModel, ImageSettings, image_builder
from modelyard.models.image_classifier import ImageClassifier


def save_image_model(path: Path, model: Any, tokenizer: Any, recipe: Any, labels: list[str]) -> None:
    """Write ``config.json`` + ``model.safetensors`` (no pickle) and ``modelyard.json`` into ``path``."""
    model.save_pretrained(path, safe_serialization=True)
    cfg = model.config
    write_json(
        path / MODEL_META,
        {
            "format": 1,
            "task": "image-classification",
            "name": recipe.name,
            "labels": labels,
            "model_type": recipe.model.type,
            "image_size": list(cfg.image_size),
            "channels": cfg.in_channels,
            "normalization": {"mean": list(cfg.mean), "std": list(cfg.std), "scale": "pixel / 255"},
            "resize": "bilinear to image_size; convert to L (1 channel) or RGB (3 channels)",
        },
    )


def _load_image_classifier(model_dir: Path, meta: dict[str, Any], *, device: str = "auto", batch_size: int = 64) -> Any:
    return ImageClassifier(model_dir, device=device, batch_size=batch_size)


def _check_image_weights(model_dir: Path, meta: dict[str, Any]) -> None:
    if not (model_dir / "model.safetensors").is_file():
        raise ValueError("no model.safetensors weights; only safetensors models can be registered")


def register_image_kind(cls: type[ImageModel]) -> ModelKind:
    """Register ``cls`` as the image kind ``cls.architecture`` (settings: :class:`ImageSettings`)."""
    name = cls.architecture
    settings = type(
        f"{cls.__name__}Settings",
        (ImageSettings,),
        {
            "__annotations__": {"type": Literal[name]},  # type: ignore[valid-type]
            "type": name,
            "__doc__": f"`{name}`: {(cls.__doc__ or name).strip().splitlines()[0]}",
            "__module__": cls.__module__,
        },
    )
    return register_kind(
        ModelKind(
            name=name,
            settings=settings,
            modality="image",
            build=image_builder(cls),
            save=save_image_model,
            load=_load_image_classifier,
            check_artifacts=_check_image_weights,
            supports=frozenset({"resume"}),
        )
    )
