"""``gan``: a DCGAN-style conditional GAN with the stabilisers that make it train reliably on a CPU.

* Generator (Radford et al. 2016): dense → ``4·width`` maps at a quarter of the size → two stride-2
  transposed convolutions with batch norm → tanh, mapped to [0, 1]. Conditional models add a learned
  class embedding to the latent.
* Discriminator: spectral normalisation on every layer (Miyato et al. 2018) and, when conditional,
  the projection head (Miyato & Koyama 2018): ``D(x, y) = ψ(φ(x)) + ⟨embed(y), φ(x)⟩``.
* Hinge loss, Adam with β₁ = 0.5, and an exponential moving average of the generator's weights
  (Karras et al. 2018; Yazıcı et al. 2019) that is what ``generate`` samples from — the averaged
  generator is markedly less noisy than the last iterate at no training cost.

The moving-average generator and its step count live in the module's state, so they are checkpointed
and restored with the weights: a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from modelyard.models.generative_base import (
    GenerativeConfig,
    GenerativeModel,
    GenerativeSettings,
    register_generative_kind,
)


class GanSettings(GenerativeSettings):
    """`gan`: conditional DCGAN with spectral norm, hinge loss and a moving-average generator."""

    type: Literal["gan"] = "gan"  # type: ignore[assignment]
    latent_dim: int = Field(64, ge=2, le=512, description="Size of the latent code z.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="Moving average of the generator's weights (0 = off).")
    d_lr_ratio: float = Field(
        1.0, gt=0, le=10, description="Discriminator learning rate ÷ generator learning rate (TTUR when > 1)."
    )


class Generator(nn.Module):
    """z (+ class embedding) → image in [0, 1]."""

    def __init__(self, config: GenerativeConfig) -> None:
        super().__init__()
        c, w = config.in_channels, config.width
        h, wd = config.image_size
        self.grid = (4 * w, h // 4, wd // 4)
        self.embed = nn.Embedding(config.num_classes, config.latent_dim) if config.conditional else None
        self.fc = nn.Sequential(
            nn.Linear(config.latent_dim, 4 * w * (h // 4) * (wd // 4), bias=False),
            nn.BatchNorm1d(4 * w * (h // 4) * (wd // 4)),
            nn.ReLU(),
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, c, 3, 1, 1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.embed is not None and y is not None:
            z = z * self.embed(y)  # multiplicative conditioning: each class scales the latent its own way
        out = self.net(self.fc(z).view(len(z), *self.grid))
        return (out + 1) / 2


class Discriminator(nn.Module):
    """Spectral-normalised convolutions → a realness score (+ the class projection)."""

    def __init__(self, config: GenerativeConfig) -> None:
        super().__init__()
        c, w = config.in_channels, config.width
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(c, w, 4, 2, 1)),
            nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(w, 2 * w, 4, 2, 1)),
            nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(2 * w, 4 * w, 3, 1, 1)),
            nn.LeakyReLU(0.1),
        )
        self.head = spectral_norm(nn.Linear(4 * w, 1))
        self.embed = spectral_norm(nn.Embedding(config.num_classes, 4 * w)) if config.conditional else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = self.body(x * 2 - 1).sum(dim=(2, 3))  # global sum pooling (SNGAN)
        out = self.head(h).squeeze(1)
        if self.embed is not None and y is not None:
            out = out + (self.embed(y) * h).sum(dim=1)
        return out


class Gan(GenerativeModel):
    """Generator + discriminator + the moving-average generator that samples."""

    architecture = "gan"

    def __init__(self, config: GenerativeConfig) -> None:
        super().__init__(config)
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.int64))
        self.ema_decay = float(config.extra.get("ema_decay", 0.999))
        self.d_lr_ratio = float(config.extra.get("d_lr_ratio", 1.0))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Images from the moving-average generator (the last iterate when the average is off)."""
        g = self.generator_ema if self.ema_decay > 0 else self.generator
        g.eval()
        return g(z, y)

    def make_optimizers(self, lr: float, weight_decay: float) -> dict[str, torch.optim.Optimizer]:
        """Adam (β₁ 0.5) for the generator and the discriminator; no weight decay (spectral norm regularises D)."""
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999)),
            "discriminator": torch.optim.Adam(
                self.discriminator.parameters(), lr=lr * self.d_lr_ratio, betas=(0.5, 0.999)
            ),
        }

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer], max_grad_norm: float
    ) -> dict[str, float]:
        """One discriminator step then one generator step, hinge loss; then the moving average."""
        cond = y if self.config.conditional else None
        n = len(x)
        self.generator.train()
        self.discriminator.train()
        opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
        # -- discriminator: real above +1, fake below -1
        z = torch.randn(n, self.config.latent_dim, device=x.device)
        with torch.no_grad():
            fake = self.generator(z, cond)
        d_real, d_fake = self.discriminator(x, cond), self.discriminator(fake, cond)
        d_loss = torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # -- generator: raise the discriminator's score of fresh fakes
        z = torch.randn(n, self.config.latent_dim, device=x.device)
        g_loss = -self.discriminator(self.generator(z, cond), cond).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        if max_grad_norm:
            nn.utils.clip_grad_norm_(self.generator.parameters(), max_grad_norm)
        opt_g.step()
        self._update_ema()
        return {
            "g_loss": g_loss.item(),
            "d_loss": d_loss.item(),
            "d_real": d_real.mean().item(),
            "d_fake": d_fake.mean().item(),
        }

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_decay <= 0:
            return
        self.ema_updates += 1
        # a short ramp: the average is not dominated by the random initial weights in the first steps
        t = int(self.ema_updates)
        decay = min(self.ema_decay, (1 + t) / (10 + t))
        for avg, p in zip(self.generator_ema.parameters(), self.generator.parameters(), strict=True):
            avg.lerp_(p.detach(), 1 - decay)
        for avg, b in zip(self.generator_ema.buffers(), self.generator.buffers(), strict=True):
            avg.copy_(b)


def _configure(model: Gan, settings: GanSettings) -> None:
    model.config.extra.update(ema_decay=settings.ema_decay, d_lr_ratio=settings.d_lr_ratio)
    model.ema_decay, model.d_lr_ratio = settings.ema_decay, settings.d_lr_ratio


KIND = register_generative_kind(Gan, GanSettings, configure=_configure)
