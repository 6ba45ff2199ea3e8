"""Prompt templates (Jinja2) and few-shot example selection.

A template is rendered with these variables:

* ``text`` — the text to classify (already cleaned and, if needed, truncated);
* ``labels`` — the label names, in model order (e.g. ``["fresh", "rotten"]``);
* ``label_words`` — the first verbalizer word of each label, same order (e.g. ``["positive", "negative"]``);
  these are the words the model is scored on, so they are usually what the prompt should mention;
* ``examples`` — the few-shot examples, a list of ``{"text", "label", "label_word"}`` dicts (empty
  for zero-shot).

The rendered prompt should end right before the answer (e.g. ``"...\\nAnswer:"``); trailing
whitespace is removed, and the scored word is joined with a space (see :mod:`modelyard.llm.scoring`).
Templates run in Jinja2's sandbox (a model directory from elsewhere cannot run code through its
template) with ``StrictUndefined`` (a misspelled variable is an error, not an empty string) and
``trim_blocks``/``lstrip_blocks`` (a ``{% ... %}`` line leaves no blank line behind).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from modelyard.errors import ConfigError
from modelyard.llm.backbones import resolve_backbone

VARIABLES = ("text", "labels", "label_words", "examples")

DEFAULT_TEMPLATE = """\
{% if examples %}
Here are examples of texts and their categories ({{ label_words | join(", ") }}):

{% for ex in examples %}
Text: {{ ex.text }}
Answer: {{ ex.label_word }}

{% endfor %}
{% endif %}
Is the following text {{ label_words[:-1] | join(", ") }} or {{ label_words[-1] }}? Answer with one word.

Text: {{ text }}
Answer:"""
"""Zero- and few-shot default: works for sentiment (``positive``/``negative``) and topics alike.

Without examples it renders::

    Is the following text positive or negative? Answer with one word.

    Text: <text>
    Answer:

Use it with ``chat: true`` on instruct models: :func:`wrap_chat` then repeats ``Answer:`` at the
start of the assistant's turn. Zero-shot on 200 Rotten Tomatoes snippets with SmolLM2-135M-Instruct
and verbalizers ``{fresh: [positive], rotten: [negative]}``: 0.800 accuracy with chat, 0.675 without
(it beat a ``Review: … Sentiment:`` prompt, a ``Did the reviewer like the movie? yes/no`` prompt and
other verbalizers, chosen on a separate 200-snippet sample).
"""

ZERO_SHOT_TEMPLATE = DEFAULT_TEMPLATE
"""The default template, rendered with no examples."""

FEW_SHOT_TEMPLATE = DEFAULT_TEMPLATE
"""The default template, rendered with examples (listed before the question, one ``Text/Answer`` pair each)."""


def default_verbalizers(labels: Sequence[str]) -> dict[str, list[str]]:
    """``{label: [label]}``: each label name is its own verbalizer word (fine for topic names)."""
    return {label: [label] for label in labels}


def _environment() -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True
    )


def _first_line_of(ast: Any, name: str) -> int | None:
    from jinja2 import nodes

    lines = [n.lineno for n in ast.find_all(nodes.Name) if n.name == name and n.ctx == "load"]
    return min(lines) if lines else None


def _template_line(err: BaseException) -> int | None:
    """Line of the template where a render error happened (Jinja rewrites tracebacks to template lines)."""
    line = None
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class PromptTemplate:
    """A validated Jinja2 prompt template.

    Args:
        source: the template text.
        name: how errors name it (a file path, or e.g. ``"model.template"``).

    Raises:
        ConfigError: a Jinja syntax error, an unknown variable, or no ``{{ text }}``; the message
            names the template and the line.
    """

    def __init__(self, source: str, *, name: str = "template") -> None:
        import jinja2
        from jinja2 import meta

        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"prompt template {name} is empty; it needs at least {{{{ text }}}}")
        self.source = source
        self.name = name
        env = _environment()
        try:
            ast = env.parse(source)
        except jinja2.TemplateSyntaxError as err:
            raise ConfigError(f"prompt template {name}, line {err.lineno}: Jinja syntax error: {err.message}") from None
        used = meta.find_undeclared_variables(ast)
        unknown = sorted(used - set(VARIABLES))
        if unknown:
            var = unknown[0]
            raise ConfigError(
                f"prompt template {name}, line {_first_line_of(ast, var)}: unknown variable '{var}'; "
                f"available: {', '.join(VARIABLES)}"
            )
        if "text" not in used:
            raise ConfigError(f"prompt template {name} never uses {{{{ text }}}}; put it where the text goes")
        self.uses_examples = "examples" in used
        self._template = env.from_string(source)

    @classmethod
    def from_spec(
        cls, template: str | None = None, template_file: str | Path | None = None, *, base_dir: Path | None = None
    ) -> PromptTemplate:
        """The template given inline, or read from a file, or :data:`DEFAULT_TEMPLATE` when neither is given.

        Args:
            template: inline Jinja2 source.
            template_file: a UTF-8 file holding the source (relative to ``base_dir`` when given).
            base_dir: folder that a relative ``template_file`` is relative to.

        Raises:
            ConfigError: both given, an unreadable file, or an invalid template.
        """
        if template is not None and template_file is not None:
            raise ConfigError("give either a template or a template_file, not both")
        if template_file is not None:
            path = Path(template_file).expanduser()
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir) / path
            try:
                source = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise ConfigError(f"cannot read the prompt template file {path}: {err}") from None
            return cls(source, name=str(path))
        if template is not None:
            return cls(template, name="template")
        return cls(DEFAULT_TEMPLATE, name="default template")

    def render(
        self,
        text: str,
        labels: Sequence[str],
        label_words: Sequence[str] | None = None,
        examples: Sequence[Mapping[str, Any]] = (),
    ) -> str:
        """Render the prompt for one text; trailing whitespace is removed.

        Args:
            text: the text to classify.
            labels: label names.
            label_words: the first verbalizer word of each label (default: the label names).
            examples: few-shot examples as ``{"text", "label", "label_word"}`` dicts.

        Raises:
            ConfigError: the template fails on these values (e.g. a missing attribute); names the line.
        """
        import jinja2

        words = list(labels) if label_words is None else list(label_words)
        try:
            out = self._template.render(
                text=text, labels=list(labels), label_words=words, examples=[dict(ex) for ex in examples]
            )
        except (jinja2.TemplateError, TypeError, ValueError, IndexError, KeyError, AttributeError) as err:
            msg = getattr(err, "message", None) or str(err)
            raise ConfigError(f"prompt template {self.name}, line {_template_line(err)}: {msg}") from None
        return out.rstrip()

    def __repr__(self) -> str:
        return f"PromptTemplate(name={self.name!r})"


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` can format chat messages."""
    return bool(getattr(tokenizer, "chat_template", None))


def wrap_chat(tokenizer: Any, prompt: str, *, system: str | None = None, prime: bool = True) -> str:
    """Wrap a rendered prompt as the user message of a chat, ending inside the assistant's turn.

    Uses ``tokenizer.apply_chat_template(..., add_generation_prompt=True, tokenize=False)``; the
    result already contains the model's special tokens, so score it with ``add_special_tokens=False``.

    With ``prime`` (default), when the prompt's last line is an answer cue ending with ``:`` (such as
    ``Answer:``), that line is repeated at the start of the assistant's turn, so the next word the
    model writes is the answer itself rather than a preamble ("Sure! The text is…"). On Rotten
    Tomatoes with SmolLM2-135M-Instruct this took zero-shot accuracy from 0.70 to 0.775 (200-snippet dev sample).

    Raises:
        ConfigError: the tokenizer has no chat template.
    """
    if not has_chat_template(tokenizer):
        raise ConfigError("chat: true needs a tokenizer with a chat template, and this one has none; set chat: false")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    wrapped = str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    head, newline, last = prompt.rpartition("\n")
    cue = last.strip()
    if prime and newline and head.strip() and cue.endswith(":") and len(cue) <= 40:
        wrapped += cue
    return wrapped


