"""Find files shipped inside installed packages without importing them.

Some packages that carry bundled weights or data have heavy or broken imports, so only their
location is looked up.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, or ``None`` if it is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


# Import name → the command that installs it (the extras of pyproject.toml, or the package itself).
_INSTALL = {
    "psycopg": 'pip install "modelyard[postgres]"',
    "ray": 'pip install "modelyard[tune-ray]"',
    "peft": "pip install peft",
    "gguf": "pip install gguf",
    "opencc": "pip install opencc",
    "jieba": "pip install jieba",
    "onnx": "pip install onnx onnxruntime",
    "onnxruntime": "pip install onnxruntime",
    "onnxscript": "pip install onnxscript",
    "captum": "pip install captum",
    "optuna": "pip install optuna",
    "mlflow": 'pip install "modelyard[mlflow]"',
    "tensorboard": 'pip install "modelyard[tensorboard]"',
    "playwright": "pip install playwright",
}


def install_hint(module: str) -> str:
    """``install it: pip install …`` for a missing import (its top-level package decides the command)."""
    top = module.split(".", 1)[0]
    command = _INSTALL.get(top, f"pip install {top.replace('_', '-')}")
    return f"install it: {command}"
