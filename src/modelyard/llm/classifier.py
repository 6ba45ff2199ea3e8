"""``PromptClassifier``: a zero/few-shot classifier over a generative LM, used like ``inference.Classifier``.

A prompt model directory holds only settings, never weights::

    model/
      modelyard.json   {"format": 1, "model_type": "prompt", "labels", "backbone", "template",
                        "verbalizers", "shots": {"k", "method", "seed"}, "max_length", "chat",
                        "normalize", "batch_size", "cleaning", "name", ...}
      shots.parquet    the labelled shot pool (columns text, label), only when shots.k > 0

The backbone is ``bundled:NAME`` (converted once into the safetensors cache, see
:mod:`modelyard.llm.cache`) or an absolute local model directory.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelyard._internal.io import atomic_write_bytes, read_json, write_json
from modelyard._internal.labels import label_predictions
from modelyard._internal.layout import MANIFEST, MODEL_META
from modelyard.config import CleaningConfig
from modelyard.data.cleaning import clean_text
from modelyard.errors import ConfigError, ModelError
from modelyard.llm.cache import BUNDLED_LMS, load_lm, resolve_lm
from modelyard.llm.openai_backend import OpenAIScorer
from modelyard.llm.prompting import (
    DEFAULT_TEMPLATE,
    PromptTemplate,
    has_chat_template,
    minilm_embedder,
    select_shots,
    wrap_chat,
)
from modelyard.llm.scoring import check_verbalizers, score_labels, special_prefix

FORMAT = 1
SHOTS_FILE = "shots.parquet"
DEFAULT_SHOTS = {"k": 0, "method": "random", "seed": 42}
BACKENDS = ("local", "openai")
CONTENT_FREE = ("N/A", "", "[MASK]")
"""Content-free texts whose label probabilities measure a prompt's bias (Zhao et al. 2021)."""
CHARS_PER_TOKEN = 4  # remote backends: texts are cut by characters, ~4 per token (no local tokenizer)


