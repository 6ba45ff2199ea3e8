"""The report's image section: a grid of the most confident mistakes, images inlined as PNG data URIs."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup, escape

from modelyard.evaluation.report import add_stage_section

MAX_GRID = 20


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
    frame = pd.read_parquet(predictions)
    frame = frame[frame["split"] == "test"]
    probs = frame[[f"prob_{lab}" for lab in labels]].to_numpy(dtype=np.float64)
    images = test.images.cpu().numpy() if hasattr(test.images, "cpu") else np.asarray(test.images)
    html = mistake_grid_html(images, np.asarray(test.labels), probs, labels, list(test.texts))
    return add_stage_section(report, "image-mistakes", "Most confident mistakes (images)", html)
