"""The training loop shared by every model kind that trains with gradients: setup → train → finalize.

The loop is written out (``for epoch … for batch …``) so a reader can see every step: AdamW with
linear warm-up/decay, gradient accumulation and clipping, autocast for bf16/fp16, per-epoch
validation, best-epoch selection, early stopping, periodic checkpoints and exact resume. Plain
torch handles devices and mixed precision here; a hidden Trainer would make resume semantics and
progress reporting hard to audit. What differs between kinds comes from the registry
(:mod:`modelyard.kinds`: build, save) and the batch source (text or images); the losses are the pure
functions of :mod:`modelyard.training.losses`. Creating, resuming and finishing run directories is
:mod:`modelyard.training.run`.
"""

from __future__ import annotations

import json
import math
import os
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

import modelyard.training.losses as losses
import modelyard.training.multilabel as multilabel
from modelyard._internal.io import write_json
from modelyard._internal.labels import MULTI_LABEL
from modelyard._internal.layout import CHECKPOINTS_DIR, HISTORY, METRICS, MODEL_DIR, PREDICTIONS, PROGRESS
from modelyard._internal.runtime import model_state, pick_device, pick_dtype, rng_state, seed_everything, set_rng_state
from modelyard._internal.storage import ensure_free_space, storage_errors
from modelyard.config import LOWER_IS_BETTER, Recipe
from modelyard.errors import ModelyardError
from modelyard.evaluation.metrics import HEADLINE, compute_metrics
from modelyard.evaluation.predictions import prediction_frame
from modelyard.kinds import get_kind
from modelyard.training.batch_sources import (
    Encoded,
    ImageBatches,
    ImageEncoded,
    autocast,
    encode,
)
from modelyard.training.checkpoint import load_checkpoint, save_checkpoint, state_bytes
from modelyard.training.distill import teacher_targets
from modelyard.training.distributed import Heartbeats, World, rank_state, restore_rank_state
from modelyard.training.generated_data import add_generated
from modelyard.training.optim import param_groups
from modelyard.training.privacy import DPTraining
from modelyard.training.text_augment import text_batches


