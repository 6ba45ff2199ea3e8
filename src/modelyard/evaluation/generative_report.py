"""The report of a generative run: quality per epoch, losses, sample grids per epoch, VAE reconstructions.

Images are inlined as PNG data URIs, so ``report.html`` is one self-contained file like every other report.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup, escape

from modelyard._internal.io import atomic_write_text
from modelyard.evaluation.html import figure_env, new_figure, svg


def grid_image(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Tile uint8 images ``(N, C, H, W)`` into one ``(C, H', W')`` image, ``columns`` per row."""
    n, c, h, w = images.shape
    rows = max(1, -(-n // columns))
    out = np.full((c, rows * (h + pad) + pad, columns * (w + pad) + pad), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, columns)
        out[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = im
    return out


def png_bytes(image: np.ndarray, scale: int = 1) -> bytes:
    """PNG of a uint8 ``(C, H, W)`` image (grayscale or RGB), optionally upscaled (nearest)."""
    from PIL import Image

    a = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    im = Image.fromarray(np.ascontiguousarray(a))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_grid(images: np.ndarray, path: Path, columns: int = 8, scale: int = 2) -> None:
    """Write a grid of images as one PNG (written to a temporary name, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(png_bytes(grid_image(images, columns), scale))
    tmp.replace(path)


def _img(data: bytes, alt: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<img src="{uri}" alt="{escape(alt)}" style="image-rendering:pixelated">'


def _curves(history: list[dict[str, Any]], steps: list[dict[str, Any]]) -> str:
    with figure_env("generative-curves"):
        fig = new_figure(9, 3)
        ax1, ax2 = fig.subplots(1, 2)
        keys = [k for k in (steps[0] if steps else {}) if k.endswith("loss") or k in ("d_real", "d_fake")]
        for k in keys:
            ax1.plot([s["step"] for s in steps], [s.get(k) for s in steps], label=k)
        ax1.set_xlabel("step")
        ax1.set_title("training losses")
        if keys:
            ax1.legend()
        epochs = [h["epoch"] for h in history]
        ax2.plot(epochs, [h.get("valid_fd_proxy") for h in history], marker="o", label="valid FD proxy")
        ax2.set_xlabel("epoch")
        ax2.set_title("Fréchet distance (proxy), lower is better")
        return str(svg(fig))


def write_generative_report(
    path: Path,
    *,
    title: str,
    info: dict[str, Any],
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    samples_dir: Path,
    labels: list[str],
    conditional: bool,
    figures: dict[str, np.ndarray] | None = None,
) -> None:
    """Write ``report.html`` of a generative run."""
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in info.items())
    keys = sorted({k for m in metrics.values() for k in m})
    table = (
        "<tr><th>split</th>"
        + "".join(f"<th>{escape(k)}</th>" for k in keys)
        + "</tr>"
        + "".join(
            f"<tr><td>{escape(s)}</td>" + "".join(f"<td>{escape(m.get(k, ''))}</td>" for k in keys) + "</tr>"
            for s, m in metrics.items()
        )
    )
    hkeys = [k for k in (history[0] if history else {}) if k != "step"]
    htable = (
        "<tr>"
        + "".join(f"<th>{escape(k)}</th>" for k in hkeys)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{escape(_fmt(h.get(k)))}</td>" for k in hkeys) + "</tr>" for h in history)
    )
    grids = []
    for png in sorted(Path(samples_dir).glob("*.png")):
        grids.append(f"<figure>{_img(png.read_bytes(), png.stem)}<figcaption>{escape(png.stem)}</figcaption></figure>")
    rows_note = (
        f"Rows: {', '.join(escape(lb) for lb in labels)} (one class per row, the same latents every epoch)."
        if conditional
        else "Unconditional samples, the same latents every epoch."
    )
    extra = "".join(
        f"<h2>{escape(name)}</h2><figure>{_img(png_bytes(grid_image(img, 8), 2), name)}</figure>"
        for name, img in (figures or {}).items()
    )
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}figure{{display:inline-block;margin:6px}}
.muted{{color:#666}}</style></head><body>
<h1>{escape(title)}</h1>
<table>{rows}</table>
<h2>Quality (features of an image classifier trained on the same data — an FID-style proxy, not Inception FID)</h2>
<table>{table}</table>
<p class="muted">fd_proxy: Fréchet distance between feature Gaussians of generated and real images (lower is better);
precision/recall: k-NN manifold estimates (Kynkäänniemi et al. 2019); class_accuracy: the feature classifier gives a
generated image the class it was asked for; loss (VAE): negative ELBO per image in nats.</p>
<h2>Training</h2>{Markup(_curves(history, steps))}
<table>{htable}</table>
<h2>Samples per epoch</h2><p class="muted">{rows_note}</p>
{"".join(grids)}
{extra}
<!-- modelyard:stage-sections -->
</body></html>
"""
    atomic_write_text(Path(path), html)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "" if v is None else str(v)
