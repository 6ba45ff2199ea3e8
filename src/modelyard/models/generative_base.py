"""What the generative image kinds (``vae``, ``gan``) share: settings, config, save/load, the loaded generator.

A generative model learns the distribution of a run's training images (per class when ``conditional``)
and then writes new ones; a VAE also scores how unlike the training data an input is (its negative
evidence lower bound), which is the out-of-distribution score that ``monitor`` and the server use.

The networks work in pixel space: they take and return float images in ``[0, 1]`` of shape
``(N, C, H, W)``; ``H`` and ``W`` must be multiples of 4 (two stride-2 stages). Each architecture
subclasses :class:`GenerativeModel` and implements its own training step (a VAE has one optimizer and
one loss; a GAN alternates a discriminator and a generator step with two optimizers), so the shared
generative loop (:mod:`modelyard.training.generative`) never needs to know which kind it runs.
Weights are ``model.safetensors`` next to ``config.json``; no pickle anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from modelyard._internal.io import read_json, write_json
from modelyard._internal.layout import MANIFEST, MODEL_META
from modelyard._internal.runtime import model_state
from modelyard.config import ModelSettings
from modelyard.errors import ConfigError, DataError, ModelError
from modelyard.kinds import ModelKind, register_kind

GENERATIVE_TASK = "image-generation"
ARCHITECTURES: dict[str, type[GenerativeModel]] = {}


class GenerativeSettings(ModelSettings):
    """An image generator trained from scratch on the run's training split (`vae`, `gan`)."""

    latent_dim: int = Field(32, ge=2, le=512, description="Size of the latent code z.")
    width: int = Field(32, ge=8, le=512, description="Base channels (the second stage has twice as many).")
    conditional: bool = Field(
        True, description="Learn one distribution per class, so `modelyard generate --class NAME` can ask for one."
    )
    eval_samples: int = Field(
        1000,
        ge=100,
        le=20000,
        description="Images generated (and real valid/test images used) for the per-epoch quality measures.",
    )
    quality_from: str | None = Field(
        None,
        description="A finished image-classifier run on the same data whose features measure quality "
        "(Fréchet distance, precision/recall); null = train a small cnn-small on the training split first.",
    )
    ood_quantile: float = Field(
        0.99,
        gt=0.5,
        lt=1,
        description="VAE: the out-of-distribution threshold is this quantile of the validation split's scores.",
    )


@dataclass
class GenerativeConfig:
    """Everything needed to rebuild a generative model before loading its weights (``config.json``)."""

    architecture: str
    labels: list[str]
    in_channels: int
    image_size: list[int]  # [H, W]
    latent_dim: int
    width: int
    conditional: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes (conditioning inputs)."""
        return len(self.labels)


class GenerativeModel(nn.Module):
    """Base class of a generative image model: sampling, saving, and the training-step contract.

    Subclasses implement :meth:`decode` (latents [+ classes] → images in [0, 1]), :meth:`make_optimizers`
    and :meth:`train_step`; a VAE also implements :meth:`anomaly_score`.
    """

    architecture: ClassVar[str] = ""
    scores_anomalies: ClassVar[bool] = False

    def __init__(self, config: GenerativeConfig) -> None:
        super().__init__()
        self.config = config
        h, w = config.image_size
        if h % 4 or w % 4:
            raise ConfigError(
                f"model.type {config.architecture} needs an image size divisible by 4 (got {h}×{w}); "
                "set data.image_size (e.g. 28 or 32)"
            )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.architecture:
            ARCHITECTURES[cls.architecture] = cls

    # -- the contract with the generative loop
    def make_optimizers(self, lr: float, weight_decay: float) -> dict[str, torch.optim.Optimizer]:
        """The optimizers, by name (their state is checkpointed under these names)."""
        raise NotImplementedError

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer], max_grad_norm: float
    ) -> dict[str, float]:
        """One optimisation step on a batch (float images in [0, 1], class indices); returns named losses.

        The first entry is the headline loss shown by the progress bar.
        """
        raise NotImplementedError

    def decode(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Images in [0, 1] from latents ``z`` (and classes ``y`` when conditional)."""
        raise NotImplementedError

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        """A held-out loss per image where the model has one (the VAE's negative ELBO), else None."""
        return None

    # -- shared
    @torch.no_grad()
    def sample(self, n: int, classes: torch.Tensor | None = None, *, seed: int = 0) -> torch.Tensor:
        """``n`` images in [0, 1]; ``classes`` (length n) picks each one's class when conditional.

        Seeded by its own generator: the same seed gives the same images, and the global RNG is untouched.
        """
        device = next(self.parameters()).device
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        z = torch.randn(n, self.config.latent_dim, generator=gen).to(device)
        if self.config.conditional:
            if classes is None:
                classes = torch.randint(0, self.config.num_classes, (n,), generator=gen)
            classes = classes.to(device)
        else:
            classes = None
        was_training = self.training
        self.eval()
        out = self.decode(z, classes).clamp(0, 1)
        self.train(was_training)
        return out

    def save_pretrained(self, path: Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "config.json", asdict(self.config))
        save_file(model_state(self), str(path / "model.safetensors"), metadata={"format": "pt"})

    @staticmethod
    def from_pretrained(path: Path, device: str | torch.device = "cpu") -> GenerativeModel:
        """Rebuild from ``config.json`` and load ``model.safetensors`` (strict key match)."""
        from safetensors.torch import load_file

        path = Path(path)
        try:
            config = GenerativeConfig(**read_json(path / "config.json"))
            model = ARCHITECTURES[config.architecture](config)
            model.load_state_dict(load_file(str(path / "model.safetensors"), device="cpu"))
        except (OSError, TypeError, KeyError, RuntimeError, ValueError) as err:
            raise ModelError(f"cannot load the generative model in {path}: {str(err).splitlines()[0]}") from None
        return model.to(device).eval()


