"""Load a trained model for prediction: ``modelyard.load(RUN_DIR).predict([...])``.

Reads only the exported ``model/`` directory (Hugging Face layout + ``modelyard.json``), so the
server and the Python API never depend on the training code or on pickled objects.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from modelyard._internal.io import read_json
from modelyard.config import IMAGE_MODEL_TYPES
from modelyard.errors import ModelError


class Classifier:
    """A trained text classifier.

    Attributes:
        labels: class names in model output order.
        model_dir: the exported model directory.
    """

    def __init__(self, model_dir: Path, *, device: str = "auto", batch_size: int = 64) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from modelyard._internal.runtime import pick_device
        from modelyard.config import CleaningConfig
        from modelyard.data.cleaning import clean_text as _normalize
        from modelyard.models import BUNDLED_BACKBONES  # noqa: F401  registers from-scratch architectures

        meta_path = model_dir / "modelyard.json"
        if not meta_path.is_file():
            raise ModelError(f"{model_dir} has no modelyard.json; not a modelyard model directory")
        self.model_dir = model_dir
        self.meta: dict[str, Any] = read_json(meta_path)
        self.labels: list[str] = list(self.meta["labels"])
        self.max_length = int(self.meta["max_length"])
        self._cleaning = CleaningConfig.model_validate(self.meta.get("cleaning", {}))
        self._normalize = _normalize
        self.batch_size = batch_size
        self.device = pick_device(device)
        hf_logging.set_verbosity_error()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
            # use_safetensors=True: a pickled pytorch_model.bin is refused, never unpickled.
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model_dir, local_files_only=True, trust_remote_code=False, use_safetensors=True
            ).to(self.device)
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load the model in {model_dir}: {err}") from None
        self.model.eval()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._torch = torch
        self._lock = threading.Lock()  # one forward pass at a time; torch already uses all cores

    def info(self) -> dict[str, Any]:
        """JSON-able description of the model (served in responses)."""
        run_dir = self.model_dir.parent
        return {
            "name": self.meta.get("name"),
            "run_id": run_dir.name if (run_dir / "manifest.json").is_file() else None,
            "backbone": self.meta.get("backbone"),
            "labels": self.labels,
            "max_length": self.max_length,
        }

    def encode(self, texts: list[str]) -> list[list[int]]:
        """The model's front end: the training run's text cleaning, then tokenization to ``max_length``."""
        if isinstance(texts, str):
            raise TypeError("expected a list of texts, not a single string")
        clean = [self._normalize(str(t), self._cleaning) for t in texts]
        return self.tokenizer(clean, truncation=True, max_length=self.max_length)["input_ids"] if clean else []

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), len(labels))``; rows sum to 1."""
        from modelyard._internal.batching import pad_batch, sorted_batches

        if isinstance(texts, str):
            raise TypeError("predict_proba expects a list of texts, not a single string")
        ids = self.encode(texts)
        if not ids:
            return np.zeros((0, len(self.labels)))
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float64)
        torch = self._torch
        with self._lock, torch.inference_mode():
            for idx in sorted_batches([len(x) for x in ids], self.batch_size):
                batch = {k: v.to(self.device) for k, v in pad_batch([ids[i] for i in idx], self.pad_id).items()}
                logits = self.model(**batch).logits.float()
                out[idx] = torch.softmax(logits.double(), dim=-1).cpu().numpy()
        return out

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Predicted label and per-class scores for each text.

        Example:
            >>> clf.predict(["great film"])
            [{'label': 'fresh', 'scores': {'fresh': 0.93, 'rotten': 0.07}}]
        """
        return label_predictions(self.labels, self.predict_proba(texts))


def label_predictions(labels: list[str], probs: np.ndarray) -> list[dict[str, Any]]:
    """``[{"label": argmax label, "scores": {label: p}}]`` for each row of a probability matrix."""
    return [
        {
            "label": labels[int(row.argmax())],
            "scores": {lab: float(p) for lab, p in zip(labels, row, strict=True)},
        }
        for row in probs
    ]


def model_dir_of(path: str | Path) -> Path:
    """Accept a run directory or a model directory; return the model directory."""
    from modelyard._internal.rundir import INCOMPLETE

    path = Path(path)
    if not path.exists():
        raise ModelError(f"not found: {path}")
    if path.name.endswith(INCOMPLETE):
        raise ModelError(f"{path} is an unfinished run; resume it with `modelyard train RECIPE --resume {path}`")
    if (path / "model" / "modelyard.json").is_file():
        return path / "model"
    if (path / "modelyard.json").is_file():
        return path
    raise ModelError(f"{path} is neither a run directory (with model/) nor a modelyard model directory")


def load(path: str | Path, *, device: str = "auto", batch_size: int = 64) -> Classifier:
    """Load a run directory (or its ``model/`` folder) as a :class:`Classifier`.

    Prompt models (``model_type: prompt`` in ``modelyard.json``) load as a
    :class:`~modelyard.llm.classifier.PromptClassifier` with the same ``predict``/``predict_proba``.
    """
    model_dir = model_dir_of(path)
    model_type = read_json(model_dir / "modelyard.json").get("model_type")
    if model_type in IMAGE_MODEL_TYPES:
        from modelyard.image_classifier import ImageClassifier

        return ImageClassifier(model_dir, device=device, batch_size=batch_size)  # type: ignore[return-value]
    if model_type == "prompt":
        from modelyard.llm.classifier import load_prompt_model

        return load_prompt_model(model_dir)  # type: ignore[return-value]
    if model_type == "tfidf-logreg":
        from modelyard.training.classical import TfidfClassifier

        return TfidfClassifier(model_dir)  # type: ignore[return-value]
    if model_type == "ensemble":
        from modelyard.training.ensemble import EnsembleClassifier

        return EnsembleClassifier(model_dir, device=device, batch_size=batch_size)  # type: ignore[return-value]
    return Classifier(model_dir, device=device, batch_size=batch_size)
