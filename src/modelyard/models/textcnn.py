"""TextCNN (Kim, 2014): token embeddings → parallel 1-D convolutions → max-over-time pooling → linear head.

Trained from scratch with a tokenizer learned on the training texts; saved in Hugging Face layout
(``config.json`` + ``model.safetensors``) and loaded through ``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PretrainedConfig, PreTrainedModel

from modelyard.models.scratch import (
    ScratchTextSettings,
    classification_output,
    label_kwargs,
    register_auto,
    register_scratch_kind,
    scratch_tokenizer,
)


class TextCNNConfig(PretrainedConfig):
    """Hyper-parameters of :class:`TextCNNForSequenceClassification`."""

    model_type = "modelyard-textcnn"

    def __init__(
        self,
        vocab_size: int = 8000,
        embedding_dim: int = 128,
        num_filters: int = 128,
        kernel_sizes: list[int] | None = None,
        dropout: float = 0.2,
        pad_token_id: int = 0,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.num_filters = num_filters
        self.kernel_sizes = list(kernel_sizes or [2, 3, 4])
        self.dropout = dropout
        super().__init__(pad_token_id=pad_token_id, **kwargs)


class TextCNNForSequenceClassification(PreTrainedModel):
    """Embeddings → Conv1d per kernel width (ReLU) → masked max-pool → dropout → linear."""

    config_class = TextCNNConfig
    base_model_prefix = "textcnn"

    def __init__(self, config: TextCNNConfig) -> None:
        super().__init__(config)
        self.embeddings = torch.nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=config.pad_token_id)
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv1d(config.embedding_dim, config.num_filters, k, padding=k // 2) for k in config.kernel_sizes
        )
        self.dropout = torch.nn.Dropout(config.dropout)
        self.classifier = torch.nn.Linear(config.num_filters * len(config.kernel_sizes), config.num_labels)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        if isinstance(module, torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, std=0.1)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, torch.nn.Conv1d | torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """``input_ids`` (B, T) → ``SequenceClassifierOutput`` with ``logits`` (B, num_labels)."""
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        x = self.dropout(self.embeddings(input_ids)).transpose(1, 2)  # (B, E, T)
        t = input_ids.shape[1]
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))[:, :, :t]  # even widths produce one extra step
            h = h.masked_fill(mask[:, None, : h.shape[2]] == 0, -1e4)
            pooled.append(h.max(dim=2).values)
        logits = self.classifier(self.dropout(torch.cat(pooled, dim=1)))
        return classification_output(logits, labels)


register_auto(TextCNNConfig.model_type, TextCNNConfig, TextCNNForSequenceClassification)


def textcnn(
    cfg: ScratchTextSettings, labels: list[str], base_dir: Path, texts: list[str] | None = None
) -> tuple[Any, Any]:
    """A TextCNN and a tokenizer trained on ``texts`` (the training split)."""
    tokenizer = scratch_tokenizer(cfg, texts)
    a = cfg.arch
    config = TextCNNConfig(
        vocab_size=len(tokenizer),
        embedding_dim=a.embedding_dim,
        num_filters=a.num_filters,
        kernel_sizes=a.kernel_sizes,
        dropout=cfg.dropout if cfg.dropout is not None else a.dropout,
        pad_token_id=tokenizer.pad_token_id,
        **label_kwargs(labels),
    )
    return TextCNNForSequenceClassification(config), tokenizer


class TextCNNSettings(ScratchTextSettings):
    """`textcnn` (trained from scratch; see the module docstring)."""

    type: Literal["textcnn"] = "textcnn"


KIND = register_scratch_kind("textcnn", TextCNNSettings, textcnn)