def png_nats(images: np.ndarray) -> np.ndarray:
    """Each uint8 ``(C, H, W)`` image's PNG-compressed length, in nats: a cheap measure of its complexity."""
    import io

    from PIL import Image

    out = np.empty(len(images))
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0))).save(buf, "PNG")
        out[i] = len(buf.getvalue()) * 8 * np.log(2)
    return out


def ood_components(model: GenerativeModel, images: np.ndarray, device: Any, batch_size: int = 512) -> np.ndarray:
    """``(N, 2)``: the negative ELBO (nats), and the same minus the image's PNG length (Serrà et al. 2020).

    A likelihood alone is known to rate *simpler* images as more likely than the training data (Nalisnick et
    al. 2019: a Fashion-MNIST VAE scores MNIST digits as more in-distribution than its own test set — measured
    here too: AUROC 0.41). Subtracting the input's complexity corrects that; the raw likelihood still catches
    what the correction misses (noise, which no compressor can shorten).
    """
    nll = []
    x_all = torch.as_tensor(np.ascontiguousarray(images))
    with torch.inference_mode():
        for start in range(0, len(x_all), batch_size):
            x = x_all[start : start + batch_size].to(device).float().div_(255.0)
            nll.append(model.anomaly_score(x).double().cpu().numpy())  # type: ignore[attr-defined]
    raw = np.concatenate(nll) if nll else np.zeros(0)
    return np.column_stack([raw, raw - png_nats(images)]) if len(raw) else np.zeros((0, 2))


