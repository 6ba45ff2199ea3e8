"""``train.augment.generated``: images from a trained ``vae``/``gan`` run added to a classifier's training split.

Only the training split grows; valid and test stay the real images the data stage split off, so every
number the run reports is measured on real data. Generation is seeded, so a resumed run regenerates the
same images; the run's saved ``splits/`` hold the real images only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from rich.console import Console

from modelyard.errors import ModelyardError
from modelyard.training.batch_sources import ImageEncoded


def add_generated(recipe: Any, train: ImageEncoded, labels: list[str], console: Console) -> ImageEncoded:
    """``train`` with ``per_class`` generated images of every class appended (a new object; inputs untouched).

    Raises:
        ModelyardError: the run is not a conditional generator, its classes or image shape differ from the data.
    """
    spec = recipe.train.augment.generated
    if spec is None:
        return train
    from modelyard.models.loading import load

    where = f"train.augment.generated.from {spec.from_run}"
    gen = load(recipe.resolve(spec.from_run), device="cpu")
    if not hasattr(gen, "generate"):
        raise ModelyardError(f"{where} is a {gen.task} model; it must be a vae or gan run")
    if not gen.conditional:
        raise ModelyardError(f"{where} was trained with conditional: false; it cannot generate a chosen class")
    missing = [lb for lb in labels if lb not in gen.labels]
    if missing:
        raise ModelyardError(f"{where} cannot generate the classes {missing}; it knows {gen.labels}")
    shape = tuple(train.images.shape[1:])
    if (gen.channels, *gen.image_size) != shape:
        raise ModelyardError(
            f"{where} makes {gen.channels}×{gen.image_size[0]}×{gen.image_size[1]} images, the data is "
            f"{shape[0]}×{shape[1]}×{shape[2]}; set data.channels/data.image_size to match"
        )
    images, names, refs = [], [], []
    for k, label in enumerate(labels):
        imgs, _ = gen.generate(spec.per_class, label, seed=spec.seed * 1009 + k)
        images.append(imgs)
        names.append(np.full(spec.per_class, k, dtype=np.int64))
        refs += [f"generated:{label}#{i}" for i in range(spec.per_class)]
    extra = torch.from_numpy(np.concatenate(images)).to(train.images.device)
    console.print(
        f"augment: +{len(extra)} generated images ({spec.per_class} per class) from {spec.from_run} "
        f"→ {len(train.labels) + len(extra)} training images (valid/test unchanged)"
    )
    return ImageEncoded(
        texts=[*train.texts, *refs],
        images=torch.cat([train.images, extra]),
        labels=np.concatenate([train.labels, *names]),
        soft=None,
    )
