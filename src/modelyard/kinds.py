"""The registry of model kinds: the one list of ``model.type`` names and what each kind can do.

A kind is registered once, by the file that implements it (``modelyard/models/<kind>.py`` for the
built-in ones, a ``modelyard.models`` entry point for third-party packages — the way timm and pytest
plugins register). Everything else asks this registry: the recipe validates its ``model`` section with
the kind's settings model, training asks how the kind trains (the shared loop or a one-shot fit),
loading asks how it loads, and the stages (explain, compress, tune, registry, ensembles) ask what it
supports. Nothing outside ``modelyard.models`` compares ``model.type`` strings.

This module sits below the recipe (``config.py``) so that the recipe can be validated against it; the
kinds' code lives above it and imports it, never the other way round. Built-in kinds are imported on
first lookup by module name (``_BUILTIN``), plugins through the entry-point group: both are imports by
name at run time, which keeps this module free of the kinds' heavy dependencies (torch, transformers).
"""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from modelyard.errors import ConfigError, ModelError

ENTRY_POINT_GROUP = "modelyard.models"

# The built-in kinds: ``model.type`` → the module that registers it. One line per kind.
_BUILTIN: dict[str, str] = {
    "hf-encoder": "modelyard.models.hf_encoder",
    "textcnn": "modelyard.models.textcnn",
    "bilstm": "modelyard.models.bilstm",
    "transformer-encoder": "modelyard.models.transformer_encoder",
    "tfidf-logreg": "modelyard.models.tfidf",
    "prompt": "modelyard.models.prompt",
    "ensemble": "modelyard.models.ensemble",
    "cnn-small": "modelyard.models.cnn_small",
    "resnet-mini": "modelyard.models.resnet_mini",
    "vit-tiny": "modelyard.models.vit_tiny",
    "vae": "modelyard.models.vae",
    "gan": "modelyard.models.gan",
    "setfit": "modelyard.models.setfit",
}

Modality = Literal["text", "image"]
#: Capabilities a kind may declare; the stages check these instead of kind names.
CAPABILITIES = frozenset(
    {
        "resume",  # training can stop and continue from a checkpoint (the shared loop)
        "explain",  # one network with embeddings/attention to attribute (explain/)
        "compress",  # one torch network in Hugging Face layout (compression/)
        "distill_teacher",  # predict_proba on texts: usable as train.distill.teacher
        "ensemble_member",  # may be listed in model.members of an ensemble
        "pretrained_backbone",  # `backbone` names pretrained weights that must resolve before a run starts
        "learns_tokenizer",  # the builder learns its tokenizer from the training texts
        "learns_from_split",  # the builder sees the labelled training split (few-shot contrastive body tuning)
        "generative",  # learns to generate images (task: image-generation; training.generative, `generate`)
        "multi_label",  # learns label sets (task: multi-label-classification): sigmoid scores + per-label thresholds
    }
)


@dataclass(frozen=True)
class FitContext:
    """What a one-shot fit gets from the run: the recipe, prepared data, where to save, and services.

    ``model_dir`` is where the fit saves its model (``<run>/model``); ``run_dir`` may hold the fit's own
    extra outputs. ``train_member(recipe, data)`` trains another recipe with the shared run machinery
    (into ``recipe.output_dir``) and returns the finished run directory — how an ensemble trains its
    members without importing the training package.
    """

    recipe: Any
    data: Any
    run_dir: Path
    model_dir: Path
    console: Any
    train_member: Callable[[Any, Any], Path]