def combine_ood(components: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """One score from the components: the larger of each one's robust z-score, ``(x − median) / (q99 − median)``,
    with median and 99th percentile from validation images — 1.0 means "as unusual as the 1% most unusual"."""
    median, q99 = np.asarray(calibration["median"]), np.asarray(calibration["q99"])
    return ((components - median) / np.maximum(q99 - median, 1e-9)).max(axis=1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] → uint8 ``(N, C, H, W)`` numpy."""
    return images.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()


class ImageGenerator:
    """A trained generative model, loaded: ``generate`` images, and (VAE) ``anomaly_scores`` of inputs.

    Attributes:
        labels: class names (the conditioning classes).
        task: ``image-generation``.
        conditional: whether a class can be asked for.
        ood_threshold: the score above which an input counts as out-of-distribution (VAE; else None).
    """

    task = GENERATIVE_TASK

    def __init__(self, model_dir: Path, *, device: str = "auto", batch_size: int = 256) -> None:
        from modelyard._internal.runtime import pick_device

        self.model_dir = Path(model_dir)
        self.meta: dict[str, Any] = read_json(self.model_dir / MODEL_META)
        self.labels: list[str] = list(self.meta["labels"])
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.model = GenerativeModel.from_pretrained(self.model_dir, device=self.device)
        self.conditional = bool(self.model.config.conditional)
        self.image_size = tuple(self.model.config.image_size)
        self.channels = self.model.config.in_channels
        self.ood_threshold: float | None = self.meta.get("ood", {}).get("threshold")

    def info(self) -> dict[str, Any]:
        """JSON-able description of the model."""
        run_dir = self.model_dir.parent
        return {
            "name": self.meta.get("name"),
            "run_id": run_dir.name if (run_dir / MANIFEST).is_file() else None,
            "task": self.task,
            "model_type": self.meta.get("model_type"),
            "labels": self.labels,
            "conditional": self.conditional,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "ood": self.meta.get("ood"),
        }

    def class_indices(self, n: int, label: str | None, seed: int) -> np.ndarray:
        """The class of each of ``n`` images: all ``label``, or the classes in turn (balanced).

        Raises:
            DataError: ``label`` is not a class, or the model is not conditional.
        """
        if label is None:
            return np.arange(n) % len(self.labels)
        if not self.conditional:
            raise DataError(
                f"this {self.meta.get('model_type')} model was trained with conditional: false; it cannot "
                "generate a chosen class (drop --class, or retrain with model.conditional: true)"
            )
        if label not in self.labels:
            raise DataError(f"--class '{label}' is not a class of this model; classes: {', '.join(self.labels)}")
        return np.full(n, self.labels.index(label))

    def generate(self, n: int, label: str | None = None, *, seed: int = 0) -> tuple[np.ndarray, list[str | None]]:
        """``n`` uint8 images ``(n, C, H, W)`` and each one's class name (None when unconditional)."""
        classes = self.class_indices(n, label, seed)
        out = []
        for start in range(0, n, self.batch_size):
            c = torch.as_tensor(classes[start : start + self.batch_size])
            out.append(to_uint8(self.model.sample(len(c), c, seed=seed * 1_000_003 + start)))
        images = np.concatenate(out) if out else np.zeros((0, self.channels, *self.image_size), np.uint8)
        names: list[str | None] = [self.labels[i] for i in classes] if self.conditional else [None] * n
        return images, names

    def anomaly_scores(self, images: np.ndarray) -> np.ndarray:
        """Out-of-distribution score per uint8 image ``(N, C, H, W)``: higher = less like the training data.

        Raises:
            ModelError: this kind has no score (a GAN).
        """
        if not self.model.scores_anomalies:
            raise ModelError(f"a {self.meta.get('model_type')} model has no out-of-distribution score; use a vae run")
        components = ood_components(self.model, images, self.device, self.batch_size)
        calibration = (self.meta.get("ood") or {}).get("calibration")
        return combine_ood(components, calibration) if calibration else components[:, 0]

    def predict_proba(self, inputs: Any) -> np.ndarray:
        """Not a classifier: refused with what to use instead."""
        raise ModelError(
            f"{self.model_dir} is a generative model (image-generation); it does not classify. "
            "Use `modelyard generate RUN`, or serve an image classifier"
        )

    predict = predict_proba


# --------------------------------------------------------------------------------------------- the registry


def _save(
    path: Path, model: Any, tokenizer: Any, recipe: Any, labels: list[str], extra: dict[str, Any] | None = None
) -> None:
    model.save_pretrained(path)
    cfg = model.config
    write_json(
        path / MODEL_META,
        {
            "format": 1,
            "task": GENERATIVE_TASK,
            "name": recipe.name,
            "labels": labels,
            "model_type": recipe.model.type,
            "image_size": list(cfg.image_size),
            "channels": cfg.in_channels,
            "conditional": cfg.conditional,
            "latent_dim": cfg.latent_dim,
            **(extra or {}),
        },
    )


def _load(model_dir: Path, meta: dict[str, Any], *, device: str = "auto", batch_size: int = 256) -> ImageGenerator:
    return ImageGenerator(model_dir, device=device, batch_size=max(batch_size, 64))


def _check(model_dir: Path, meta: dict[str, Any]) -> None:
    from safetensors import safe_open

    for name in ("config.json", "model.safetensors"):
        if not (model_dir / name).is_file():
            raise ValueError(f"no {name}; a generative model is config.json + model.safetensors")
    try:
        config = GenerativeConfig(**read_json(model_dir / "config.json"))
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise ValueError(f"config.json does not describe a generative model ({err})") from None
    if config.architecture != meta.get("model_type"):
        raise ValueError(
            f"config.json is a '{config.architecture}' model, modelyard.json says '{meta.get('model_type')}'"
        )
    try:
        with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as weights:
            if not list(weights.keys()):
                raise ValueError("model.safetensors holds no tensors")
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a malformed header
        raise ValueError(f"model.safetensors cannot be opened ({str(err).splitlines()[0]})") from None


def register_generative_kind(
    cls: type[GenerativeModel],
    settings: type[GenerativeSettings],
    configure: Callable[[Any, Any], None] | None = None,
) -> ModelKind:
    """Register ``cls`` as the generative image kind ``cls.architecture``.

    ``configure(model, settings)`` copies the kind's own settings into the built model (and its saved config).
    """

    def build(
        cfg: GenerativeSettings, labels: list[str], base_dir: Path, *, image_shape: list[int] | None = None, **_: Any
    ) -> tuple[GenerativeModel, None]:
        if image_shape is None:
            raise ModelError(f"model.type '{cls.architecture}' generates images; use it with task: image-generation")
        c, h, w = image_shape
        config = GenerativeConfig(
            architecture=cls.architecture,
            labels=list(labels),
            in_channels=int(c),
            image_size=[int(h), int(w)],
            latent_dim=cfg.latent_dim,
            width=cfg.width,
            conditional=cfg.conditional,
        )
        model = cls(config)
        if configure is not None:
            configure(model, cfg)
        return model, None

    return register_kind(
        ModelKind(
            name=cls.architecture,
            settings=settings,
            modality="image",
            build=build,
            save=_save,
            load=_load,
            check_artifacts=_check,
            supports=frozenset({"resume", "generative"}),
            instead="it generates images: use `modelyard generate RUN`",
        )
    )
