"""Optional packages: where an installed one lives (without importing it) and the command that installs one.

Some packages that carry bundled weights or data have heavy or broken imports, so only their
location is looked up. The install commands here (and the bundled packages' in
:mod:`modelyard._internal.bundled`) are the only ones error messages and ``modelyard doctor`` print.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
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


def module_installed(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path; not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class Feature:
    """An optional capability and what it needs: import names, their distributions, the install command."""

    name: str
    modules: tuple[str, ...]
    distributions: tuple[str, ...]
    install: str
    extra: str | None = None  # the pyproject extra that installs it; None: a core dependency (a broken install)


FEATURES: tuple[Feature, ...] = (
    Feature(
        "PostgreSQL registry (--db postgresql://…)",
        ("psycopg",),
        ("psycopg",),
        'pip install "modelyard[postgres]"',
        "postgres",
    ),
    Feature(
        "Ray Tune backend (modelyard tune --backend ray)",
        ("ray",),
        ("ray",),
        'pip install "modelyard[tune-ray]"',
        "tune-ray",
    ),
    Feature(
        "ONNX export and runtime (modelyard compress)",
        ("onnx", "onnxscript", "onnxruntime"),
        ("onnx", "onnxscript", "onnxruntime"),
        "pip install onnx onnxscript onnxruntime",
    ),
    Feature(
        "Chinese cleaning and segmentation (OpenCC t2s, jieba)",
        ("opencc", "jieba"),
        ("opencc", "jieba"),
        "pip install opencc jieba",
    ),
    Feature("LoRA fine-tuning (model.finetune: lora)", ("peft",), ("peft",), "pip install peft"),
    Feature(
        "GGUF language models (prompt models, bundled:gemma3-270m)",
        ("gguf", "accelerate"),
        ("gguf", "accelerate"),
        "pip install gguf accelerate",
    ),
    Feature("explanations (modelyard explain)", ("captum",), ("captum",), "pip install captum"),
    Feature("hyper-parameter search (modelyard tune)", ("optuna",), ("optuna",), "pip install optuna"),
    Feature(
        "federated learning simulation (modelyard federate)",
        ("flwr",),
        ("flwr",),
        'pip install "modelyard[federated]"',
        "federated",
    ),
    Feature(
        "MLflow tracking (train.report_to: [mlflow])",
        ("mlflow",),
        ("mlflow-skinny",),
        'pip install "modelyard[mlflow]"',
        "mlflow",
    ),
    Feature(
        "TensorBoard event files (train.report_to: [tensorboard])",
        ("tensorboard",),
        ("tensorboard",),
        'pip install "modelyard[tensorboard]"',
        "tensorboard",
    ),
)

# Import name → the command that installs it, for modules outside FEATURES.
_INSTALL = {
    "playwright": 'pip install "modelyard[dev]"',
    "schemathesis": 'pip install "modelyard[dev]"',
    "torch": "pip install torch",
}


def install_command(module: str) -> str:
    """The exact command that installs the (top-level package of) import ``module``.

    An optional extra of modelyard is named as the extra (``pip install "modelyard[postgres]"``); a core
    dependency missing from a broken install is named by its own package; a feature needing several modules
    installs all of them.
    """
    top = module.split(".", 1)[0]
    for feature in FEATURES:
        if top in feature.modules:
            if feature.extra is not None or len(feature.modules) == 1:
                return feature.install
            return f"pip install {feature.distributions[feature.modules.index(top)]}"
    return _INSTALL.get(top, f"pip install {top.replace('_', '-')}")


def install_hint(module: str) -> str:
    """``install it: pip install …`` for a missing import (its top-level package decides the command)."""
    return f"install it: {install_command(module)}"
