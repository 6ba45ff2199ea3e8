"""A name → builder registry, so later model families plug into the same recipe, loop and server."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from modelyard.config import ModelConfig
from modelyard.errors import ConfigError


class ModelBuilder(Protocol):
    """Builds ``(model, tokenizer)`` for ``labels`` from a model config.

    The model is a ``torch.nn.Module`` whose forward takes tokenizer outputs (+ ``labels``) and returns an
    object with ``.logits`` (and ``.loss`` when labels are given) — the Hugging Face convention — and
    that saves with ``save_pretrained`` into a directory plain ``transformers`` can load.
    """

    def __call__(self, cfg: ModelConfig, labels: list[str], base_dir: Path) -> tuple[Any, Any]: ...


_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder under ``name`` (used as ``model.type`` in recipes)."""

    def deco(fn: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model type '{name}' is already registered")
        _BUILDERS[name] = fn
        return fn

    return deco


def get_builder(name: str) -> ModelBuilder:
    """Look up a builder; unknown names fail with the registered ones listed."""
    try:
        return _BUILDERS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_BUILDERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"model.type '{name}' is not a registered model; available: {', '.join(sorted(_BUILDERS))}{hint}"
        ) from None


def build_model(cfg: ModelConfig, labels: list[str], base_dir: Path, **kwargs: Any) -> tuple[Any, Any]:
    """Build ``(model, tokenizer)`` with the builder named by ``cfg.type``.

    ``kwargs`` reach builders that need facts about the data (image models: ``image_shape``,
    ``normalization``); their second element is ``None`` (no tokenizer).
    """
    return get_builder(cfg.type)(cfg, labels, base_dir, **kwargs)


def builder_takes(name: str, argument: str) -> bool:
    """Whether the builder registered as ``name`` accepts the keyword ``argument`` (e.g. ``texts``)."""
    import inspect

    return argument in inspect.signature(get_builder(name)).parameters
