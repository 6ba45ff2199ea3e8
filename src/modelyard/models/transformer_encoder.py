"""A small BERT (``BertForSequenceClassification``) with random initial weights, trained from scratch.

Uses a tokenizer learned on the training texts. For a backbone pretrained with ``modelyard pretrain``,
use ``model.type: hf-encoder`` with ``model.backbone: <pretrain output directory>`` instead.
The saved directory is a plain BERT: ``transformers`` loads it without modelyard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from modelyard.config import ArchConfig
from modelyard.models.scratch import ScratchTextSettings, label_kwargs, register_scratch_kind, scratch_tokenizer


def small_bert_config(arch: ArchConfig, vocab_size: int, max_length: int, pad_token_id: int, **kwargs: Any) -> Any:
    """A ``BertConfig`` sized by ``model.arch`` (shared with ``modelyard pretrain``)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        intermediate_size=arch.intermediate_size or 4 * arch.hidden_size,
        hidden_dropout_prob=arch.dropout,
        attention_probs_dropout_prob=arch.dropout,
        max_position_embeddings=max(512, max_length + 2),
        type_vocab_size=2,
        pad_token_id=pad_token_id,
        **kwargs,
    )


def transformer_encoder(
    cfg: ScratchTextSettings, labels: list[str], base_dir: Path, texts: list[str] | None = None
) -> tuple[Any, Any]:
    """A randomly initialised small BERT classifier and a tokenizer trained on ``texts``."""
    from transformers import BertForSequenceClassification

    tokenizer = scratch_tokenizer(cfg, texts)
    config = small_bert_config(
        cfg.arch,
        len(tokenizer),
        cfg.max_length,
        tokenizer.pad_token_id,
        classifier_dropout=cfg.dropout,
        problem_type="single_label_classification",
        **label_kwargs(labels),
    )
    return BertForSequenceClassification(config), tokenizer


class TransformerEncoderSettings(ScratchTextSettings):
    """`transformer-encoder`: a small BERT trained from scratch (see the module docstring)."""

    type: Literal["transformer-encoder"] = "transformer-encoder"


KIND = register_scratch_kind("transformer-encoder", TransformerEncoderSettings, transformer_encoder)
