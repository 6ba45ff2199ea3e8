"""What the image models share: a JSON config, the Hugging Face-style output, save/load as safetensors.

Each architecture (``cnn-small``, ``resnet-mini``, ``vit-tiny``) lives in its own file, subclasses
:class:`ImageModel` and registers its kind with :func:`modelyard.models.image_kind.register_image_kind`.
A model takes float images in ``[0, 1]`` of shape ``(N, C, H, W)`` and normalises them itself with
the training split's per-channel mean/std (stored as buffers), so inference needs no extra metadata.
Weights are saved as ``model.safetensors`` next to ``config.json``: no pickle anywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from modelyard._internal.io import read_json, write_json
from modelyard._internal.runtime import model_state
from modelyard.config import ModelSettings
from modelyard.errors import ModelError

ARCHITECTURES: dict[str, type[ImageModel]] = {}


class ImageSettings(ModelSettings):
    """An image classifier trained from scratch (`cnn-small`, `resnet-mini`, `vit-tiny`)."""

    width: int | None = Field(
        None, ge=4, le=1024, description="Base width (channels, or embedding size); null = the architecture's default."
    )
    depth: int | None = Field(
        None, ge=1, le=32, description="Blocks (conv blocks, residual stages, layers); null = the default."
    )
    dropout: float | None = Field(None, ge=0, lt=1, description="Dropout before the classifier; null = 0.1.")


@dataclass
class ImageModelConfig:
    """Everything needed to rebuild an image model before loading its weights (saved as ``config.json``)."""

    architecture: str
    num_labels: int
    in_channels: int
    image_size: list[int]  # [H, W]
    width: int
    depth: int
    dropout: float = 0.1
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.5])
    id2label: dict[str, str] = field(default_factory=dict)


@dataclass
class ImageClassifierOutput:
    """``.logits`` (and ``.loss`` when labels were given), like a transformers model output."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class ImageModel(nn.Module):
    """Base class: input normalisation, the output convention, ``save_pretrained``/``from_pretrained``."""

    architecture: ClassVar[str] = ""
    default_width: ClassVar[int] = 32
    default_depth: ClassVar[int] = 2

    def __init__(self, config: ImageModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config.in_channels
        self.register_buffer("pixel_mean", torch.tensor(config.mean, dtype=torch.float32).reshape(1, c, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(config.std, dtype=torch.float32).reshape(1, c, 1, 1))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.architecture:
            ARCHITECTURES[cls.architecture] = cls

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalised images (implemented by each architecture)."""
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        """Classify ``pixel_values`` (float in [0, 1], or uint8 in [0, 255]), shape ``(N, C, H, W)``."""
        if pixel_values.dtype == torch.uint8:
            pixel_values = pixel_values.float() / 255.0
        logits = self.features((pixel_values - self.pixel_mean) / self.pixel_std)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return ImageClassifierOutput(logits=logits, loss=loss)

    def save_pretrained(self, path: Path, safe_serialization: bool = True) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "config.json", asdict(self.config))
        save_file(model_state(self), str(path / "model.safetensors"), metadata={"format": "pt"})

    @staticmethod
    def from_pretrained(path: Path, device: str | torch.device = "cpu") -> ImageModel:
        """Rebuild the model from ``config.json`` and load ``model.safetensors`` (strict key match)."""
        from safetensors.torch import load_file

        path = Path(path)
        try:
            config = ImageModelConfig(**read_json(path / "config.json"))
            cls = ARCHITECTURES[config.architecture]
            model = cls(config)
            model.load_state_dict(load_file(str(path / "model.safetensors"), device="cpu"))
        except (OSError, TypeError, KeyError, RuntimeError, ValueError) as err:
            raise ModelError(f"cannot load the image model in {path}: {str(err).splitlines()[0]}") from None
        return model.to(device).eval()


def image_config(
    cls: type[ImageModel],
    cfg: ImageSettings,
    labels: list[str],
    *,
    image_shape: list[int],
    normalization: dict[str, list[float]] | None = None,
) -> ImageModelConfig:
    """The :class:`ImageModelConfig` for a recipe's model section and the data's image shape."""
    c, h, w = image_shape
    norm = normalization or {"mean": [0.5] * c, "std": [0.5] * c}
    return ImageModelConfig(
        architecture=cls.architecture,
        num_labels=len(labels),
        in_channels=c,
        image_size=[h, w],
        width=cfg.width or cls.default_width,
        depth=cfg.depth or cls.default_depth,
        dropout=0.1 if cfg.dropout is None else cfg.dropout,
        mean=[float(x) for x in norm["mean"]],
        std=[max(float(x), 1e-6) for x in norm["std"]],
        id2label={str(i): lab for i, lab in enumerate(labels)},
    )


def image_builder(cls: type[ImageModel]) -> Any:
    """A registry builder for ``cls``: ``(cfg, labels, base_dir, image_shape=…, normalization=…) → (model, None)``."""

    def build(
        cfg: ImageSettings,
        labels: list[str],
        base_dir: Path,
        *,
        image_shape: list[int] | None = None,
        normalization: dict[str, list[float]] | None = None,
    ) -> tuple[ImageModel, None]:
        if image_shape is None:
            raise ModelError(
                f"model.type '{cls.architecture}' is an image model; use it with task: image-classification"
            )
        return cls(image_config(cls, cfg, labels, image_shape=image_shape, normalization=normalization)), None

    build.__doc__ = f"Build a ``{cls.architecture}`` image classifier."
    return build
