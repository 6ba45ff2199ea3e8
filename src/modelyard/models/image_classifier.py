"""Load a trained image classifier: ``modelyard.load(RUN_DIR).predict(["cat.png", pil_image, array])``.

Reads only the exported ``model/`` directory (``config.json`` + ``model.safetensors`` +
``modelyard.json``). Every input goes through the training pipeline's front end: decoded with
Pillow, converted to the run's channel count (L or RGB), resized to its image size, scaled to [0, 1];
the model normalises with the training split's mean/std it carries.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np

from modelyard._internal.io import read_json
from modelyard._internal.labels import add_prediction_columns, label_predictions
from modelyard._internal.layout import MANIFEST, MODEL_META
from modelyard.data.images import IMAGE_EXTENSIONS
from modelyard.errors import DataError, ModelError
from modelyard.models.image_base import ImageModel

ImageInput = Any  # a path (str / Path), encoded bytes, a PIL image, or an array (H, W), (H, W, C) or (C, H, W)


class ImageClassifier:
    """A trained image classifier with the same ``predict``/``predict_proba`` as the text one.

    Attributes:
        labels: class names in model output order.
        task: ``image-classification``.
        image_size: ``(height, width)`` the model expects.
        channels: 1 (grayscale) or 3 (RGB).
    """

    task = "image-classification"

    def __init__(self, model_dir: Path, *, device: str = "auto", batch_size: int = 64) -> None:
        import torch

        from modelyard._internal.runtime import pick_device

        self.model_dir = Path(model_dir)
        self.meta: dict[str, Any] = read_json(self.model_dir / MODEL_META)
        self.labels: list[str] = list(self.meta["labels"])
        self.image_size = tuple(int(x) for x in self.meta["image_size"])
        self.channels = int(self.meta["channels"])
        self.batch_size = batch_size
        self.device = pick_device(device)
        self.model = ImageModel.from_pretrained(self.model_dir, device=self.device)
        if self.model.config.num_labels != len(self.labels):
            raise ModelError(
                f"{self.model_dir}: the model has {self.model.config.num_labels} outputs for {len(self.labels)} labels"
            )
        self._torch = torch
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """JSON-able description of the model (served in responses)."""
        run_dir = self.model_dir.parent
        return {
            "name": self.meta.get("name"),
            "run_id": run_dir.name if (run_dir / MANIFEST).is_file() else None,
            "task": self.task,
            "model_type": self.meta.get("model_type"),
            "labels": self.labels,
            "image_size": list(self.image_size),
            "channels": self.channels,
        }

    # ------------------------------------------------------------------ front end
    def to_array(self, image: ImageInput, where: str = "image") -> np.ndarray:
        """One input as the model's uint8 ``(C, H, W)`` array.

        Raises:
            DataError: the input is not a readable image (the message names ``where``).
        """
        from PIL import Image, UnidentifiedImageError

        try:
            if isinstance(image, (str, Path)):
                where = str(image)
                with Image.open(image) as im:
                    im.load()
                    pil = im.copy()
            elif isinstance(image, (bytes, bytearray)):
                with Image.open(io.BytesIO(image)) as im:
                    im.load()
                    pil = im.copy()
            elif isinstance(image, Image.Image):
                pil = image
            elif isinstance(image, np.ndarray) or hasattr(image, "__array__"):
                pil = _array_to_pil(np.asarray(image), where)
            else:
                raise DataError(f"{where}: expected a path, bytes, a PIL image or an array, got {type(image).__name__}")
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(
                f"{where}: not a readable image ({str(err).splitlines()[0] if str(err) else err!r})"
            ) from None
        pil = pil.convert("L" if self.channels == 1 else "RGB")
        h, w = self.image_size
        if pil.size != (w, h):
            pil = pil.resize((w, h), Image.Resampling.BILINEAR)
        a = np.asarray(pil, dtype=np.uint8)
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    def predict_proba(self, images: list[ImageInput]) -> np.ndarray:
        """Class probabilities, shape ``(len(images), len(labels))``; rows sum to 1."""
        if isinstance(images, (str, Path, bytes)) or (isinstance(images, np.ndarray) and images.ndim < 4):
            raise TypeError("predict_proba expects a list of images (paths, PIL images or arrays), not a single one")
        arrays = [self.to_array(im, f"images[{i}]") for i, im in enumerate(images)]
        out = np.zeros((len(arrays), len(self.labels)), dtype=np.float64)
        if not arrays:
            return out
        torch = self._torch
        batch = torch.from_numpy(np.stack(arrays))
        with self._lock, torch.inference_mode():
            for start in range(0, len(batch), self.batch_size):
                x = batch[start : start + self.batch_size].to(self.device).float().div_(255.0)
                logits = self.model(pixel_values=x).logits.float()
                out[start : start + len(x)] = torch.softmax(logits.double(), dim=-1).cpu().numpy()
        return out

    def predict(self, images: list[ImageInput]) -> list[dict[str, Any]]:
        """Predicted label and per-class scores for each image.

        Example:
            >>> clf.predict(["boot.png"])
            [{'label': 'Ankle boot', 'scores': {'T-shirt/top': 0.001, …}}]
        """

        return label_predictions(self.labels, self.predict_proba(images))


def _array_to_pil(a: np.ndarray, where: str) -> Any:
    from PIL import Image

    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # (C, H, W) → (H, W, C)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise DataError(f"{where}: expected an array of shape (H, W), (H, W, C) or (C, H, W), got {a.shape}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        a = np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))


def image_files(path: Path) -> list[Path]:
    """An image file, or every image file under a folder (sorted, recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"--input not found: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return files


def predict_files(clf: ImageClassifier, input_path: Path) -> Any:
    """Predict every image under ``input_path``: one row per file with ``path``, the prediction columns
    (``pred``, ``confidence``, ``prob_<label>``) and ``error`` (an unreadable file gets its error, not a crash)."""
    import pandas as pd

    files = image_files(input_path)
    arrays: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for f in files:
        try:
            arrays.append(clf.to_array(f))
            errors.append(None)
        except DataError as err:
            arrays.append(None)
            errors.append(str(err))
    ok = [i for i, a in enumerate(arrays) if a is not None]
    probs = np.full((len(files), len(clf.labels)), np.nan)
    if ok:
        probs[ok] = clf.predict_proba([arrays[i] for i in ok])
    frame = add_prediction_columns(pd.DataFrame({"path": [str(f) for f in files]}), clf.labels, probs)
    frame["error"] = errors
    return frame
