"""Verbalizer scoring: classify by how likely a causal LM finds each label word right after a prompt.

For a prompt ``p`` and a verbalizer word ``w``, ``log P(w | p)`` is the sum of the log-probabilities
of ``w``'s tokens, each given the prompt and the tokens before it. Probabilities over the labels
then follow from a softmax, so the prediction is constrained to the label set by construction.

Tokenization (one documented rule, used everywhere):

* the prompt is ``prefix + tokenizer(p, add_special_tokens=False)``, where ``prefix`` is whatever the
  tokenizer puts *before* a text when ``add_special_tokens=True`` (e.g. a BOS token; nothing for
  SmolLM2); trailing special tokens such as an EOS are never appended;
* the word is joined with a separator ``sep`` = ``" "``, or ``""`` when the prompt is empty or ends
  with whitespace (so ``"Answer:"`` + ``" positive"`` and ``"…assistant\\n"`` + ``"positive"``);
* the continuation ids are what tokenizing ``p + sep + w`` adds after the prompt's own ids; in the
  rare case that the tokenizer merges across the boundary (the joint ids do not start with the
  prompt's ids), they are ``tokenizer(sep + w, add_special_tokens=False)`` instead.

Cost: the prompt's last position already predicts the first token of every word, so a prompt whose
words are all single tokens needs ONE forward pass, whatever the number of words; a multi-token word
adds one row ``prompt + word[:-1]``. Rows are left-padded (with explicit ``position_ids``) and only
the last few positions' logits are computed (``logits_to_keep``), so memory stays small even with a
49k vocabulary.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from modelyard.errors import ConfigError


def check_verbalizers(verbalizers: Mapping[str, Sequence[str]], labels: Sequence[str] | None = None) -> None:
    """Validate a ``{label: [words]}`` mapping.

    Raises:
        ConfigError: empty mapping, a label without words, an empty word, or (when ``labels`` is
            given) keys that differ from ``labels``.
    """
    if not isinstance(verbalizers, Mapping) or not verbalizers:
        raise ConfigError("verbalizers must map each label to a list of words, e.g. {fresh: [positive]}")
    for label, words in verbalizers.items():
        if isinstance(words, str) or not isinstance(words, Sequence) or not words:
            raise ConfigError(f"verbalizers['{label}'] must be a non-empty list of words, e.g. [positive, good]")
        for w in words:
            if not isinstance(w, str) or not w.strip():
                raise ConfigError(f"verbalizers['{label}'] contains an empty or non-text word: {w!r}")
    if labels is not None:
        missing = [lb for lb in labels if lb not in verbalizers]
        extra = [lb for lb in verbalizers if lb not in labels]
        if missing or extra:
            problems = ([f"missing {missing}"] if missing else []) + ([f"unknown {extra}"] if extra else [])
            raise ConfigError(f"verbalizers must have exactly the labels {list(labels)}: " + "; ".join(problems))


def special_prefix(tokenizer: Any) -> list[int]:
    """Token ids the tokenizer puts before a text when ``add_special_tokens=True`` (e.g. ``[bos]``)."""
    with_sp = list(tokenizer("x", add_special_tokens=True)["input_ids"])
    without = list(tokenizer("x", add_special_tokens=False)["input_ids"])
    for start in range(len(with_sp) - len(without) + 1):
        if with_sp[start : start + len(without)] == without:
            return with_sp[:start]
    return []


def separator(prompt: str) -> str:
    """``" "`` between a prompt and a verbalizer word, or ``""`` when the prompt ends with whitespace."""
    return "" if not prompt or prompt[-1].isspace() else " "


def continuation_ids(tokenizer: Any, prompt: str, word: str, prompt_ids: list[int] | None = None) -> list[int]:
    """Token ids of ``word`` as a continuation of ``prompt`` (see the module docstring for the rule)."""
    if prompt_ids is None:
        prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    sep = separator(prompt)
    joint = list(tokenizer(prompt + sep + word, add_special_tokens=False)["input_ids"])
    n = len(prompt_ids)
    if len(joint) > n and joint[:n] == prompt_ids:
        return joint[n:]
    return list(tokenizer(sep + word, add_special_tokens=False)["input_ids"])


def word_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    words: Sequence[str],
    *,
    batch_size: int = 8,
    normalize: Literal["mean", "sum"] = "mean",
    add_special_tokens: bool = True,
    reuse_prefix: bool = True,
) -> np.ndarray:
    """``log P(word | prompt)`` for every prompt and word, shape ``(len(prompts), len(words))``, float64.

    Args:
        model: a causal LM returning ``.logits`` (``transformers`` ``*ForCausalLM``), on any device.
        tokenizer: its tokenizer (fast tokenizers recommended).
        prompts: texts ending right before the answer.
        words: candidate continuations.
        batch_size: rows per forward pass.
        normalize: ``"sum"`` of the token log-probs, or their ``"mean"`` (divided by the token count,
            so a long word is not penalised for its length).
        add_special_tokens: prepend the tokenizer's leading special tokens (e.g. BOS); pass ``False``
            for prompts that already contain them (chat-template output).
        reuse_prefix: when all prompts share at least :data:`MIN_SHARED_PREFIX` leading tokens (the
            instructions and few-shot examples), run them once and reuse their key/value cache.
    """
    import torch

    if normalize not in ("mean", "sum"):
        raise ConfigError(f"normalize must be 'mean' or 'sum', not {normalize!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
    n, n_words = len(prompts), len(words)
    out = np.zeros((n, n_words), dtype=np.float64)
    if n == 0 or n_words == 0:
        return out

    prefix = special_prefix(tokenizer) if add_special_tokens else []
    prompt_ids = [list(x) for x in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    joint_texts = [p + separator(p) + w for p in prompts for w in words]
    joint_ids = tokenizer(joint_texts, add_special_tokens=False)["input_ids"]

    # rows: input ids -> list of (prompt index, word index, continuation ids); identical rows are shared.
    rows: dict[tuple[int, ...], list[tuple[int, int, list[int]]]] = {}
    for i, prompt in enumerate(prompts):
        p_ids = prompt_ids[i]
        full = prefix + p_ids
        if not full:
            raise ConfigError(
                f"prompt {i} is empty and the tokenizer adds no BOS token, so nothing predicts the first word"
            )
        for j, word in enumerate(words):
            joint = list(joint_ids[i * n_words + j])
            if len(joint) > len(p_ids) and joint[: len(p_ids)] == p_ids:
                cont = joint[len(p_ids) :]
            else:
                cont = continuation_ids(tokenizer, prompt, word, p_ids)
            if not cont:
                raise ConfigError(f"verbalizer word {word!r} tokenizes to nothing")
            rows.setdefault(tuple(full + cont[:-1]), []).append((i, j, cont))

    device = _model_device(model)
    params = inspect.signature(model.forward).parameters
    keep_arg = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    pad_id = _pad_id(tokenizer)
    row_list = list(rows.items())
    order = sorted(range(len(row_list)), key=lambda r: -len(row_list[r][0]))
    max_keep = max(len(cont) for _, targets in row_list for _, _, cont in targets)
    shared = _shared_prefix_len([ids for ids, _ in row_list], max_keep) if reuse_prefix else 0
    # transformers 5.x names the key/value cache argument and output `cache` (earlier: `past_key_values`).
    cache_arg = next((k for k in ("cache", "past_key_values") if k in params), None)
    use_prefix = shared >= MIN_SHARED_PREFIX and cache_arg is not None and {"use_cache", "position_ids"} <= set(params)
    with torch.inference_mode():
        prefix_cache = None
        if use_prefix:
            # The instructions, chat header and few-shot examples are the same for every prompt: run
            # them once and start every batch from their key/value cache (a k-shot prompt then costs
            # about as much as a zero-shot one). Pad tokens sit between the prefix and each row's
            # suffix, masked out; positions continue from the prefix.
            first = torch.as_tensor([row_list[0][0][:shared]], dtype=torch.long, device=device)
            prefix_out = model(input_ids=first, use_cache=True)
            prefix_cache = prefix_out.get("cache", prefix_out.get("past_key_values"))
        start_at = shared if prefix_cache is not None else 0
        for start in range(0, len(order), batch_size):
            batch = [row_list[r] for r in order[start : start + batch_size]]
            width = max(len(ids) for ids, _ in batch) - start_at
            keep = max(len(cont) for _, targets in batch for _, _, cont in targets)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (ids, _) in enumerate(batch):  # left padding: every row ends at the last column
                tail = ids[start_at:]
                input_ids[b, width - len(tail) :] = torch.as_tensor(tail, dtype=torch.long)
                mask[b, width - len(tail) :] = 1
            kwargs: dict[str, Any] = {"input_ids": input_ids.to(device)}
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(batch))
                kwargs[cache_arg] = cache
                kwargs["use_cache"] = True
                kwargs["attention_mask"] = torch.cat(
                    [torch.ones((len(batch), start_at), dtype=torch.long), mask], 1
                ).to(device)
                kwargs["position_ids"] = (start_at + (mask.cumsum(-1) - 1).clamp(min=0)).to(device)
            else:
                kwargs["attention_mask"] = mask.to(device)
                if "position_ids" in params:  # positions start at 0 on each row's first real token
                    kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
                if "use_cache" in params:
                    kwargs["use_cache"] = False
            if keep_arg is not None:
                kwargs[keep_arg] = keep
            logits = model(**kwargs).logits[:, -keep:, :]
            logp = torch.log_softmax(logits.double(), dim=-1).cpu()  # float64: exact sums, tiny slice
            for b, (_, targets) in enumerate(batch):
                for i, j, cont in targets:
                    c = len(cont)
                    # position keep-c+t predicts cont[t]: the row is prompt + cont[:-1], so its last c
                    # positions are the prompt's last token followed by cont[:-1].
                    picked = logp[b, keep - c + torch.arange(c), torch.as_tensor(cont, dtype=torch.long)]
                    total = float(picked.sum())
                    out[i, j] = total / c if normalize == "mean" else total
    return out


MIN_SHARED_PREFIX = 16
"""Shared leading tokens from which :func:`word_logprobs` runs the prefix once and reuses its cache."""


def _shared_prefix_len(rows: Sequence[Sequence[int]], keep: int) -> int:
    """Length of the token prefix all ``rows`` share, leaving at least ``keep`` tokens of the shortest row."""
    if not rows:
        return 0
    first = rows[0]
    n = min(len(r) for r in rows) - keep
    for r in rows[1:]:
        i = 0
        while i < n and r[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def score_labels(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    verbalizers: Mapping[str, Sequence[str]],
    *,
    batch_size: int = 8,
    normalize: Literal["mean", "sum"] = "mean",
    add_special_tokens: bool = True,
) -> np.ndarray:
    """Label probabilities from verbalizer likelihoods.

    For each prompt, each label's score is ``logsumexp`` over its words of ``log P(word | prompt)``
    (:func:`word_logprobs`; with ``normalize="mean"`` each word's log-prob is divided by its token
    count), i.e. the label's words pool their probability mass; a softmax over the labels gives
    the probabilities.

    Args:
        model: a causal LM (``transformers`` ``*ForCausalLM``) on any device.
        tokenizer: its tokenizer.
        prompts: one prompt per text, each ending right before the answer.
        verbalizers: ``{label: [word, ...]}``, e.g. ``{"fresh": ["positive", "good"], "rotten": ["negative"]}``.
        batch_size: rows per forward pass.
        normalize: ``"mean"`` or ``"sum"`` of each word's token log-probs.
        add_special_tokens: prepend the tokenizer's leading special tokens (``False`` for chat prompts).

    Returns:
        Probabilities, shape ``(len(prompts), len(verbalizers))``, float64, rows summing to 1, columns
        in the order of ``verbalizers``.

    Raises:
        ConfigError: invalid verbalizers or ``normalize``.
    """
    check_verbalizers(verbalizers)
    labels = list(verbalizers)
    words: list[str] = []
    owner: list[int] = []
    for k, label in enumerate(labels):
        for w in verbalizers[label]:
            words.append(w)
            owner.append(k)
    lp = word_logprobs(
        model,
        tokenizer,
        prompts,
        words,
        batch_size=batch_size,
        normalize=normalize,
        add_special_tokens=add_special_tokens,
    )
    return label_probs(lp, np.asarray(owner), len(labels))


def label_probs(word_lp: np.ndarray, owner: np.ndarray, n_labels: int) -> np.ndarray:
    """Combine word log-probs ``(n, n_words)`` into label probabilities ``(n, n_labels)``.

    ``owner[j]`` is the label index of word ``j``; a label's words are combined with logsumexp and
    the labels with a softmax.
    """
    n = word_lp.shape[0]
    scores = np.full((n, n_labels), -np.inf)
    for k in range(n_labels):
        cols = word_lp[:, owner == k]
        if cols.shape[1]:
            top = cols.max(axis=1, keepdims=True)
            scores[:, k] = (top + np.log(np.exp(cols - top).sum(axis=1, keepdims=True)))[:, 0]
    scores -= scores.max(axis=1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs


def _model_device(model: Any) -> Any:
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0
