"""Annotated starter recipes for ``modelyard init``."""

from __future__ import annotations

import os
from pathlib import Path

from modelyard.config import annotated_yaml, recipe_from_dict
from modelyard.errors import DataError


def image_starter_recipe(data: str, output: Path) -> str:
    """The annotated starter recipe for ``modelyard init --task image-classification --data SOURCE``.

    Raises:
        ModelyardError: ``data`` is neither ``bundled:NAME`` nor an existing folder/file.
    """
    if not data.startswith("bundled:"):
        if not Path(data).exists():
            raise DataError(f"--data not found: {data} (an image folder with one subfolder per class, or IDX files)")
        data = os.path.relpath(Path(data).resolve(), output.resolve().parent)
    recipe = recipe_from_dict(
        {
            "name": "image-classifier",
            "task": "image-classification",
            "data": {"path": data},
            "model": {"type": "cnn-small"},
        },
        base_dir=output.parent,
    )
    header = (
        f"# modelyard recipe — run it with:  modelyard train {output}\n"
        "# Image classification: model.type cnn-small | resnet-mini | vit-tiny; augmentation in `augment`.\n"
        f"# Override any key on the command line: modelyard train {output} train.epochs=1 data.sample=2000\n\n"
    )
    return header + annotated_yaml(recipe)
