"""Few-shot contrastive fine-tuning (`setfit`): SetFit's method (Tunstall et al. 2022) on modelyard's own loop.

Two phases, as in SetFit: (1) the encoder body is tuned on sentence pairs drawn from the few labelled
examples — a pair of the same class should have cosine similarity 1, of different classes 0 (SetFit's
``CosineSimilarityLoss``, ``num_iterations`` positive and negative pairs per example); (2) a
logistic-regression head is fitted on the tuned embeddings (scikit-learn, SetFit's default head). The
result is then an ordinary ``…ForSequenceClassification`` model whose classifier holds the logistic
regression's weights, and the shared loop continues from it for ``train.epochs`` (``finetune: frozen``,
the default, keeps the body fixed as SetFit does; ``full`` is SetFit's end-to-end mode).

Why not the ``setfit`` library: it pins ``sentence-transformers``/``datasets`` versions that do not install
beside transformers 5, and its model is a ``SentenceTransformer`` + sklearn pickle (``model_head.pkl``),
which modelyard never loads. Written here in ~150 lines, the model stays in Hugging Face layout
(safetensors), so the run directory, report, predict, serve, explain and compress work unchanged.

The embedding tuned in phase 1 is exactly what the classification head reads (BERT's pooler output over
[CLS]; the first token's hidden state for encoders without a pooler), not SetFit's mean pooling: a mean-pooled
embedding would need a head that Hugging Face's classes do not have.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from modelyard.errors import ModelError
from modelyard.kinds import ModelKind, register_kind
from modelyard.models.hf_encoder import KIND as HF_ENCODER
from modelyard.models.hf_encoder import HFEncoderSettings, apply_finetune_mode, hf_encoder
from modelyard.models.text_classifier import check_safetensors_weights, load_text_classifier, save_text_model


class SetFitSettings(HFEncoderSettings):
    """A pretrained encoder tuned contrastively on sentence pairs, then a logistic-regression head (`setfit`)."""

    type: Literal["setfit"] = "setfit"  # type: ignore[assignment]
    max_length: int = Field(64, ge=8, le=8192, description="Tokens kept per text (longer texts are truncated).")
    finetune: Literal["full", "frozen"] = Field(  # type: ignore[assignment]
        "frozen",
        description="After the contrastive phase and the head fit, what the shared loop trains for train.epochs: "
        "`frozen` (the head only; SetFit's default) or `full` (end to end).",
    )
    pairs_per_example: int = Field(
        20,
        ge=1,
        le=1000,
        description="SetFit's num_iterations: positive and negative pairs drawn per labelled example.",
    )
    max_pairs: int | None = Field(
        4000, ge=2, description="Cap on the pairs per contrastive epoch (large splits); null = no cap."
    )
    contrastive_epochs: int = Field(1, ge=1, le=100, description="Passes over the pairs.")
    contrastive_batch_size: int = Field(16, ge=2, description="Pairs per optimizer step.")
    contrastive_learning_rate: float = Field(
        1e-4, gt=0, le=1.0, description="AdamW rate of the contrastive phase (1e-4 beat 2e-5 on MiniLM at 16/class)."
    )
    head_c: float = Field(1.0, gt=0, description="Inverse regularisation C of the logistic-regression head.")
    seed: int = Field(42, description="Seed of the pair draws and the contrastive phase.")


def _embedder(model: Any) -> Any:
    """``(input_ids, attention_mask) → the vector the classification head reads`` for a BERT-style model."""
    base = model.base_model
    head = getattr(model, "classifier", None)
    if head is None or not hasattr(head, "weight") or head.weight.ndim != 2:
        raise ModelError(
            f"model.type setfit needs an encoder whose classification head is one linear layer (BERT, MiniLM, a "
            f"modelyard pretrain run); {type(model).__name__} has another head; use model.type hf-encoder"
        )

    def embed(input_ids: Any, attention_mask: Any) -> Any:
        out = base(input_ids=input_ids, attention_mask=attention_mask)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]

    return embed


def draw_pairs(labels: list[str], per_example: int, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """SetFit's pair sampling: for each example and iteration one same-class and one other-class partner.

    Returns an ``(n, 3)`` int array ``(i, j, same)``; classes with one example give no positive pair.
    """
    y = np.asarray(labels)
    by_class = {c: np.flatnonzero(y == c) for c in sorted(set(labels))}
    others = {c: np.flatnonzero(y != c) for c in by_class}
    rows: list[tuple[int, int, int]] = []
    for _ in range(per_example):
        for i, c in enumerate(y):
            same = by_class[c][by_class[c] != i]
            if len(same):
                rows.append((i, int(rng.choice(same)), 1))
            if len(others[c]):
                rows.append((i, int(rng.choice(others[c])), 0))
    pairs = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    pairs = pairs[rng.permutation(len(pairs))]
    return pairs[:cap] if cap is not None else pairs


def _batches(tokenizer: Any, texts: list[str], max_length: int) -> Any:
    return tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")


def contrastive_phase(model: Any, tokenizer: Any, cfg: SetFitSettings, texts: list[str], labels: list[str]) -> list:
    """Phase 1: tune the body so that cosine similarity is 1 within a class and 0 across classes.

    Returns the mean loss per contrastive epoch.
    """
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    embed = _embedder(model)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    params = [p for n, p in model.base_model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.contrastive_learning_rate, weight_decay=0.0)
    device = next(model.parameters()).device
    losses: list[float] = []
    model.train()
    with Progress(TextColumn("setfit pairs"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), transient=True) as bar:  # fmt: skip
        for _ in range(cfg.contrastive_epochs):
            pairs = draw_pairs(labels, cfg.pairs_per_example, cfg.max_pairs, rng)
            steps = math.ceil(len(pairs) / cfg.contrastive_batch_size)
            task = bar.add_task("pairs", total=steps)
            total = 0.0
            for s in range(steps):
                chunk = pairs[s * cfg.contrastive_batch_size : (s + 1) * cfg.contrastive_batch_size]
                left = _batches(tokenizer, [texts[i] for i in chunk[:, 0]], cfg.max_length).to(device)
                right = _batches(tokenizer, [texts[j] for j in chunk[:, 1]], cfg.max_length).to(device)
                u = embed(left["input_ids"], left["attention_mask"])
                v = embed(right["input_ids"], right["attention_mask"])
                target = torch.as_tensor(chunk[:, 2], dtype=u.dtype, device=device)
                loss = torch.nn.functional.mse_loss(torch.cosine_similarity(u, v), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                bar.advance(task)
            losses.append(total / max(steps, 1))
    model.eval()
    return losses


def fit_head(model: Any, tokenizer: Any, cfg: SetFitSettings, texts: list[str], labels: list[str], classes: list[str]):
    """Phase 2: logistic regression on the tuned embeddings, written into the model's linear classifier."""
    import torch
    from sklearn.linear_model import LogisticRegression

    embed = _embedder(model)
    device = next(model.parameters()).device
    with torch.inference_mode():
        parts = [
            embed(
                **{
                    k: v.to(device)
                    for k, v in _batches(tokenizer, texts[i : i + 64], cfg.max_length).items()
                    if k in ("input_ids", "attention_mask")
                }
            )
            .float()
            .cpu()
            .numpy()  # fmt: skip
            for i in range(0, len(texts), 64)
        ]
    x = np.concatenate(parts)
    y = np.asarray([classes.index(lab) for lab in labels])
    lr = LogisticRegression(C=cfg.head_c, max_iter=2000).fit(x, y)
    coef, bias = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:  # binary: sigmoid(w·x + b) == softmax over logits (−(w·x + b)/2, (w·x + b)/2)
        coef, bias = np.vstack([-coef / 2, coef / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    full_w = np.zeros((len(classes), x.shape[1]))
    full_b = np.full(len(classes), -1e4)  # a class absent from the few labels: never predicted
    full_w[lr.classes_], full_b[lr.classes_] = coef, bias
    with torch.no_grad():
        model.classifier.weight.copy_(torch.as_tensor(full_w, dtype=model.classifier.weight.dtype))
        model.classifier.bias.copy_(torch.as_tensor(full_b, dtype=model.classifier.bias.dtype))


def build_setfit(
    cfg: SetFitSettings, labels: list[str], base_dir: Path, *, texts: list[str], train_labels: list[str]
) -> tuple[Any, Any]:
    """The two SetFit phases on ``texts``/``train_labels``; the loop then trains what ``cfg.finetune`` says."""
    import torch

    full = cfg.model_copy(update={"finetune": "full"})
    model, tokenizer = hf_encoder(full, labels, base_dir)  # type: ignore[arg-type]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    contrastive_phase(model, tokenizer, cfg, texts, train_labels)
    fit_head(model, tokenizer, cfg, texts, train_labels, labels)
    model.to("cpu")
    return apply_finetune_mode(model, cfg), tokenizer  # type: ignore[arg-type]


KIND = register_kind(
    ModelKind(
        name="setfit",
        settings=SetFitSettings,
        modality="text",
        build=build_setfit,
        save=save_text_model,
        load=load_text_classifier,
        prepare=HF_ENCODER.prepare,  # the backbone resolves before a run directory exists
        check_artifacts=check_safetensors_weights,
        display_name=lambda cfg: f"setfit:{cfg.backbone}",
        # hf-encoder's capabilities (its LR head is single-label) + the labelled split at build time
        supports=HF_ENCODER.supports - {"multi_label"} | {"learns_from_split"},
    )
)
