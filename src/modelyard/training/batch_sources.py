"""Batch sources: what the one training loop asks of a modality (text or images).

:class:`~modelyard.training.loop.FineTuneRecipe` owns the loop (optimizer, scheduler, clipping,
EMA, early stopping, checkpoints, progress); a batch source only answers three questions:

* ``order(epoch)`` — the epoch's batches as index arrays, a pure function of ``train.seed`` and the
  epoch (that is what makes resuming at a batch exact);
* ``inputs(idx, epoch, batch)`` — the model's keyword inputs for one training batch;
* ``predict(model, split, dtype)`` — class probabilities (and mean loss) for a whole split.

Text keeps dynamic padding with length-grouped batches. Images are held in memory as a uint8
tensor ``(N, C, H, W)`` (on the GPU when training there) and augmented per batch with kornia under a
generator seeded by ``(train.seed, epoch, batch)``: the same seed gives the same augmented pixels,
also after a resume, without touching the global RNG that dropout draws from.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modelyard._internal.batching import length_grouped_batches, pad_batch, sorted_batches
from modelyard.config import AugmentConfig, TrainConfig
from modelyard.training.losses import binary_cross_entropy


@dataclass
class Encoded:
    """A split as token ids (unpadded) and integer labels (multi-label: a float 0/1 matrix, one column per label)."""

    texts: list[str]
    ids: list[list[int]]
    labels: np.ndarray
    soft: np.ndarray | None = None  # teacher probabilities at the distillation temperature (train split)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def encode(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Tokenize without padding (padding happens per batch)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module,
    ids: list[list[int]],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    labels: np.ndarray | None = None,
    multi_label: bool = False,
) -> tuple[np.ndarray, float | None]:
    """Class probabilities for token id lists (length-sorted batches), plus mean loss if labels given.

    ``multi_label``: independent sigmoid probabilities and the binary cross-entropy (mean over labels), the
    objective of :func:`modelyard.training.losses.binary_cross_entropy`.
    """
    model.eval()
    n = len(ids)
    probs = np.zeros((n, model.config.num_labels), dtype=np.float64)
    loss_sum = 0.0
    for idx in sorted_batches([len(x) for x in ids], batch_size):
        batch = {k: v.to(device) for k, v in pad_batch([ids[i] for i in idx], pad_id).items()}
        with autocast(device, dtype):
            logits = model(**batch).logits.float()
        activation = torch.sigmoid if multi_label else lambda z: torch.softmax(z, dim=-1)
        probs[idx] = activation(logits.double()).cpu().numpy()
        if labels is not None:
            y = torch.as_tensor(labels[idx], device=device)
            if multi_label:
                loss_sum += binary_cross_entropy(logits, y).item() * len(idx)
            else:
                loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
    return probs, (loss_sum / n if labels is not None and n else None)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16/fp16, a no-op for fp32 (``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Host → device. On CUDA from pinned memory with a non-blocking copy, so the copy of the next batch overlaps the
    kernels still queued from this one (what a DataLoader's ``pin_memory=True`` buys, without worker processes)."""
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in tensors.items()}
    return {k: v.to(device) for k, v in tensors.items()}


