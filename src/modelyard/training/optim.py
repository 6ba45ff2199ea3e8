"""AdamW parameter groups shared by fine-tuning (:mod:`modelyard.training.loop`) and MLM pretraining."""

from __future__ import annotations

import re
from typing import Any

import torch

_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def param_groups(
    model: torch.nn.Module, lr: float, weight_decay: float, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on biases/norms; optional layer-wise learning-rate decay.

    With ``layer_decay`` d, parameters of encoder layer i (of L) get ``lr * d**(L - i)``, embeddings
    ``lr * d**(L + 1)`` and everything above the encoder (pooler, head) ``lr`` — the ELECTRA/BEiT recipe
    that keeps the pretrained lower layers close to where they started. transformers has no helper for
    this outside its Trainer subclasses, hence the few lines here.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    found = [int(m.group(1)) for n, _ in named if (m := _LAYER_INDEX.search("." + n))]
    n_layers = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0) or (
        max(found) + 1 if found else 0
    )

    def depth(name: str) -> int:
        if m := _LAYER_INDEX.search("." + name):
            return int(m.group(1)) + 1
        return 0 if "embed" in name else n_layers + 1

    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, p in named:
        scale = 1.0 if layer_decay is None else layer_decay ** (n_layers + 1 - depth(name))
        decay = not name.endswith(_NO_DECAY)
        g = groups.setdefault(
            (scale, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale}
        )
        g["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], not k[1]))]
