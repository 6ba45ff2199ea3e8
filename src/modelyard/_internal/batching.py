"""Dynamic padding and length-grouped batch orders (shared by training and inference)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token id lists to the longest in the batch (dynamic padding)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, *, group_by_length: bool = True, mega: int = 50
) -> list[np.ndarray]:
    """A shuffled epoch of batches whose members have similar lengths.

    Like ``transformers``' ``LengthGroupedSampler``: shuffle, cut into mega-batches of ``mega``
    batches, sort each by length, cut into batches, shuffle the batch order. The order depends only
    on ``seed`` (callers pass ``seed + epoch``), which is what makes resuming at a batch exact.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    if group_by_length:
        lens = np.asarray(lengths)
        chunks = [order[i : i + batch_size * mega] for i in range(0, len(order), batch_size * mega)]
        order = np.concatenate([c[np.argsort(-lens[c], kind="stable")] for c in chunks])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Inference batches of similar length (longest first); callers scatter results back by index."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
