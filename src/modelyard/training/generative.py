"""The loop of the generative kinds (``vae``, ``gan``): setup → train → finalize, like the classifiers' loop.

It shares everything that is not the objective with :mod:`modelyard.training.loop`: the run directory,
seeded batch order, ``progress.jsonl`` records, checkpoints with exact resume (every optimizer, RNG and
data position), best-epoch selection, the manifest and the report. What a step does is the model's own
``train_step`` (one ELBO step for a VAE; a discriminator then a generator step for a GAN), so this file
never names a kind.

Quality is measured every epoch, not eyeballed: ``model.eval_samples`` images are generated from a fixed
seed (class-balanced) and compared with as many real validation images in the feature space of an image
classifier trained on the same data (:mod:`modelyard.evaluation.generative_metrics`: an FID-style Fréchet
distance, precision/recall, class accuracy). The best epoch is the one with the lowest distance. The
classifier is ``model.quality_from`` (a finished classifier run) or, by default, a small ``cnn-small`` that
this run trains on its own training split first and keeps in ``quality_model/``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from modelyard._internal.io import read_json, write_json
from modelyard._internal.layout import CHECKPOINTS_DIR, HISTORY, METRICS, MODEL_DIR, PROGRESS
from modelyard._internal.runtime import model_state, pick_device, rng_state, seed_everything, set_rng_state
from modelyard._internal.storage import ensure_free_space, storage_errors
from modelyard.config import AugmentConfig, Recipe
from modelyard.errors import ModelyardError
from modelyard.evaluation.generative_metrics import FeatureNet, quality
from modelyard.kinds import get_kind
from modelyard.models.generative_base import GenerativeModel, to_uint8
from modelyard.models.image_base import ImageModel
from modelyard.training.batch_sources import ImageBatches, ImageEncoded
from modelyard.training.checkpoint import load_checkpoint, save_checkpoint, state_bytes
from modelyard.training.loop import TrainerState, TrainingInterrupted, _crossed_tenth

QUALITY_MODEL = "quality_model"
SAMPLES_DIR = "samples"
GRID_PER_CLASS = 8


class GenerativeRecipe:
    """setup → train → finalize for a generative kind. One instance per run directory."""

    def __init__(self, recipe: Recipe, run_dir: Path, data: Any, console: Console) -> None:
        self.recipe, self.run_dir, self.data, self.console = recipe, run_dir, data, console
        self.cfg = recipe.train
        self.settings: Any = recipe.model
        self.state = TrainerState()
        self.ckpt_dir = run_dir / CHECKPOINTS_DIR
        self.kind = get_kind(recipe.model.type)
        self.stopped_by_hook = False
        self.multi_label = False
        self.dtype = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Build the model and its optimizers, hold the splits, prepare the quality features."""
        if self.cfg.num_threads:
            torch.set_num_threads(self.cfg.num_threads)
        seed_everything(self.cfg.seed)
        self.device = pick_device(self.cfg.device)
        self.labels: list[str] = list(self.data.labels)
        assert self.kind.build is not None
        model, _ = self.kind.build(
            self.recipe.model, self.labels, self.recipe.base_dir, image_shape=self.data.report["image_shape"]
        )
        self.model: GenerativeModel = model.to(self.device)
        self.splits = {
            name: ImageEncoded(
                texts=list(getattr(self.data, name).refs),
                # a fresh C-order copy: canonical strides whatever the source (a size-1 channel axis can carry
                # any stride, and torch would then pick channels-last kernels with different rounding, so a
                # run resumed from its saved splits would drift from the uninterrupted run)
                images=torch.from_numpy(np.array(getattr(self.data, name).images, order="C", copy=True)),
                labels=np.asarray(getattr(self.data, name).labels, dtype=np.int64),
            )
            for name in ("train", "valid", "test")
        }
        self.batches = ImageBatches(self.splits, self.cfg, AugmentConfig(), self.device)
        self.optimizers = self.model.make_optimizers(self.cfg.learning_rate, self.cfg.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.splits["train"].labels) / self.cfg.batch_size)
        self.total_steps = self.steps_per_epoch * self.cfg.epochs
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.features = FeatureNet(self._quality_model(), self.device)
        self.real = {name: self._real_features(name) for name in ("valid", "test")}
        self.console.print(
            f"[bold]model[/] {self.kind.name} ({self.n_params / 1e6:.2f}M params) · device {self.device}"
            f" · {len(self.splits['train'].labels)} train images · {self.steps_per_epoch} steps/epoch ×"
            f" {self.cfg.epochs} epochs = {self.total_steps} steps · quality on {self.settings.eval_samples} samples"
        )

    def _quality_model(self) -> ImageModel:
        """The classifier whose features measure quality: ``model.quality_from``, or one trained here (kept)."""
        if self.settings.quality_from:
            from modelyard.models.loading import model_dir_of

            path = model_dir_of(self.recipe.resolve(self.settings.quality_from))
            labels = read_json(path / "modelyard.json").get("labels")
            if labels != self.labels:
                raise ModelyardError(
                    f"model.quality_from {self.settings.quality_from} classifies {labels}, but this data has "
                    f"{self.labels}; use a classifier trained on the same classes (or leave it empty)"
                )
            return _image_model(path, self.device)
        path = self.run_dir / QUALITY_MODEL
        if (path / "model.safetensors").is_file():  # resumed: the same features as before the interruption
            return _image_model(path, self.device)
        model = _fit_quality_classifier(self.recipe, self.data, self.labels, self.console)
        with storage_errors(f"{QUALITY_MODEL}/", path, "output_dir"):
            model.save_pretrained(path)
        return model.to(self.device).eval()

    def _real_features(self, split: str) -> np.ndarray:
        enc = self.splits[split]
        n = min(self.settings.eval_samples, len(enc.labels))
        feats, _ = self.features(enc.images[:n].float().div(255.0))
        return feats

    def _eval_classes(self) -> torch.Tensor:
        n = self.settings.eval_samples
        return torch.arange(n) % len(self.labels)

    def measure(self, split: str) -> dict[str, Any]:
        """Quality of ``eval_samples`` generated images against real ``split`` images (fixed seed)."""
        classes = self._eval_classes()
        fake = torch.cat(
            [
                self.model.sample(len(c), c, seed=self.cfg.seed + start).cpu()
                for start in range(0, len(classes), 500)
                for c in [classes[start : start + 500]]
            ]
        )
        feats, probs = self.features(fake)
        cond = self.model.config.conditional
        out = quality(self.real[split], feats, probs if cond else None, classes.numpy() if cond else None)
        enc = self.splits[split]
        x = enc.images[:2000].float().div(255.0).to(self.device)
        loss = self.model.validation_loss(x, torch.as_tensor(enc.labels[:2000], device=self.device))
        if loss is not None:
            out["loss"] = round(loss, 4)
        return out

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Model (with any moving average inside it), every optimizer, RNG and data position."""
        save_checkpoint(
            self.ckpt_dir / "last",
            model=self.model,
            optimizer=self.optimizers,
            scheduler=None,
            trainer_state=self.state.__dict__ | {"rng": rng_state()},
        )

    def load_checkpoint(self) -> None:
        """Restore the last checkpoint of this run directory."""
        raw = load_checkpoint(self.ckpt_dir / "last", model=self.model, optimizer=self.optimizers, scheduler=None)
        set_rng_state(raw.pop("rng"))
        self.state = TrainerState(**raw)
        self.console.print(
            f"resuming at epoch {self.state.epoch + 1}, step {self.state.global_step}/{self.total_steps}"
        )

    # ------------------------------------------------------------------ the loop
    def train(self, stop_after_step: int | None = None, on_epoch_end: Any = None, on_log: Any = None) -> None:
        """Run (or continue) the epochs; same hooks as the classifiers' loop."""
        emit = on_log or (lambda record: None)
        cfg, st = self.cfg, self.state
        columns = (
            TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        session_start, session_steps0 = time.perf_counter(), st.global_step
        with (
            (self.run_dir / PROGRESS).open("a", encoding="utf-8") as log,
            Progress(*columns, console=self.console) as bar,
        ):
            task = bar.add_task("train", total=self.total_steps, completed=st.global_step, epoch=st.epoch + 1, loss="")
            for epoch in range(st.epoch, cfg.epochs):
                batches = self.batches.order(epoch)
                epoch_t0, window = time.perf_counter(), _Window()
                for b in range(st.batch_in_epoch, len(batches)):
                    idx = batches[b]
                    x = self.batches.inputs(idx, epoch, b)["pixel_values"]
                    y = torch.as_tensor(self.splits["train"].labels[idx], device=self.device)
                    losses = self.model.train_step(x, y, self.optimizers, cfg.max_grad_norm)
                    if not all(math.isfinite(v) for v in losses.values()):
                        raise ModelyardError(
                            f"training diverged ({losses}) at step {st.global_step}; lower train.learning_rate"
                        )
                    headline = next(iter(losses.values()))
                    st.epoch_loss_sum += headline * len(idx)
                    st.epoch_loss_count += len(idx)
                    window.add(losses, len(idx))
                    st.global_step += 1
                    st.batch_in_epoch = b + 1
                    if st.global_step % cfg.log_every_steps == 0 or b + 1 == len(batches):
                        now = time.perf_counter()
                        eta = (
                            (now - session_start)
                            / max(st.global_step - session_steps0, 1)
                            * (self.total_steps - st.global_step)
                        )
                        record = {
                            "time": time.time(),
                            "step": st.global_step,
                            "total_steps": self.total_steps,
                            "epoch": round(epoch + (b + 1) / len(batches), 4),
                            **window.means(),
                            "samples_per_s": round(window.n / max(now - window.t0, 1e-9), 2),
                            "eta_s": round(eta, 1),
                            "elapsed_s": round(st.train_seconds + now - session_start, 1),
                        }
                        record.setdefault("loss", next(iter(window.means().values())))
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                        emit(record)
                        shown = " · ".join(f"{k} {v:.3f}" for k, v in window.means().items())
                        bar.update(task, loss=shown)
                        if not self.console.is_terminal and _crossed_tenth(
                            st.global_step, cfg.log_every_steps, self.total_steps
                        ):  # no live bar in logs/CI: a plain line every ~10%
                            bar.console.print(f"step {st.global_step}/{self.total_steps} · {shown} · ETA {eta:.0f}s")
                        window = _Window()
                    bar.update(task, completed=st.global_step, epoch=epoch + 1)
                    if cfg.checkpoint_every_steps and st.global_step % cfg.checkpoint_every_steps == 0:
                        self._checkpoint_with_time(session_start)
                        session_start, session_steps0 = time.perf_counter(), st.global_step
                    if stop_after_step is not None and st.global_step >= stop_after_step:
                        raise TrainingInterrupted(f"stopped after step {st.global_step} as requested")
                entry = self._end_epoch(epoch, epoch_t0)
                log.write(json.dumps({"event": "eval", "time": time.time(), **entry}) + "\n")
                log.flush()
                emit({"event": "eval", "time": time.time(), **entry})
                bar.console.print(
                    f"epoch {epoch + 1}: train loss {entry['train_loss']:.4f} · "
                    + " · ".join(
                        f"valid {k.removeprefix('valid_')} {v}" for k, v in entry.items() if k.startswith("valid_")
                    )
                    + (" · best so far" if st.best_epoch == epoch + 1 else "")
                )
                self._checkpoint_with_time(session_start)
                session_start, session_steps0 = time.perf_counter(), st.global_step
                if on_epoch_end is not None:
                    try:
                        on_epoch_end(epoch + 1, dict(entry))
                    except BaseException:
                        self.stopped_by_hook = True
                        raise

    def _end_epoch(self, epoch: int, epoch_t0: float) -> dict[str, Any]:
        st = self.state
        measured = self.measure("valid")
        entry = {
            "epoch": epoch + 1,
            "step": st.global_step,
            "train_loss": st.epoch_loss_sum / max(st.epoch_loss_count, 1),
            **{f"valid_{k}": v for k, v in measured.items()},
            "epoch_seconds": round(time.perf_counter() - epoch_t0, 2),
        }
        st.history.append(entry)
        self._write_grid(f"epoch-{epoch + 1:03d}.png")
        if st.best_value is None or measured["fd_proxy"] < st.best_value:
            from safetensors.torch import save_file

            st.best_value, st.best_epoch = float(measured["fd_proxy"]), epoch + 1
            tmp = self.ckpt_dir / "best.safetensors.tmp"
            with storage_errors("checkpoints/best.safetensors", tmp, "output_dir"):
                self.ckpt_dir.mkdir(exist_ok=True)
                save_file(model_state(self.model), str(tmp))
                tmp.replace(self.ckpt_dir / "best.safetensors")
        st.epoch, st.batch_in_epoch = epoch + 1, 0
        st.epoch_loss_sum, st.epoch_loss_count = 0.0, 0
        return entry

    def _write_grid(self, name: str) -> None:
        """A sample grid from fixed latents: one row per class (8 images each), the same seed every epoch."""
        from modelyard.evaluation.generative_report import save_grid

        k = len(self.labels) if self.model.config.conditional else 1
        classes = torch.arange(k).repeat_interleave(GRID_PER_CLASS)
        images = to_uint8(self.model.sample(len(classes), classes, seed=self.cfg.seed + 7))
        with storage_errors(f"{SAMPLES_DIR}/{name}", self.run_dir / SAMPLES_DIR, "output_dir"):
            save_grid(images, self.run_dir / SAMPLES_DIR / name, columns=GRID_PER_CLASS)

    def _checkpoint_with_time(self, session_start: float) -> None:
        self.state.train_seconds += time.perf_counter() - session_start
        self.save_checkpoint()

    # ------------------------------------------------------------------ finalize
    def finalize(self) -> dict[str, Any]:
        """Best epoch's weights → quality on valid and test, the VAE's OOD threshold, ``model/``, metrics, history."""
        from safetensors.torch import load_file

        best = self.ckpt_dir / "best.safetensors"
        if best.is_file():
            self.model.load_state_dict(load_file(str(best), device=str(self.device)))
        metrics = {split: self.measure(split) for split in ("valid", "test")}
        extra: dict[str, Any] = {"quality": {"best_epoch": self.state.best_epoch, **metrics["test"]}}
        if self.model.scores_anomalies:
            extra["ood"] = self._calibrate_ood(metrics)
        needed = state_bytes(self.model)
        ensure_free_space(self.run_dir, needed, f"{MODEL_DIR}/ (the trained weights)", "output_dir")
        with storage_errors(f"{MODEL_DIR}/ (the trained weights)", self.run_dir / MODEL_DIR, "output_dir", needed):
            write_json(self.run_dir / METRICS, metrics)
            assert self.kind.save is not None
            self.kind.save(self.run_dir / MODEL_DIR, self.model, None, self.recipe, self.labels, extra)
            write_json(self.run_dir / HISTORY, self.state.history)
            self._write_grid("final.png")
        return metrics

    def _calibrate_ood(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Calibrate the OOD score on the validation split; record test AUROC against uniform noise.

        The score combines the negative ELBO and its complexity-corrected form (``ood_components``); their
        medians and 99th percentiles come from one half of the validation images, the threshold (the
        ``ood_quantile`` of the combined score) from the other half, so it is not set on the data it scales by.
        """
        from sklearn.metrics import roc_auc_score

        from modelyard.models.generative_base import combine_ood, ood_components

        self.model.eval()
        valid = ood_components(self.model, self.splits["valid"].images.numpy(), self.device)
        first, second = valid[0::2], valid[1::2]
        calibration = {
            "median": np.median(first, axis=0).round(6).tolist(),
            "q99": np.quantile(first, 0.99, axis=0).round(6).tolist(),
        }
        threshold = float(np.quantile(combine_ood(second, calibration), self.settings.ood_quantile))
        test_images = self.splits["test"].images[:2000].numpy()
        gen = np.random.default_rng(self.cfg.seed)
        noise = gen.integers(0, 256, test_images.shape, dtype=np.uint8)
        test = combine_ood(ood_components(self.model, test_images, self.device), calibration)
        noisy = combine_ood(ood_components(self.model, noise, self.device), calibration)
        auroc = float(roc_auc_score(np.r_[np.zeros(len(test)), np.ones(len(noisy))], np.r_[test, noisy]))
        metrics["test"]["ood_auroc_vs_noise"] = round(auroc, 4)
        metrics["test"]["ood_flagged_share"] = round(float((test > threshold).mean()), 4)
        return {
            "score": "max of robust z-scores of the negative ELBO and of the negative ELBO minus the PNG length "
            "(input-complexity correction); 1 = the validation images' 99th percentile",
            "calibration": calibration,
            "threshold": round(threshold, 6),
            "quantile": self.settings.ood_quantile,
            "calibrated_on": f"valid ({len(valid)} images: scales from one half, threshold from the other)",
        }

    def figures(self) -> dict[str, np.ndarray]:
        """VAE: test images over their reconstructions, and a walk through latent space between two test images."""
        if not hasattr(self.model, "reconstruct"):
            return {}
        enc = self.splits["test"]
        x = enc.images[:8].float().div(255.0).to(self.device)
        y = torch.as_tensor(enc.labels[:8], device=self.device) if self.model.config.conditional else None
        self.model.eval()
        with torch.no_grad():
            recon = self.model.reconstruct(x, y)  # type: ignore[attr-defined]
            mu, _ = self.model.encode(x[:2], None if y is None else y[:2])  # type: ignore[attr-defined]
            t = torch.linspace(0, 1, 8, device=self.device)[:, None]
            z = (1 - t) * mu[0] + t * mu[1]
            yy = None if y is None else torch.where(t[:, 0] < 0.5, y[0], y[1])
            walk = self.model.decode(z, yy)
        return {
            "Reconstructions (top: test images, bottom: decoded posterior means)": np.concatenate(
                [to_uint8(x), to_uint8(recon)]
            ),
            "Latent interpolation between two test images": to_uint8(walk),
        }

    def write_report_and_manifest(self, run_id: str, t0: float, resumed_from: str | None) -> None:
        """``manifest.json`` (the same schema as every run) and the generative ``report.html``."""
        from modelyard._internal.rundir import run_manifest
        from modelyard.evaluation.generative_report import write_generative_report
        from modelyard.rundir import RunDir

        rd, recipe, st = RunDir(self.run_dir), self.recipe, self.state
        manifest = run_manifest(
            recipe,
            run_id,
            t0,
            seed={"train": self.cfg.seed, "data": recipe.data.seed},
            train_seconds=st.train_seconds,
            device=self.device,
            precision="fp32",
            data_fingerprints=self.data.fingerprints,
            data_sizes={k: len(v.labels) for k, v in self.splits.items()},
            model={"type": recipe.model.type, "backbone": self.kind.name, "parameters": self.n_params},
            resumed_from=resumed_from,
            epochs_completed=st.epoch,
            best_epoch=st.best_epoch,
            total_steps=st.global_step,
            quality_features=self.settings.quality_from or QUALITY_MODEL,
        )
        write_json(rd.manifest_path, manifest)
        write_generative_report(
            rd.report_path,
            title=f"{recipe.name} · {run_id}",
            info=self.report_info() | {"train time (s)": manifest["train_time_s"]},
            metrics=read_json(self.run_dir / METRICS),
            history=st.history,
            steps=rd.steps(),
            samples_dir=self.run_dir / SAMPLES_DIR,
            labels=self.labels,
            conditional=self.model.config.conditional,
            figures=self.figures(),
        )

    def print_final(self, metrics: dict[str, Any]) -> None:
        """The test-split quality line."""
        self.console.print("[bold]test[/] " + " · ".join(f"{k} {v}" for k, v in metrics["test"].items()))

    def report_info(self) -> dict[str, Any]:
        """The run facts shown at the top of ``report.html``."""
        return {
            "run": self.run_dir.name.split(".")[0],
            "recipe name": self.recipe.name,
            "model": self.kind.name,
            "parameters": f"{self.n_params:,}",
            "device": str(self.device),
            "conditional": self.model.config.conditional,
            "train time (s)": round(self.state.train_seconds, 1),
            "best epoch (lowest valid FD proxy)": self.state.best_epoch,
            "quality features": self.settings.quality_from or f"{QUALITY_MODEL}/ (cnn-small trained by this run)",
            "data": self.recipe.data.path,
            "train / valid / test": " / ".join(str(len(self.splits[s].labels)) for s in ("train", "valid", "test")),
        }


def _image_model(path: Path, device: torch.device) -> ImageModel:
    """An image classifier's network from its folder (its kind is imported first, so its class is known)."""
    get_kind(str(read_json(path / "config.json").get("architecture")))
    return ImageModel.from_pretrained(path, device=device)


class _Window:
    """Running means of the named losses since the last progress record."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.t0 = time.perf_counter()

    def add(self, losses: dict[str, float], n: int) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * n
        self.n += n

    def means(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}


def _fit_quality_classifier(recipe: Recipe, data: Any, labels: list[str], console: Console) -> ImageModel:
    """A small cnn-small on (up to 20,000 of) the training images, 2 epochs: the features that measure quality.

    Seeded from ``train.seed``; reported with its validation accuracy so a reader can judge the features.
    """
    from modelyard.models.cnn_small import CnnSmall
    from modelyard.models.image_base import image_config

    kind = get_kind("cnn-small")
    settings = kind.settings.model_validate({"type": "cnn-small", "width": 16, "depth": 2, "dropout": 0.1})
    report = data.report
    model = CnnSmall(
        image_config(
            CnnSmall, settings, labels, image_shape=report["image_shape"], normalization=report["normalization"]
        )
    )
    gen = torch.Generator().manual_seed(recipe.train.seed)
    torch.manual_seed(recipe.train.seed)
    x_all = torch.from_numpy(np.ascontiguousarray(data.train.images))
    y_all = torch.as_tensor(np.asarray(data.train.labels, dtype=np.int64))
    keep = torch.randperm(len(x_all), generator=gen)[:20000]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    t0 = time.perf_counter()
    model.train()
    for _ in range(2):
        order = keep[torch.randperm(len(keep), generator=gen)]
        for s in range(0, len(order), 128):
            i = order[s : s + 128]
            loss = model(pixel_values=x_all[i].float().div(255.0), labels=y_all[i]).loss
            opt.zero_grad(set_to_none=True)
            assert loss is not None
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        xv = torch.from_numpy(np.ascontiguousarray(data.valid.images[:5000])).float().div(255.0)
        acc = float((model(pixel_values=xv).logits.argmax(1).numpy() == data.valid.labels[:5000]).mean())
    console.print(
        f"quality features: cnn-small trained on {len(keep)} training images in {time.perf_counter() - t0:.0f}s"
        f" · valid accuracy {acc:.3f}"
    )
    return model