class PromptClassifier:
    """A prompt-based text classifier with the ``Classifier`` protocol.

    Attributes:
        labels: class names in output order.
        meta: the parsed ``modelyard.json``.
        model_dir: the prompt model directory.
        max_length: the most tokens a scored sequence (prompt + answer word) may have; the text to
            classify is cut to fit, the template never is (each shot text is cut once, at load time,
            to ``max(16, max_length // (2 * (k + 1)))`` tokens, so the shots fill at most about half).
        template_source: the Jinja2 source of the prompt template.
        verbalizers: ``{label: [words]}`` in label order.
        device: the torch device the LM runs on.
    """

    def __init__(self, model_dir: Path, *, device: str = "auto", batch_size: int | None = None) -> None:
        from modelyard._internal.runtime import pick_device

        model_dir = Path(model_dir)
        meta_path = model_dir / MODEL_META
        if not meta_path.is_file():
            raise ModelError(f"{model_dir} has no modelyard.json; not a modelyard model directory")
        self.model_dir = model_dir
        self.meta: dict[str, Any] = read_json(meta_path)
        meta = self.meta
        if "template" not in meta or "verbalizers" not in meta:
            raise ModelError(f"{meta_path}: not a prompt model (no template/verbalizers)")
        if meta.get("format") != FORMAT:
            raise ModelError(f"{meta_path}: unsupported format {meta.get('format')!r}; upgrade modelyard")
        backend = meta.get("backend", "local")
        if backend not in BACKENDS:
            raise ModelError(f"{meta_path}: backend {backend!r} is not supported by this PromptClassifier")
        try:
            self.labels: list[str] = [str(x) for x in meta["labels"]]
            self.max_length = int(meta["max_length"])
            verbalizers = meta["verbalizers"]
            check_verbalizers(verbalizers, self.labels)
            self.verbalizers: dict[str, list[str]] = {lb: [str(w) for w in verbalizers[lb]] for lb in self.labels}
            self.template_source: str = meta["template"]
            self.template = PromptTemplate(self.template_source, name=f"{meta_path}:template")
            shots = {**DEFAULT_SHOTS, **(meta.get("shots") or {})}
            self.k, self.shot_method, self.shot_seed = int(shots["k"]), str(shots["method"]), int(shots["seed"])
            self._cleaning = CleaningConfig.model_validate(meta.get("cleaning", {}))
        except (KeyError, TypeError, ValueError, ConfigError) as err:
            raise ModelError(f"{meta_path} is invalid: {err}") from None
        self.chat = bool(meta.get("chat", False))
        self.calibrate = bool(meta.get("calibrate", False))
        self._cf_cache: dict[tuple[int, ...], np.ndarray] = {}
        self.normalize = meta.get("normalize", "mean")
        self.batch_size = int(batch_size if batch_size is not None else meta.get("batch_size", 8))
        self._normalize_text = clean_text
        self.label_words = [self.verbalizers[lb][0] for lb in self.labels]

        self._pool_texts: list[str] = []
        self._pool_labels: list[str] = []
        self._shot_texts: list[str] = []
        if self.k > 0:
            self._load_pool()

        self.backend: str = backend
        self.model: Any = None
        self.tokenizer: Any = None
        self._scorer: Any = None
        if backend == "openai":
            self._scorer = _remote_scorer(meta.get("openai"), meta_path)
            self.device = pick_device("cpu")
            self._prefix_len, self._answer_len = 0, 1
        else:
            self.backbone_dir = resolve_lm(str(meta["backbone"]), model_dir)
            self.device = pick_device(device)
            self.model, self.tokenizer = load_lm(self.backbone_dir, device=self.device)
            if self.chat and not has_chat_template(self.tokenizer):
                raise ModelError(
                    f"{meta_path}: chat is true but the tokenizer of {meta['backbone']} has no chat template"
                )
            self._prefix_len = 0 if self.chat else len(special_prefix(self.tokenizer))
            words = [w for ws in self.verbalizers.values() for w in ws]
            self._answer_len = max(len(self.tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words)
        if self.k > 0:
            cap = max(16, self.max_length // (2 * (self.k + 1)))  # shots share at most about half the budget
            self._shot_texts = [self._truncate(t, cap) for t in self._pool_texts]
        self._embedder: Any = None
        self._pool_embeddings: np.ndarray | None = None
        self._lock = threading.Lock()  # one forward pass at a time; torch already uses all cores

    # ------------------------------------------------------------------ loading helpers

    def _load_pool(self) -> None:
        import pandas as pd

        path = self.model_dir / SHOTS_FILE
        if not path.is_file():
            raise ModelError(f"{self.model_dir}: shots.k is {self.k} but {SHOTS_FILE} is missing")
        try:
            pool = pd.read_parquet(path)
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot read {path}: {err}") from None
        if not {"text", "label"} <= set(pool.columns):
            raise ModelError(f"{path} needs columns text and label (has {', '.join(map(str, pool.columns))})")
        self._pool_texts = [str(t) for t in pool["text"]]
        self._pool_labels = [str(lb) for lb in pool["label"]]
        unknown = sorted(set(self._pool_labels) - set(self.labels))
        if unknown:
            raise ModelError(f"{path} has labels not in the model's labels: {unknown}")
        if len(self._pool_texts) < self.k:
            raise ModelError(f"{path} has {len(self._pool_texts)} examples, fewer than shots.k={self.k}")

    # ------------------------------------------------------------------ prompts

    def _n_tokens(self, prompt: str) -> int:
        if self.tokenizer is None:  # remote backend: a character estimate
            return -(-len(prompt) // CHARS_PER_TOKEN)
        return self._prefix_len + len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def _truncate(self, text: str, n_tokens: int) -> str:
        """The longest prefix of ``text`` (cut at a token boundary) with at most ``n_tokens`` tokens."""
        if n_tokens <= 0:
            return ""
        if self.tokenizer is None:
            return text[: n_tokens * CHARS_PER_TOKEN]
        if getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
            return text if len(offsets) <= n_tokens else text[: offsets[n_tokens - 1][1]]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= n_tokens else self.tokenizer.decode(ids[:n_tokens], skip_special_tokens=True)

    def _render(self, text: str, examples: list[dict[str, str]]) -> str:
        prompt = self.template.render(text, self.labels, self.label_words, examples)
        # A remote server applies its own chat template to the user message.
        return wrap_chat(self.tokenizer, prompt) if self.chat and self.tokenizer is not None else prompt

    def _fit(self, text: str, examples: list[dict[str, str]]) -> str:
        """Render the prompt, cutting ``text`` (never the template or the shots) to fit ``max_length``."""
        budget = self.max_length - self._answer_len
        prompt = self._render(text, examples)
        n = self._n_tokens(prompt)
        if n <= budget:
            return prompt
        overhead = self._n_tokens(self._render("", examples))
        room = budget - overhead
        if room <= 0:
            raise ModelError(
                f"the prompt template and {len(examples)} shot(s) alone take {overhead} tokens, no room for the text "
                f"within max_length {self.max_length}; raise max_length or lower shots.k"
            )
        for _ in range(8):  # re-tokenizing inside the template can differ by a token or two at the boundary
            prompt = self._render(self._truncate(text, room), examples)
            n = self._n_tokens(prompt)
            if n <= budget:
                return prompt
            room -= n - budget
            if room <= 0:
                break
        return self._render("", examples)

    def _shots_for(self, texts: list[str]) -> list[list[int]]:
        if self.k == 0:
            return [[] for _ in texts]
        if self.shot_method == "nearest":
            if self._embedder is None:
                self._embedder = minilm_embedder()
                self._pool_embeddings = self._embedder(self._pool_texts)
            return select_shots(
                self._pool_texts,
                self._pool_labels,
                texts,
                self.k,
                "nearest",
                self.shot_seed,
                self._embedder,
                pool_embeddings=self._pool_embeddings,
            )
        return select_shots(self._pool_texts, self._pool_labels, texts, self.k, "random", self.shot_seed)  # type: ignore[arg-type]

    def _examples(self, idx: list[int]) -> list[dict[str, str]]:
        return [
            {
                "text": self._shot_texts[i],
                "label": self._pool_labels[i],
                "label_word": self.verbalizers[self._pool_labels[i]][0],
            }
            for i in idx
        ]

    def _prompts(self, clean: list[str], shots: list[list[int]] | None = None) -> list[str]:
        shots = self._shots_for(clean) if shots is None else shots
        return [self._fit(text, self._examples(idx)) for text, idx in zip(clean, shots, strict=True)]

    def _score(self, prompts: list[str]) -> np.ndarray:
        if self._scorer is not None:
            return self._scorer.score(prompts, self.verbalizers, self.labels, chat=self.chat)
        return score_labels(
            self.model,
            self.tokenizer,
            prompts,
            self.verbalizers,
            batch_size=self.batch_size,
            normalize=self.normalize,
            add_special_tokens=not self.chat,
        )

    def _content_free(self, idx: list[int]) -> np.ndarray:
        """Mean label probabilities of content-free texts under the shots ``idx`` (cached per shot set)."""
        key = tuple(idx)
        if key not in self._cf_cache:
            examples = self._examples(idx)
            probs = self._score([self._fit(t, examples) for t in CONTENT_FREE])
            self._cf_cache[key] = probs.mean(axis=0)
        return self._cf_cache[key]

    def _clean(self, texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("expected a list of texts, not a single string")
        return [self._normalize_text(str(t), self._cleaning) for t in texts]

    def render_prompts(self, texts: list[str]) -> list[str]:
        """The exact prompts scored for ``texts`` (after cleaning, shot selection, truncation, chat wrapping)."""
        with self._lock:
            return self._prompts(self._clean(texts))

    # ------------------------------------------------------------------ Classifier protocol

    def info(self) -> dict[str, Any]:
        """JSON-able description of the model (served in responses)."""
        run_dir = self.model_dir.parent
        return {
            "runtime": "prompt",
            "backend": self.backend,
            "name": self.meta.get("name"),
            "run_id": run_dir.name if (run_dir / MANIFEST).is_file() else None,
            "backbone": self.meta.get("backbone"),
            "labels": self.labels,
            "max_length": self.max_length,
            "verbalizers": self.verbalizers,
            "shots": {"k": self.k, "method": self.shot_method, "seed": self.shot_seed},
            "chat": self.chat,
            "calibrate": self.calibrate,
        }

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), len(labels))``, float64; rows sum to 1."""
        clean = self._clean(texts)
        if not clean:
            return np.zeros((0, len(self.labels)))
        with self._lock:
            shots = self._shots_for(clean)
            probs = self._score(self._prompts(clean, shots))
            if not self.calibrate:
                return probs
            # Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): the probabilities the same
            # prompt gives content-free texts measure its label bias; dividing it out (W = diag(p_cf)^-1)
            # and renormalising removes the majority-label and recency bias of the shots.
            prior = np.stack([self._content_free(idx) for idx in shots])
            calibrated = probs / np.clip(prior, 1e-12, None)
            return calibrated / calibrated.sum(axis=1, keepdims=True)

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Predicted label and per-class scores for each text.

        Example:
            >>> clf.predict(["great film"])
            [{'label': 'fresh', 'scores': {'fresh': 0.81, 'rotten': 0.19}}]
        """
        return label_predictions(self.labels, self.predict_proba(texts))


def _remote_scorer(settings: Any, meta_path: Path) -> Any:
    """The :class:`~modelyard.llm.openai_backend.OpenAIScorer` for a model directory's ``openai`` settings."""

    if not isinstance(settings, Mapping) or not settings.get("base_url") or not settings.get("model"):
        raise ModelError(f"{meta_path}: backend 'openai' needs an openai section with base_url and model")
    return OpenAIScorer(
        str(settings["base_url"]),
        str(settings["model"]),
        settings.get("api_key_env", "OPENAI_API_KEY"),
        float(settings.get("timeout_s", 60.0)),
    )


def load_prompt_model(
    model_dir: str | Path, *, device: str = "auto", batch_size: int | None = None
) -> PromptClassifier:
    """Load a prompt model directory (``model_type: prompt``) as a :class:`PromptClassifier`."""
    return PromptClassifier(Path(model_dir), device=device, batch_size=batch_size)


def save_prompt_model(
    path: str | Path,
    *,
    labels: Sequence[str],
    backbone: str,
    template: str | None,
    verbalizers: Mapping[str, Sequence[str]] | None,
    shots_cfg: Mapping[str, Any] | None,
    pool: Any | None,
    cleaning: Mapping[str, Any],
    name: str,
    max_length: int,
    chat: bool,
    calibrate: bool = False,
    normalize: str = "mean",
    batch_size: int = 8,
    backend: str = "local",
    openai: Mapping[str, Any] | None = None,
) -> Path:
    """Write a prompt model directory (``modelyard.json`` last, so a complete file marks a complete model).

    Args:
        path: the directory to write (created if needed).
        labels: class names in output order.
        backbone: ``bundled:NAME`` (kept as is) or a local model directory (stored as an absolute path).
        template: Jinja2 source; ``None`` = :data:`~modelyard.llm.prompting.DEFAULT_TEMPLATE`.
        verbalizers: ``{label: [words]}`` for every label (reordered to ``labels``); ``None`` = label names.
        shots_cfg: ``{"k", "method", "seed"}`` (missing keys: k=0, random, 42).
        pool: a DataFrame with ``text`` and ``label`` columns, required when ``k > 0``.
        cleaning: ``CleaningConfig`` fields applied to input texts (as in training).
        name: the model's name.
        max_length: most tokens per scored sequence.
        chat: wrap prompts in the tokenizer's chat template.
        calibrate: contextual calibration against content-free texts (see :class:`PromptClassifier`).
        normalize: ``mean`` or ``sum`` of each verbalizer's token log-probs.
        batch_size: rows per forward pass.
        backend: ``local`` (the LM runs in this process) or ``openai`` (an OpenAI-compatible server).
        openai: endpoint settings stored for ``backend: openai``.

    Returns:
        ``path``.

    Raises:
        ConfigError: invalid labels, template, verbalizers, shots, pool, cleaning or lengths.
    """
    from pydantic import ValidationError

    path = Path(path)
    labels = [str(x) for x in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ConfigError(f"a prompt model needs at least two distinct labels, got {labels}")
    source = DEFAULT_TEMPLATE if template is None else template
    parsed = PromptTemplate(source, name="template")
    verbalizers = {lb: [lb] for lb in labels} if verbalizers is None else verbalizers
    check_verbalizers(verbalizers, labels)
    verbs = {lb: [str(w) for w in verbalizers[lb]] for lb in labels}
    shots = {**DEFAULT_SHOTS, **dict(shots_cfg or {})}
    if unknown := sorted(set(shots) - set(DEFAULT_SHOTS)):
        raise ConfigError(f"shots has unknown key(s) {unknown}; use k, method, seed")
    k = int(shots["k"])
    if k < 0 or shots["method"] not in ("random", "nearest"):
        raise ConfigError("shots.k must be >= 0 and shots.method 'random' or 'nearest'")
    if k > 0 and not parsed.uses_examples:
        raise ConfigError(
            f"shots.k is {k} but the prompt template never uses {{{{ examples }}}}, so the shots would be "
            "silently dropped; add an examples block (see the built-in template) or set shots to 0"
        )
    if normalize not in ("mean", "sum"):
        raise ConfigError(f"normalize must be 'mean' or 'sum', not {normalize!r}")
    if int(max_length) < 16:
        raise ConfigError(f"max_length must be at least 16 tokens, not {max_length}")
    try:
        CleaningConfig.model_validate(dict(cleaning))
    except ValidationError as err:
        raise ConfigError(f"invalid cleaning settings: {err.errors()[0].get('msg')}") from None
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "openai":
        if not openai or not openai.get("base_url") or not openai.get("model"):
            raise ConfigError("backend 'openai' needs openai settings with base_url and model")
        # the backbone names the remote model only for the record; nothing is loaded locally
    elif backbone.startswith("bundled:"):
        if backbone.removeprefix("bundled:") not in BUNDLED_LMS:
            raise ConfigError(
                f"LM backbone '{backbone}' is not bundled; available: " + ", ".join(f"bundled:{n}" for n in BUNDLED_LMS)
            )
    else:
        local = Path(backbone).expanduser().resolve()
        if not ((local / "config.json").is_file() or (local.is_file() and local.suffix.lower() == ".gguf")):
            raise ConfigError(f"LM backbone '{backbone}' is not a model directory with config.json ({local})")
        backbone = str(local)

    path.mkdir(parents=True, exist_ok=True)
    shots_path = path / SHOTS_FILE
    if k > 0:
        if pool is None or not {"text", "label"} <= set(getattr(pool, "columns", [])):
            raise ConfigError(f"shots.k is {k}: a shot pool with text and label columns is needed")
        frame = pool[["text", "label"]].astype(str).reset_index(drop=True)
        if len(frame) < k:
            raise ConfigError(f"shots.k is {k} but the shot pool has only {len(frame)} examples; lower shots.k")
        if unknown_labels := sorted(set(frame["label"]) - set(labels)):
            raise ConfigError(f"the shot pool has labels not in {labels}: {unknown_labels}")
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        atomic_write_bytes(shots_path, buf.getvalue())
    elif shots_path.exists():
        shots_path.unlink()
    meta: dict[str, Any] = {
        "format": FORMAT,
        "model_type": "prompt",
        "name": name,
        "labels": labels,
        "backbone": backbone,
        "template": source,
        "verbalizers": verbs,
        "shots": {"k": k, "method": str(shots["method"]), "seed": int(shots["seed"])},
        "max_length": int(max_length),
        "chat": bool(chat),
        "calibrate": bool(calibrate),
        "normalize": normalize,
        "batch_size": int(batch_size),
        "backend": backend,
        "cleaning": dict(cleaning),
    }
    if openai is not None:
        meta["openai"] = dict(openai)
    write_json(path / MODEL_META, meta)
    return path
