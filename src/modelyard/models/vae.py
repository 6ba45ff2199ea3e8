"""``vae``: a convolutional variational autoencoder (Kingma & Welling 2014), class-conditional by default.

Encoder: two stride-2 convolutions → dense → the mean and log-variance of a Gaussian latent; decoder:
dense → two stride-2 transposed convolutions → per-pixel Bernoulli logits. The loss is the negative
evidence lower bound per image (summed pixel cross-entropy + ``beta`` × KL), the objective of the
paper; with ``conditional`` the class is one-hot into both halves (Sohn et al. 2015), so
``modelyard generate --class`` asks for a class.

The same negative ELBO is the out-of-distribution score: an image unlike the training data is both
badly reconstructed and far from the prior. It is computed at the posterior mean (deterministic) and,
for a conditional model, under the class that explains the image best (the minimum over classes), so
no label is needed at inference.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from modelyard.models.generative_base import (
    GenerativeConfig,
    GenerativeModel,
    GenerativeSettings,
    register_generative_kind,
)


class VaeSettings(GenerativeSettings):
    """`vae`: convolutional variational autoencoder (generation, reconstruction, out-of-distribution score)."""

    type: Literal["vae"] = "vae"  # type: ignore[assignment]
    beta: float = Field(1.0, gt=0, le=100, description="Weight of the KL term (1 = the ELBO; >1 = beta-VAE).")


class Vae(GenerativeModel):
    """Convolutional (conditional) VAE with a Bernoulli pixel likelihood."""

    architecture = "vae"
    scores_anomalies = True

    def __init__(self, config: GenerativeConfig) -> None:
        super().__init__(config)
        c, w, k = config.in_channels, config.width, config.num_classes if config.conditional else 0
        h, wd = config.image_size
        self.grid = (2 * w, h // 4, wd // 4)
        flat = 2 * w * (h // 4) * (wd // 4)
        hidden = max(128, 4 * w)
        self.beta = float(config.extra.get("beta", 1.0))
        self.encoder = nn.Sequential(
            nn.Conv2d(c, w, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1),
            nn.BatchNorm2d(2 * w),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.enc_fc = nn.Sequential(nn.Linear(flat + k, hidden), nn.LeakyReLU(0.2))
        self.mu = nn.Linear(hidden, config.latent_dim)
        self.logvar = nn.Linear(hidden, config.latent_dim)
        self.dec_fc = nn.Sequential(
            nn.Linear(config.latent_dim + k, hidden), nn.ReLU(), nn.Linear(hidden, flat), nn.ReLU()
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.ConvTranspose2d(w, c, 4, 2, 1),
        )

    def _onehot(self, y: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        if not self.config.conditional:
            return torch.zeros(n, 0, device=device)
        assert y is not None
        return F.one_hot(y.long(), self.config.num_classes).float()

    def encode(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance for images in [0, 1]."""
        hidden = self.enc_fc(torch.cat([self.encoder(x), self._onehot(y, len(x), x.device)], dim=1))
        return self.mu(hidden), self.logvar(hidden).clamp(-12, 8)

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Per-pixel Bernoulli logits."""
        h = self.dec_fc(torch.cat([z, self._onehot(y, len(z), z.device)], dim=1))
        return self.decoder(h.view(len(z), *self.grid))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Images in [0, 1]: the decoder's pixel means."""
        return torch.sigmoid(self.decode_logits(z, y))

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Decode the posterior mean of ``x``."""
        mu, _ = self.encode(x, y)
        return self.decode(mu, y)

    def neg_elbo(self, x: torch.Tensor, y: torch.Tensor | None, *, sample: bool) -> torch.Tensor:
        """Negative ELBO per image (nats): reconstruction cross-entropy + beta × KL(q(z|x) ‖ N(0, I))."""
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        logits = self.decode_logits(z, y)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        return recon + self.beta * kl

    def make_optimizers(self, lr: float, weight_decay: float) -> dict[str, torch.optim.Optimizer]:
        """One AdamW over encoder and decoder."""
        return {"vae": torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)}

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer], max_grad_norm: float
    ) -> dict[str, float]:
        """One ELBO step (reparameterised sample)."""
        opt = optimizers["vae"]
        loss = self.neg_elbo(x, y, sample=True).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm:
            nn.utils.clip_grad_norm_(self.parameters(), max_grad_norm)
        opt.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        """Mean negative ELBO at the posterior mean (deterministic)."""
        return float(self.neg_elbo(x, y if self.config.conditional else None, sample=False).mean())

    @torch.no_grad()
    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO at the posterior mean; conditional models take the best-explaining class."""
        if not self.config.conditional:
            return self.neg_elbo(x, None, sample=False)
        scores = [
            self.neg_elbo(x, torch.full((len(x),), k, device=x.device), sample=False)
            for k in range(self.config.num_classes)
        ]
        return torch.stack(scores, dim=1).min(dim=1).values


def _build_config_extra(model: Vae, settings: VaeSettings) -> None:
    model.config.extra["beta"] = settings.beta
    model.beta = settings.beta


KIND = register_generative_kind(Vae, VaeSettings, configure=_build_config_extra)