class TextBatches:
    """Token-id splits: length-grouped shuffled batches, right-padded per batch."""

    def __init__(
        self, splits: dict[str, Any], cfg: TrainConfig, pad_id: int, device: torch.device, multi_label: bool = False
    ) -> None:
        self.splits, self.cfg, self.pad_id, self.device = splits, cfg, pad_id, device
        self.multi_label = multi_label

    def order(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches (seeded by ``train.seed + epoch``)."""
        cfg = self.cfg
        return length_grouped_batches(
            self.splits["train"].lengths, cfg.batch_size, cfg.seed + epoch, group_by_length=cfg.group_by_length
        )

    def inputs(self, idx: np.ndarray, epoch: int, batch: int) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` of one batch, on the device."""
        train = self.splits["train"]
        return to_device(pad_batch([train.ids[i] for i in idx], self.pad_id), self.device)

    def predict(self, model: torch.nn.Module, split: str, dtype: torch.dtype | None) -> tuple[np.ndarray, float | None]:
        """Probabilities and mean loss on one split."""
        enc = self.splits[split]
        return predict_probs(
            model,
            enc.ids,
            batch_size=self.cfg.eval_batch_size,
            pad_id=self.pad_id,
            device=self.device,
            dtype=dtype,
            labels=enc.labels,
            multi_label=self.multi_label,
        )


@dataclass
class ImageEncoded:
    """A split of images as the loop sees it (``texts`` name each image in predictions and reports)."""

    texts: list[str]
    images: torch.Tensor  # (N, C, H, W) uint8, on the training device
    labels: np.ndarray
    soft: np.ndarray | None = None


def build_augmenter(cfg: AugmentConfig, height: int, width: int) -> torch.nn.Module | None:
    """The kornia augmentation pipeline declared in the recipe's ``augment`` section (None when off).

    Works on float images in [0, 1], shape ``(N, C, H, W)``: random crop after zero padding, horizontal
    flip, one random affine (rotation, translation, scale), random erasing — in that order.
    """
    if not cfg.enabled:
        return None
    import kornia.augmentation as K

    steps: list[torch.nn.Module] = []
    if cfg.crop_padding:
        steps.append(K.RandomCrop((height, width), padding=cfg.crop_padding, p=1.0))
    if cfg.hflip:
        steps.append(K.RandomHorizontalFlip(p=0.5))
    if cfg.rotation or cfg.translate or cfg.scale:
        steps.append(
            K.RandomAffine(
                degrees=cfg.rotation,
                translate=(cfg.translate, cfg.translate) if cfg.translate else None,
                scale=(1 - cfg.scale, 1 + cfg.scale) if cfg.scale else None,
                p=1.0,
            )
        )
    if cfg.erasing:
        steps.append(K.RandomErasing(p=cfg.erasing, scale=(0.02, 0.2)))
    return torch.nn.Sequential(*steps)


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """A well-mixed 32-bit seed for one batch's augmentation."""
    return int(np.random.SeedSequence([seed % (1 << 32), epoch, batch]).generate_state(1)[0])


def augment(augmenter: torch.nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Apply ``augmenter`` with torch's RNG seeded by ``seed``, restoring the global RNG afterwards."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        return augmenter(x)


class ImageBatches:
    """In-memory uint8 image splits: shuffled batches, kornia augmentation per batch, optional channels-last."""

    def __init__(
        self,
        splits: dict[str, ImageEncoded],
        cfg: TrainConfig,
        augment_cfg: AugmentConfig,
        device: torch.device,
        *,
        channels_last: bool = False,
    ) -> None:
        self.splits, self.cfg, self.device, self.channels_last = splits, cfg, device, channels_last
        _, _, h, w = splits["train"].images.shape
        self.augmenter = build_augmenter(augment_cfg, h, w)

    def order(self, epoch: int) -> list[np.ndarray]:
        """A seeded permutation of the training images cut into batches."""
        rng = np.random.default_rng([self.cfg.seed % (1 << 63), epoch])
        order = rng.permutation(len(self.splits["train"].labels))
        bs = self.cfg.batch_size
        return [order[i : i + bs] for i in range(0, len(order), bs)]

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def inputs(self, idx: np.ndarray, epoch: int, batch: int) -> dict[str, torch.Tensor]:
        """``pixel_values`` (float in [0, 1]) of one augmented training batch."""
        images = self.splits["train"].images
        x = self._pixels(images[torch.as_tensor(idx, device=images.device)])
        if self.augmenter is not None:
            x = augment(self.augmenter, x, batch_seed(self.cfg.seed, epoch, batch))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return {"pixel_values": x}

    def predict(self, model: torch.nn.Module, split: str, dtype: torch.dtype | None) -> tuple[np.ndarray, float | None]:
        """Probabilities and mean loss on one split (no augmentation)."""
        enc = self.splits[split]
        return predict_image_probs(
            model,
            enc.images,
            batch_size=self.cfg.eval_batch_size,
            device=self.device,
            dtype=dtype,
            labels=enc.labels,
            channels_last=self.channels_last,
        )


@torch.no_grad()
def predict_image_probs(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    labels: np.ndarray | None = None,
    channels_last: bool = False,
) -> tuple[np.ndarray, float | None]:
    """Class probabilities for uint8 images ``(N, C, H, W)``, plus the mean loss when labels are given."""
    model.eval()
    n = len(images)
    probs = np.zeros((n, model.config.num_labels), dtype=np.float64)
    loss_sum = 0.0
    for start in range(0, n, batch_size):
        x = images[start : start + batch_size].to(device).float().div_(255.0)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            logits = model(pixel_values=x).logits.float()
        probs[start : start + len(x)] = torch.softmax(logits.double(), dim=-1).cpu().numpy()
        if labels is not None:
            y = torch.as_tensor(labels[start : start + len(x)], device=device)
            loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
    return probs, (loss_sum / n if labels is not None and n else None)
