"""Quality of generated images, measured: an FID-style Fréchet distance and precision/recall for distributions.

Both compare *features* of real and generated images. Inception-v3 features (the FID of Heusel et al.
2017) need weights no bundled package ships and describe natural photographs, not 28×28 clothing; so
the features here are those of an image classifier trained by modelyard on the same data (the input of
its last layer). The number is therefore an **FID-style proxy**: comparable between runs that use the
same feature classifier, not with published FID values.

* Fréchet distance between Gaussians fitted to the two feature sets (lower is better).
* Precision / recall for distributions (Kynkäänniemi et al. 2019): a generated image is "precise" when it
  lies inside the k-nearest-neighbour ball of some real image; a real image is "recalled" when it lies
  inside the ball of some generated image. Precision measures fidelity, recall diversity.
* Class accuracy (conditional models): how often the feature classifier assigns a generated image the
  class it was generated for.

scipy's ``sqrtm`` does the matrix square root; the rest is a few lines of numpy (torch-fidelity and
clean-fid compute the same quantities but are built around Inception features and are not installed).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) between Gaussians fitted to two feature sets (rows = images)."""
    from scipy import linalg

    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    with warnings.catch_warnings():  # rank-deficient covariances (fewer images than features) are expected
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # offset the diagonals, as the FID reference code does
            eps = np.eye(len(s1)) * 1e-6
            covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    d = _pairwise(x, x)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-nearest-neighbour balls."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = _pairwise(fake, real)  # (fake, real)
    precision = float((d <= r_real[None, :]).any(axis=1).mean())
    recall = float((r_fake[None, :] >= d.T).any(axis=1).mean())
    return precision, recall


class FeatureNet:
    """Penultimate-layer features and class probabilities of a modelyard image classifier (an ``ImageModel``)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        self._captured: list[torch.Tensor] = []
        last.register_forward_pre_hook(lambda _m, args: self._captured.append(args[0].detach()))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Features ``(N, D)`` and class probabilities ``(N, K)`` for float images in [0, 1]."""
        feats, probs = [], []
        for start in range(0, len(images), batch_size):
            self._captured.clear()
            x = images[start : start + batch_size].to(self.device).float()
            logits = self.model(pixel_values=x).logits.float()
            feats.append(self._captured[-1].flatten(1).double().cpu().numpy())
            probs.append(torch.softmax(logits.double(), -1).cpu().numpy())
        return np.concatenate(feats), np.concatenate(probs)


def quality(
    real_feats: np.ndarray, fake_feats: np.ndarray, fake_probs: np.ndarray | None, fake_classes: np.ndarray | None
) -> dict[str, Any]:
    """The quality measures of one set of generated images against real features."""
    precision, recall = precision_recall(real_feats, fake_feats)
    out: dict[str, Any] = {
        "fd_proxy": round(frechet_distance(real_feats, fake_feats), 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
    }
    if fake_probs is not None and fake_classes is not None:
        out["class_accuracy"] = round(float((fake_probs.argmax(1) == fake_classes).mean()), 4)
    return out
