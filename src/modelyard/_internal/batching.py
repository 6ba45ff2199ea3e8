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


# What one more model call costs, in padded tokens, for :func:`padding_aware_batches`: a call has a fixed cost
# (launching kernels, onnxruntime's session overhead, small-matrix inefficiency); measured on 2 CPU cores it is
# worth a handful of tokens of an encoder layer stack, more for tiny models — 16 errs on the side of fewer calls.
CALL_TOKENS = 16


def padding_aware_batches(lengths: Sequence[int], batch_size: int, call_tokens: int = CALL_TOKENS) -> list[np.ndarray]:
    """Inference batches (longest first) cut where padding would cost more than another call.

    A batch is padded to its longest member, so 32 texts of 5–60 tokens in one batch compute ~60×32 tokens
    where ~25×32 are real. Over the length-sorted order this picks the cut points that minimise
    ``Σ (batch size × its longest length) + call_tokens × number of batches`` with at most ``batch_size``
    texts per batch (an exact dynamic programme, O(n · batch_size)). ``transformers``' pipelines and
    ``Trainer.predict`` pad each fixed-size batch to its longest; no library we use picks the cuts.
    Callers scatter the results back by index, as with :func:`sorted_batches`.
    """
    if len(lengths) == 1:  # the serving case: one request, one call (the DP below costs ~30 µs for nothing)
        return [np.zeros(1, dtype=np.int64)]
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lens, kind="stable")
    n = len(order)
    if n == 0:
        return []
    sorted_lens = lens[order].tolist()
    batches: list[np.ndarray] = []
    # exact DP per window of sorted texts (windows keep it linear for a very large predict call)
    window = max(batch_size * 64, 1)
    for start in range(0, n, window):
        chunk = sorted_lens[start : start + window]
        m = len(chunk)
        best = [0.0] + [float("inf")] * m
        cut = [0] * (m + 1)
        for j in range(1, m + 1):
            for i in range(max(0, j - batch_size), j):
                cost = best[i] + (j - i) * chunk[i] + call_tokens
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        bounds = []
        j = m
        while j > 0:
            bounds.append((cut[j], j))
            j = cut[j]
        batches.extend(order[start + i : start + j] for i, j in reversed(bounds))
    return batches


def pad_batch_numpy(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pad_batch` for runtimes fed numpy (onnxruntime): ``(input_ids, attention_mask)``, int64."""
    if len(sequences) == 1:  # nothing to pad (the serving case at batch 1)
        one = np.asarray(sequences, dtype=np.int64)
        return one, np.ones_like(one)
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask
