"""``modelyard pretrain``: masked-language-model pretraining of a small BERT, or continued pretraining.

The classic recipe for a language with no pretrained encoder at hand: learn a tokenizer on the texts,
pretrain a small BERT with the MLM objective on unlabelled text (the training split plus any corpus files;
never valid/test), then fine-tune it with ``model.type: hf-encoder`` and ``model.backbone: <this directory>``.

Masking is transformers' ``DataCollatorForLanguageModeling`` (15% of tokens; 80% ``[MASK]``, 10% random,
10% kept). With ``pretrain.whole_word_masking`` the collator masks whole words; for Chinese the word
boundaries come from jieba (texts are segmented with spaces before tokenization, which leaves the token ids
of character/WordPiece tokenizers unchanged and only moves the offsets the collator groups by).

The output is a run directory that *is* a Hugging Face backbone (``config.json``, ``model.safetensors``,
tokenizer) plus ``history.json``, ``progress.jsonl``, ``pretrain_report.html`` (MLM loss and perplexity
curves) and ``manifest.json``. It is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from modelyard._internal.io import atomic_write_text, write_json
from modelyard._internal.layout import HISTORY, MANIFEST, PROGRESS
from modelyard.config import PretrainConfig, Recipe
from modelyard.errors import ConfigError, DataError


def corpus_texts(recipe: Recipe) -> list[str]:
    """The pretraining texts: the cleaned training split (if enabled) plus every corpus file, deduplicated.

    Texts of the recipe's valid/test splits are removed from the corpus too, so that a model fine-tuned
    on the same data section is evaluated on texts its backbone never saw.

    Raises:
        ConfigError: no ``pretrain`` section, or nothing to learn from.
        DataError: a corpus file is missing/unreadable or lacks the text column.
    """
    from modelyard.data import prepare_data, read_table
    from modelyard.data.cleaning import clean_text

    p = recipe.pretrain
    if p is None:
        raise ConfigError("modelyard pretrain needs a `pretrain` section in the recipe (e.g. pretrain: {epochs: 3})")
    texts: list[str] = []
    data = prepare_data(recipe.data, recipe.base_dir)
    # Valid/test texts stay unseen, also when a corpus file happens to contain them.
    held_out = set(data.valid["text"]) | set(data.test["text"])
    if p.use_train_texts:
        texts += data.train["text"].tolist()
    for name in p.corpus:
        path = recipe.resolve(name)
        if path.suffix.lower() == ".txt":
            if not path.is_file():
                raise DataError(f"pretrain.corpus: file not found: {path}")
            try:
                lines = path.read_text(encoding="utf-8-sig").splitlines()
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: not valid UTF-8 at byte {err.start}") from None
        else:
            frame = read_table(path)
            if p.corpus_text_column not in frame.columns:
                raise DataError(
                    f"{path}: no column '{p.corpus_text_column}' (columns found: "
                    f"{', '.join(map(str, frame.columns))}); set pretrain.corpus_text_column"
                )
            lines = frame[p.corpus_text_column].astype(str).tolist()
        texts += [clean_text(line, recipe.data.clean) for line in lines]
    texts = list(dict.fromkeys(t for t in texts if t.strip() and t not in held_out))
    if not texts:
        raise ConfigError("pretrain: no texts to learn from; set pretrain.use_train_texts or pretrain.corpus")
    return texts


def build_mlm(recipe: Recipe, texts: list[str]) -> tuple[Any, Any]:
    """``(BertForMaskedLM-like model, tokenizer)``: from scratch (``model.arch``) or ``pretrain.init``."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM
    from transformers.utils import logging as hf_logging

    from modelyard.errors import ModelError
    from modelyard.models import resolve_backbone
    from modelyard.models.tokenization import train_tokenizer
    from modelyard.models.transformer_encoder import small_bert_config

    p = recipe.pretrain
    assert p is not None
    hf_logging.set_verbosity_error()
    if p.init is None:
        tokenizer = train_tokenizer(texts, recipe.model.tokenizer, max_length=recipe.model.max_length)
        config = small_bert_config(recipe.model.arch, len(tokenizer), recipe.model.max_length, tokenizer.pad_token_id)
        return BertForMaskedLM(config), tokenizer
    source = resolve_backbone(p.init, recipe.base_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=False)
        model = AutoModelForMaskedLM.from_pretrained(
            source, local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
    except (OSError, ValueError) as err:
        raise ModelError(f"pretrain.init '{p.init}' could not be loaded as a masked LM from {source}: {err}") from None
    if tokenizer.mask_token_id is None:
        raise ModelError(f"pretrain.init '{p.init}': its tokenizer has no mask token; MLM needs one")
    return model, tokenizer


def encode_for_mlm(tokenizer: Any, texts: list[str], max_length: int, whole_words: bool) -> list[dict[str, Any]]:
    """Token ids + special-token masks (+ offsets of jieba-segmented text for whole-word masking)."""
    if whole_words:
        from modelyard.data.chinese import segment

        texts = [segment(t) for t in texts]
    enc = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
        return_offsets_mapping=whole_words,
    )
    keys = ["input_ids", "special_tokens_mask"] + (["offset_mapping"] if whole_words else [])
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def mask_batch(collator: Any, examples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of encoded examples and mask them with the collator (labels = -100 where not masked)."""
    width = max(len(e["input_ids"]) for e in examples)
    n = len(examples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    special = torch.ones((n, width), dtype=torch.long)  # padding is never masked
    attention = torch.zeros((n, width), dtype=torch.long)
    offsets = torch.zeros((n, width, 2), dtype=torch.long) if "offset_mapping" in examples[0] else None
    for i, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[i, :k] = torch.as_tensor(e["input_ids"])
        special[i, :k] = torch.as_tensor(e["special_tokens_mask"])
        attention[i, :k] = 1
        if offsets is not None:
            offsets[i, :k] = torch.as_tensor(e["offset_mapping"])
    inputs, labels = collator.torch_mask_tokens(ids, special_tokens_mask=special, offset_mapping=offsets)
    if collator.whole_word_mask:
        # transformers replaces every selected word by [MASK]; restore BERT's 80/10/10 split per token.
        selected = labels != -100
        draw = torch.rand(labels.shape)
        keep = selected & (draw < 0.1)
        rand = selected & (draw >= 0.1) & (draw < 0.2)
        inputs[keep] = labels[keep]
        inputs[rand] = torch.randint(len(collator.tokenizer), labels.shape, dtype=torch.long)[rand]
    return {"input_ids": inputs, "attention_mask": attention, "labels": labels}


def mlm_collator(tokenizer: Any, cfg: PretrainConfig) -> Any:
    """transformers' MLM collator: 15% of tokens (or of words), replaced 80% [MASK] / 10% random / 10% kept."""
    from transformers import DataCollatorForLanguageModeling

    if cfg.whole_word_masking:  # the collator only supports all-[MASK] for whole words; mask_batch adds 10/10
        return DataCollatorForLanguageModeling(
            tokenizer,
            mlm=True,
            mlm_probability=cfg.mlm_probability,
            whole_word_mask=True,
            mask_replace_prob=1.0,
            random_replace_prob=0.0,
        )
    return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=cfg.mlm_probability)


