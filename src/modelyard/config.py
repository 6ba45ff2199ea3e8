"""The recipe: one typed pydantic model per stage, loaded from YAML with ``key=value`` overrides.

The field descriptions below are the single source of truth for the annotated starter recipe
(``modelyard init``), the CLI help and the docs. Every model forbids unknown keys, so a typo
fails at load time with the key named and the closest valid key suggested.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from modelyard.errors import ConfigError
from modelyard.kinds import available_kinds, get_kind, kinds_for

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ChineseCleaningConfig(_Stage):
    """Chinese text handling (`data.clean.chinese`), applied identically at training and prediction time."""

    halfwidth: bool = Field(True, description="Full-width letters/digits/punctuation → half-width.")
    punctuation: bool = Field(True, description="Chinese punctuation (。，！？“”【】《》) → ASCII equivalents.")
    traditional_to_simplified: bool = Field(False, description="Convert Traditional to Simplified (OpenCC t2s).")
    max_repeat: int | None = Field(
        3, ge=1, description="Cap runs of one repeated character (好好好好好 → 好好好); null keeps them."
    )
    segment: Literal["none", "jieba"] = Field(
        "none",
        description="`jieba`: space-separate words (for word-level tokenizers / word n-grams); "
        "`none` keeps the text as is (character-level models).",
    )


class CleaningConfig(_Stage):
    """How texts are cleaned before splitting. Every drop is counted in ``data_report.json``."""

    unicode_nfkc: bool = Field(True, description="Unicode NFKC normalisation (full-width → half-width).")
    normalize_whitespace: bool = Field(True, description="Collapse runs of whitespace and strip ends.")
    lowercase: bool = Field(False, description="Lower-case texts (leave off for cased backbones).")
    drop_duplicates: bool = Field(True, description="Drop exact duplicate (text, label) rows.")
    conflicts: Literal["drop", "majority", "error"] = Field(
        "drop",
        description="Same text with different labels: drop all copies, keep the majority label, or fail.",
    )
    min_chars: int = Field(1, ge=0, description="Drop texts shorter than this after cleaning (1 drops empties).")
    max_chars: int | None = Field(None, ge=1, description="Drop texts longer than this; null keeps all.")
    chinese: ChineseCleaningConfig | None = Field(
        None, description="Chinese normalisation/segmentation (halfwidth, punctuation, …); null = off."
    )

    @model_validator(mode="after")
    def _bounds(self) -> CleaningConfig:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(
                f"data.clean.max_chars ({self.max_chars}) is below data.clean.min_chars ({self.min_chars}); "
                "raise max_chars or lower min_chars"
            )
        return self


class ExtraTrainData(_Stage):
    """One extra labelled file appended to the training split (`data.extra_train`)."""

    path: str = Field(..., description="CSV/TSV/JSONL/Parquet file or .zip (relative to the recipe's folder).")
    text_column: str = Field("text", description="Column holding the text.")
    label_column: str = Field("label", description="Column holding the label.")
    label_map: dict[str, str] | None = Field(
        None, description="Rename labels, e.g. {'1': pos, '0': neg}; rows whose label is not a class are dropped."
    )
    sample: int | None = Field(None, ge=1, description="Use a random sample of this many rows; null = all.")


class DataConfig(_Stage):
    """Where the labelled texts come from and how they are split."""

    path: str = Field(
        ...,
        description="A CSV/TSV/JSONL/Parquet file (relative to the recipe's folder) or `bundled:NAME` "
        "(bundled:rotten-tomatoes, bundled:chinese-reviews). Images: a folder with one subfolder per class, "
        "an IDX file pair/folder (MNIST format, gzip or not), or bundled:fashion-mnist, bundled:mnist-5k, "
        "bundled:digits.",
    )
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = Field(
        "auto", description="File format; `auto` picks it from the file extension."
    )
    encoding: str = Field(
        "auto", description="Text encoding; `auto` accepts UTF-8 (with or without BOM) and rejects the rest."
    )
    text_column: str = Field("text", description="Column holding the input text.")
    label_column: str = Field("label", description="Column holding the class label.")
    labels: list[str] | None = Field(
        None, description="Keep only rows with these labels (also fixes the label order); null keeps all."
    )
    sample: int | None = Field(
        None,
        ge=2,
        description="Use a stratified random sample of this many rows (after cleaning); null = all.",
    )
    valid_size: float = Field(0.1, gt=0, lt=0.5, description="Fraction of rows for the validation split.")
    test_size: float = Field(0.1, gt=0, lt=0.5, description="Fraction of rows for the test split.")
    seed: int = Field(42, description="Seed for sampling and splitting (the split is deterministic).")
    clean: CleaningConfig = Field(default_factory=CleaningConfig, description="Cleaning options.")
    extra_train: list[ExtraTrainData] = Field(
        default_factory=list,
        description="More labelled files added to the training split only (valid/test stay from `path`); "
        "rows whose text is in valid/test are dropped.",
    )
    on_bad_image: Literal["skip", "error"] = Field(
        "skip",
        description="Images only: an unreadable/corrupt image is skipped (and listed by path in "
        "data_report.json) or fails the run with its path named.",
    )
    image_size: int | None = Field(
        None, ge=4, le=1024, description="Images only: resize every image to this square size; null = keep."
    )
    channels: Literal[1, 3] | None = Field(
        None, description="Images only: 1 (grayscale) or 3 (RGB); null = 1 if every image is grayscale, else 3."
    )

    @model_validator(mode="after")
    def _columns(self) -> DataConfig:
        if self.text_column == self.label_column:
            raise ValueError(
                f"data.text_column and data.label_column are both '{self.text_column}'; "
                "point them at two different columns"
            )
        return self


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


class DistillConfig(_Stage):
    """Knowledge distillation: learn from a teacher model's probabilities (optionally mixed with gold labels)."""

    teacher: str = Field(
        ...,
        description="Run directory or model directory of the teacher (any modelyard model: a fine-tuned encoder, "
        "a prompt model, …); relative paths resolve against the recipe's folder.",
    )
    temperature: float = Field(2.0, gt=0, le=100, description="Softens teacher and student distributions (T).")
    alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of the gold-label cross-entropy; the teacher's KL term gets 1 - alpha "
        "(0 = learn from the teacher only, gold labels unused).",
    )


