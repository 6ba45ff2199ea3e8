"""Seeding, device and precision selection."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pick_device(requested: str = "auto") -> torch.device:
    """Resolve ``auto`` to cuda, then mps, then cpu; an explicit device that is missing is an error."""
    from modelyard.errors import ConfigError

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA GPU is visible; set train.device=auto or cpu")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("train.device is 'mps' but MPS is not available; set train.device=auto or cpu")
    return torch.device(requested)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device``; ``None`` means plain fp32."""
    from modelyard.errors import ConfigError

    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs a CUDA GPU; use bf16 or fp32 on this device")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def rng_state() -> dict[str, Any]:
    """Capture Python and NumPy RNG state as JSON-able data (torch state is saved as tensors)."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state dict with tied/shared storage broken (safetensors needs that)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