def select_shots(
    pool_texts: Sequence[str],
    pool_labels: Sequence[str],
    query_texts: Sequence[str],
    k: int,
    method: Literal["random", "nearest"] = "random",
    seed: int = 0,
    embedder: Callable[[list[str]], np.ndarray] | None = None,
    *,
    pool_embeddings: np.ndarray | None = None,
) -> list[list[int]]:
    """Pick ``k`` few-shot examples from a labelled pool for each query.

    * ``random``: one seeded order of the pool, interleaving the labels round-robin (labels in a
      seeded order, texts shuffled within each label), so the first ``n_labels`` shots cover every
      label and larger ``k`` stays balanced; every query gets the first ``k`` of that order.
    * ``nearest``: the ``k`` pool texts with the highest cosine similarity of embeddings, ordered
      from least to most similar (the most similar example sits right before the query); ties go to
      the lower pool index.

    A pool text equal to the query (exact match) is never chosen for it; such a query gets the next
    candidate instead (and fewer than ``k`` only if the pool runs out).

    Args:
        pool_texts: labelled example texts.
        pool_labels: their labels.
        query_texts: texts to classify.
        k: shots per query (0 gives empty lists).
        method: ``random`` or ``nearest``.
        seed: seed of the ``random`` order.
        embedder: ``texts -> (n, d) array`` for ``nearest`` (default: :func:`minilm_embedder`).
        pool_embeddings: precomputed ``embedder(pool_texts)``, to avoid re-embedding the pool.

    Returns:
        For each query, a list of indices into the pool.

    Raises:
        ConfigError: unknown method, negative ``k``, ``k`` larger than the pool, or mismatched lengths.
    """
    n_pool = len(pool_texts)
    if len(pool_labels) != n_pool:
        raise ConfigError(f"the shot pool has {n_pool} texts but {len(pool_labels)} labels")
    if method not in ("random", "nearest"):
        raise ConfigError(f"shots.method must be 'random' or 'nearest', not {method!r}")
    if k < 0:
        raise ConfigError(f"shots.k must be 0 or more, not {k}")
    if k == 0:
        return [[] for _ in query_texts]
    if k > n_pool:
        raise ConfigError(f"shots.k is {k} but the shot pool has only {n_pool} examples; lower shots.k")
    pool_texts = [str(t) for t in pool_texts]
    if method == "random":
        order = _round_robin_order(list(map(str, pool_labels)), seed)
        return [[i for i in order if pool_texts[i] != q][:k] for q in map(str, query_texts)]

    if embedder is None and pool_embeddings is None:
        embedder = minilm_embedder()
    pool_emb = _unit_rows(np.asarray(pool_embeddings if pool_embeddings is not None else embedder(pool_texts)))
    if len(query_texts) == 0:
        return []
    if embedder is None:
        raise ConfigError("nearest shots need an embedder for the queries")
    query_emb = _unit_rows(np.asarray(embedder([str(q) for q in query_texts])))
    if pool_emb.shape[0] != n_pool or query_emb.shape[1] != pool_emb.shape[1]:
        raise ConfigError("the embedder returned arrays of the wrong shape")
    sims = query_emb @ pool_emb.T
    out = []
    for qi, q in enumerate(map(str, query_texts)):
        ranked = np.argsort(-sims[qi], kind="stable")
        chosen = [int(i) for i in ranked if pool_texts[i] != q][:k]
        out.append(chosen[::-1])
    return out


def _round_robin_order(labels: list[str], seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, lb in enumerate(labels):
        by_label.setdefault(lb, []).append(i)
    names = sorted(by_label)
    names = [names[i] for i in rng.permutation(len(names))]
    queues = [[by_label[n][i] for i in rng.permutation(len(by_label[n]))] for n in names]
    order: list[int] = []
    depth = 0
    while len(order) < len(labels):
        order.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return order


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ConfigError(f"the embedder must return a 2-D array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def minilm_embedder(
    *, batch_size: int = 32, max_length: int = 256, device: str = "cpu"
) -> Callable[[list[str]], np.ndarray]:
    """An embedder using the bundled all-MiniLM-L6-v2: mean pooling over the attention mask, L2-normalised.

    The model is loaded on the first call. Returns ``texts -> (n, 384) float32 array``.

    Raises:
        ModelError: the bundled MiniLM package is not installed (when first called).
    """
    state: dict[str, Any] = {}

    def embed(texts: list[str]) -> np.ndarray:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if not state:
            path = resolve_backbone("bundled:minilm-l6", Path("."))
            state["tok"] = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            model = AutoModel.from_pretrained(
                path, local_files_only=True, trust_remote_code=False, use_safetensors=True
            )
            state["model"] = model.to(device).eval()
        tok, model = state["tok"], state["model"]
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = tok(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(device)
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(mean, dim=-1).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 384), dtype=np.float32)

    return embed
