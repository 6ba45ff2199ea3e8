"""Learning curves with few labels: plain fine-tuning, augmentation, few-shot contrastive, prompt and distillation.

Every cell trains a real modelyard run on ``data.train_per_class: N`` labelled examples per class and is scored on
the SAME full valid/test splits (``train_per_class`` shrinks the training split only; the valid split picks the best
epoch, as in every modelyard run). Methods:

    plain       the fine-tuning recipe (Rotten Tomatoes: bundled MiniLM; Chinese: a `modelyard pretrain` backbone)
    eda         + train.augment.text EDA (synonym/insert/swap/delete; WordNet or 同义词词林), prob 0.5
    contextual  + masked-LM substitution (English: --mlm, a `modelyard pretrain` run initialised from MiniLM)
    paraphrase  + paraphrases by the bundled SmolLM2-135M-Instruct (English; ~1 s per training text on 2 idle cores)
    chars       + Chinese character variants (words in Traditional script)
    setfit      model.type setfit (contrastive pairs, then a logistic-regression head)
    distill     the zero-shot prompt run (--teacher) labels 1,000 of the training texts left out by train_per_class;
                a student learns from them plus the N gold labels per class (train.distill.unlabelled: rest)
    distill-confident
                the teacher scores ALL left-out training texts; only its answers with top probability >=
                --min-confidence (0.7) join the N gold labels per class (self-training on confident pseudo-labels)
    prompt-student
                one `model.type: ensemble` run: the teacher's prompt model + the distill-confident student, weights
                chosen on the validation split (the split every cell already uses to pick its best epoch)
    zero-shot   the prompt run itself (no labels; one number for every N)

    python benchmarks/learning_curve.py --dataset rt --teacher RUN --mlm RUN --out benchmarks/results/lc_rt.json
    python benchmarks/learning_curve.py --dataset zh --backbone RUN --teacher RUN --out benchmarks/results/lc_zh.json

Results are saved after every cell; a rerun skips the cells already in --out (delete them to measure again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# (batch size, epochs) per labels-per-class: enough optimizer steps for tiny splits without evaluating the
# 1,276-row valid split after every one of them (evaluation dominates the cost of a small-data run on a CPU)
SCHEDULE = {8: (4, 5), 16: (8, 5), 32: (8, 5), 64: (16, 5), 128: (16, 4), 256: (16, 4)}


def base_recipe(args: argparse.Namespace, n: int) -> dict[str, Any]:
    batch, epochs = SCHEDULE.get(n, (16, 4))
    if args.dataset == "rt":
        data: dict[str, Any] = {"path": "bundled:rotten-tomatoes"}
        model: dict[str, Any] = {"type": "hf-encoder", "backbone": "bundled:minilm-l6", "max_length": 64}
        lr = 1e-4
    else:
        data = {
            "path": "bundled:chinese-reviews",
            "clean": {"chinese": {"halfwidth": True, "punctuation": True, "traditional_to_simplified": False}},
        }
        model = {"type": "hf-encoder", "backbone": str(Path(args.backbone).resolve()), "max_length": 64}
        lr = 3e-4
    # zh: 3% valid / 6% test (~520 / ~1,040 rows) keep the Gemma prompt's scoring time within reach of 2 CPU cores
    valid, test = (0.1, 0.1) if args.dataset == "rt" else (0.03, 0.06)
    data.update({"valid_size": valid, "test_size": test, "seed": 42, "train_per_class": n})
    train = {
        "epochs": epochs,
        "batch_size": batch,
        "learning_rate": lr,
        "warmup_ratio": 0.1,
        "metric": "accuracy",
        "num_threads": args.threads,
        "eval_batch_size": 256,
        "seed": 42,
        "patience": None,
    }
    return {"name": f"lc-{args.dataset}", "data": data, "model": model, "train": train, "output_dir": args.runs}


def cell_recipe(args: argparse.Namespace, method: str, n: int) -> dict[str, Any]:
    r = base_recipe(args, n)
    aug: dict[str, Any] | None = None
    if method == "eda":
        aug = {"methods": ["synonym", "insert", "swap", "delete"]}
    elif method == "contextual":
        aug = {"methods": ["contextual"]}
        if args.mlm:
            aug["contextual_model"] = str(Path(args.mlm).resolve())
    elif method == "paraphrase":
        aug = {"methods": ["paraphrase"], "paraphrases": 2}
    elif method == "chars":
        # `script` only: `width` needs unicode_nfkc/halfwidth off, which changes the cleaned texts and so the split
        aug = {"methods": ["script"]}
    elif method == "setfit":
        r["model"]["type"] = "setfit"
        r["train"]["epochs"] = 1  # the head comes from the logistic fit; one frozen-body epoch on top
    elif method in ("distill", "distill-confident", "prompt-student"):
        r["train"]["epochs"] = 3
        r["train"]["distill"] = {
            "teacher": str(Path(args.teacher).resolve()),
            "unlabelled": "rest",
            "max_unlabelled": args.unlabelled,
            "alpha": 0.5,
            "temperature": 1.0,
        }
        if method in ("distill-confident", "prompt-student"):
            # self-training on the teacher's confident answers only: every left-out training text is scored and
            # those with top probability >= --min-confidence are added (fewer, cleaner pseudo-labels)
            r["train"]["batch_size"] = 32
            r["train"]["distill"].update({"max_unlabelled": None, "min_confidence": args.min_confidence})
        if method == "prompt-student":
            # one ensemble run: the teacher's own prompt model (its recipe's model section) and the distilled student,
            # blended with weights chosen on the validation split (greedy selection, as every ensemble run does)
            teacher_model = yaml.safe_load((Path(args.teacher) / "recipe.yaml").read_text(encoding="utf-8"))["model"]
            r["model"] = {"type": "ensemble", "members": [teacher_model, r["model"]]}
    elif method != "plain":
        raise SystemExit(f"unknown method {method}")
    if aug is not None:
        r["train"]["augment"] = {"text": aug}
    r["name"] = f"lc-{args.dataset}-{method}-{n}"
    return r


def run_cell(recipe: dict[str, Any]) -> dict[str, Any]:
    from modelyard.config import load_recipe
    from modelyard.rundir import RunDir
    from modelyard.training.run import train

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
        t0 = time.time()
        run = RunDir(train(load_recipe(path)))
    metrics = run.metrics()
    report = json.loads((run.path / "data_report.json").read_text(encoding="utf-8"))
    extra = {"distill_unlabelled": report["distill_unlabelled"]} if "distill_unlabelled" in report else {}
    return {
        **extra,
        "test_accuracy": round(metrics["test"]["accuracy"], 4),
        "test_macro_f1": round(metrics["test"]["macro_f1"], 4),
        "valid_accuracy": round(metrics["valid"]["accuracy"], 4),
        "train_rows": run.manifest().get("data_sizes", {}).get("train"),
        "seconds": round(time.time() - t0, 1),
        "run": str(run.path),
    }


def table(results: dict[str, Any], methods: list[str], sizes: list[int]) -> str:
    head = "| method | " + " | ".join(f"{n}/class" for n in sizes) + " |"
    lines = [head, "|---|" + "---:|" * len(sizes)]
    for m in ["zero-shot", *methods]:
        cells = []
        for n in sizes:
            hit = results.get("zero-shot") if m == "zero-shot" else results.get(f"{m}@{n}")
            cells.append(f"{hit['test_accuracy']:.4f}" if hit else "–")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["rt", "zh"], default="rt")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="labels per class (rt: 8 16 64 256; zh: 16 256)")
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--teacher", help="a finished zero-shot prompt run (teacher of `distill`; the zero-shot row)")
    ap.add_argument("--mlm", help="English `contextual`: a `modelyard pretrain` run (MLM) initialised from MiniLM")
    ap.add_argument("--backbone", help="zh: the `modelyard pretrain` run used as the fine-tuning backbone")
    ap.add_argument("--unlabelled", type=int, default=1000, help="texts the teacher labels for `distill`")
    ap.add_argument("--min-confidence", type=float, default=0.7, help="`distill-confident`: teacher confidence")
    ap.add_argument("--paraphrase-max", type=int, default=256, help="largest size that runs `paraphrase`")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", default=str(Path(tempfile.gettempdir()) / "modelyard-learning-curve"))
    ap.add_argument("--out", default="learning_curve.json")
    args = ap.parse_args(argv)
    if args.dataset == "zh" and not args.backbone:
        ap.error("--dataset zh needs --backbone (a `modelyard pretrain` run, e.g. of examples/pretrain_chinese.yaml)")
    sizes = args.sizes or ([8, 16, 64, 256] if args.dataset == "rt" else [16, 256])
    default = ["plain", "eda", "contextual", "paraphrase", "setfit", "distill", "distill-confident", "prompt-student"]
    methods = args.methods or (default if args.dataset == "rt" else ["plain", "eda", "contextual", "chars", "setfit",
                                                                     "distill", "distill-confident"])  # fmt: skip
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    if args.teacher and "zero-shot" not in results:
        from modelyard.rundir import RunDir

        m = RunDir(Path(args.teacher)).metrics()
        results["zero-shot"] = {"test_accuracy": round(m["test"]["accuracy"], 4), "run": str(args.teacher)}
    for n in sizes:
        for method in methods:
            key = f"{method}@{n}"
            if key in results:
                continue
            if method.startswith("distill") and not args.teacher or method == "paraphrase" and n > args.paraphrase_max:
                continue
            print(f"=== {key}", file=sys.stderr, flush=True)
            results[key] = run_cell(cell_recipe(args, method, n))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1, ensure_ascii=False))
            print(f"=== {key}: {results[key]}", file=sys.stderr, flush=True)
    print(table(results, methods, sizes))


if __name__ == "__main__":
    main()
