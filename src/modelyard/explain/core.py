"""Per-word attributions for a trained classifier: integrated gradients, attention rollout, occlusion.

``explain(classifier, texts, method=...)`` returns one :class:`Explanation` per text. The text goes
through the classifier's own normalisation and truncation (exactly what ``predict`` sees); token
attributions are summed into *units* (words, punctuation marks, single CJK characters, see
:mod:`modelyard.explain.units`).

Methods:

``ig``
    Captum ``LayerIntegratedGradients`` on the input embedding layer. The baseline is the same
    sequence with every non-special token replaced by the pad token (``[CLS]``/``[SEP]`` kept). The
    explained quantity is the *probability* of the target class, so by completeness the attributions
    of a text sum to ``p(target | text) - p(target | baseline)`` up to ``convergence_delta``.
    Signed: positive pushes toward the target class.
``occlusion``
    Captum ``FeatureAblation`` with one feature group per unit: each unit's tokens are replaced by
    ``[MASK]`` (else ``[UNK]``, else the pad token) and the attribution is the *drop* in the target
    class probability. Signed: positive means the unit supported the target.
``attention``
    Attention rollout (Abnar & Zuidema, 2020): per layer the heads are averaged, the identity added
    and rows re-normalised; layers are multiplied; the row of the first token (``[CLS]``) is read.
    The mass on content tokens is summed per unit and re-normalised to sum to 1 over the units, so
    values are >= 0 and comparable across texts. It shows where the model looked, not which way a
    word pushed the decision, and ignores ``target``.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from modelyard.errors import ModelyardError
from modelyard.explain.units import UnitMap, map_tokens
from modelyard.kinds import kind_of_meta

METHODS = ("ig", "attention", "occlusion")

__all__ = ["METHODS", "Explanation", "ExplainUnsupportedError", "explain"]


class ExplainUnsupportedError(ModelyardError):
    """The classifier exposes no PyTorch model and fast tokenizer (e.g. an ONNX runtime)."""


@dataclass
class Explanation:
    """Attributions of one text.

    Attributes:
        text: The text as given.
        label: The predicted label.
        target: The label explained (the predicted one unless asked otherwise).
        scores: Probability of every label (of the normalised, truncated text the model saw).
        method: ``ig``, ``attention`` or ``occlusion``.
        units: Words / punctuation marks / single CJK characters, in order.
        attributions: One value per unit (signed for ``ig`` and ``occlusion``, >= 0 for ``attention``).
        normalized_text: The text after the classifier's cleaning; ``spans`` index into it.
        spans: ``(start, end)`` of every unit in ``normalized_text``.
        truncated: The text was longer than the model's ``max_length``; units after the cut are absent.
        convergence_delta: ``ig`` only: completeness error of the integral approximation (small is
            good; raise ``n_steps`` when it is not).
    """

    text: str
    label: str
    target: str
    scores: dict[str, float]
    method: str
    units: list[str]
    attributions: list[float]
    normalized_text: str = ""
    spans: list[tuple[int, int]] = field(default_factory=list)
    truncated: bool = False
    convergence_delta: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (no NaN: a non-finite delta becomes ``None``)."""
        d = asdict(self)
        d["spans"] = [list(s) for s in self.spans]
        d["attributions"] = [float(a) for a in self.attributions]
        d["scores"] = {k: float(v) for k, v in self.scores.items()}
        delta = self.convergence_delta
        d["convergence_delta"] = None if delta is None or not math.isfinite(delta) else float(delta)
        return d

    def ranked(self) -> list[tuple[str, float]]:
        """``(unit, attribution)`` pairs, strongest support for the target first."""
        return sorted(zip(self.units, self.attributions, strict=True), key=lambda p: -p[1])


# ---------------------------------------------------------------------------- helpers


