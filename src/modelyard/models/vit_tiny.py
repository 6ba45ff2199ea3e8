"""``vit-tiny``: a small Vision Transformer (Dosovitskiy et al. 2021) for low-resolution images.

Non-overlapping patches (4×4 for 28/32-pixel images, smaller for tiny ones) are linearly embedded
to ``width`` (default 64) dimensions, a class token and learned position embeddings are added, and
``depth`` pre-norm transformer layers (torch's ``nn.TransformerEncoder``) feed a linear head.
ViTs need more data or augmentation than CNNs to match them on small data sets.
"""

from __future__ import annotations

import torch
from torch import nn

from modelyard.models.image_base import ImageModel, ImageModelConfig
from modelyard.models.image_kind import register_image_kind


def patch_size(h: int, w: int) -> int:
    """The largest of 4, 2, 1 dividing both sides, keeping at least 4 patches per side."""
    for p in (4, 2):
        if h % p == 0 and w % p == 0 and min(h, w) // p >= 4:
            return p
    return 1


class VitTiny(ImageModel):
    """Patch embedding, class token, transformer encoder, linear head."""

    architecture = "vit-tiny"
    default_width = 64
    default_depth = 4

    def __init__(self, config: ImageModelConfig) -> None:
        super().__init__(config)
        h, w = config.image_size
        p = patch_size(h, w)
        dim = config.width
        heads = max(dim // 32, 1)
        self.patch = nn.Conv2d(config.in_channels, dim, p, stride=p)
        n_patches = (h // p) * (w // p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=config.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, config.num_labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalised images."""
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(len(tokens), -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.encoder(tokens))[:, 0])


KIND = register_image_kind(VitTiny)