class TrainingInterrupted(ModelyardError):
    """Training stopped before the end; the run directory keeps its last checkpoint for ``--resume``."""


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

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        data: Any,
        console: Console,
        world: World | None = None,
        heartbeats: Heartbeats | None = None,
    ) -> None:
        self.recipe = recipe
        self.world = world or World()  # distributed: this rank's place in a DDP job (training.distributed)
        self.heartbeats = heartbeats
        self.run_dir = run_dir
        self.data = data
        self.console = console
        self.cfg = recipe.train
        self.state = TrainerState()
        self.ckpt_dir = run_dir / CHECKPOINTS_DIR
        self.kind = get_kind(recipe.model.type)
        self.stopped_by_hook = False  # an ``on_epoch_end`` hook raised: the run is abandoned, not resumable
        self.multi_label = recipe.task == MULTI_LABEL  # label sets: BCE, sigmoid, thresholds (training.multilabel)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Build model/tokenizer, tokenize the splits, create optimizer and scheduler."""
        from transformers import get_scheduler

        if self.cfg.num_threads:
            torch.set_num_threads(self.cfg.num_threads)
        seed_everything(self.cfg.seed)
        self.device = self.world.place(pick_device(self.cfg.device))
        self.dtype = pick_dtype("fp32" if self.cfg.privacy else self.cfg.precision, self.device)
        self.labels: list[str] = list(self.data.labels)
        kind = self.kind
        assert kind.build is not None, f"model kind {kind.name} is a one-shot fit, not a loop kind"
        if kind.modality == "image":
            model = self._setup_images(kind.build)
        else:
            # Models trained from scratch learn their tokenizer from the training texts (few-shot kinds: + labels).
            texts = kind.build_facts(self.data.train)
            model, tokenizer = kind.build(self.recipe.model, self.labels, self.recipe.base_dir, **texts)
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
                    labels=multilabel.targets(frame, self.labels)
                    if self.multi_label
                    else np.array([label_index[x] for x in frame["label"]], dtype=np.int64),
                )
            self.batches: Any = text_batches(self)  # train.augment.text: re-augmented each epoch
        self.dp = DPTraining.for_loop(self) if self.cfg.privacy else None  # train.privacy (training.privacy)
        # The loop's forward pass; torch.compile wraps it (weights, checkpoints and eval use self.model).
        # Under DDP (distributed.*) the forward pass is DDP's, which averages gradients over the ranks.
        forward = self.world.wrap(self.model, self.device)
        self.train_model = self.dp.module if self.dp else torch.compile(forward) if self.cfg.compile else forward
        self.world.seed_dropout(self.cfg.seed)
        self.workers = self.world.gather_json(
            {"rank": self.world.rank, "host": self.world.host, "device": str(self.device)}
        )

        if self.cfg.distill is not None:
            self.splits["train"].soft = self._teacher_targets()
        groups = param_groups(model, self.cfg.learning_rate, self.cfg.weight_decay, self.cfg.layer_lr_decay)
        # fused: one kernel over every parameter (CPU since torch 2.4, and CUDA) rather than a Python loop over
        # ~100 tensors per step — what transformers.Trainer uses by default (adamw_torch_fused). Not under DP, where
        # opacus drives the optimizer step itself.
        optimizer = torch.optim.AdamW(groups, lr=self.cfg.learning_rate, fused=not self.cfg.privacy)
        self.optimizer = self.dp.wrap(optimizer) if self.dp else optimizer  # DP: clip per example, noise, account
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
                use_buffers=kind.modality == "image",
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
            f"[bold]model[/] {kind.name_of(self.recipe.model)} ({self.n_params / 1e6:.1f}M params)"
            f" · device {self.device}"
            f" · precision {self.dtype or 'fp32'} · {len(self.splits['train'].labels)} train examples"
            f" · {self.steps_per_epoch} steps/epoch × {self.cfg.epochs} epochs = {self.total_steps} steps"
            f" · warm-up {self.warmup_steps} steps · effective batch"
            f" {self.cfg.batch_size * self.cfg.gradient_accumulation_steps}"
            + (f" over {self.world.size} {self.world.backend} workers" if self.world.active else "")
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
        self.splits["train"] = add_generated(self.recipe, self.splits["train"], self.labels, self.console)
        self.batches = ImageBatches(self.splits, self.cfg, self.recipe.augment, self.device, channels_last=True)
        return self.model

    def _teacher_targets(self) -> np.ndarray:
        """The teacher's tempered class probabilities on the train split (:mod:`modelyard.training.distill`)."""
        train = self.splits["train"]
        return teacher_targets(self.recipe, train.texts, train.labels, self.labels, str(self.device), self.console)

    def loss(self, logits: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        """The batch's loss from :mod:`modelyard.training.losses`, as the recipe asks.

        Cross-entropy on gold labels (``train.label_smoothing``), or the distillation mix with a teacher
        (``train.distill``); with ``train.rdrop_alpha`` > 0 the logits are those of the batch seen twice
        (two dropout masks) and R-Drop wraps whichever of the two applies.
        """
        alpha = self.cfg.rdrop_alpha
        if alpha > 0 and len(logits) == 2 * len(idx):
            first, second = logits.chunk(2)
            return losses.rdrop_loss(first, second, lambda z: self._loss(z, idx), alpha)
        return self._loss(logits, idx)

    def _loss(self, logits: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        train = self.splits["train"]
        y = torch.as_tensor(train.labels[idx], device=logits.device)
        if self.multi_label:
            return losses.binary_cross_entropy(logits, y)
        spec = self.cfg.distill
        if spec is None or train.soft is None:
            return losses.cross_entropy(logits, y, self.cfg.label_smoothing)
        target = torch.as_tensor(train.soft[idx], device=logits.device)
        return losses.distillation_loss(
            logits, y, target, temperature=spec.temperature, alpha=spec.alpha, label_smoothing=self.cfg.label_smoothing
        )

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Checkpoint model, optimizer, scheduler, RNG and data position (at an optimizer-step boundary)."""
        st = self.state
        ranks = self.world.gather_json(rank_state(st.epoch_loss_sum, st.epoch_loss_count)) if self.world.active else []
        if not self.world.is_main:
            return  # rank 0 writes the checkpoint, with every rank's RNG and partial loss sums
        state = st.__dict__ | {"rng": rng_state()} | ({"privacy": self.dp.state_dict()} if self.dp else {})
        state |= {"ranks": ranks} if ranks else {}
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
        ranks = raw.pop("ranks", None)
        if self.dp:  # the accountant's history, σ, the seed and the noise generator (JSON)
            self.dp.load_state_dict(raw.pop("privacy"))
        self.state = TrainerState(**raw)
        if ranks:  # a distributed run: this rank's own RNG streams and partial loss sums
            if len(ranks) == self.world.size:
                self.state.epoch_loss_sum, self.state.epoch_loss_count = restore_rank_state(ranks[self.world.rank])
            else:
                self.console.print(
                    f"[yellow]note: this run was checkpointed by {len(ranks)} workers and resumes on "
                    f"{self.world.size}; weights and data position are exact, dropout streams are not[/]"
                )
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
        enc = self.splits[name]
        probs, loss = self.batches.predict(self.eval_model, name, self.dtype)
        if self.multi_label:  # per-label thresholds tuned on valid, as finalize does
            return multilabel.loop_metrics(enc.labels, probs, self.labels, loss, tune=name == "valid"), probs
        return compute_metrics(enc.labels, probs, self.labels, loss=loss), probs

    # ------------------------------------------------------------------ the loop
    def train(
        self,
        stop_after_step: int | None = None,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
        on_log: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Run (or continue) the epochs. ``stop_after_step`` simulates an interruption (tests, time limits).

        ``on_epoch_end(epoch, history_entry)`` is called after each epoch's validation and checkpoint
        (epochs count from 1); an exception it raises stops training and propagates (tuning prunes a
        trial this way). ``on_log(record)`` gets every record written to ``progress.jsonl`` (step lines
        and ``event: eval`` lines) — experiment tracking listens here.
        """
        emit = on_log or (lambda record: None)
        cfg, st = self.cfg, self.state
        accum = cfg.gradient_accumulation_steps
        progress_path = self.run_dir / PROGRESS
        log = progress_path.open("a", encoding="utf-8") if self.world.is_main else open(os.devnull, "w")  # noqa: SIM115
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
                batches = self.dp.order(epoch) if self.dp else self.batches.order(epoch)  # DP: Poisson draws
                self.model.train()
                epoch_t0 = time.perf_counter()
                for b in range(st.batch_in_epoch, len(batches)):
                    idx = batches[b]
                    last_micro = not ((b + 1) % accum and b + 1 != len(batches))
                    if not len(idx):  # only DP's Poisson draws are ever empty: the step still adds noise
                        self.dp.empty_batch()
                    else:
                        idx, weight, n = self.world.shard(idx)  # DDP: this rank's share, weighted to the global mean
                        inputs = self.batches.inputs(idx, epoch, b)
                        with self.world.accumulating(self.train_model, sync=last_micro):
                            with autocast(self.device, self.dtype):
                                if cfg.rdrop_alpha > 0:  # two dropout masks in one forward pass of the doubled batch
                                    inputs = {
                                        k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in inputs.items()
                                    }
                                logits = self.train_model(**inputs).logits
                            loss = self.loss(logits.float(), idx)
                            if not torch.isfinite(loss):
                                raise ModelyardError(
                                    f"training diverged (loss {loss.item()}) at step {st.global_step}; "
                                    "lower train.learning_rate or use train.precision=fp32"
                                )
                            scaled = loss if self.dp else loss * weight / accum  # DP: each example's own gradient
                            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                        st.epoch_loss_sum += loss.item() * n
                        st.epoch_loss_count += n
                        window_loss += loss.item() * n
                        window_n += n
                        window_samples += n
                    if not last_micro:
                        continue
                    # --- optimizer step (end of an accumulation group, or a short last group)
                    if self.scaler:
                        self.scaler.unscale_(self.optimizer)
                    if cfg.max_grad_norm and not self.dp:  # DP clips each example's gradient instead
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
                    if self.heartbeats is not None:
                        self.heartbeats.beat(st.global_step)

                    now = time.perf_counter()
                    done_here = st.global_step - session_steps0
                    eta = (now - session_start) / max(done_here, 1) * (self.total_steps - st.global_step)
                    if st.global_step % cfg.log_every_steps == 0 or b + 1 == len(batches):
                        window_loss, window_n, window_samples = self.world.all_sum(
                            [window_loss, window_n, window_samples]
                        )
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
                        if self.heartbeats is not None:  # per-rank heartbeats: step, host, pid, seconds since
                            record["ranks"] = self.heartbeats.progress_field()
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                        emit(record)
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
                st.epoch_loss_sum, st.epoch_loss_count = self.world.all_sum([st.epoch_loss_sum, st.epoch_loss_count])
                metrics, _ = self.evaluate_split("valid")
                entry = {
                    "epoch": epoch + 1,
                    "step": st.global_step,
                    "train_loss": st.epoch_loss_sum / max(st.epoch_loss_count, 1),
                    "valid_loss": metrics["loss"],
                    "epoch_seconds": round(time.perf_counter() - epoch_t0, 2),
                }
                entry |= {f"valid_{k}": metrics.get(k) for k in HEADLINE}
                st.history.append(entry)
                eval_record = {"event": "eval", "time": time.time(), **entry}
                log.write(json.dumps(eval_record) + "\n")
                log.flush()
                emit(eval_record)
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
                st.stopped_early |= bool(self.dp and self.dp.stop_at_budget(st.global_step, epoch + 1 < cfg.epochs))
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
            if not self.world.is_main:
                return
            from safetensors.torch import save_file

            tmp = self.ckpt_dir / "best.safetensors.tmp"
            with storage_errors("checkpoints/best.safetensors", tmp, "output_dir"):
                self.ckpt_dir.mkdir(exist_ok=True)
                save_file(model_state(self.eval_model), str(tmp))
                tmp.replace(self.ckpt_dir / "best.safetensors")
        else:
            st.bad_epochs += 1

    # ------------------------------------------------------------------ finalize
    def finalize(self) -> dict[str, Any]:
        """Load the best epoch's weights, evaluate valid/test, write model/, metrics, predictions, history."""
        import pandas as pd
        from safetensors.torch import load_file

        best = self.ckpt_dir / "best.safetensors"
        if best.is_file():
            self.model.load_state_dict(load_file(str(best), device=str(self.device)))
        elif self.ema is not None:
            self.model.load_state_dict(self.ema.module.state_dict())
        self.ema = None  # from here on, self.model holds the weights that are evaluated and saved
        if self.multi_label:
            return self._finalize_multilabel()
        metrics, frames = {}, []
        for split in ("valid", "test"):
            m, probs = self.evaluate_split(split)
            metrics[split] = m
            frames.append(
                prediction_frame(split, self.splits[split].texts, self.splits[split].labels, probs, self.labels)
            )
        needed = state_bytes(self.model)
        ensure_free_space(self.run_dir, needed, f"{MODEL_DIR}/ (the trained weights)", "output_dir")
        with storage_errors(f"{MODEL_DIR}/ (the trained weights)", self.run_dir / MODEL_DIR, "output_dir", needed):
            write_json(self.run_dir / METRICS, metrics)
            predictions = pd.concat(frames, ignore_index=True)
            predictions.to_parquet(self.run_dir / PREDICTIONS, index=False)
            assert self.kind.save is not None
            self.kind.save(self.run_dir / MODEL_DIR, self.model, self.tokenizer, self.recipe, self.labels)
            write_json(self.run_dir / HISTORY, self.state.history)
        return metrics

    def _finalize_multilabel(self) -> dict[str, Any]:
        """Save the model, then tune thresholds and write metrics/predictions/report (training.multilabel)."""
        scored = {}
        for split in ("valid", "test"):
            probs, loss = self.batches.predict(self.model, split, self.dtype)
            scored[split] = (self.splits[split].texts, self.splits[split].labels, probs, loss)
        self.model.config.problem_type = "multi_label_classification"  # plain transformers then uses BCE too
        needed = state_bytes(self.model)
        ensure_free_space(self.run_dir, needed, f"{MODEL_DIR}/ (the trained weights)", "output_dir")
        with storage_errors(f"{MODEL_DIR}/ (the trained weights)", self.run_dir / MODEL_DIR, "output_dir", needed):
            assert self.kind.save is not None
            self.kind.save(self.run_dir / MODEL_DIR, self.model, self.tokenizer, self.recipe, self.labels)
            return multilabel.finish_multilabel(
                self.run_dir,
                title=f"{self.recipe.name} · {self.run_dir.name.split('.')[0]}",
                labels=self.labels,
                scored=scored,
                history=self.state.history,
                info=self.report_info(),
            )

    def report_info(self) -> dict[str, Any]:
        """The run facts shown at the top of ``report.html``."""
        recipe, st = self.recipe, self.state
        return {
            "run": self.run_dir.name.split(".")[0],
            "recipe name": recipe.name,
            "backbone": self.kind.name_of(recipe.model),
            "parameters": f"{self.n_params:,}",
            "device": str(self.device),
            "precision": str(self.dtype or "fp32"),
            "train time (s)": round(st.train_seconds, 1),
            "best epoch": st.best_epoch,
            "data": recipe.data.path,
            "train / valid / test": " / ".join(str(len(self.splits[s].labels)) for s in ("train", "valid", "test")),
            **(self.dp.info() if self.dp else {}),
        }


def _crossed_tenth(step: int, every: int, total: int) -> bool:
    """Whether the last ``every`` steps crossed a 10% boundary of ``total``."""
    return step * 10 // total != max(step - every, 0) * 10 // total or step == total
