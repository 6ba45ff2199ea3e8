"""Bidirectional LSTM classifier: embeddings → stacked BiLSTM → mean+max pooling → linear head.

The classic recurrent sentiment model, trained from scratch with a tokenizer learned on the training
texts; saved in Hugging Face layout and loaded through ``AutoModelForSequenceClassification``.
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
    masked_mean_max,
    register_auto,
    register_scratch_kind,
    scratch_tokenizer,
)


class BiLSTMConfig(PretrainedConfig):
    """Hyper-parameters of :class:`BiLSTMForSequenceClassification`."""

    model_type = "modelyard-bilstm"

    def __init__(
        self,
        vocab_size: int = 8000,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.2,
        pad_token_id: int = 0,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        super().__init__(pad_token_id=pad_token_id, **kwargs)


class BiLSTMForSequenceClassification(PreTrainedModel):
    """Embeddings → packed BiLSTM → masked mean ‖ max pooling → dropout → linear."""

    config_class = BiLSTMConfig
    base_model_prefix = "bilstm"

    def __init__(self, config: BiLSTMConfig) -> None:
        super().__init__(config)
        self.embeddings = torch.nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=config.pad_token_id)
        self.lstm = torch.nn.LSTM(
            config.embedding_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = torch.nn.Dropout(config.dropout)
        self.classifier = torch.nn.Linear(4 * config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        if isinstance(module, torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, std=0.1)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.LSTM):
            for name, p in module.named_parameters():
                if "weight" in name:
                    torch.nn.init.orthogonal_(p)
                else:
                    torch.nn.init.zeros_(p)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """``input_ids`` (B, T) → ``SequenceClassifierOutput`` with ``logits`` (B, num_labels)."""
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        lengths = mask.sum(1).clamp(min=1).cpu()
        x = self.dropout(self.embeddings(input_ids))
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        hidden, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        logits = self.classifier(self.dropout(masked_mean_max(hidden, mask)))
        return classification_output(logits, labels)


register_auto(BiLSTMConfig.model_type, BiLSTMConfig, BiLSTMForSequenceClassification)


def bilstm(
    cfg: ScratchTextSettings, labels: list[str], base_dir: Path, texts: list[str] | None = None
) -> tuple[Any, Any]:
    """A BiLSTM classifier and a tokenizer trained on ``texts`` (the training split)."""
    tokenizer = scratch_tokenizer(cfg, texts)
    a = cfg.arch
    config = BiLSTMConfig(
        vocab_size=len(tokenizer),
        embedding_dim=a.embedding_dim,
        hidden_size=a.hidden_size,
        num_layers=a.num_layers,
        dropout=cfg.dropout if cfg.dropout is not None else a.dropout,
        pad_token_id=tokenizer.pad_token_id,
        **label_kwargs(labels),
    )
    return BiLSTMForSequenceClassification(config), tokenizer


class BiLSTMSettings(ScratchTextSettings):
    """`bilstm` (trained from scratch; see the module docstring)."""

    type: Literal["bilstm"] = "bilstm"


KIND = register_scratch_kind("bilstm", BiLSTMSettings, bilstm)
