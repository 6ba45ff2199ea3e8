"""Flag (never refuse) image inputs unlike the training data: a ``vae`` run's score on every served image.

``serve.ood_from: RUN`` names a finished ``vae`` run trained on the classifier's data. Each image prediction
then carries ``"ood": {"score", "threshold", "flagged"}``: the VAE's negative ELBO and the threshold
calibrated on its validation split (``model.ood_quantile``). The request is answered as usual — a flag is
information for the caller and for ``modelyard monitor``, which reports the share of flagged live inputs:
the logged description of each image gains ``ood=<score>`` and ``ood_flagged=<0|1>``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import ConfigError

logger = logging.getLogger("modelyard.serve")
_LOGGED = re.compile(r"\bood=(?P<score>-?[0-9.eE+-]+) ood_flagged=(?P<flag>[01])\b")


class OodFlagger:
    """The loaded VAE and its threshold; ``flags(arrays)`` scores a batch of uint8 ``(C, H, W)`` images."""

    def __init__(self, run: str | Path) -> None:
        from modelyard.models.loading import load

        try:
            self.model = load(run, device="cpu")
        except Exception as err:  # noqa: BLE001 - any load failure is a bad setting, named as such
            raise ConfigError(f"serve.ood_from {run}: {err}") from None
        threshold = getattr(self.model, "ood_threshold", None)
        if not hasattr(self.model, "anomaly_scores") or threshold is None or not self.model.model.scores_anomalies:
            raise ConfigError(
                f"serve.ood_from {run} is not a vae run with a calibrated threshold; train one "
                "(examples/fashion_mnist_vae.yaml) on the classifier's data"
            )
        self.run = str(run)
        self.threshold = float(threshold)
        self.shape = (self.model.channels, *self.model.image_size)
        self._warned = False

    def flags(self, arrays: list[np.ndarray]) -> list[dict[str, Any]] | None:
        """One ``{"score", "threshold", "flagged"}`` per image; None when the images are not the VAE's shape."""
        if not arrays:
            return []
        if tuple(arrays[0].shape) != self.shape:
            if not self._warned:
                logger.warning(
                    "serve.ood_from %s scores %s images; the served model takes %s: no OOD flags",
                    self.run,
                    self.shape,
                    tuple(arrays[0].shape),
                )
                self._warned = True
            return None
        scores = self.model.anomaly_scores(np.stack(arrays))
        return [
            {"score": round(float(s), 4), "threshold": round(self.threshold, 4), "flagged": bool(s > self.threshold)}
            for s in scores
        ]


def logged(description: str, flag: dict[str, Any]) -> str:
    """An image's logged description with its OOD score and flag appended."""
    return f"{description} ood={flag['score']} ood_flagged={int(flag['flagged'])}"


def parse_logged(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Scores and flags of the logged image descriptions that carry them (monitor)."""
    found = [m for m in (_LOGGED.search(t) for t in texts) if m]
    return (
        np.array([float(m["score"]) for m in found], dtype=float),
        np.array([m["flag"] == "1" for m in found], dtype=bool),
    )