@dataclass
class FitResult:
    """What a one-shot fit returns: valid/test probabilities (rows = the split's rows, columns = labels),
    lines for the report's info table, and extra manifest fields. The run writes metrics, predictions,
    report and manifest from these — the same way for every kind."""

    probs: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelKind:
    """Everything the rest of modelyard asks of one ``model.type``.

    Attributes:
        name: the ``model.type`` value.
        settings: the pydantic model of the recipe's ``model`` section for this kind (a subclass of
            ``modelyard.config.ModelSettings`` with ``type: Literal[name]``).
        modality: ``text`` or ``image`` input.
        load: ``load(model_dir, meta, device=..., batch_size=...)`` → an object with ``labels``,
            ``predict_proba``, ``predict`` and ``info`` (``meta`` is the parsed ``modelyard.json``).
        build: shared-loop kinds: ``build(settings, labels, base_dir, **facts)`` → ``(torch module, tokenizer)``
            (facts: ``texts`` for kinds that learn a tokenizer; ``image_shape``, ``normalization`` for images).
        save: shared-loop kinds: ``save(model_dir, module, tokenizer, recipe, labels)`` writes ``model/``.
        fit: one-shot kinds: ``fit(FitContext)`` → :class:`FitResult` (writes ``ctx.model_dir`` itself).
        prepare: optional check run before a run directory exists: ``prepare(settings, recipe, labels)``
            raises on a bad backbone/template so that nothing is left behind.
        check_artifacts: ``check_artifacts(model_dir, meta)`` raises ``ValueError`` naming the problem when
            the directory lacks this kind's safe weights (the registry's admission check).
        display_name: how runs and reports name the model (``display_name(settings)``).
        supports: capabilities from :data:`CAPABILITIES`.
        instead: what to do when a stage does not support this kind (appended to the stage's error).
        external_files: ``external_files(model_dir, meta)`` → files the model needs outside ``model/``
            (a prompt model's language model), counted in its size.
    """

    name: str
    settings: type[BaseModel]
    modality: Modality
    load: Callable[..., Any]
    build: Callable[..., tuple[Any, Any]] | None = None
    save: Callable[..., None] | None = None
    fit: Callable[[FitContext], FitResult] | None = None
    prepare: Callable[[Any, Any, list[str]], None] | None = None
    check_artifacts: Callable[[Path, dict[str, Any]], None] | None = None
    display_name: Callable[[Any], str] | None = None
    supports: frozenset[str] = frozenset()
    instead: str = ""
    external_files: Callable[[Path, dict[str, Any]], list[Path]] | None = None

    def __post_init__(self) -> None:
        if (self.build is None) == (self.fit is None):
            raise ValueError(f"model kind '{self.name}': give exactly one of build (shared loop) or fit (one-shot)")
        if self.build is not None and self.save is None:
            raise ValueError(f"model kind '{self.name}': a shared-loop kind needs save")
        unknown = set(self.supports) - CAPABILITIES
        if unknown:
            raise ValueError(f"model kind '{self.name}': unknown capabilities {sorted(unknown)}")

    @property
    def trains_in_loop(self) -> bool:
        """Whether the kind trains with the shared loop (else it is a one-shot fit)."""
        return self.build is not None

    def can(self, capability: str) -> bool:
        """Whether the kind declares ``capability`` (one of :data:`CAPABILITIES`)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}")
        return capability in self.supports

    def unsupported(self, what: str) -> str:
        """A one-line refusal for a stage that needs a capability this kind lacks."""
        return f"model.type {self.name} does not support {what}" + (f"; {self.instead}" if self.instead else "")

    def build_facts(self, train: Any) -> dict[str, Any]:
        """What ``build`` gets from the training split (a ``text``/``label`` frame) besides the settings.

        Kinds that learn a tokenizer get ``texts``; kinds that learn from the split (``learns_from_split``)
        get ``texts`` and ``train_labels``; the others nothing.
        """
        facts: dict[str, Any] = {}
        if self.can("learns_tokenizer") or self.can("learns_from_split"):
            facts["texts"] = train["text"].tolist()
        if self.can("learns_from_split"):
            facts["train_labels"] = train["label"].tolist()
        return facts

    def name_of(self, settings: Any) -> str:
        """The model's display name (its backbone for pretrained kinds, else the kind)."""
        return self.display_name(settings) if self.display_name else self.name


_KINDS: dict[str, ModelKind] = {}
_LOCK = threading.RLock()
_plugins_scanned = False


def register_kind(kind: ModelKind) -> ModelKind:
    """Add a kind to the registry (called once by the module that implements it)."""
    with _LOCK:
        existing = _KINDS.get(kind.name)
        if existing is not None and existing is not kind:
            raise ValueError(f"model kind '{kind.name}' is already registered")
        _KINDS[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    """Remove a kind (tests that define a kind of their own clean up with this)."""
    with _LOCK:
        _KINDS.pop(name, None)


def _plugin_entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_kinds() -> list[str]:
    """Every known ``model.type``: built-in, registered at run time and installed plugins."""
    with _LOCK:
        return sorted(set(_BUILTIN) | set(_KINDS) | set(_plugin_entry_points()))


def get_kind(name: str) -> ModelKind:
    """The kind registered as ``name``; imports its module on first use.

    Raises:
        ConfigError: no such kind (the message lists the available ones and the closest match).
    """
    with _LOCK:
        if name in _KINDS:
            return _KINDS[name]
        module = _BUILTIN.get(name)
        if module is not None:
            importlib.import_module(module)
        else:
            ep = _plugin_entry_points().get(name)
            if ep is not None:
                ep.load()  # the plugin module registers its kind(s) when imported
        if name in _KINDS:
            return _KINDS[name]
    names = available_kinds()
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"model.type '{name}' is not a registered model kind; available: {', '.join(names)}{hint}")


def kind_of_meta(meta: dict[str, Any], where: Path | str = "model") -> ModelKind:
    """The kind that wrote a model directory, from its ``modelyard.json`` (``model_type``).

    Model directories written before ``model_type`` was recorded are Hugging Face text classifiers.
    """
    name = meta.get("model_type") or "hf-encoder"
    try:
        return get_kind(str(name))
    except ConfigError:
        raise ModelError(
            f"{where}: model_type '{name}' is not a known model kind (available: {', '.join(available_kinds())}); "
            "install the package that provides it"
        ) from None


def kinds_with(capability: str) -> list[str]:
    """Names of the (built-in and registered) kinds that declare ``capability``; imports them all."""
    return [n for n in available_kinds() if get_kind(n).can(capability)]


def kinds_for(modality: Modality) -> list[str]:
    """Names of the kinds taking ``modality`` input; imports them all."""
    return [n for n in available_kinds() if get_kind(n).modality == modality]
