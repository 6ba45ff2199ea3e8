"""Hugging Face encoders (BERT, MiniLM, RoBERTa, …) with a sequence-classification head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard.config import ModelConfig
from modelyard.errors import ModelError
from modelyard.models.bundled import resolve_backbone
from modelyard.models.registry import register_model


@register_model("hf-encoder")
def hf_encoder(cfg: ModelConfig, labels: list[str], base_dir: Path) -> tuple[Any, Any]:
    """``AutoModelForSequenceClassification`` on ``cfg.backbone`` with a fresh head for ``labels``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = resolve_backbone(cfg.backbone, base_dir)
    # transformers warns loudly that the new head is untrained — expected for fine-tuning.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=False)
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        config.problem_type = "single_label_classification"
        if cfg.dropout is not None:
            config.classifier_dropout = cfg.dropout
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            config=config,
            local_files_only=True,
            trust_remote_code=False,
            ignore_mismatched_sizes=True,  # a backbone that already has a head with another label count
            use_safetensors=True,
        )
    except (OSError, ValueError) as err:
        raise ModelError(f"model.backbone '{cfg.backbone}' could not be loaded from {source}: {err}") from None
    return model, tokenizer
