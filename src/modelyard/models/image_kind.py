"""Registering an image architecture as a model kind: settings, save, load and the registry's weight check."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from modelyard._internal.io import read_json, write_json
from modelyard._internal.layout import MODEL_META
from modelyard.kinds import ModelKind, register_kind
from modelyard.models.image_base import ImageModel, ImageModelConfig, ImageSettings, image_builder
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
    """The registry's admission check: ``config.json`` rebuilds this architecture and ``model.safetensors`` opens.

    ``config.json`` must parse into an :class:`ImageModelConfig` of the kind recorded in ``modelyard.json`` with one
    output per label; the safetensors header is read (no tensor data) and must hold tensors.

    Raises:
        ValueError: naming the file and the problem.
    """
    from safetensors import safe_open

    config_path, weights_path = model_dir / "config.json", model_dir / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ValueError(f"no {path.name}; an image model is config.json + model.safetensors")
    try:
        config = ImageModelConfig(**read_json(config_path))
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise ValueError(f"config.json does not describe an image model ({err})") from None
    if config.architecture != meta.get("model_type"):
        raise ValueError(
            f"config.json is a '{config.architecture}' model, modelyard.json says '{meta.get('model_type')}'"
        )
    if config.num_labels != len(meta.get("labels") or []):
        raise ValueError(f"config.json has {config.num_labels} outputs for {len(meta.get('labels') or [])} labels")
    try:
        with safe_open(str(weights_path), framework="numpy") as weights:
            names = list(weights.keys())
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a malformed header
        raise ValueError(f"model.safetensors cannot be opened ({str(err).splitlines()[0]})") from None
    if not names:
        raise ValueError("model.safetensors holds no tensors")


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