class TrainConfig(_Stage):
    """The fine-tuning loop."""

    epochs: int = Field(3, ge=1, le=1000, description="Passes over the training split.")
    batch_size: int = Field(16, ge=1, description="Examples per optimizer micro-batch.")
    eval_batch_size: int = Field(64, ge=1, description="Examples per batch when evaluating/predicting.")
    learning_rate: float = Field(5e-5, gt=0, le=1.0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases/LayerNorm).")
    warmup_ratio: float | None = Field(
        0.1, ge=0, lt=1, description="Fraction of optimizer steps spent warming up linearly."
    )
    warmup_steps: int | None = Field(None, ge=0, description="Warm-up in optimizer steps (instead of warmup_ratio).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this; null disables.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="`auto` = bf16 on a GPU that supports it, fp32 on CPU."
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="Where to train.")
    seed: int = Field(42, description="Seed for weights init, dropout and batch order.")
    metric: str = Field(
        "macro_f1",
        description="Validation metric that selects the best epoch and drives early stopping "
        "(accuracy, macro_f1, micro_f1, weighted_f1, roc_auc, loss, log_loss, ece).",
    )
    patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without improvement of `metric`; null disables."
    )
    checkpoint_every_steps: int = Field(
        0, ge=0, description="Also checkpoint every N optimizer steps (0 = only at the end of each epoch)."
    )
    keep_checkpoints: bool = Field(False, description="Keep checkpoints/ in the finished run (large).")
    group_by_length: bool = Field(True, description="Batch texts of similar length together (less padding).")
    log_every_steps: int = Field(10, ge=1, description="Write a progress.jsonl line every N optimizer steps.")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch; null = torch's default.")
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the weights (e.g. 0.998) and validate/save the "
        "averaged weights; null disables.",
    )
    distill: DistillConfig | None = Field(
        None, description="Distil from a teacher model (`teacher`, `temperature`, `alpha`); null = plain labels."
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Label smoothing of the cross-entropy on gold labels (e.g. 0.1; 0 = off).",
    )
    rdrop_alpha: float = Field(
        0.0,
        ge=0,
        le=100,
        description="R-Drop: each batch runs twice with different dropout masks, and alpha weighs the symmetric "
        "KL between the two predictions (e.g. 1.0; 0 = off; about 2x the training compute).",
    )
    compile: bool = Field(
        False, description="torch.compile the model for training (a GPU speed-up; slow to start, little gain on CPU)."
    )
    layer_lr_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Layer-wise learning-rate decay: the head gets learning_rate, each encoder layer below "
        "it this factor less (e.g. 0.9), embeddings the least; null = one learning rate.",
    )

    @model_validator(mode="after")
    def _checks(self) -> TrainConfig:
        both = {"warmup_ratio", "warmup_steps"} <= self.model_fields_set
        if both and self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError(
                "can't set both train.warmup_ratio and train.warmup_steps; keep one and set the other to null"
            )
        if self.metric not in VALID_METRICS:
            close = difflib.get_close_matches(self.metric, sorted(VALID_METRICS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(
                f"train.metric '{self.metric}' is not a metric; use one of {', '.join(sorted(VALID_METRICS))}{hint}"
            )
        return self


VALID_METRICS = {"accuracy", "macro_f1", "micro_f1", "weighted_f1", "roc_auc", "loss", "log_loss", "ece"}
LOWER_IS_BETTER = {"loss", "log_loss", "ece"}


class PretrainConfig(_Stage):
    """Masked-language-model pretraining (`modelyard pretrain`): a backbone for `model.backbone`."""

    init: str | None = Field(
        None,
        description="Continue pretraining this encoder (bundled:NAME or a local HF directory); null = a small "
        "BERT from scratch sized by model.arch with a tokenizer trained per model.tokenizer.",
    )
    corpus: list[str] = Field(
        default_factory=list,
        description="Extra unlabelled text: .txt files (one text per line) or CSV/TSV/JSONL/Parquet/.zip files "
        "with a `corpus_text_column` column; relative to the recipe's folder.",
    )
    corpus_text_column: str = Field("text", description="Text column of tabular corpus files.")
    use_train_texts: bool = Field(
        True, description="Also learn from the training split of `data` (never valid/test: no leakage)."
    )
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="Fraction of tokens (or words) masked.")
    whole_word_masking: bool = Field(
        False, description="Mask whole words (jieba words for Chinese) instead of single tokens."
    )
    epochs: int = Field(3, ge=1, le=1000, description="Passes over the corpus.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps; null = all epochs.")
    batch_size: int = Field(64, ge=1, description="Texts per optimizer step.")
    learning_rate: float = Field(5e-4, gt=0, le=1.0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases/LayerNorm).")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of steps warming up linearly.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm; null disables.")
    eval_fraction: float = Field(
        0.02, gt=0, lt=0.5, description="Texts held out for the MLM loss/perplexity curve (at most 2000)."
    )
    eval_every_steps: int = Field(200, ge=1, description="Evaluate the held-out MLM loss every N steps.")
    seed: int = Field(42, description="Seed for initial weights, batch order and masking.")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch; null = torch's default.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="Where to train.")


