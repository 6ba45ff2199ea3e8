"""Text classifiers in Hugging Face layout — the shared save/load of the text kinds that train in the loop.

``hf-encoder``, ``textcnn``, ``bilstm`` and ``transformer-encoder`` all save ``config.json``,
``model.safetensors`` and the tokenizer into ``model/`` (plain ``transformers`` loads them; the from-scratch
architectures register themselves with the Auto classes when their module is imported) plus
``modelyard.json``. Loading reads only that directory, never the training code or a pickle.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from modelyard._internal.batching import pad_batch, padding_aware_batches
from modelyard._internal.io import read_json, write_json
from modelyard._internal.labels import MULTI_LABEL, label_predictions, label_set_predictions, model_thresholds
from modelyard._internal.layout import MANIFEST, MODEL_META
from modelyard.config import CleaningConfig
from modelyard.data.cleaning import clean_text as _normalize
from modelyard.errors import ModelError
from modelyard.kinds import get_kind


def truncating_backend(tokenizer: Any, max_length: int) -> Any:
    """A private copy of a fast tokenizer's Rust backend set to truncate at ``max_length``, or ``False`` (slow one).

    ``tokenizer(texts, truncation=True, max_length=…)`` re-applies these same backend settings and wraps the
    result in a ``BatchEncoding`` on every call: ~60 µs of Python per request at batch 1, and ~170 µs when the
    model's forward pass has just evicted it from the caches, about a tenth of an int8 MiniLM request. The copy is
    configured once (the settings ``transformers`` applies: longest-first truncation on the tokenizer's side,
    no padding) and gives the same ids (``tests/test_inference_path.py``).
    """
    if not getattr(tokenizer, "is_fast", False):
        return False
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction=tokenizer.truncation_side)
    return backend


class Classifier:
    """A trained text classifier.

    Attributes:
        labels: class names in model output order.
        model_dir: the exported model directory.
        multi_label: whether the model predicts label sets (``task: multi-label-classification``).
    """

    multi_label = False  # a class default, so that subclasses with their own ``__init__`` (variants) have it

    def __init__(self, model_dir: Path, *, device: str = "auto", batch_size: int = 64) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from modelyard._internal.runtime import pick_device

        meta_path = model_dir / MODEL_META
        if not meta_path.is_file():
            raise ModelError(f"{model_dir} has no modelyard.json; not a modelyard model directory")
        self.model_dir = model_dir
        self.meta: dict[str, Any] = read_json(meta_path)
        self.labels: list[str] = list(self.meta["labels"])
        # multi-label: independent sigmoid probabilities and per-label thresholds tuned on validation
        self.multi_label = self.meta.get("task") == MULTI_LABEL
        self.thresholds = model_thresholds(self.meta, self.labels)
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
            "run_id": run_dir.name if (run_dir / MANIFEST).is_file() else None,
            "backbone": self.meta.get("backbone"),
            "labels": self.labels,
            "max_length": self.max_length,
        }

    def encode(self, texts: list[str]) -> list[list[int]]:
        """The model's front end: the training run's text cleaning, then tokenization to ``max_length``."""
        if isinstance(texts, str):
            raise TypeError("expected a list of texts, not a single string")
        clean = [self._normalize(str(t), self._cleaning) for t in texts]
        if not clean:
            return []
        backend = getattr(self, "_backend", None)
        if backend is None:
            backend = self._backend = truncating_backend(self.tokenizer, self.max_length)
        if backend is False:
            return self.tokenizer(clean, truncation=True, max_length=self.max_length)["input_ids"]
        return [e.ids for e in backend.encode_batch(clean)]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), len(labels))``; rows sum to 1 (multi-label: one sigmoid each)."""

        if isinstance(texts, str):
            raise TypeError("predict_proba expects a list of texts, not a single string")
        ids = self.encode(texts)
        if not ids:
            return np.zeros((0, len(self.labels)))
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float64)
        torch = self._torch
        with self._lock, torch.inference_mode():
            for idx in padding_aware_batches([len(x) for x in ids], self.batch_size):
                batch = {k: v.to(self.device) for k, v in pad_batch([ids[i] for i in idx], self.pad_id).items()}
                logits = self.model(**batch).logits.float()
                scores = torch.sigmoid(logits.double()) if self.multi_label else torch.softmax(logits.double(), dim=-1)
                out[idx] = scores.cpu().numpy()
        return out

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Predicted label and per-class scores for each text.

        Example:
            >>> clf.predict(["great film"])
            [{'label': 'fresh', 'scores': {'fresh': 0.93, 'rotten': 0.07}}]

        A multi-label model returns the label set instead (labels whose probability reaches their threshold):
        ``[{'labels': ['food', 'music'], 'scores': {'food': 0.91, 'music': 0.62, 'tech': 0.03}}]``.
        """
        if self.multi_label:
            return label_set_predictions(self.labels, self.predict_proba(texts), self.thresholds)
        return label_predictions(self.labels, self.predict_proba(texts))


def text_model_metadata(recipe: Any, labels: list[str], backbone: str, model_type: str) -> dict[str, Any]:
    """The ``modelyard.json`` fields every saved text model shares (labels, max length, text column, cleaning)."""
    return {
        "format": 1,
        "task": recipe.task,
        "name": recipe.name,
        "labels": labels,
        "max_length": getattr(recipe.model, "max_length", None),
        "backbone": backbone,
        "model_type": model_type,
        "text_column": recipe.data.text_column,
        "cleaning": recipe.data.clean.model_dump(mode="json"),
    }


def save_text_model(path: Path, model: Any, tokenizer: Any, recipe: Any, labels: list[str]) -> None:
    """Save a Hugging Face layout directory that plain ``transformers`` loads, plus ``modelyard.json``."""

    path.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):  # peft LoRA: merge the adapters so plain transformers loads it
        model = model.merge_and_unload()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    kind = get_kind(recipe.model.type)
    meta = text_model_metadata(recipe, labels, backbone=kind.name_of(recipe.model), model_type=recipe.model.type)
    write_json(path / MODEL_META, meta)


def load_text_classifier(model_dir: Path, meta: dict[str, Any], *, device: str = "auto", batch_size: int = 64) -> Any:
    """A :class:`Classifier` over a Hugging Face layout ``model_dir``."""
    return Classifier(model_dir, device=device, batch_size=batch_size)


def check_safetensors_weights(model_dir: Path, meta: dict[str, Any]) -> None:
    """The registry's admission check for torch kinds: weights only as ``*.safetensors``."""
    if not any(p.suffix == ".safetensors" for p in model_dir.iterdir() if p.is_file()):
        raise ValueError("no *.safetensors weights; only safetensors models can be registered")
