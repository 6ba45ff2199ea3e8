"""Image-run outputs: the exported model directory and the report's grid of confident mistakes."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup, escape

from modelyard._internal.io import write_json
from modelyard.config import Recipe

MAX_GRID = 20


def save_image_model_dir(path: Path, model: Any, recipe: Recipe, labels: list[str]) -> None:
    """Write ``config.json`` + ``model.safetensors`` (no pickle) and ``modelyard.json`` into ``path``."""
    model.save_pretrained(path, safe_serialization=True)
    cfg = model.config
    write_json(
        path / "modelyard.json",
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


def png_data_uri(image: np.ndarray, scale: int = 1) -> str:
    """A ``data:image/png;base64,…`` URI for a uint8 image ``(C, H, W)``, optionally upscaled (nearest)."""
    from PIL import Image

    a = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    im = Image.fromarray(np.ascontiguousarray(a))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def mistake_grid_html(images: np.ndarray, y: np.ndarray, probs: np.ndarray, labels: list[str], refs: list[str]) -> str:
    """HTML of the ``MAX_GRID`` most confident mistakes as inline PNGs with true/predicted label captions."""
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    wrong = np.flatnonzero(pred != y)
    top = wrong[np.argsort(-conf[wrong], kind="stable")][:MAX_GRID]
    if not len(top):
        return "<p>No mistakes on the test split.</p>"
    h = images.shape[-2]
    scale = max(1, 96 // max(h, 1))
    cells = []
    for i in top:
        caption = f"true {labels[y[i]]} → {labels[pred[i]]} ({conf[i]:.2f})"
        cells.append(
            f'<figure style="display:inline-block;margin:4px;text-align:center;width:{h * scale + 8}px">'
            f'<img src="{png_data_uri(images[i], scale)}" alt="{escape(refs[i])}" title="{escape(refs[i])}" '
            f'style="image-rendering:pixelated"><figcaption style="font-size:11px">{escape(caption)}</figcaption>'
            "</figure>"
        )
    intro = (
        f"<p>The {len(top)} test images the model got wrong with the highest confidence "
        f"(of {len(wrong)} mistakes in {len(y)} images). Hover for the image's source.</p>"
    )
    return str(Markup(intro + "<div>" + "".join(cells) + "</div>"))


def add_mistake_grid(report: Path, test: Any, labels: list[str], predictions: Path) -> bool:
    """Add the image grid of confident test mistakes to a run's ``report.html`` (a stage section)."""
    import pandas as pd

    from modelyard.evaluation.report import add_stage_section

    frame = pd.read_parquet(predictions)
    frame = frame[frame["split"] == "test"]
    probs = frame[[f"prob_{lab}" for lab in labels]].to_numpy(dtype=np.float64)
    images = test.images.cpu().numpy() if hasattr(test.images, "cpu") else np.asarray(test.images)
    html = mistake_grid_html(images, np.asarray(test.labels), probs, labels, list(test.texts))
    return add_stage_section(report, "image-mistakes", "Most confident mistakes (images)", html)


def evaluate_image_run(run: Path, recipe: Recipe, data: str | Path | None, console: Any) -> tuple[Path, dict[str, Any]]:
    """``modelyard evaluate`` for an image run: re-score its valid/test splits, or a labelled image source.

    ``data`` may be anything ``data.path`` accepts for images (a class-per-subfolder folder, IDX files,
    ``bundled:NAME``); its images are brought to the model's size and channels and all of them are scored.

    Raises:
        ModelyardError: the source can't be read or holds labels the model doesn't know.
    """
    import time

    from modelyard._internal.io import read_json
    from modelyard.config import DataConfig
    from modelyard.data.images import _read_source, read_image_splits
    from modelyard.errors import DataError
    from modelyard.evaluation.evaluate import score_and_write
    from modelyard.inference import load
    from modelyard.training.finetune import print_metrics, read_jsonl

    clf = load(run)
    index = {lab: i for i, lab in enumerate(clf.labels)}
    if data is None:
        saved = read_image_splits(run)
        splits = {
            s: (getattr(saved, s).images, getattr(saved, s).labels, getattr(saved, s).refs) for s in ("valid", "test")
        }
        out_dir = run
        history = read_json(run / "history.json") if (run / "history.json").is_file() else []
        steps = [r for r in read_jsonl(run / "progress.jsonl") if "event" not in r]
    else:
        h, _ = clf.image_size
        cfg = DataConfig(path=str(data), image_size=h, channels=clf.channels, on_bad_image=recipe.data.on_bad_image)
        raw = _read_source(cfg, Path.cwd())
        unknown = sorted(set(raw.labels) - set(index))
        if unknown:
            raise DataError(f"{data}: labels {unknown[:10]} are not classes of this model ({clf.labels})")
        images = np.stack([clf.to_array(np.asarray(im).transpose(1, 2, 0)) for im in raw.images])
        y = np.array([index[lab] for lab in raw.labels], dtype=np.int64)
        splits = {"eval": (images, y, raw.refs)}
        name = Path(str(data)).name.replace(":", "-") or "data"
        out_dir = run / "evaluations" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        out_dir.mkdir(parents=True, exist_ok=True)
        history, steps = [], []
    metrics, predictions = score_and_write(
        out_dir,
        f"{recipe.name} · {run.name} · evaluation",
        clf,
        {split: (list(images), y, list(refs)) for split, (images, y, refs) in splits.items()},
        history,
        steps,
        {"run": run.name, "model": clf.meta.get("model_type"), "evaluated": str(data or "run splits (valid, test)")},
    )
    focus = "test" if "test" in splits else "eval"
    images, y, refs = splits[focus]
    probs = predictions[predictions["split"] == focus][[f"prob_{lab}" for lab in clf.labels]].to_numpy()
    grid = mistake_grid_html(np.asarray(images), np.asarray(y), probs, clf.labels, list(refs))
    from modelyard.evaluation.report import add_stage_section

    add_stage_section(out_dir / "report.html", "image-mistakes", "Most confident mistakes (images)", grid)
    print_metrics(console, metrics)
    console.print(f"report: {out_dir / 'report.html'}")
    return out_dir, metrics


def image_starter_recipe(data: str, output: Path) -> str:
    """The annotated starter recipe for ``modelyard init --task image-classification --data SOURCE``.

    Raises:
        ModelyardError: ``data`` is neither ``bundled:NAME`` nor an existing folder/file.
    """
    import os

    from modelyard.config import annotated_yaml, recipe_from_dict
    from modelyard.errors import DataError

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