class ServeConfig(_Stage):
    """The HTTP server (`modelyard serve`)."""

    host: str = Field("127.0.0.1", description="Interface to bind; loopback unless you mean to expose it.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    max_batch_size: int = Field(32, ge=1, description="Most texts the micro-batcher merges into one forward pass.")
    max_wait_ms: float = Field(5.0, ge=0, description="How long the batcher waits to fill a batch.")
    max_texts_per_request: int = Field(64, ge=1, description="More texts in one request → HTTP 413.")
    max_chars_per_text: int = Field(10000, ge=1, description="A longer text → HTTP 413.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="A larger request body → HTTP 413.")
    max_queue: int = Field(4096, ge=1, description="Texts waiting for the model beyond this → HTTP 503.")
    auth: bool = Field(
        False,
        description="Require an API key (`modelyard keys create`) on every endpoint but /healthz and /readyz; "
        "always on when serving NAME@ALIAS from the registry.",
    )
    mask_pii: bool = Field(
        True, description="Mask e-mail addresses, phone/card numbers and IP addresses in the prediction log."
    )
    max_images_per_request: int = Field(16, ge=1, description="Image models: more images in one request → HTTP 413.")
    max_image_bytes: int = Field(
        2_000_000, ge=1024, description="Image models: a larger image file (encoded bytes) → HTTP 413."
    )
    max_image_pixels: int = Field(
        16_000_000, ge=64, description="Image models: an image with more pixels (width × height) → HTTP 413."
    )


class AugmentConfig(_Stage):
    """Training-time image augmentation (kornia; deterministic given train.seed). Ignored for text."""

    crop_padding: int = Field(0, ge=0, le=64, description="Random crop after zero-padding by this many pixels.")
    hflip: bool = Field(False, description="Random horizontal flip (off for digits/text-like images).")
    rotation: float = Field(0.0, ge=0, le=180, description="Random rotation up to ± this many degrees.")
    translate: float = Field(0.0, ge=0, lt=0.5, description="Random affine shift up to this fraction of the size.")
    scale: float = Field(0.0, ge=0, lt=0.5, description="Random affine zoom by up to ± this fraction.")
    erasing: float = Field(0.0, ge=0, le=1, description="Probability of random erasing (cutout) per image.")

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is switched on."""
        return bool(self.crop_padding or self.hflip or self.rotation or self.translate or self.scale or self.erasing)


class LogUniformParam(_Stage):
    """A float sampled log-uniformly in [low, high] (learning rates, weight decay)."""

    type: Literal["loguniform"] = Field(..., description="`loguniform`.")
    low: float = Field(..., gt=0, description="Smallest value (> 0).")
    high: float = Field(..., gt=0, description="Largest value.")


class UniformParam(_Stage):
    """A float sampled uniformly in [low, high] (dropout, warm-up ratio)."""

    type: Literal["uniform"] = Field(..., description="`uniform`.")
    low: float = Field(..., description="Smallest value.")
    high: float = Field(..., description="Largest value.")


class IntParam(_Stage):
    """An integer in [low, high], both included (epochs, max_length)."""

    type: Literal["int"] = Field(..., description="`int`.")
    low: int = Field(..., description="Smallest value.")
    high: int = Field(..., description="Largest value (included).")
    log: bool = Field(False, description="Sample on a log scale (needs low ≥ 1).")


class ChoiceParam(_Stage):
    """One of a list of values (batch sizes, backbones)."""

    type: Literal["choice"] = Field(..., description="`choice`.")
    values: list[str | int | float | bool | None] = Field(..., min_length=1, description="The candidate values.")


ParamSpec = Annotated[
    LogUniformParam | UniformParam | IntParam | ChoiceParam,
    Field(discriminator="type"),
]
# Sections a search may not vary: the search itself, where runs go, and settings that do not affect training.
_UNTUNABLE = ("tune", "output_dir", "name", "task", "serve", "pretrain")


class TuneConfig(_Stage):
    """Hyper-parameter search (`modelyard tune`): which recipe keys vary and what is optimised."""

    space: dict[str, ParamSpec] = Field(
        default_factory=dict,
        description="Search space keyed by dotted recipe key, e.g. `train.learning_rate: "
        "{type: loguniform, low: 1e-5, high: 1e-3}`; types loguniform, uniform, int (low, high, log), "
        "choice (values).",
    )
    metric: str | None = Field(
        None,
        description="Validation metric optimised, `valid.<metric>`; null = `valid.` + train.metric. "
        "Test metrics are never tuned on.",
    )
    direction: Literal["auto", "maximize", "minimize"] = Field(
        "auto", description="`auto` minimises loss, log_loss and ece and maximises the rest."
    )
    trials: int = Field(8, ge=1, description="Trials in the search (finished + pruned; failed ones do not count).")
    pruner: Literal["median", "none"] = Field(
        "median", description="Stop a trial early when its epoch metric is below the median of earlier trials."
    )
    prune_startup_trials: int = Field(
        3, ge=0, description="Trials that always run to the end before the pruner may stop any."
    )
    prune_warmup_epochs: int = Field(1, ge=0, description="Epochs every trial completes before it may be pruned.")
    seed: int = Field(42, description="Seed of the TPE sampler (the same seed proposes the same trials).")
    baseline_first: bool = Field(
        True,
        description="Trial 0 runs the recipe's own values (where they lie in the space), so the search is "
        "measured against the default and never reports a best worse than it.",
    )
    n_jobs: int = Field(
        1, ge=1, description="Trials run in parallel (threads; results are then not bit-for-bit reproducible)."
    )

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, Any]) -> dict[str, Any]:
        for key, spec in space.items():
            if not key.startswith("model."):  # model keys depend on the kind: checked by the recipe
                _check_tunable_key(key)
            if isinstance(spec, ChoiceParam):
                continue
            if not spec.low < spec.high:
                raise ValueError(
                    f"`tune.space.{key}`: low ({spec.low}) must be below high ({spec.high}); "
                    "for a single value set it in the recipe instead"
                )
            if isinstance(spec, IntParam) and spec.log and spec.low < 1:
                raise ValueError(f"`tune.space.{key}`: a log-scale int range needs low ≥ 1 (got {spec.low})")
        return space

    @field_validator("metric")
    @classmethod
    def _metric(cls, metric: str | None) -> str | None:
        if metric is None:
            return None
        split, _, name = metric.rpartition(".")
        if split not in ("", "valid"):
            raise ValueError(
                f"tune.metric '{metric}': only validation metrics can be tuned on (`valid.<metric>`); "
                "tuning on test would leak the test set into the model choice"
            )
        if name not in VALID_METRICS:
            close = difflib.get_close_matches(name, sorted(VALID_METRICS), n=1)
            hint = f"; did you mean 'valid.{close[0]}'?" if close else ""
            raise ValueError(
                f"tune.metric '{metric}' is not a metric; use valid.<one of {', '.join(sorted(VALID_METRICS))}>{hint}"
            )
        return f"valid.{name}"


def _check_tunable_key(key: str, model_section: type[BaseModel] | None = None) -> None:
    """Raise ``ValueError`` unless ``key`` is a dotted path to a leaf field of :class:`Recipe`.

    ``model_section`` is the settings class of the recipe's model kind (``model.*`` keys are checked
    against it).
    """
    parts = key.split(".")
    if parts[0] in _UNTUNABLE:
        raise ValueError(f"`tune.space.{key}`: `{parts[0]}` cannot be tuned; tune keys of data, model or train")
    model: type[BaseModel] = Recipe
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if i == 0 and part == "model" and model_section is not None:
            model = model_section
            continue
        if field is None:
            close = difflib.get_close_matches(part, list(model.model_fields), n=1, cutoff=0.6)
            where = ".".join(parts[:i])
            hint = (
                f"; did you mean `{'.'.join([*parts[:i], close[0]])}`?"
                if close
                else f"; valid keys{' under ' + where if where else ''}: {', '.join(model.model_fields)}"
            )
            raise ValueError(f"`tune.space.{key}`: `{key}` is not a recipe key{hint}")
        ann = field.annotation
        is_section = isinstance(ann, type) and issubclass(ann, BaseModel)
        last = i == len(parts) - 1
        if last and is_section:
            raise ValueError(
                f"`tune.space.{key}`: `{key}` is a section; name one of its keys, "
                f"e.g. `{key}.{next(iter(ann.model_fields))}`"
            )
        if not last and not is_section:
            raise ValueError(f"`tune.space.{key}`: `{'.'.join(parts[: i + 1])}` is not a section")
        if is_section:
            model = ann


class Recipe(_Stage):
    """A whole modelyard recipe: one section per stage."""

    name: str = Field("text-classifier", pattern=NAME_PATTERN, description="Application name (runs, registry).")
    task: Literal["text-classification", "image-classification"] = Field(
        "text-classification", description="What is being learned: text-classification or image-classification."
    )
    data: DataConfig
    model: SerializeAsAny[ModelSettings] = Field(
        default_factory=default_model_settings, description="Model section (its keys depend on `model.type`)."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training section.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Serving section.")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="Hyper-parameter search section.")
    pretrain: PretrainConfig | None = Field(
        None, description="MLM pretraining section (`modelyard pretrain`); null when unused."
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Image augmentation section.")
    output_dir: str = Field(
        "runs", description="Folder (relative to the recipe's folder) holding one directory per run."
    )

    @field_validator("model", mode="wrap")
    @classmethod
    def _model_kind(cls, value: Any, handler: Any) -> ModelSettings:
        return validate_model_settings(value)

    @model_validator(mode="after")
    def _task_model(self) -> Recipe:
        for key in self.tune.space:
            if key.startswith("model."):
                _check_tunable_key(key, type(self.model))
        image_model = get_kind(self.model.type).modality == "image"
        if self.task == "image-classification" and not image_model:
            raise ValueError(
                f"task image-classification needs an image model; set model.type to one of "
                f"{', '.join(kinds_for('image'))} (model.type is '{self.model.type}')"
            )
        if self.task == "text-classification" and image_model:
            raise ValueError(
                f"model.type '{self.model.type}' classifies images; set task: image-classification "
                "or pick a text model (hf-encoder, prompt)"
            )
        if self.augment.enabled and self.task != "image-classification":
            raise ValueError("the augment section applies to images only; remove it or set task: image-classification")
        return self

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the recipe resolve against (the recipe file's folder)."""
        return self._base_dir

    def resolve(self, path: str) -> Path:
        """Resolve a recipe path against :attr:`base_dir` (absolute paths and ``~`` pass through)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)

    def to_yaml(self) -> str:
        """The fully resolved recipe, defaults included."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------- loading


def _format_validation_error(err: ValidationError, source: str, raw: Any = None) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(recipe)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key `{key}`{_suggest(key, raw)}")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key `{key}`; add it to the recipe")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            got_s = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
            lines.append(f"{source}: `{key}`: {msg}{got_s}")
    return "; ".join(lines)


