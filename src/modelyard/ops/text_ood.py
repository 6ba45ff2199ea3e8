"""Out-of-distribution score for text traffic: a small VAE over the served encoder's sentence embeddings.

The image side scores pixels with a convolutional VAE (``models/vae.py``); for text the same idea works on
the model's own representation: every layer's hidden states, mean-pooled over the tokens and concatenated
(the embedding layer included). The last layer's [CLS] alone is tuned to the task and hides what the input was:
on the tests' tiny encoder it separated English training-like texts from Chinese ones with AUROC 0.75, the
all-layer pooling with 1.00. A two-layer MLP VAE with a Gaussian likelihood is fitted to the embeddings of
(up to 2,000) training texts, standardised with their mean and spread; its negative ELBO is one component of
the score: a text far from everything the model was trained on reconstructs badly and lands far from the
prior. The other is the text's mean unigram surprisal under the training texts' token counts — the text
analogue of the image side's complexity term, and what catches a change of language that the tokenizer
happens to cover. The score is the larger of the two robust z-scores; the threshold is a high quantile (0.99)
of the scores of validation texts, which the VAE never saw.

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
    """The fitted detector: the embedding VAE with its standardisation, the training texts' token counts, and
    the calibration (per-component median and 99th percentile) and threshold of the combined score."""

    vae: EmbeddingVae
    mean: np.ndarray
    std: np.ndarray
    counts: dict[int, int]
    vocab_size: int
    calibration: dict[str, list[float]]
    threshold: float
    quantile: float
    n_train: int

    def components(self, embeddings: np.ndarray, ids: list[list[int]] | None) -> np.ndarray:
        """``(N, 1 or 2)``: the VAE's negative ELBO, and (with token ids) the mean unigram surprisal."""
        x = torch.as_tensor((embeddings - self.mean) / self.std, dtype=torch.float32)
        with torch.no_grad():
            nll = self.vae.neg_elbo(x, sample=False).double().numpy()
        if ids is None:
            return nll[:, None]
        return np.column_stack([nll, unigram_surprisal(ids, self.counts, self.vocab_size)])

    def scores(self, embeddings: np.ndarray, ids: list[list[int]] | None = None) -> np.ndarray:
        """The larger robust z-score of the components (1 = the validation texts' 99th percentile)."""
        parts = self.components(embeddings, ids)
        k = parts.shape[1]
        median, q99 = np.asarray(self.calibration["median"][:k]), np.asarray(self.calibration["q99"][:k])
        return ((parts - median) / np.maximum(q99 - median, 1e-9)).max(axis=1)


def unigram_surprisal(ids: list[list[int]], counts: dict[int, int], vocab_size: int) -> np.ndarray:
    """Mean −log p(token) per text under the training texts' token frequencies (add-one smoothed).

    The embedding alone can miss a change of language when the tokenizer covers it: a from-scratch Chinese
    encoder whose vocabulary has English word pieces put English news at AUROC 0.72 by its embeddings and 1.00 by
    this unigram score (benchmarks/generative.py text-ood).
    """
    total = sum(counts.values()) + vocab_size
    return np.array([np.mean([-np.log((counts.get(t, 0) + 1) / total) for t in x]) if x else 0.0 for x in ids])


def fit_text_ood(
    train: np.ndarray,
    valid: np.ndarray,
    *,
    train_ids: list[list[int]] | None = None,
    valid_ids: list[list[int]] | None = None,
    vocab_size: int = 0,
    seed: int = 0,
    quantile: float = 0.99,
    steps: int = 3000,
) -> TextOod:
    """Fit the embedding VAE (and the token counts) on ``train``; calibrate on ``valid``.

    The components' medians and 99th percentiles come from one half of the valid rows, the threshold (the
    ``quantile`` of the combined score) from the other half.
    """
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
    counts: dict[int, int] = {}
    for row in train_ids or []:
        for t in row:
            counts[t] = counts.get(t, 0) + 1
    fitted = TextOod(vae, mean, std, counts, vocab_size, {"median": [], "q99": []}, 0.0, quantile, len(train))
    parts = fitted.components(valid, valid_ids if train_ids is not None else None)
    first = parts[0::2]
    fitted.calibration = {
        "median": np.median(first, axis=0).tolist(),
        "q99": np.quantile(first, 0.99, axis=0).tolist(),
    }
    second_ids = valid_ids[1::2] if (train_ids is not None and valid_ids is not None) else None
    fitted.threshold = float(np.quantile(fitted.scores(valid[1::2], second_ids), quantile))
    return fitted
