"""The training losses as pure functions: hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from modelyard.training import losses

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
TARGETS = torch.tensor([0, 2])


def _log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    z = math.log(sum(math.exp(v - m) for v in row)) + m
    return [v - z for v in row]


def test_cross_entropy_is_the_mean_negative_log_likelihood() -> None:
    expected = -(_log_softmax([2.0, 0.0, -1.0])[0] + _log_softmax([0.5, 1.5, 0.0])[2]) / 2
    assert losses.cross_entropy(LOGITS, TARGETS).item() == pytest.approx(expected, abs=1e-6)


def test_label_smoothing_mixes_the_uniform_distribution_into_the_target() -> None:
    eps, k = 0.1, 3
    total = 0.0
    for row, y in (([2.0, 0.0, -1.0], 0), ([0.5, 1.5, 0.0], 2)):
        logp = _log_softmax(row)
        target = [eps / k + (1 - eps) * (j == y) for j in range(k)]
        total += -sum(t * lp for t, lp in zip(target, logp, strict=True))
    assert losses.cross_entropy(LOGITS, TARGETS, label_smoothing=eps).item() == pytest.approx(total / 2, abs=1e-6)
    # smoothing raises the loss of a confident, correct prediction
    assert losses.cross_entropy(LOGITS, TARGETS, eps).item() != losses.cross_entropy(LOGITS, TARGETS).item()


def test_distillation_is_alpha_ce_plus_t_squared_kl_to_the_tempered_teacher() -> None:
    t, alpha = 2.0, 0.3
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    kl = 0.0
    for row, q in zip(LOGITS.tolist(), teacher.tolist(), strict=True):
        logp = _log_softmax([v / t for v in row])
        kl += sum(qi * (math.log(qi) - lp) for qi, lp in zip(q, logp, strict=True))
    kl = kl / 2 * t * t
    ce = losses.cross_entropy(LOGITS, TARGETS).item()
    got = losses.distillation_loss(LOGITS, TARGETS, teacher, temperature=t, alpha=alpha).item()
    assert got == pytest.approx(alpha * ce + (1 - alpha) * kl, abs=1e-6)
    assert losses.distillation_kl(LOGITS, teacher, t).item() == pytest.approx(kl, abs=1e-6)
    # alpha = 1 ignores the teacher; alpha = 0 ignores the gold labels
    assert losses.distillation_loss(LOGITS, TARGETS, teacher, temperature=t, alpha=1.0).item() == pytest.approx(ce)
    assert losses.distillation_loss(LOGITS, TARGETS, teacher, temperature=t, alpha=0.0).item() == pytest.approx(kl)


def test_rdrop_averages_the_two_passes_and_adds_half_alpha_times_the_symmetric_kl() -> None:
    second = torch.tensor([[1.0, 0.5, -1.0], [0.0, 2.0, 0.5]])
    p = [[math.exp(v) for v in _log_softmax(r)] for r in LOGITS.tolist()]
    q = [[math.exp(v) for v in _log_softmax(r)] for r in second.tolist()]
    sym = (
        sum(
            sum(a * math.log(a / b) + b * math.log(b / a) for a, b in zip(pr, qr, strict=True))
            for pr, qr in zip(p, q, strict=True)
        )
        / 2
    )
    assert losses.symmetric_kl(LOGITS, second).item() == pytest.approx(sym, abs=1e-6)
    assert losses.symmetric_kl(LOGITS, LOGITS).item() == pytest.approx(0.0, abs=1e-7)

    def base(z: torch.Tensor) -> torch.Tensor:
        return losses.cross_entropy(z, TARGETS)

    alpha = 4.0
    expected = 0.5 * (base(LOGITS).item() + base(second).item()) + alpha * 0.5 * sym
    assert losses.rdrop_loss(LOGITS, second, base, alpha).item() == pytest.approx(expected, abs=1e-6)


def test_losses_are_differentiable() -> None:
    logits = LOGITS.clone().requires_grad_(True)
    losses.rdrop_loss(logits, logits * 0.5, lambda z: losses.cross_entropy(z, TARGETS, 0.1), 1.0).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
