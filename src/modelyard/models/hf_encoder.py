"""Hugging Face encoders (BERT, MiniLM, RoBERTa, …) with a sequence-classification head.

Decoder backbones work the same way (``bundled:gemma3-270m`` → ``Gemma3TextForSequenceClassification``, which
classifies from the last non-padding token; a pad token id is set when the config has none).
``model.finetune`` picks what trains: ``full``, ``lora`` (peft adapters + the head; merged into plain weights
when the model is saved) or ``frozen`` (the head only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from modelyard._internal.packages import install_command
from modelyard.config import ArchConfig, LoraSettings, ModelSettings, TokenizerConfig
from modelyard.errors import ModelError
from modelyard.kinds import ModelKind, register_kind
from modelyard.llm.backbones import resolve_backbone
from modelyard.models.text_classifier import check_safetensors_weights, load_text_classifier, save_text_model


class HFEncoderSettings(ModelSettings):
    """A pretrained Transformers encoder (or decoder) fine-tuned with a classification head (`hf-encoder`)."""

    type: Literal["hf-encoder"] = "hf-encoder"
    backbone: str = Field(
        "bundled:minilm-l6",
        description="Pretrained encoder: `bundled:NAME` (bundled:minilm-l6), a local Hugging Face model "
        "directory (relative to the recipe's folder), or a hub id already in the local cache.",
    )
    max_length: int = Field(128, ge=8, le=8192, description="Tokens kept per text (longer texts are truncated).")
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Classifier-head dropout; null keeps the backbone's setting."
    )
    finetune: Literal["full", "lora", "frozen"] = Field(
        "full",
        description="Which weights train — `full` (all), `lora` (LoRA adapters + head, merged into the weights "
        "when saved) or `frozen` (only the classification head; the backbone is a fixed feature extractor). "
        "`lora`/`frozen` make large backbones such as bundled:gemma3-270m usable on CPU.",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings (`finetune: lora`).")
    tokenizer: TokenizerConfig = Field(
        default_factory=TokenizerConfig,
        description="`modelyard pretrain` only: the tokenizer learned for a backbone pretrained from scratch.",
    )
    arch: ArchConfig = Field(
        default_factory=ArchConfig,
        description="`modelyard pretrain` only: the size of a backbone pretrained from scratch (small BERT).",
    )


def hf_encoder(cfg: HFEncoderSettings, labels: list[str], base_dir: Path) -> tuple[Any, Any]:
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


def apply_finetune_mode(model: Any, cfg: HFEncoderSettings) -> Any:
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
        raise ModelError(f"model.finetune 'lora' needs the peft package: {install_command('peft')}") from None
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


def _prepare(cfg: HFEncoderSettings, recipe: Any, labels: list[str]) -> None:
    resolve_backbone(cfg.backbone, recipe.base_dir)  # a missing backbone fails before a run directory exists


KIND = register_kind(
    ModelKind(
        name="hf-encoder",
        settings=HFEncoderSettings,
        modality="text",
        build=hf_encoder,
        save=save_text_model,
        load=load_text_classifier,
        prepare=_prepare,
        check_artifacts=check_safetensors_weights,
        display_name=lambda cfg: cfg.backbone,
        supports=frozenset(
            {
                "resume",
                "explain",
                "compress",
                "distill_teacher",
                "ensemble_member",
                "pretrained_backbone",
                "multi_label",
            }
        ),
    )
)
