"""Shared pieces of the models trained from scratch: the tokenizer they train, and Auto-class registration."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from modelyard.config import ArchConfig, ModelSettings, TokenizerConfig
from modelyard.errors import ConfigError
from modelyard.kinds import ModelKind, register_kind
from modelyard.models.text_classifier import check_safetensors_weights, load_text_classifier, save_text_model
from modelyard.models.tokenization import train_tokenizer


class ScratchTextSettings(ModelSettings):
    """A text model trained from scratch with a tokenizer learned on the training texts."""

    max_length: int = Field(128, ge=8, le=8192, description="Tokens kept per text (longer texts are truncated).")
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Dropout before the classifier; null = model.arch.dropout."
    )
    tokenizer: TokenizerConfig = Field(
        default_factory=TokenizerConfig, description="Tokenizer trained on the training texts."
    )
    arch: ArchConfig = Field(default_factory=ArchConfig, description="Size of the model.")


def register_scratch_kind(name: str, settings: type[ScratchTextSettings], build: Any) -> ModelKind:
    """Register a from-scratch text kind: trains in the shared loop, saves/loads in Hugging Face layout."""
    return register_kind(
        ModelKind(
            name=name,
            settings=settings,
            modality="text",
            build=build,
            save=save_text_model,
            load=load_text_classifier,
            check_artifacts=check_safetensors_weights,
            supports=frozenset(
                {
                    "resume",
                    "explain",
                    "compress",
                    "distill_teacher",
                    "ensemble_member",
                    "learns_tokenizer",
                    "multi_label",
                }
            ),
        )
    )


def tokenizer_cache_dir() -> Path:
    """Where trained tokenizers are kept: ``$MODELYARD_CACHE/tokenizers`` or ``~/.cache/modelyard/tokenizers``."""
    env = os.environ.get("MODELYARD_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "modelyard") / "tokenizers"


def scratch_tokenizer(cfg: ScratchTextSettings, texts: list[str] | None) -> Any:
    """Train ``cfg.tokenizer`` on the training texts (the builders' ``texts=`` argument).

    The ``tokenizers`` trainers break frequency ties in hash order, which differs between processes, so
    two trainings on the same texts can number tokens differently. The result is therefore cached under
    the sha256 of (settings, texts): a resumed run, or a rerun on the same data, gets the identical
    vocabulary its checkpoint was trained with.
    """
    from transformers import PreTrainedTokenizerFast

    if texts is None:
        raise ConfigError(f"model.type '{cfg.type}' trains its tokenizer on the training texts; none were given")
    digest = hashlib.sha256(json.dumps([cfg.tokenizer.model_dump(mode="json"), cfg.max_length]).encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    path = tokenizer_cache_dir() / digest.hexdigest()[:24]
    if (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(path)
    tokenizer = train_tokenizer(texts, cfg.tokenizer, max_length=cfg.max_length)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, path)
    except OSError:  # read-only or racing cache: the tokenizer in memory is still right for this run
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def register_auto(model_type: str, config_cls: type, model_cls: type) -> None:
    """Make ``AutoConfig``/``AutoModelForSequenceClassification`` load ``model_type`` directories.

    Registration happens when modelyard imports the model module, so ``modelyard.load`` works in a fresh
    process without ``trust_remote_code``.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    AutoConfig.register(model_type, config_cls, exist_ok=True)
    AutoModelForSequenceClassification.register(config_cls, model_cls, exist_ok=True)


def masked_mean_max(hidden: Any, mask: Any) -> Any:
    """Concatenate mean- and max-pooling over the unmasked time steps: ``(B, T, H)`` → ``(B, 2H)``."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    mx = hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
    return torch.cat([mean, mx], dim=-1)


def classification_output(logits: Any, labels: Any | None) -> Any:
    """A ``SequenceClassifierOutput`` with cross-entropy ``loss`` when ``labels`` are given."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
    return SequenceClassifierOutput(loss=loss, logits=logits)


def label_kwargs(labels: list[str]) -> dict[str, Any]:
    """The label fields every classification config carries (``id2label``, ``label2id``, ``num_labels``)."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
