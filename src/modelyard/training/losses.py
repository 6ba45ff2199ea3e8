"""The training losses as pure functions of logits and targets (tested directly in tests/test_losses.py).

The loop picks one per batch from the recipe: cross-entropy on gold labels (optionally label-smoothed), binary
cross-entropy on label sets (``task: multi-label-classification``),
knowledge distillation from a teacher's tempered probabilities (Hinton et al. 2015), and R-Drop
(Liang et al. 2021) around either. R-Drop and the distillation mix are a few lines each and no library
ships them as plain functions, hence written here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812  (the torch convention)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (B, C) against class indices ``targets`` (B,), optionally smoothed."""
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label: mean binary cross-entropy of ``logits`` (B, L) against a 0/1 matrix ``targets`` (B, L).

    One independent sigmoid per label (the loss of ``problem_type="multi_label_classification"`` in
    transformers), averaged over labels and examples.
    """
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def distillation_kl(logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(teacher ‖ softmax(logits / T))`` per example (batch mean); ``teacher_probs`` already tempered.

    The T² factor keeps the gradient scale independent of the temperature (Hinton et al. 2015).
    """
    t = temperature
    return F.kl_div(torch.log_softmax(logits / t, dim=-1), teacher_probs, reduction="batchmean") * (t * t)


def distillation_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_probs: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``alpha · CE(gold) + (1 − alpha) · T² · KL(teacher ‖ student)``."""
    ce = cross_entropy(logits, targets, label_smoothing)
    return alpha * ce + (1.0 - alpha) * distillation_kl(logits, teacher_probs, temperature)


def symmetric_kl(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``KL(p ‖ q) + KL(q ‖ p)`` (batch mean) between the distributions of two logit tensors."""
    lp, lq = torch.log_softmax(first, dim=-1), torch.log_softmax(second, dim=-1)
    kl = F.kl_div(lp, lq, log_target=True, reduction="batchmean")
    return kl + F.kl_div(lq, lp, log_target=True, reduction="batchmean")


def rdrop_loss(
    first: torch.Tensor, second: torch.Tensor, base: Callable[[torch.Tensor], torch.Tensor], alpha: float
) -> torch.Tensor:
    """R-Drop: the mean of ``base`` on two dropout passes of one batch + ``alpha / 2`` · their symmetric KL."""
    return 0.5 * (base(first) + base(second)) + alpha * 0.5 * symmetric_kl(first, second)
