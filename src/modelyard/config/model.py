"""The `model` section: the base of every kind's settings, and the sub-sections kinds share."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    model_validator,
)

from modelyard.config._base import _Stage
from modelyard.errors import ConfigError
from modelyard.kinds import get_kind


class OpenAIBackendConfig(_Stage):
    """An OpenAI-compatible completions endpoint that scores the verbalizers (instead of a local LM)."""

    base_url: str = Field(..., description="e.g. `http://127.0.0.1:8080/v1` (llama.cpp server, vLLM, …).")
    model: str = Field(..., description="Model name sent in the request.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (never put keys in recipes)."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout in seconds.")


class PromptConfig(_Stage):
    """Prompt-based (zero/few-shot) classification with a generative LM (`model.type: prompt`)."""

    template: str | None = Field(
        None,
        description="Jinja2 prompt with {{ text }}, {{ labels }}, {{ label_words }}, {{ examples }}; null = the "
        "built-in template. The prompt ends where the answer (a verbalizer) begins.",
    )
    template_file: str | None = Field(None, description="A Jinja2 template file instead of `template`.")
    verbalizers: dict[str, list[str]] | None = Field(
        None,
        description="Words that mean each label, e.g. {fresh: [positive], rotten: [negative]}; several words "
        "per label are pooled; null = the label names themselves.",
    )
    shots: int = Field(0, ge=0, le=64, description="Labelled examples put in the prompt (0 = zero-shot).")
    shot_selection: Literal["random", "nearest"] = Field(
        "random", description="`random` (seeded, the same for every text) or `nearest` (MiniLM similarity)."
    )
    shot_seed: int = Field(42, description="Seed of the shot selection.")
    chat: bool = Field(False, description="Wrap the prompt in the model's chat template.")
    calibrate: bool = Field(
        False,
        description="Contextual calibration (Zhao et al. 2021): divide the label probabilities by those the same "
        "prompt gives content-free texts ('N/A', '', '[MASK]'), which removes the majority-label and recency "
        "bias of few-shot prompts.",
    )
    batch_size: int = Field(8, ge=1, description="Prompts scored per forward pass.")
    backend: Literal["local", "openai"] = Field("local", description="`local` LM, or an `openai`-compatible server.")
    openai: OpenAIBackendConfig | None = Field(None, description="Endpoint settings for `backend: openai`.")

    @model_validator(mode="after")
    def _checks(self) -> PromptConfig:
        if self.template is not None and self.template_file is not None:
            raise ValueError("set model.prompt.template or model.prompt.template_file, not both")
        if self.backend == "openai" and self.openai is None:
            raise ValueError("model.prompt.backend 'openai' needs a model.prompt.openai section (base_url, model)")
        if self.verbalizers is not None:
            empty = [label for label, words in self.verbalizers.items() if not [w for w in words if w.strip()]]
            if empty:
                raise ValueError(f"model.prompt.verbalizers: label(s) {empty} have no words")
        return self


class TokenizerConfig(_Stage):
    """A tokenizer trained on the training texts (`tokenizers` library), for models trained from scratch."""

    type: Literal["char", "wordpiece", "bpe"] = Field(
        "char",
        description="`char`: one token per character; `wordpiece`: BERT-style (CJK characters + English "
        "word pieces); `bpe`: sub-words of whitespace-separated words (pair with data.clean.chinese.segment: jieba).",
    )
    vocab_size: int = Field(8000, ge=16, le=500_000, description="Largest vocabulary (special tokens included).")
    min_frequency: int = Field(2, ge=1, description="Tokens seen fewer times than this are left out ([UNK]).")
    lowercase: bool = Field(True, description="Lower-case inside the tokenizer.")


class ArchConfig(_Stage):
    """Size of a model trained from scratch (textcnn, bilstm, transformer-encoder)."""

    embedding_dim: int = Field(128, ge=4, le=4096, description="Token embedding size (textcnn, bilstm).")
    hidden_size: int = Field(128, ge=4, le=4096, description="LSTM hidden size per direction / transformer width.")
    num_layers: int = Field(2, ge=1, le=48, description="LSTM or transformer layers.")
    num_heads: int = Field(4, ge=1, le=64, description="Attention heads (transformer-encoder).")
    intermediate_size: int | None = Field(
        None, ge=4, description="Transformer feed-forward size; null = 4 × hidden_size."
    )
    kernel_sizes: list[int] = Field([2, 3, 4], min_length=1, description="TextCNN convolution widths.")
    num_filters: int = Field(128, ge=1, description="TextCNN filters per width.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout inside the model (embeddings / features).")

    @model_validator(mode="after")
    def _heads(self) -> ArchConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.arch.hidden_size ({self.hidden_size}) must be divisible by model.arch.num_heads "
                f"({self.num_heads})"
            )
        return self


class TfidfConfig(_Stage):
    """The classical baseline (`model.type: tfidf-logreg`): TF-IDF n-grams + SGD logistic regression."""

    analyzer: Literal["char", "word"] = Field(
        "char", description="`char` n-grams (no segmentation needed) or `word` n-grams (whitespace/jieba words)."
    )
    ngram_min: int = Field(1, ge=1, le=10, description="Shortest n-gram.")
    ngram_max: int = Field(3, ge=1, le=10, description="Longest n-gram.")
    min_df: int = Field(2, ge=1, description="Ignore n-grams found in fewer training texts than this.")
    max_features: int | None = Field(300_000, ge=10, description="Keep the most frequent n-grams; null = all.")
    sublinear_tf: bool = Field(True, description="Use 1 + log(tf) instead of raw counts.")
    alpha: float = Field(1e-5, gt=0, description="L2 regularisation strength of SGDClassifier.")
    max_iter: int = Field(30, ge=1, description="Passes of SGD over the training data.")
    word_ngram_max: int | None = Field(
        None,
        ge=1,
        le=10,
        description="With `analyzer: char`: also add jieba word 1..N-grams (a feature union of the two TF-IDF "
        "blocks, each L2-normalised and scaled by 1/sqrt(2)); null = characters only.",
    )
    nb_weighting: bool = Field(
        False,
        description="NB-weighted features (NBSVM, Wang & Manning 2012): scale each feature by its log-count "
        "ratio between the classes (one-vs-rest for more than two classes) before the logistic regression.",
    )

    @model_validator(mode="after")
    def _ngrams(self) -> TfidfConfig:
        if self.ngram_max < self.ngram_min:
            raise ValueError(f"model.tfidf.ngram_max ({self.ngram_max}) is below ngram_min ({self.ngram_min})")
        if self.word_ngram_max is not None and self.analyzer != "char":
            raise ValueError("model.tfidf.word_ngram_max adds word n-grams to character n-grams: set analyzer: char")
        return self


class LoraSettings(_Stage):
    """LoRA adapters (`model.finetune: lora`, peft): only low-rank updates of the listed layers and the head train."""

    r: int = Field(8, ge=1, le=1024, description="Rank of the low-rank update matrices.")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        None,
        description="Names of the linear layers that get adapters (e.g. [q_proj, k_proj, v_proj, o_proj] for "
        "Gemma, [query, value] for BERT); null = peft's default for the architecture.",
    )


class EnsembleConfig(_Stage):
    """Settings of `model.type: ensemble` (weights are always fitted on the validation split)."""

    selection_rounds: int = Field(
        20,
        ge=1,
        description="Rounds of greedy ensemble selection with replacement (Caruana et al. 2004): each round adds "
        "the member that most improves validation accuracy; weights = picks / rounds.",
    )


class ModelSettings(_Stage):
    """The recipe's ``model`` section: one settings model per model kind, chosen by ``type``.

    Each kind (``modelyard.kinds``) declares a subclass with ``type: Literal["<name>"]`` and only the
    keys it uses, so a key that belongs to another kind is an error naming the kind. The recipe validates
    the section with the class of the kind its ``type`` names (a discriminated union whose members are
    registered at run time, plugins included).
    """

    type: str = Field(
        "hf-encoder",
        description="Model kind: `hf-encoder` (fine-tuned encoder), `prompt` (zero/few-shot generative LM), "
        "from scratch `textcnn`, `bilstm`, `transformer-encoder`, or `tfidf-logreg`; `ensemble` (a weighted "
        "average of `members`); for images `cnn-small`, `resnet-mini` or `vit-tiny`; or a plugin's kind.",
    )


def validate_model_settings(value: Any, where: str = "model") -> ModelSettings:
    """Validate one ``model`` section (a mapping or settings object) with the settings of its kind."""
    if isinstance(value, ModelSettings):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"`{where}` must be a mapping with a `type` key (e.g. {{type: hf-encoder}})")
    name = value.get("type", "hf-encoder")
    try:
        kind = get_kind(str(name))
    except ConfigError as err:
        raise ValueError(str(err)) from None
    return kind.settings.model_validate({**value, "type": name})


def default_model_settings() -> ModelSettings:
    """The ``model`` section of a recipe that has none: a fine-tuned ``hf-encoder`` with its defaults."""
    return validate_model_settings({"type": "hf-encoder"})
