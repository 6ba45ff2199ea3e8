"""``cnn-small``: the classic conv-pool-dense network (with batch norm), LeNet/Keras-tutorial style.

``depth`` blocks of two 3×3 convolutions (batch norm, ReLU) and a 2×2 max-pool, channels doubling from
``width``; then flatten → dense → dropout → dense. About 0.9M parameters at 28×28 with the defaults.
"""

from __future__ import annotations

import torch
from torch import nn

from modelyard.models.image_base import ImageModel, ImageModelConfig
from modelyard.models.image_kind import register_image_kind


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class CnnSmall(ImageModel):
    """Conv-pool blocks, then a dense classifier head."""

    architecture = "cnn-small"
    default_width = 32
    default_depth = 2

    def __init__(self, config: ImageModelConfig) -> None:
        super().__init__(config)
        layers: list[nn.Module] = []
        c_in, h, w = config.in_channels, *config.image_size
        for i in range(config.depth):
            c_out = config.width * 2**i
            layers += [*_conv(c_in, c_out), *_conv(c_out, c_out)]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * h * w, 8 * config.width),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(8 * config.width, config.num_labels),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalised images."""
        return self.head(self.body(x))


KIND = register_image_kind(CnnSmall)
