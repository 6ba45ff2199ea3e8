"""The `train`, `pretrain` and `augment` sections."""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from modelyard.config._base import _Stage


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

    report_to: list[Literal["mlflow", "tensorboard"]] = Field(
        default_factory=list,
        description="Experiment trackers that also receive the run: mlflow (params, step/epoch/final metrics, "
        "report and model as artefacts, manifest as tags) and/or tensorboard (scalars in <run>/tensorboard/). "
        'Optional extras: pip install "modelyard[mlflow]" / "modelyard[tensorboard]".',
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI (http://host:5000, sqlite:///path/mlflow.db, …); "
        "null = $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db (artefacts in <output_dir>/mlartifacts).",
    )
    experiment: str | None = Field(None, description="MLflow experiment name; null = the recipe's name.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, value: object) -> object:
        # `train.report_to=mlflow` on the command line means [mlflow]
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _checks(self) -> TrainConfig:
        both = {"warmup_ratio", "warmup_steps"} <= self.model_fields_set
        if both and self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError(
                "can't set both train.warmup_ratio and train.warmup_steps; keep one and set the other to null"
            )
        if len(set(self.report_to)) != len(self.report_to):
            raise ValueError(f"train.report_to lists a tracker twice: {self.report_to}")
        if self.metric not in VALID_METRICS:
            close = difflib.get_close_matches(self.metric, sorted(VALID_METRICS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(
                f"train.metric '{self.metric}' is not a metric; use one of {', '.join(sorted(VALID_METRICS))}{hint}"
            )
        return self


SINGLE_LABEL_METRICS = {"accuracy", "macro_f1", "micro_f1", "weighted_f1", "roc_auc", "loss", "log_loss", "ece"}
# task multi-label-classification: accuracy is subset accuracy, roc_auc the macro ROC-AUC, loss the BCE
MULTI_LABEL_METRICS = {
    "accuracy", "subset_accuracy", "micro_f1", "macro_f1", "weighted_f1", "samples_f1", "hamming_loss",
    "roc_auc", "macro_roc_auc", "loss",
}  # fmt: skip
VALID_METRICS = SINGLE_LABEL_METRICS | MULTI_LABEL_METRICS
LOWER_IS_BETTER = {"loss", "log_loss", "ece", "hamming_loss"}


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