def _require_internals(classifier: Any) -> tuple[Any, Any]:
    meta = getattr(classifier, "meta", None) or {}
    if meta and not kind_of_meta(meta).can("explain"):
        raise ExplainUnsupportedError(
            f"{getattr(classifier, 'model_dir', 'this model')}: " + kind_of_meta(meta).unsupported("explanations")
        )
    if getattr(classifier, "multi_label", False):
        raise ExplainUnsupportedError(
            f"{getattr(classifier, 'model_dir', 'this model')}: explanations of multi-label models are not "
            "supported yet (attributions explain one softmax class)"
        )
    model = getattr(classifier, "model", None)
    tokenizer = getattr(classifier, "tokenizer", None)
    if model is None or tokenizer is None or not hasattr(model, "get_input_embeddings"):
        raise ExplainUnsupportedError(
            f"{type(classifier).__name__} exposes no PyTorch model and tokenizer; explanations need a "
            "model loaded with modelyard.load(RUN_DIR), not an exported runtime"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ExplainUnsupportedError("explanations need a fast (Rust) tokenizer with offset mappings")
    return model, tokenizer


def _normalize(classifier: Any, text: str) -> str:
    """The classifier's own input normalisation (``Classifier._normalize`` with its cleaning config)."""
    fn = getattr(classifier, "_normalize", None)
    cfg = getattr(classifier, "_cleaning", None)
    if fn is None or cfg is None:
        return text
    return str(fn(text, cfg))


def _replacement_id(tokenizer: Any) -> int:
    for tid in (tokenizer.mask_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id):
        if tid is not None:
            return int(tid)
    return 0


@contextlib.contextmanager
def _model_lock(classifier: Any) -> Iterator[None]:
    """Hold the classifier's forward-pass lock when it has one, so ``predict`` never runs concurrently."""
    lock = getattr(classifier, "_lock", None)
    if lock is None:
        yield
        return
    with lock:
        yield


@dataclass
class _Encoded:
    normalized: str
    ids: Any  # (1, seq) long tensor
    extra: dict[str, Any]  # attention_mask, token_type_ids …  (1, seq)
    units: UnitMap
    content: list[int]  # positions of non-special tokens


def _encode(classifier: Any, tokenizer: Any, text: str, device: Any) -> _Encoded:
    import torch

    normalized = _normalize(classifier, str(text))
    enc = tokenizer(
        normalized,
        truncation=True,
        max_length=int(getattr(classifier, "max_length", None) or tokenizer.model_max_length),
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    offsets = [tuple(o) for o in enc.pop("offset_mapping")]
    special = list(enc.pop("special_tokens_mask"))
    units = map_tokens(normalized, offsets, special)
    ids = torch.tensor([enc.pop("input_ids")], device=device)
    extra = {k: torch.tensor([v], device=device) for k, v in enc.items()}
    extra.setdefault("attention_mask", torch.ones_like(ids))
    content = [i for i, u in enumerate(units.token_unit) if u >= 0]
    return _Encoded(normalized, ids, extra, units, content)


def _per_unit(values: np.ndarray, enc: _Encoded) -> list[float]:
    out = np.zeros(len(enc.units.spans), dtype=np.float64)
    for pos, u in enumerate(enc.units.token_unit):
        if u >= 0:
            out[u] += float(values[pos])
    return out.tolist()


def _probs(model: Any, ids: Any, extra: dict[str, Any]) -> Any:
    import torch

    n = ids.shape[0]
    batch = {k: (v if v.shape[0] == n else v.expand(n, -1)) for k, v in extra.items()}
    logits = model(input_ids=ids, **batch).logits
    return torch.softmax(logits.float(), dim=-1)


# ---------------------------------------------------------------------------- methods


def _ig(model: Any, tokenizer: Any, enc: _Encoded, target: int, n_steps: int) -> tuple[list[float], float]:
    import torch
    from captum.attr import LayerIntegratedGradients

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    baseline = enc.ids.clone()
    if enc.content:
        baseline[0, enc.content] = pad

    def forward(ids: torch.Tensor) -> torch.Tensor:
        return _probs(model, ids, enc.extra)

    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    attr, delta = lig.attribute(
        enc.ids,
        baselines=baseline,
        target=target,
        n_steps=n_steps,
        internal_batch_size=max(1, min(n_steps, 64)),
        return_convergence_delta=True,
    )
    per_token = attr.sum(dim=-1)[0].detach().float().cpu().numpy()
    return _per_unit(per_token, enc), float(delta.abs().max())


def _occlusion(model: Any, tokenizer: Any, enc: _Encoded, target: int) -> list[float]:
    import torch
    from captum.attr import FeatureAblation

    if not enc.content:
        return []
    content = torch.tensor(enc.content, device=enc.ids.device)

    def forward(content_ids: torch.Tensor) -> torch.Tensor:
        # Only content tokens are features; special tokens are put back unchanged.
        full = enc.ids.expand(content_ids.shape[0], -1).clone()
        full[:, content] = content_ids
        return _probs(model, full, enc.extra)

    inputs = enc.ids[:, content]
    mask = torch.tensor([[enc.units.token_unit[p] for p in enc.content]], device=enc.ids.device)
    attr = FeatureAblation(forward).attribute(
        inputs,
        baselines=_replacement_id(tokenizer),
        target=target,
        feature_mask=mask,
        perturbations_per_eval=16,
    )
    values = attr[0].detach().float().cpu().numpy()
    out = np.zeros(len(enc.units.spans), dtype=np.float64)
    for j, p in enumerate(enc.content):
        out[enc.units.token_unit[p]] = float(values[j])  # every token of a group holds the group's value
    return out.tolist()


# Eager copies of models whose attention implementation can't be switched in place (loaded once).
_EAGER_COPIES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_EAGER_LOCK = threading.Lock()


def _valid_attentions(out: Any, n_layers: int | None) -> bool:
    att = getattr(out, "attentions", None)
    return bool(att) and all(a is not None for a in att) and (n_layers is None or len(att) == n_layers)


@contextlib.contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    """Temporarily switch ``model`` to the eager attention implementation (SDPA returns no weights).

    transformers 5.x and late 4.x have ``set_attn_implementation``; earlier 4.x read
    ``config._attn_implementation`` (and their SDPA BERT falls back to eager when asked for weights).
    The original implementation is restored afterwards so serving keeps its fast path.
    """
    config = model.config
    before = getattr(config, "_attn_implementation", None)
    if before in (None, "eager"):
        yield
        return
    switched = False
    try:
        if hasattr(model, "set_attn_implementation"):
            with contextlib.suppress(Exception):
                model.set_attn_implementation("eager")
                switched = True
        if not switched:
            with contextlib.suppress(Exception):
                config._attn_implementation = "eager"
                switched = True
        yield
    finally:
        if switched:
            if hasattr(model, "set_attn_implementation"):
                try:
                    model.set_attn_implementation(before)
                except Exception:
                    config._attn_implementation = before
            else:
                config._attn_implementation = before


def _eager_copy(classifier: Any, model: Any) -> Any:
    """Reload the model with ``attn_implementation="eager"`` (last resort; cached per model)."""
    from transformers import AutoModelForSequenceClassification

    with _EAGER_LOCK:
        copy = _EAGER_COPIES.get(model)
        if copy is None:
            model_dir = getattr(classifier, "model_dir", None) or getattr(model, "name_or_path", None)
            if not model_dir:
                raise ExplainUnsupportedError("the model returns no attention weights and cannot be reloaded")
            copy = AutoModelForSequenceClassification.from_pretrained(
                model_dir, local_files_only=True, use_safetensors=True, attn_implementation="eager"
            ).to(next(model.parameters()).device)
            copy.eval()
            _EAGER_COPIES[model] = copy
        return copy


def _attention(classifier: Any, model: Any, enc: _Encoded) -> list[float]:
    import torch

    n_layers = getattr(model.config, "num_hidden_layers", None)
    with torch.no_grad():
        with _eager_attention(model):
            out = model(input_ids=enc.ids, **enc.extra, output_attentions=True)
        if not _valid_attentions(out, n_layers):
            out = _eager_copy(classifier, model)(input_ids=enc.ids, **enc.extra, output_attentions=True)
        if not _valid_attentions(out, n_layers):
            raise ExplainUnsupportedError(f"{type(model).__name__} returns no attention weights")
        seq = enc.ids.shape[1]
        eye = torch.eye(seq, device=enc.ids.device, dtype=torch.float64)
        rollout = eye
        for layer in out.attentions:
            a = layer[0].double().mean(dim=0) + eye  # average heads, add the residual (identity)
            a = a / a.sum(dim=-1, keepdim=True)
            rollout = a @ rollout
        cls_row = rollout[0].cpu().numpy()
    values = np.array(_per_unit(cls_row, enc))
    total = values.sum()
    return (values / total).tolist() if total > 0 else values.tolist()


# ---------------------------------------------------------------------------- API


def _target_index(classifier: Any, target: str | None) -> int | None:
    if target is None:
        return None
    labels = [str(x) for x in classifier.labels]
    if str(target) not in labels:
        raise ValueError(f"unknown target label {target!r}; the model's labels are {labels}")
    return labels.index(str(target))


def explain(
    classifier: Any,
    texts: list[str],
    *,
    method: str = "ig",
    target: str | None = None,
    n_steps: int = 32,
) -> list[Explanation]:
    """Explain the classifier's decision on each text.

    Args:
        classifier: A :class:`modelyard.models.text_classifier.Classifier` (anything with ``model``, a fast
            ``tokenizer``, ``labels``, ``max_length`` and ``device``).
        texts: The texts (a list, not a single string).
        method: One of :data:`METHODS`.
        target: Label to explain; default: each text's predicted label.
        n_steps: Integration steps for ``ig``.

    Returns:
        One :class:`Explanation` per text, in order.

    Raises:
        ValueError: Unknown method or target, or a bad ``n_steps``.
        ExplainUnsupportedError: The classifier has no PyTorch model / fast tokenizer.

    Example:
        >>> ex = explain(modelyard.load("runs/x"), ["a great film"], method="occlusion")[0]
        >>> ex.ranked()[0]
        ('great', 0.41)
    """
    import torch

    if isinstance(texts, str):
        raise TypeError("explain expects a list of texts, not a single string")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if n_steps < 1:
        raise ValueError("n_steps must be >= 1")
    target_idx = _target_index(classifier, target)
    model, tokenizer = _require_internals(classifier)
    labels = [str(x) for x in classifier.labels]
    device = getattr(classifier, "device", None) or next(model.parameters()).device
    results: list[Explanation] = []
    with _model_lock(classifier):
        was_training = model.training
        model.eval()
        try:
            for text in texts:
                enc = _encode(classifier, tokenizer, text, device)
                with torch.no_grad():
                    probs = _probs(model, enc.ids, enc.extra)[0].double().cpu().numpy()
                pred = int(probs.argmax())
                t = pred if target_idx is None else target_idx
                delta: float | None = None
                if method == "ig":
                    attributions, delta = _ig(model, tokenizer, enc, t, n_steps)
                elif method == "occlusion":
                    attributions = _occlusion(model, tokenizer, enc, t)
                else:
                    attributions = _attention(classifier, model, enc)
                results.append(
                    Explanation(
                        text=str(text),
                        label=labels[pred],
                        target=labels[t],
                        scores={lab: float(p) for lab, p in zip(labels, probs, strict=True)},
                        method=method,
                        units=[enc.normalized[s:e] for s, e in enc.units.spans],
                        attributions=[float(a) for a in attributions],
                        normalized_text=enc.normalized,
                        spans=list(enc.units.spans),
                        truncated=enc.units.truncated,
                        convergence_delta=delta,
                    )
                )
        finally:
            model.train(was_training)
    return results
