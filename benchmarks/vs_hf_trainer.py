"""Fine-tuning speed against Hugging Face ``Trainer``: the same backbone, data and hyperparameters, side by side.

    python benchmarks/vs_hf_trainer.py [--sample 4000] [--precision fp32|bf16] [--epochs 1] [--threads N] [--compile]

Both sides fine-tune the bundled MiniLM-L6 on the same Rotten Tomatoes training split (the quickstart recipe,
``data.sample`` rows), batch 32, learning rate 1e-4 with 6% linear warm-up, weight decay 0.01, gradient clipping
1.0, seed 42, ``max_length`` 64, one process each (run one after the other, so each has the machine):

* **modelyard**: ``modelyard.training.run.train`` on the recipe (its loop: length-grouped batches, dynamic padding);
* **Trainer**: ``transformers.Trainer`` with its documented best settings for this job — dynamic padding
  (``DataCollatorWithPadding``), ``train_sampling_strategy="group_by_length"`` (transformers 5's
  ``group_by_length``), the same precision (``bf16=True`` for ``--precision bf16``), no evaluation or saving
  during training, ``dataloader_num_workers=0``.

Printed for each: training samples/s (training examples × epochs ÷ the training time: modelyard's last step
record in ``progress.jsonl``, Trainer's ``train_runtime``), wall time of the whole process, peak resident memory,
and accuracy on the same test split; then the ratios. modelyard runs first and writes the splits Trainer reads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HYPER = {"batch_size": 32, "learning_rate": 1.0e-4, "warmup_ratio": 0.06, "weight_decay": 0.01, "max_grad_norm": 1.0}


def _modelyard(out: Path, sample: int, precision: str, epochs: int, threads: int, compile_: bool) -> dict[str, Any]:
    from rich.console import Console

    from modelyard.quickstart import quickstart_recipe
    from modelyard.training.run import train

    overrides = [
        f"data.sample={sample}",
        f"train.precision={precision}",
        f"train.epochs={epochs}",
        f"train.num_threads={threads}",
        f"train.compile={str(compile_).lower()}",
        *(f"train.{k}={v}" for k, v in HYPER.items()),
    ]
    recipe = quickstart_recipe(out / "runs", overrides)
    run = train(recipe, console=Console(quiet=True))
    steps = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    seconds = [r for r in steps if "step" in r and "event" not in r][-1]["elapsed_s"]
    metrics = json.loads((run / "metrics.json").read_text())
    import pandas as pd

    n_train = len(pd.read_parquet(run / "splits" / "train.parquet"))
    return {"run": str(run), "n_train": n_train, "train_s": seconds, "accuracy": metrics["test"]["accuracy"]}


def _trainer(run: Path, precision: str, epochs: int, threads: int) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from modelyard.llm.backbones import resolve_backbone

    torch.set_num_threads(threads)
    backbone = resolve_backbone("bundled:minilm-l6", Path("."))
    labels = json.loads((run / "model" / "modelyard.json").read_text())["labels"]
    index = {lab: i for i, lab in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(backbone)

    def dataset(split: str) -> list[dict[str, Any]]:
        frame = pd.read_parquet(run / "splits" / f"{split}.parquet")
        enc = tokenizer(frame["text"].astype(str).tolist(), truncation=True, max_length=64)
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": index[str(lab)]}
            for ids, mask, lab in zip(enc["input_ids"], enc["attention_mask"], frame["label"], strict=True)
        ]

    train_set, test_set = dataset("train"), dataset("test")
    set_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=len(labels))
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=HYPER["batch_size"],
            per_device_eval_batch_size=64,
            learning_rate=HYPER["learning_rate"],
            warmup_steps=HYPER["warmup_ratio"],  # transformers 5: a float below 1 is a ratio of the total steps
            weight_decay=HYPER["weight_decay"],
            max_grad_norm=HYPER["max_grad_norm"],
            lr_scheduler_type="linear",
            num_train_epochs=epochs,
            seed=42,
            bf16=precision == "bf16",
            use_cpu=True,
            train_sampling_strategy="group_by_length",
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=train_set, data_collator=DataCollatorWithPadding(tokenizer)
        )
        out = trainer.train()
        # group_by_length also orders prediction: score against the label_ids returned with the predictions
        pred = trainer.predict(test_set)
    accuracy = float(np.mean(pred.predictions.argmax(axis=1) == pred.label_ids))
    return {"n_train": len(train_set), "train_s": out.metrics["train_runtime"], "accuracy": accuracy}


def _side(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    if args.side == "modelyard":
        row = _modelyard(Path(args.out), args.sample, args.precision, args.epochs, args.threads, args.compile)
    else:
        row = _trainer(Path(args.run), args.precision, args.epochs, args.threads)
    row["wall_s"] = time.perf_counter() - t0
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(row))


def _spawn(extra: list[str]) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, env=env, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{' '.join(extra)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=4000, help="rows of the bundled Rotten Tomatoes data")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--compile", action="store_true", help="modelyard side with train.compile=true")
    parser.add_argument("--side", choices=["modelyard", "trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        _side(args)
        return 0
    common = ["--precision", args.precision, "--epochs", str(args.epochs), "--threads", str(args.threads)]
    with tempfile.TemporaryDirectory() as out:
        ours = _spawn(
            ["--side", "modelyard", "--out", out, "--sample", str(args.sample), *common]
            + (["--compile"] if args.compile else [])
        )
        theirs = _spawn(["--side", "trainer", "--run", ours["run"], *common])
    print(
        f"MiniLM-L6 on {ours['n_train']} Rotten Tomatoes training texts × {args.epochs} epoch(s), {args.precision}, "
        f"{args.threads} threads, batch {HYPER['batch_size']}"
        + (", modelyard with torch.compile" if args.compile else "")
    )
    print(f"{'':22} {'samples/s':>10} {'train s':>8} {'wall s':>7} {'peak MiB':>9} {'test acc':>9}")
    for name, row in (("transformers.Trainer", theirs), ("modelyard", ours)):
        sps = row["n_train"] * args.epochs / row["train_s"]
        row["sps"] = sps
        print(
            f"{name:22} {sps:10.1f} {row['train_s']:8.1f} {row['wall_s']:7.1f} {row['peak_rss_mib']:9.0f} "
            f"{row['accuracy']:9.4f}"
        )
    print(
        f"modelyard / Trainer: {ours['sps'] / theirs['sps']:.2f}× samples/s, "
        f"{ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}× peak memory, "
        f"{ours['accuracy'] - theirs['accuracy']:+.4f} test accuracy"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