@torch.no_grad()
def mlm_eval_loss(model: Any, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Mean masked-token cross-entropy over fixed (pre-masked) held-out batches."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        n = int((batch["labels"] != -100).sum())
        if n == 0:
            continue
        out = model(**{k: v.to(device) for k, v in batch.items()})
        total += float(out.loss) * n
        count += n
    model.train()
    return total / max(count, 1)


def pretrain(recipe: Recipe, *, console: Console | None = None) -> Path:
    """Run MLM pretraining for ``recipe`` and return the finished backbone directory.

    Raises:
        ModelyardError: bad recipe, data or ``pretrain.init`` (no directory is left behind).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import get_scheduler

    from modelyard._internal.batching import length_grouped_batches
    from modelyard._internal.rundir import discard_run, finish_run, git_commit, hardware, package_versions, start_run
    from modelyard._internal.runtime import pick_device, seed_everything
    from modelyard.training.optim import param_groups

    console = console or Console(stderr=True)
    t0 = time.time()
    texts = corpus_texts(recipe)
    p = recipe.pretrain
    assert p is not None
    if p.num_threads:
        torch.set_num_threads(p.num_threads)
    seed_everything(p.seed)
    device = pick_device(p.device)
    model, tokenizer = build_mlm(recipe, texts)
    model.to(device)
    rng = np.random.default_rng(p.seed)
    order = rng.permutation(len(texts))
    n_eval = min(2000, max(1, round(p.eval_fraction * len(texts)))) if len(texts) > 10 else 0
    eval_texts = [texts[i] for i in order[:n_eval]]
    train_texts = [texts[i] for i in order[n_eval:]]
    max_length = recipe.model.max_length
    examples = encode_for_mlm(tokenizer, train_texts, max_length, p.whole_word_masking)
    collator = mlm_collator(tokenizer, p)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eval_examples = encode_for_mlm(tokenizer, eval_texts, max_length, p.whole_word_masking)
    eval_batches = [mask_batch(collator, eval_examples[i : i + 64], pad_id) for i in range(0, len(eval_examples), 64)]

    steps_per_epoch = math.ceil(len(examples) / p.batch_size)
    total = steps_per_epoch * p.epochs if p.max_steps is None else min(p.max_steps, steps_per_epoch * p.epochs)
    optimizer = torch.optim.AdamW(param_groups(model, p.learning_rate, p.weight_decay), lr=p.learning_rate)
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=round(p.warmup_ratio * total), num_training_steps=total
    )
    n_params = sum(x.numel() for x in model.parameters())
    console.print(
        f"[bold]pretrain[/] {'from scratch' if p.init is None else p.init} ({n_params / 1e6:.1f}M params, vocab "
        f"{len(tokenizer)}) · {len(examples)} texts (+{len(eval_texts)} held out) · "
        f"{'whole-word' if p.whole_word_masking else 'token'} masking {p.mlm_probability:.0%} · {total} steps"
    )
    run_id, run_dir = start_run(recipe.resolve(recipe.output_dir), resumable=False)
    history: list[dict[str, Any]] = []
    try:
        log = (run_dir / PROGRESS).open("a", encoding="utf-8")
        lengths = [len(e["input_ids"]) for e in examples]
        step, window, start = 0, [], time.perf_counter()
        ev = mlm_eval_loss(model, eval_batches, device) if eval_batches else None
        history.append({"step": 0, "eval_loss": ev, "eval_perplexity": math.exp(min(ev, 50)) if ev else None})
        model.train()
        columns = (
            TextColumn("[bold]pretrain[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("pretrain", total=total, loss="-")
            for epoch in range(p.epochs):
                for idx in length_grouped_batches(lengths, p.batch_size, p.seed + epoch):
                    batch = mask_batch(collator, [examples[i] for i in idx], pad_id)
                    out = model(**{k: v.to(device) for k, v in batch.items()})
                    out.loss.backward()
                    if p.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), p.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    window.append(out.loss.item())
                    bar.update(task, advance=1, loss=f"{np.mean(window[-20:]):.3f}")
                    if step % 10 == 0 or step == total:
                        rec = {
                            "time": time.time(),
                            "step": step,
                            "total_steps": total,
                            "epoch": round(epoch + (step - epoch * steps_per_epoch) / steps_per_epoch, 4),
                            "loss": float(np.mean(window[-10:])),
                            "lr": scheduler.get_last_lr()[0],
                            "elapsed_s": round(time.perf_counter() - start, 1),
                        }
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                    if eval_batches and (step % p.eval_every_steps == 0 or step == total):
                        ev = mlm_eval_loss(model, eval_batches, device)
                        history.append(
                            {
                                "step": step,
                                "train_loss": float(np.mean(window[-50:])),
                                "eval_loss": ev,
                                "eval_perplexity": math.exp(min(ev, 50)),
                            }
                        )
                    if step >= total:
                        break
                if step >= total:
                    break
        log.close()
        train_seconds = time.perf_counter() - start
        model.save_pretrained(run_dir, safe_serialization=True)
        tokenizer.save_pretrained(run_dir)
        write_json(run_dir / HISTORY, history)
        write_pretrain_report(run_dir / "pretrain_report.html", history, run_dir / PROGRESS, run_id)
        write_json(
            run_dir / MANIFEST,
            {
                "run_id": run_id,
                "kind": "pretrain",
                "name": recipe.name,
                "command": sys.argv,
                "started_at": t0,
                "finished_at": time.time(),
                "wall_time_s": round(time.time() - t0, 2),
                "train_time_s": round(train_seconds, 2),
                "texts": {"train": len(examples), "held_out": len(eval_texts)},
                "steps": step,
                "init": p.init,
                "masking": {"probability": p.mlm_probability, "whole_word": p.whole_word_masking},
                "parameters": n_params,
                "final_eval_loss": history[-1]["eval_loss"] if history else None,
                "pretrain": p.model_dump(mode="json"),
                "versions": package_versions(),
                "git_commit": git_commit(recipe.base_dir),
                "hardware": hardware(device),
            },
        )
        final = finish_run(run_dir)
    except BaseException:
        discard_run(run_dir)
        raise
    last = history[-1] if history else {}
    console.print(
        f"pretrain done: held-out MLM loss {last.get('eval_loss', float('nan')):.3f} "
        f"(perplexity {last.get('eval_perplexity', float('nan')):.1f}); use it with "
        f"model.type: hf-encoder, model.backbone: {final}"
    )
    return final


def _read_progress(progress: Path) -> list[dict[str, Any]]:
    """The per-step records of ``progress.jsonl`` (a torn last line from a crash is skipped)."""
    steps = []
    for line in progress.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record and "loss" in record:
            steps.append(record)
    return steps


def _pretrain_figure(steps: list[dict[str, Any]], evals: list[dict[str, Any]]) -> Any:
    """Loss (train per step, held-out per evaluation) and held-out perplexity, as inline SVG; None if empty."""
    from modelyard.evaluation.html import figure_env, new_figure, svg

    if not steps and not evals:
        return None
    with figure_env("pretrain"):
        fig = new_figure(10.0, 3.6)
        loss, perplexity = fig.subplots(1, 2)
        if steps:
            loss.plot([s["step"] for s in steps], [s["loss"] for s in steps], label="train MLM loss", lw=1)
        if evals:
            loss.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], "o-", label="held-out MLM loss")
            perplexity.plot([h["step"] for h in evals], [h["eval_perplexity"] for h in evals], "o-", color="tab:red")
            perplexity.set_yscale("log")
        loss.set_xlabel("step")
        loss.set_ylabel("loss")
        loss.legend(fontsize=8)
        loss.grid(alpha=0.3)
        perplexity.set_xlabel("step")
        perplexity.set_ylabel("held-out perplexity")
        perplexity.grid(alpha=0.3)
        return svg(fig)


def _number(value: Any, digits: int) -> str:
    """Table cell: fixed decimals, or an em dash for a missing value (step 0 has no training loss)."""
    return "—" if value is None else f"{float(value):.{digits}f}"


def write_pretrain_report(path: Path, history: list[dict[str, Any]], progress: Path, run_id: str) -> None:
    """A self-contained HTML page: training MLM loss per step, held-out loss and perplexity.

    Rendered from ``evaluation/templates/pretrain_report.html.j2`` with the evaluation report's jinja2
    environment (autoescaping on) and figure helpers.

    Args:
        path: The ``.html`` file to write (atomically).
        history: The evaluation records of ``history.json`` (``step``, ``eval_loss``, ``eval_perplexity``,
            ``train_loss`` after step 0).
        progress: ``progress.jsonl``, one training record (``step``, ``loss``, …) per line.
        run_id: Shown in the title and heading.
    """
    from modelyard.evaluation.html import environment

    evals = [h for h in history if h.get("eval_loss") is not None]
    rows = [
        {
            "step": int(h["step"]),
            "train_loss": _number(h.get("train_loss"), 4),
            "eval_loss": _number(h["eval_loss"], 4),
            "eval_perplexity": _number(h.get("eval_perplexity"), 2),
        }
        for h in evals
    ]
    page = (
        environment()
        .get_template("pretrain_report.html.j2")
        .render(run_id=str(run_id), figure=_pretrain_figure(_read_progress(progress), evals), rows=rows)
    )
    atomic_write_text(path, page)
