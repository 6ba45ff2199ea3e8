"""Hugging Face encoders (BERT, MiniLM, RoBERTa, …) with a sequence-classification head.

Decoder backbones work the same way (``bundled:gemma3-270m`` → ``Gemma3TextForSequenceClassification``, which
classifies from the last non-padding token; a pad token id is set when the config has none).
``model.finetune`` picks what trains: ``full``, ``lora`` (peft adapters + the head; merged into plain weights
when the model is saved) or ``frozen`` (the head only).
"""

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
        if tokenizer.pad_token_id is None:  # decoder LMs: pad with EOS (masked out by the attention mask)
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(config, "pad_token_id", None) is None:  # decoder heads find the last token by the pad id
            config.pad_token_id = tokenizer.pad_token_id
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
    return apply_finetune_mode(model, cfg), tokenizer


def head_parameter_names(model: Any) -> list[str]:
    """Names of the classification head's parameters: everything outside the backbone (``base_model_prefix``)."""
    prefix = f"{model.base_model_prefix}."
    return [name for name, _ in model.named_parameters() if not name.startswith(prefix)]


def apply_finetune_mode(model: Any, cfg: ModelConfig) -> Any:
    """Make only the weights that ``cfg.finetune`` trains require gradients.

    Args:
        model: a ``…ForSequenceClassification`` model.
        cfg: the model section (``finetune``, ``lora``).

    Returns:
        ``model`` itself (``full``, ``frozen``) or a peft ``PeftModel`` wrapping it (``lora``); its
        ``merge_and_unload()`` gives back a plain transformers model with the adapters merged in.

    Raises:
        ModelError: the model has no separate head, or peft is missing / rejects the LoRA settings.
    """
    if cfg.finetune == "full":
        return model
    head = set(head_parameter_names(model))
    if not head:
        raise ModelError(f"model.finetune '{cfg.finetune}': no classification head found outside the backbone")
    if cfg.finetune == "frozen":
        for name, param in model.named_parameters():
            param.requires_grad_(name in head)
        return model
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise ModelError("model.finetune 'lora' needs the peft package: pip install peft") from None
    lora = cfg.lora
    heads = sorted({name.split(".")[0] for name in head})  # e.g. ["score"] (Gemma) or ["classifier"] (BERT)
    try:
        peft_config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            modules_to_save=heads,
        )
        return get_peft_model(model, peft_config)
    except (ValueError, KeyError) as err:
        raise ModelError(f"model.lora: {err}") from None
