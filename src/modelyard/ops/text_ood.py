"""Out-of-distribution score for text traffic: a small VAE over the served encoder's sentence embeddings.

The image side scores pixels with a convolutional VAE (``models/vae.py``); for text the same idea works on
the model's own representation: every layer's hidden states, mean-pooled over the tokens and concatenated
(the embedding layer included). The last layer's [CLS] alone is tuned to the task and hides what the input was:
on the tests' tiny encoder it separated English training-like texts from Chinese ones with AUROC 0.75, the
all-layer pooling with 1.00. A two-layer MLP VAE with a Gaussian
likelihood is fitted to the embeddings of (up to 2,000) training texts, standardised with their mean and
spread; its negative ELBO is the score, and the threshold is a high quantile (0.99) of the scores of the
validation texts, which the VAE never saw. A text far from everything the model was trained on — another
language, another domain — reconstructs badly and lands far from the prior.

Fitting takes seconds on a CPU and is seeded, so ``modelyard monitor --text-ood`` refits it on every call
rather than storing one more artefact per registry version. scikit-learn and PyOD have density/outlier
models but no VAE over given vectors with a calibrated threshold; this is the few lines it takes in torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modelyard._internal.batching import pad_batch


def sentence_embeddings(clf: Any, texts: list[str], batch: int = 64) -> np.ndarray | None:
    """Every layer's hidden states mean-pooled over the tokens, concatenated, per text ``(N, layers × D)``.

    None for models without an encoder (tf-idf, prompt, …).
    """
    model, tokenizer = getattr(clf, "model", None), getattr(clf, "tokenizer", None)
    if model is None or tokenizer is None or not texts or not hasattr(clf, "encode"):
        return None
    ids = clf.encode(texts)
    rows = []
    with torch.inference_mode():
        for i in range(0, len(ids), batch):
            inputs = {k: v.to(clf.device) for k, v in pad_batch(ids[i : i + batch], clf.pad_id).items()}
            out = model(**inputs, output_hidden_states=True)
            mask = inputs["attention_mask"].unsqueeze(-1).float()
            pooled = [(h.float() * mask).sum(1) / mask.sum(1).clamp(min=1) for h in out.hidden_states]
            rows.append(torch.cat(pooled, dim=-1).cpu().numpy())
    return np.concatenate(rows).astype(np.float64)


class EmbeddingVae(nn.Module):
    """MLP VAE over standardised vectors: D → hidden → z (mean, log-variance) → hidden → D."""

    def __init__(self, dim: int, hidden: int = 64, latent: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.mu, self.logvar = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def neg_elbo(self, x: torch.Tensor, sample: bool) -> torch.Tensor:
        """Per-row ½‖x − x̂‖² (unit-variance Gaussian, constants dropped) + KL(q(z|x) ‖ N(0, I))."""
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h).clamp(-10, 6)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        recon = 0.5 * (self.dec(z) - x).pow(2).sum(1)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        return recon + kl


@dataclass
class TextOod:
    """A fitted embedding VAE, the standardisation it was fitted with, and the calibrated threshold."""

    vae: EmbeddingVae
    mean: np.ndarray
    std: np.ndarray
    threshold: float
    quantile: float
    n_train: int

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Negative ELBO per row (higher = less like the training texts)."""
        x = torch.as_tensor((embeddings - self.mean) / self.std, dtype=torch.float32)
        with torch.no_grad():
            return self.vae.neg_elbo(x, sample=False).double().numpy()


def fit_text_ood(
    train: np.ndarray, valid: np.ndarray, *, seed: int = 0, quantile: float = 0.99, steps: int = 3000
) -> TextOod:
    """Fit the embedding VAE on ``train`` rows; the threshold is the ``quantile`` of the ``valid`` rows' scores."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mean, std = train.mean(0), train.std(0) + 1e-6
        x = torch.as_tensor((train - mean) / std, dtype=torch.float32)
        vae = EmbeddingVae(x.shape[1])
        opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
        batch = min(256, len(x))
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=gen)
            loss = vae.neg_elbo(x[idx], sample=True).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    vae.eval()
    fitted = TextOod(vae, mean, std, 0.0, quantile, len(train))
    fitted.threshold = float(np.quantile(fitted.scores(valid), quantile))
    return fitted
