"""Fine-tune a sequence classifier: the visible training recipe behind ``modelyard train``.

The loop is written out (``for epoch … for batch …``) so a reader can see every step: AdamW with
linear warm-up/decay, gradient accumulation and clipping, autocast for bf16/fp16, per-epoch
validation, best-epoch selection, early stopping, periodic checkpoints and exact resume. Plain
torch handles devices and mixed precision here; a hidden Trainer would make resume semantics and
progress reporting hard to audit.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from modelyard._internal.batching import pad_batch, sorted_batches
from modelyard._internal.io import atomic_write_text, read_json, write_json
from modelyard._internal.rundir import (
    INCOMPLETE,
    discard_run,
    finish_run,
    run_manifest,
    start_run,
    text_model_metadata,
)
from modelyard._internal.runtime import pick_device, pick_dtype, rng_state, seed_everything, set_rng_state
from modelyard.config import LOWER_IS_BETTER, Recipe, load_recipe
from modelyard.errors import ModelyardError
from modelyard.training.batch_sources import ImageBatches, ImageEncoded, TextBatches
from modelyard.training.checkpoint import load_checkpoint, model_state, save_checkpoint

CHECKPOINT_DIR = "checkpoints"
HEADLINE = ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "roc_auc", "log_loss", "ece")


class TrainingInterrupted(ModelyardError):
    """Training stopped before the end; the run directory keeps its last checkpoint for ``--resume``."""


@dataclass
class Encoded:
    """A split as token ids (unpadded) and integer labels."""

    texts: list[str]
    ids: list[list[int]]
    labels: np.ndarray
    soft: np.ndarray | None = None  # teacher probabilities at the distillation temperature (train split)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def encode(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Tokenize without padding (padding happens per batch)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module,
    ids: list[list[int]],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, float | None]:
    """Class probabilities for token id lists (length-sorted batches), plus mean loss if labels given."""
    model.eval()
    n = len(ids)
    probs = np.zeros((n, model.config.num_labels), dtype=np.float64)
    loss_sum = 0.0
    for idx in sorted_batches([len(x) for x in ids], batch_size):
        batch = {k: v.to(device) for k, v in pad_batch([ids[i] for i in idx], pad_id).items()}
        with _autocast(device, dtype):
            logits = model(**batch).logits.float()
        probs[idx] = torch.softmax(logits.double(), dim=-1).cpu().numpy()
        if labels is not None:
            y = torch.as_tensor(labels[idx], device=device)
            loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
    return probs, (loss_sum / n if labels is not None and n else None)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class TrainerState:
    """Everything besides tensors needed to resume exactly where a checkpoint was taken."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


