"""``resnet-mini``: a small ResNet (He et al. 2016) for low-resolution images.

A 3×3 stem, then ``depth`` stages of two basic residual blocks each (the first of a stage halves the
resolution from the second stage on, channels doubling from ``width``), global average pooling and a
linear head. About 0.7M parameters with the defaults (width 32, depth 3).
"""

from __future__ import annotations

import torch
from torch import nn

from modelyard.models.image_base import ImageModel, ImageModelConfig
from modelyard.models.image_kind import register_image_kind


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetMini(ImageModel):
    """Stem, residual stages, global average pool, linear head."""

    architecture = "resnet-mini"
    default_width = 32
    default_depth = 3

    def __init__(self, config: ImageModelConfig) -> None:
        super().__init__(config)
        w = config.width
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
        )
        blocks: list[nn.Module] = []
        c_in = w
        for i in range(config.depth):
            c_out = w * 2**i
            blocks += [BasicBlock(c_in, c_out, 2 if i else 1), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.stages = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(c_in, config.num_labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalised images."""
        x = self.stages(self.stem(x))
        return self.head(self.dropout(x.mean(dim=(2, 3))))


KIND = register_image_kind(ResNetMini)