def _model_section_class(section: Any) -> type[BaseModel] | None:
    """The settings class of a raw ``model`` section's kind (None when the kind is unknown)."""
    name = section.get("type", "hf-encoder") if isinstance(section, dict) else "hf-encoder"
    try:
        return get_kind(str(name)).settings
    except ConfigError:
        return None


def _suggest(dotted: str, raw: Any = None) -> str:
    *parents, leaf = dotted.split(".")
    model: type[BaseModel] = Recipe
    node = raw
    kind_note = ""
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else (node[int(p)] if isinstance(node, list) else None)
        if p == "model" or (p.isdigit() and model is ModelSettings):  # a model section (or an ensemble member)
            cls = _model_section_class(node)
            if cls is None:
                return ""
            kind_name = node.get("type", "hf-encoder") if isinstance(node, dict) else ""
            model, kind_note = cls, f" of model.type '{kind_name}'"
            continue
        field = model.model_fields.get(p)
        ann = getattr(field, "annotation", None) if field else None
        if p == "members":
            model = ModelSettings
            continue
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    close = difflib.get_close_matches(leaf, list(model.model_fields), n=1, cutoff=0.6)
    valid = ", ".join(model.model_fields)
    if close:
        return f"; did you mean `{'.'.join([*parents, close[0]])}`?"
    if kind_note:  # a key of another model kind: name the kind it belongs to
        owners = [n for n in available_kinds() if leaf in get_kind(n).settings.model_fields]
        if owners:
            return (
                f": {'.'.join([*parents, leaf])} is only used with model.type "
                + " or ".join(f"'{n}'" for n in owners)
                + f" (this section is{kind_note.removeprefix(' of')}); valid keys here: {valid}"
            )
    return f"; valid keys{kind_note}: {valid}"