class FineTuneRecipe:
    """setup → train → finalize, with checkpoints in between. One instance per run directory."""

    def __init__(self, recipe: Recipe, run_dir: Path, data: Any, console: Console) -> None:
        self.recipe = recipe
        self.run_dir = run_dir
        self.data = data
        self.console = console
        self.cfg = recipe.train
        self.state = TrainerState()
        self.ckpt_dir = run_dir / CHECKPOINT_DIR
        self.stopped_by_hook = False  # an ``on_epoch_end`` hook raised: the run is abandoned, not resumable

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Build model/tokenizer, tokenize the splits, create optimizer and scheduler."""
        from transformers import get_scheduler

        from modelyard.models import build_model
        from modelyard.models.registry import builder_takes

        if self.cfg.num_threads:
            torch.set_num_threads(self.cfg.num_threads)
        seed_everything(self.cfg.seed)
        self.device = pick_device(self.cfg.device)
        self.dtype = pick_dtype(self.cfg.precision, self.device)
        self.labels: list[str] = list(self.data.labels)
        if self.recipe.task == "image-classification":
            model = self._setup_images(build_model)
        else:
            # Models trained from scratch learn their tokenizer from the training texts.
            takes_texts = builder_takes(self.recipe.model.type, "texts")
            texts = {"texts": self.data.train["text"].tolist()} if takes_texts else {}
            model, tokenizer = build_model(self.recipe.model, self.labels, self.recipe.base_dir, **texts)
            self.model = model.to(self.device)
            self.tokenizer = tokenizer
            self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            label_index = {lab: i for i, lab in enumerate(self.labels)}
            self.splits: dict[str, Any] = {}
            for name in ("train", "valid", "test"):
                frame = getattr(self.data, name)
                texts = frame["text"].tolist()
                self.splits[name] = Encoded(
                    texts=texts,
                    ids=encode(tokenizer, texts, self.recipe.model.max_length),
                    labels=np.array([label_index[x] for x in frame["label"]], dtype=np.int64),
                )
            self.batches: Any = TextBatches(self.splits, self.cfg, self.pad_id, self.device)
        # The loop's forward pass; torch.compile wraps it (weights, checkpoints and eval use self.model).
        self.train_model = torch.compile(self.model) if self.cfg.compile else self.model

        if self.cfg.distill is not None:
            self.splits["train"].soft = self._teacher_targets()
        groups = param_groups(model, self.cfg.learning_rate, self.cfg.weight_decay, self.cfg.layer_lr_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=self.cfg.learning_rate)
        self.ema = None
        if self.cfg.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            # torch's AveragedModel keeps the EMA copy (and its update count) as an ordinary module. Buffers
            # (position ids) are constants here; averaging integer buffers would corrupt them.
            # Image models average their buffers too: batch-norm running statistics must follow the averaged
            # weights (their integer num_batches_tracked is unused with batch norm's default momentum).
            self.ema = AveragedModel(
                self.model,
                multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema_decay),
                use_buffers=self.recipe.task == "image-classification",
            )
        n_batches = math.ceil(len(self.splits["train"].labels) / self.cfg.batch_size)
        self.steps_per_epoch = math.ceil(n_batches / self.cfg.gradient_accumulation_steps)
        self.total_steps = self.steps_per_epoch * self.cfg.epochs
        if self.cfg.warmup_steps is not None:
            self.warmup_steps = min(self.cfg.warmup_steps, self.total_steps)
        else:
            self.warmup_steps = round((self.cfg.warmup_ratio or 0.0) * self.total_steps)
        self.scheduler = get_scheduler(
            "linear", self.optimizer, num_warmup_steps=self.warmup_steps, num_training_steps=self.total_steps
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.n_params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if trainable != self.n_params:  # model.finetune lora / frozen
            self.console.print(f"[bold]trainable[/] {trainable:,} of {self.n_params:,} parameters")
        # Print derived values instead of silently deciding them (nanoGPT style).
        self.console.print(
            f"[bold]model[/] {model_name(self.recipe)} ({self.n_params / 1e6:.1f}M params) · device {self.device}"
            f" · precision {self.dtype or 'fp32'} · {len(self.splits['train'].labels)} train examples"
            f" · {self.steps_per_epoch} steps/epoch × {self.cfg.epochs} epochs = {self.total_steps} steps"
            f" · warm-up {self.warmup_steps} steps · effective batch"
            f" {self.cfg.batch_size * self.cfg.gradient_accumulation_steps}"
        )

    def _setup_images(self, build_model: Callable[..., Any]) -> torch.nn.Module:
        """Image runs: build the model for the data's shape, hold the splits as uint8 tensors on the device.

        On a GPU the images live on it (no host→device copy per batch). Model and batches use channels-last
        memory, which conv kernels prefer (cuDNN, and oneDNN on CPU: 1.5× faster training of cnn-small on
        a 2-core CPU); bf16 autocast comes from ``train.precision``.
        """
        report = self.data.report
        model, _ = build_model(
            self.recipe.model,
            self.labels,
            self.recipe.base_dir,
            image_shape=report["image_shape"],
            normalization=report["normalization"],
        )
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.tokenizer, self.pad_id = None, 0
        store = self.device if self.device.type == "cuda" else torch.device("cpu")
        self.splits = {
            name: ImageEncoded(
                texts=list(getattr(self.data, name).refs),
                images=torch.from_numpy(np.ascontiguousarray(getattr(self.data, name).images)).to(store),
                labels=np.asarray(getattr(self.data, name).labels, dtype=np.int64),
            )
            for name in ("train", "valid", "test")
        }
        self.batches = ImageBatches(self.splits, self.cfg, self.recipe.augment, self.device, channels_last=True)
        return self.model

    def _teacher_targets(self) -> np.ndarray:
        """The teacher's class probabilities on the train split, re-ordered to our labels and tempered."""
        from modelyard.inference import load

        spec = self.cfg.distill
        assert spec is not None
        teacher = load(self.recipe.resolve(spec.teacher), device=str(self.device))
        if sorted(teacher.labels) != sorted(self.labels):
            raise ModelyardError(
                f"train.distill.teacher {spec.teacher} predicts labels {teacher.labels}, but the data has "
                f"{self.labels}; distillation needs the same label set"
            )
        train = self.splits["train"]
        self.console.print(f"distill: teacher {spec.teacher} scoring {len(train.texts)} training texts …")
        probs = np.asarray(teacher.predict_proba(train.texts), dtype=np.float64)
        probs = probs[:, [teacher.labels.index(lab) for lab in self.labels]]
        # softmax(logits / T) from probabilities: p^(1/T), renormalised (works for teachers that only give p).
        tempered = np.power(np.clip(probs, 1e-12, 1.0), 1.0 / spec.temperature)
        tempered /= tempered.sum(axis=1, keepdims=True)
        agree = float(np.mean(probs.argmax(axis=1) == train.labels))
        self.console.print(f"distill: teacher agrees with the gold label on {agree:.1%} of the training split")
        del teacher
        return tempered.astype(np.float32)

    def loss(self, logits: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        """Cross-entropy on gold labels, or the distillation mix (Hinton et al.: T² · KL + α · CE).

        With ``train.rdrop_alpha`` > 0 the logits are those of the batch seen twice (two dropout masks):
        R-Drop (Liang et al., 2021) averages the two losses and adds α · the symmetric KL divergence between
        the two predicted distributions. Written here because it is a few lines of the loss; no library has it.
        """
        alpha = self.cfg.rdrop_alpha
        if alpha > 0 and len(logits) == 2 * len(idx):
            first, second = logits.chunk(2)
            lp, lq = torch.log_softmax(first, dim=-1), torch.log_softmax(second, dim=-1)
            kl = torch.nn.functional.kl_div(lp, lq, log_target=True, reduction="batchmean")
            kl = kl + torch.nn.functional.kl_div(lq, lp, log_target=True, reduction="batchmean")
            return 0.5 * (self._loss(first, idx) + self._loss(second, idx)) + alpha * 0.5 * kl
        return self._loss(logits, idx)

    def _loss(self, logits: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        train = self.splits["train"]
        y = torch.as_tensor(train.labels[idx], device=logits.device)
        ce = torch.nn.functional.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        spec = self.cfg.distill
        if spec is None or train.soft is None:
            return ce
        t = spec.temperature
        target = torch.as_tensor(train.soft[idx], device=logits.device)
        kl = torch.nn.functional.kl_div(torch.log_softmax(logits / t, dim=-1), target, reduction="batchmean") * (t * t)
        return spec.alpha * ce + (1.0 - spec.alpha) * kl

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Checkpoint model, optimizer, scheduler, RNG and data position (at an optimizer-step boundary)."""
        state = self.state.__dict__ | {"rng": rng_state()}
        save_checkpoint(
            self.ckpt_dir / "last",
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            trainer_state=state,
            extra_modules={"ema": self.ema} if self.ema is not None else None,
        )

    def load_checkpoint(self) -> None:
        """Restore the last checkpoint of this run directory."""
        raw = load_checkpoint(
            self.ckpt_dir / "last",
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            extra_modules={"ema": self.ema} if self.ema is not None else None,
        )
        set_rng_state(raw.pop("rng"))
        self.state = TrainerState(**raw)
        self.console.print(
            f"resuming at epoch {self.state.epoch + 1}, batch {self.state.batch_in_epoch}, "
            f"step {self.state.global_step}/{self.total_steps}"
        )

    # ------------------------------------------------------------------ evaluation
    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and saved: the moving average when ``train.ema_decay`` is set."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate_split(self, name: str) -> tuple[dict[str, Any], np.ndarray]:
        """Metrics and probabilities for one split with the current weights."""
        from modelyard.evaluation.metrics import compute_metrics

        enc = self.splits[name]
        probs, loss = self.batches.predict(self.eval_model, name, self.dtype)
        return compute_metrics(enc.labels, probs, self.labels, loss=loss), probs

    # ------------------------------------------------------------------ the loop
    def train(
        self,
        stop_after_step: int | None = None,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        """Run (or continue) the epochs. ``stop_after_step`` simulates an interruption (tests, time limits).

        ``on_epoch_end(epoch, history_entry)`` is called after each epoch's validation and checkpoint
        (epochs count from 1); an exception it raises stops training and propagates (tuning prunes a
        trial this way).
        """
        cfg, st = self.cfg, self.state
        accum = cfg.gradient_accumulation_steps
        progress_path = self.run_dir / "progress.jsonl"
        log = progress_path.open("a", encoding="utf-8")
        window_start, window_samples, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
        session_start, session_steps0 = time.perf_counter(), st.global_step
        columns = (
            TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[sps]} samples/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(
                "train",
                total=self.total_steps,
                completed=st.global_step,
                epoch=st.epoch + 1,
                loss="-",
                sps="-",
            )
            for epoch in range(st.epoch, cfg.epochs):
                batches = self.batches.order(epoch)
                self.model.train()
                epoch_t0 = time.perf_counter()
                for b in range(st.batch_in_epoch, len(batches)):
                    idx = batches[b]
                    inputs = self.batches.inputs(idx, epoch, b)
                    with _autocast(self.device, self.dtype):
                        if cfg.rdrop_alpha > 0:  # two dropout masks in one forward pass of the doubled batch
                            inputs = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in inputs.items()}
                        logits = self.train_model(**inputs).logits
                    loss = self.loss(logits.float(), idx)
                    if not torch.isfinite(loss):
                        raise ModelyardError(
                            f"training diverged (loss {loss.item()}) at step {st.global_step}; "
                            "lower train.learning_rate or use train.precision=fp32"
                        )
                    scaled = loss / accum
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                    st.epoch_loss_sum += loss.item() * len(idx)
                    st.epoch_loss_count += len(idx)
                    window_loss += loss.item() * len(idx)
                    window_n += len(idx)
                    window_samples += len(idx)
                    if (b + 1) % accum and b + 1 != len(batches):
                        continue
                    # --- optimizer step (end of an accumulation group, or a short last group)
                    if self.scaler:
                        self.scaler.unscale_(self.optimizer)
                    if cfg.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    if self.scaler:
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    else:
                        self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.ema is not None:
                        self.ema.update_parameters(self.model)
                    st.global_step += 1
                    st.batch_in_epoch = b + 1

                    now = time.perf_counter()
                    done_here = st.global_step - session_steps0
                    eta = (now - session_start) / max(done_here, 1) * (self.total_steps - st.global_step)
                    if st.global_step % cfg.log_every_steps == 0 or b + 1 == len(batches):
                        sps = window_samples / max(now - window_start, 1e-9)
                        record = {
                            "time": time.time(),
                            "step": st.global_step,
                            "total_steps": self.total_steps,
                            "epoch": round(epoch + (b + 1) / len(batches), 4),
                            "loss": window_loss / max(window_n, 1),
                            "lr": self.scheduler.get_last_lr()[0],
                            "samples_per_s": round(sps, 2),
                            "eta_s": round(eta, 1),
                            "elapsed_s": round(st.train_seconds + now - session_start, 1),
                        }
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                        bar.update(task, loss=f"{record['loss']:.4f}", sps=f"{sps:.1f}")
                        if not self.console.is_terminal and _crossed_tenth(
                            st.global_step, cfg.log_every_steps, self.total_steps
                        ):
                            # No live bar in logs/CI: a plain line every ~10% keeps progress visible.
                            bar.console.print(
                                f"step {st.global_step}/{self.total_steps} · epoch {record['epoch']:.2f} · "
                                f"loss {record['loss']:.4f} · {sps:.1f} samples/s · ETA {eta:.0f}s"
                            )
                        window_start, window_samples, window_loss, window_n = now, 0, 0.0, 0
                    bar.update(task, completed=st.global_step, epoch=epoch + 1)
                    if cfg.checkpoint_every_steps and st.global_step % cfg.checkpoint_every_steps == 0:
                        self._checkpoint_with_time(session_start)
                        session_start, session_steps0 = time.perf_counter(), st.global_step
                    if stop_after_step is not None and st.global_step >= stop_after_step:
                        log.close()
                        raise TrainingInterrupted(f"stopped after step {st.global_step} as requested")

                # --- end of epoch: validate, select, maybe stop, checkpoint
                metrics, _ = self.evaluate_split("valid")
                entry = {
                    "epoch": epoch + 1,
                    "step": st.global_step,
                    "train_loss": st.epoch_loss_sum / max(st.epoch_loss_count, 1),
                    "valid_loss": metrics["loss"],
                    "epoch_seconds": round(time.perf_counter() - epoch_t0, 2),
                }
                entry |= {f"valid_{k}": metrics[k] for k in HEADLINE}
                st.history.append(entry)
                log.write(json.dumps({"event": "eval", "time": time.time(), **entry}) + "\n")
                log.flush()
                self._select_best(entry)
                bar.console.print(
                    f"epoch {epoch + 1}: train loss {entry['train_loss']:.4f} · valid loss {entry['valid_loss']:.4f}"
                    f" · valid accuracy {entry['valid_accuracy']:.4f} · valid macro-F1 {entry['valid_macro_f1']:.4f}"
                    + (" · best so far" if st.best_epoch == epoch + 1 else "")
                )
                st.epoch, st.batch_in_epoch = epoch + 1, 0
                st.epoch_loss_sum, st.epoch_loss_count = 0.0, 0
                if cfg.patience is not None and st.bad_epochs >= cfg.patience and epoch + 1 < cfg.epochs:
                    st.stopped_early = True
                    bar.console.print(f"early stopping: valid {cfg.metric} did not improve for {cfg.patience} epochs")
                self._checkpoint_with_time(session_start)
                session_start, session_steps0 = time.perf_counter(), st.global_step
                if on_epoch_end is not None:
                    try:
                        on_epoch_end(epoch + 1, dict(entry))
                    except BaseException:
                        self.stopped_by_hook = True
                        log.close()
                        raise
                if st.stopped_early:
                    break
        log.close()

    def _checkpoint_with_time(self, session_start: float) -> None:
        self.state.train_seconds += time.perf_counter() - session_start
        self.save_checkpoint()

    def _select_best(self, entry: dict[str, Any]) -> None:
        st, metric = self.state, self.cfg.metric
        value = entry["valid_loss"] if metric == "loss" else entry.get(f"valid_{metric}")
        if value is None:  # e.g. roc_auc undefined on this split: fall back to loss
            value, metric = entry["valid_loss"], "loss"
        lower = metric in LOWER_IS_BETTER
        better = st.best_value is None or (value < st.best_value if lower else value > st.best_value)
        if better:
            st.best_value, st.best_epoch, st.bad_epochs = float(value), entry["epoch"], 0
            from safetensors.torch import save_file

            self.ckpt_dir.mkdir(exist_ok=True)
            tmp = self.ckpt_dir / "best.safetensors.tmp"
            save_file(model_state(self.eval_model), str(tmp))
            tmp.replace(self.ckpt_dir / "best.safetensors")
        else:
            st.bad_epochs += 1

    # ------------------------------------------------------------------ finalize
    def finalize(self) -> dict[str, Any]:
        """Load the best epoch's weights, evaluate valid/test, write model/, metrics, predictions, report."""
        import pandas as pd
        from safetensors.torch import load_file

        best = self.ckpt_dir / "best.safetensors"
        if best.is_file():
            self.model.load_state_dict(load_file(str(best), device=str(self.device)))
        elif self.ema is not None:
            self.model.load_state_dict(self.ema.module.state_dict())
        self.ema = None  # from here on, self.model holds the weights that are evaluated and saved
        metrics, frames = {}, []
        for split in ("valid", "test"):
            m, probs = self.evaluate_split(split)
            metrics[split] = m
            frames.append(
                prediction_frame(split, self.splits[split].texts, self.splits[split].labels, probs, self.labels)
            )
        write_json(self.run_dir / "metrics.json", metrics)
        predictions = pd.concat(frames, ignore_index=True)
        predictions.to_parquet(self.run_dir / "predictions.parquet", index=False)
        save_model_dir(self.run_dir / "model", self.model, self.tokenizer, self.recipe, self.labels)
        write_json(self.run_dir / "history.json", self.state.history)
        return metrics


_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def param_groups(
    model: torch.nn.Module, lr: float, weight_decay: float, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on biases/norms; optional layer-wise learning-rate decay.

    With ``layer_decay`` d, parameters of encoder layer i (of L) get ``lr * d**(L - i)``, embeddings
    ``lr * d**(L + 1)`` and everything above the encoder (pooler, head) ``lr`` — the ELECTRA/BEiT recipe
    that keeps the pretrained lower layers close to where they started. transformers has no helper for
    this outside its Trainer subclasses, hence the few lines here.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    found = [int(m.group(1)) for n, _ in named if (m := _LAYER_INDEX.search("." + n))]
    n_layers = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0) or (
        max(found) + 1 if found else 0
    )

    def depth(name: str) -> int:
        if m := _LAYER_INDEX.search("." + name):
            return int(m.group(1)) + 1
        return 0 if "embed" in name else n_layers + 1

    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, p in named:
        scale = 1.0 if layer_decay is None else layer_decay ** (n_layers + 1 - depth(name))
        decay = not name.endswith(_NO_DECAY)
        g = groups.setdefault(
            (scale, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale}
        )
        g["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], not k[1]))]


def _crossed_tenth(step: int, every: int, total: int) -> bool:
    """Whether the last ``every`` steps crossed a 10% boundary of ``total``."""
    return step * 10 // total != max(step - every, 0) * 10 // total or step == total


def prediction_frame(split: str, texts: list[str], y: np.ndarray | None, probs: np.ndarray, labels: list[str]) -> Any:
    """The predictions table shared by train, evaluate and the report."""
    import pandas as pd

    pred = probs.argmax(axis=1)
    frame = pd.DataFrame(
        {
            "split": split,
            "text": texts,
            "label": [labels[i] for i in y] if y is not None else None,
            "pred": [labels[i] for i in pred],
            "confidence": probs.max(axis=1),
        }
    )
    for j, lab in enumerate(labels):
        frame[f"prob_{lab}"] = probs[:, j]
    return frame


def save_model_dir(path: Path, model: Any, tokenizer: Any, recipe: Recipe, labels: list[str]) -> None:
    """Save a Hugging Face layout directory that plain ``transformers`` loads, plus ``modelyard.json``."""
    if recipe.task == "image-classification":
        from modelyard.training.image_run import save_image_model_dir

        save_image_model_dir(path, model, recipe, labels)
        return
    path.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):  # peft LoRA: merge the adapters so plain transformers loads it
        model = model.merge_and_unload()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    meta = text_model_metadata(recipe, labels, backbone=recipe.model.backbone, model_type=recipe.model.type)
    write_json(path / "modelyard.json", meta)


# ---------------------------------------------------------------------- orchestration


def train(
    recipe: Recipe,
    *,
    resume: Path | None = None,
    console: Console | None = None,
    stop_after_step: int | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    data: Any = None,
) -> Path:
    """Train a recipe into a new run directory (or resume an unfinished one) and return its path.

    ``data`` (a :class:`~modelyard.data.PreparedData`, e.g. :func:`load_splits` of another run) trains
    on those exact splits instead of preparing ``recipe.data`` — how distillation and retraining
    compare like with like.

    The run lives in ``<output_dir>/<run-id>.incomplete`` until everything is written, then is
    renamed to ``<output_dir>/<run-id>``. A failure before the first checkpoint removes it; a later
    interruption keeps it (with ``checkpoints/last``) for ``--resume``. ``on_epoch_end(epoch, entry)``
    is called after each epoch's validation; an exception it raises propagates and the run directory
    is discarded (it was stopped on purpose, e.g. a pruned tuning trial, so there is nothing to resume).

    Raises:
        ModelyardError: bad data, recipe or backbone (nothing is left behind), or an interruption.
    """
    from modelyard.data import prepare_data
    from modelyard.models import resolve_backbone

    console = console or Console(stderr=True)
    t0 = time.time()
    if resume is not None:
        run_dir, recipe, data = _reopen(Path(resume), recipe, console)
        run_id = run_dir.name.removesuffix(INCOMPLETE)
    else:
        # Everything that can fail on user input fails here, before a directory exists.
        if data is None and recipe.task == "image-classification":
            from modelyard.data.images import prepare_images

            data = prepare_images(recipe.data, recipe.base_dir)
        elif data is None:
            data = prepare_data(recipe.data, recipe.base_dir)
        if recipe.model.type == "hf-encoder":
            resolve_backbone(recipe.model.backbone, recipe.base_dir)
        elif recipe.model.type == "ensemble":
            for member in recipe.model.members:  # every member's backbone before a directory exists
                if member.type == "hf-encoder":
                    resolve_backbone(member.backbone, recipe.base_dir)
        elif recipe.model.type == "prompt":
            from modelyard.llm.cache import resolve_lm
            from modelyard.training.prompt import prompt_settings

            prompt_settings(recipe, list(data.labels))  # template/verbalizer errors before a directory exists
            if recipe.model.prompt is not None and recipe.model.prompt.backend == "local":
                resolve_lm(recipe.model.backbone, recipe.base_dir)  # builds the safetensors cache once
        print_data_report(console, data.report)
        run_id, run_dir = start_run(recipe.resolve(recipe.output_dir))
        _write_inputs(run_dir, recipe, data)
    console.print(f"run [bold]{run_id}[/] → {run_dir}")
    if recipe.model.type == "prompt":
        if resume is not None:
            raise ModelyardError("prompt runs have no training steps to resume; start a new run")
        return _prompt_run(recipe, data, run_id, run_dir, console, t0)
    if recipe.model.type == "tfidf-logreg":
        from modelyard.training.classical import fit_tfidf_run

        if resume is not None:
            raise ModelyardError("tfidf-logreg runs have no training steps to resume; start a new run")
        return _prompt_run(recipe, data, run_id, run_dir, console, t0, fit=fit_tfidf_run)
    if recipe.model.type == "ensemble":
        from modelyard.training.ensemble import fit_ensemble_run

        if resume is not None:
            raise ModelyardError("ensemble runs cannot be resumed (each member is its own run); start a new run")
        return _prompt_run(recipe, data, run_id, run_dir, console, t0, fit=fit_ensemble_run)

    ft = FineTuneRecipe(recipe, run_dir, data, console)
    try:
        ft.setup()
        if resume is not None:
            ft.load_checkpoint()
        ft.train(stop_after_step=stop_after_step, on_epoch_end=on_epoch_end)
        metrics = ft.finalize()
        _write_report_and_manifest(ft, run_id, t0, resumed_from=str(resume) if resume else None)
        if not recipe.train.keep_checkpoints:
            import shutil

            shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
        final = finish_run(run_dir)
    except BaseException as err:
        resumable = (run_dir / CHECKPOINT_DIR / "last" / "trainer_state.json").is_file()
        if ft.stopped_by_hook:
            discard_run(run_dir)
        elif resumable:
            console.print(f"[yellow]run interrupted; resume with: modelyard train RECIPE --resume {run_dir}[/]")
            if isinstance(err, KeyboardInterrupt):
                raise TrainingInterrupted(f"interrupted; resume with --resume {run_dir}") from None
        elif resume is None:
            discard_run(run_dir)
        raise
    print_metrics(console, metrics)
    console.print(f"report: {final / 'report.html'}")
    return final


def _prompt_run(
    recipe: Recipe, data: Any, run_id: str, run_dir: Path, console: Console, t0: float, fit: Callable | None = None
) -> Path:
    """A run without a training loop (prompt models; ``fit`` = another one-shot fit such as tfidf-logreg)."""
    from modelyard.training.prompt import fit_prompt_run

    try:
        metrics = (fit or fit_prompt_run)(recipe, data, run_id, run_dir, console, t0)
        final = finish_run(run_dir)
    except BaseException:
        discard_run(run_dir)  # nothing to resume: scoring starts over
        raise
    print_metrics(console, metrics)
    console.print(f"report: {final / 'report.html'}")
    return final


def write_oneshot_outputs(
    run_dir: Path,
    recipe: Recipe,
    run_id: str,
    t0: float,
    data: Any,
    *,
    metrics: dict[str, Any],
    frames: list[Any],
    info: dict[str, Any],
    **manifest_fields: Any,
) -> None:
    """The outputs of a run without a training loop (tfidf-logreg, prompt, ensemble).

    Writes ``metrics.json``, ``predictions.parquet`` (the concatenated ``frames``), an empty ``history.json``,
    ``report.html`` and ``manifest.json`` (``manifest_fields`` go to :func:`run_manifest` next to the data
    fingerprints and split sizes).
    """
    import pandas as pd

    from modelyard.evaluation.report import write_report

    write_json(run_dir / "metrics.json", metrics)
    predictions = pd.concat(frames, ignore_index=True)
    predictions.to_parquet(run_dir / "predictions.parquet", index=False)
    write_json(run_dir / "history.json", [])
    write_report(
        run_dir / "report.html",
        title=f"{recipe.name} · {run_id}",
        metrics=metrics,
        labels=list(data.labels),
        history=[],
        steps=[],
        predictions=predictions,
        info=info,
    )
    manifest = run_manifest(
        recipe,
        run_id,
        t0,
        data_fingerprints=data.fingerprints,
        data_sizes={s: len(getattr(data, s)) for s in ("train", "valid", "test")},
        **manifest_fields,
    )
    write_json(run_dir / "manifest.json", manifest)


def _write_inputs(run_dir: Path, recipe: Recipe, data: Any) -> None:
    atomic_write_text(run_dir / "recipe.yaml", recipe.to_yaml())
    write_json(run_dir / "data_report.json", data.report)
    split_dir = run_dir / "splits"
    if recipe.task == "image-classification":
        from modelyard.data.images import write_image_splits

        write_image_splits(split_dir, data)
        write_json(run_dir / "fingerprints.json", data.fingerprints)
        return
    split_dir.mkdir()
    for name in ("train", "valid", "test"):
        getattr(data, name).to_parquet(split_dir / f"{name}.parquet", index=False)
    write_json(split_dir / "labels.json", list(data.labels))
    write_json(run_dir / "fingerprints.json", data.fingerprints)


def _reopen(run_dir: Path, recipe: Recipe, console: Console) -> tuple[Path, Recipe, Any]:
    """Reload an unfinished run: its own resolved recipe and saved splits, so nothing can drift."""
    if not run_dir.is_dir():
        raise ModelyardError(f"--resume: run directory not found: {run_dir}")
    if not run_dir.name.endswith(INCOMPLETE):
        raise ModelyardError(f"--resume: {run_dir} is a finished run; start a new one instead")
    if not (run_dir / CHECKPOINT_DIR / "last" / "trainer_state.json").is_file():
        raise ModelyardError(f"--resume: {run_dir} has no checkpoint to resume from")
    saved = load_recipe(run_dir / "recipe.yaml")
    saved._base_dir = recipe.base_dir
    if saved.model_dump() != recipe.model_dump():
        console.print(
            "[yellow]note: the recipe differs from the one this run started with; "
            "resuming with the run's own recipe.yaml[/]"
        )
    data = load_splits(run_dir)
    return run_dir, saved, data


def load_splits(run_dir: Path) -> Any:
    """The exact train/valid/test splits (and labels, data report, fingerprints) a run was trained on."""
    import pandas as pd

    from modelyard.data import PreparedData

    split_dir = Path(run_dir) / "splits"
    if (split_dir / "train.npz").is_file():
        from modelyard.data.images import read_image_splits

        return read_image_splits(run_dir)
    if not (split_dir / "labels.json").is_file():
        raise ModelyardError(f"{run_dir} has no splits/ (not a modelyard run directory?)")
    frames = {n: pd.read_parquet(split_dir / f"{n}.parquet") for n in ("train", "valid", "test")}
    return PreparedData(
        **frames,
        labels=read_json(split_dir / "labels.json"),
        report=read_json(Path(run_dir) / "data_report.json"),
        fingerprints=read_json(Path(run_dir) / "fingerprints.json"),
    )


def _write_report_and_manifest(ft: FineTuneRecipe, run_id: str, t0: float, resumed_from: str | None) -> None:
    import pandas as pd

    from modelyard.evaluation.report import write_report

    run_dir, recipe = ft.run_dir, ft.recipe
    steps = [r for r in read_jsonl(run_dir / "progress.jsonl") if "event" not in r]
    manifest = run_manifest(
        recipe,
        run_id,
        t0,
        seed={"train": recipe.train.seed, "data": recipe.data.seed},
        train_seconds=ft.state.train_seconds,
        device=ft.device,
        precision=str(ft.dtype or "fp32"),
        data_fingerprints=ft.data.fingerprints,
        data_sizes={k: len(v.labels) for k, v in ft.splits.items()},
        model={"type": recipe.model.type, "backbone": recipe.model.backbone, "parameters": ft.n_params},
        resumed_from=resumed_from,
        epochs_completed=ft.state.epoch,
        best_epoch=ft.state.best_epoch,
        stopped_early=ft.state.stopped_early,
        total_steps=ft.state.global_step,
    )
    info = {
        "run": run_id,
        "recipe name": recipe.name,
        "backbone": model_name(recipe),
        "parameters": f"{ft.n_params:,}",
        "device": str(ft.device),
        "precision": manifest["precision"],
        "train time (s)": manifest["train_time_s"],
        "best epoch": ft.state.best_epoch,
        "data": recipe.data.path,
        "train / valid / test": " / ".join(str(len(ft.splits[s].labels)) for s in ("train", "valid", "test")),
    }
    write_report(
        run_dir / "report.html",
        title=f"{recipe.name} · {run_id}",
        metrics=read_json(run_dir / "metrics.json"),
        labels=ft.labels,
        history=ft.state.history,
        steps=steps,
        predictions=pd.read_parquet(run_dir / "predictions.parquet"),
        info=info,
    )
    if recipe.task == "image-classification":
        from modelyard.training.image_run import add_mistake_grid

        add_mistake_grid(run_dir / "report.html", ft.splits["test"], ft.labels, run_dir / "predictions.parquet")
    write_json(run_dir / "manifest.json", manifest)


def model_name(recipe: Recipe) -> str:
    """How a run's model is named in logs and reports: the backbone for text, the architecture for images."""
    return recipe.model.type if recipe.task == "image-classification" else recipe.model.backbone


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file, skipping a torn last line (the writer may have been killed mid-line)."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def print_data_report(console: Console, report: dict[str, Any]) -> None:
    """One compact summary of what the data stage kept and dropped."""
    dropped = {k: v for k, v in report.get("dropped", {}).items() if v}
    sizes = report.get("split_sizes", {})
    console.print(
        f"[bold]data[/] {report.get('source')}: {report.get('rows_in')} rows in → {report.get('rows_out')} kept"
        + (f" (dropped: {', '.join(f'{k} {v}' for k, v in dropped.items())})" if dropped else "")
        + f" · classes {report.get('class_balance')} · split {sizes}"
    )


def print_metrics(console: Console, metrics: dict[str, Any]) -> None:
    """A table of the headline metrics per split."""
    from rich.table import Table

    table = Table(title="metrics")
    table.add_column("split")
    for k in HEADLINE:
        table.add_column(k, justify="right")
    for split, m in metrics.items():
        table.add_row(split, *("-" if m.get(k) is None else f"{m[k]:.4f}" for k in HEADLINE))
    console.print(table)