_OVERRIDE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(.*)$", re.S)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML scalars) to a raw recipe dict."""
    for item in overrides:
        m = _OVERRIDE.match(item)
        if not m:
            raise ConfigError(f"override '{item}' is not of the form section.key=value (e.g. train.epochs=1)")
        key, value_s = m.groups()
        try:
            value = yaml.safe_load(value_s) if value_s != "" else ""
        except yaml.YAMLError:
            value = value_s
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{item}': `{p}` is not a section")
            node = nxt
        node[parts[-1]] = value
    return raw


def recipe_from_dict(raw: dict[str, Any], *, base_dir: Path | None = None, source: str = "recipe") -> Recipe:
    """Validate a raw dict into a :class:`Recipe`, raising :class:`ConfigError` naming each bad key."""
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, raw)) from None
    recipe._base_dir = (base_dir or Path.cwd()).resolve()
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe, apply ``key=value`` overrides, validate.

    Relative paths inside the recipe resolve against the recipe file's folder.

    Raises:
        ConfigError: the file is missing or malformed, or a key is unknown or invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if raw is None:
        raise ConfigError(f"{path}: the recipe is empty; start from `modelyard init`")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping (sections data, model, train …)")
    raw = apply_overrides(raw, overrides or [])
    return recipe_from_dict(raw, base_dir=path.parent, source=str(path))


# ---------------------------------------------------------------- annotated starter recipe


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("\n...")


def annotated_yaml(recipe: Recipe) -> str:
    """Render a recipe as YAML with every field preceded by its description and default."""
    out: list[str] = []

    def emit(model: BaseModel, indent: int) -> None:
        pad = "  " * indent
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            desc = field.description or ""
            if isinstance(value, BaseModel):
                doc = (type(value).__doc__ or desc).strip().splitlines()[0]
                out.append(f"{pad}# {doc}")
                out.append(f"{pad}{name}:")
                emit(value, indent + 1)
                continue
            default = (
                "required"
                if field.is_required()
                else f"default: {_yaml_scalar(field.get_default(call_default_factory=True))}"
            )
            out.append(f"{pad}# {desc} ({default})")
            out.append(f"{pad}{name}: {_yaml_scalar(model.model_dump(mode='json')[name])}")

    emit(recipe, 0)
    return "\n".join(out) + "\n"
