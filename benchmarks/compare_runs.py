"""Compare finished runs of any kind (prompt, distilled student, fine-tune) on one labelled test file, side by side.

    python benchmarks/compare_runs.py --data TEST.csv NAME=RUN_DIR [NAME=RUN_DIR ...] [--latency-texts 30]

For each run: accuracy and macro-F1 on ``--data`` (the same rows for every run), CPU latency per example at
batch 1 (p50 over ``--latency-texts`` texts, after one warm-up call) and the size of the files the model needs
(``model/`` plus, for a prompt model, its language model). Prints a Markdown table (and writes it with
``--output``). Use the test split of one run (``RUN/splits/test.parquet``) as ``--data`` so that every model is
measured on rows none of them trained on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from modelyard.data.sources import read_table
    from modelyard.evaluation.metrics import compute_metrics
    from modelyard.models.loading import load
    from modelyard.ops.compare import latency_p50_ms, model_size_mb

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--data", type=Path, required=True, help="labelled file with text and label columns")
    parser.add_argument("--latency-texts", type=int, default=30)
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)

    frame = read_table(args.data) if args.data.suffix != ".parquet" else pd.read_parquet(args.data)
    texts, gold = frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist()
    rows = []
    for spec in args.runs:
        name, _, path = spec.partition("=")
        if not path:
            parser.error(f"expected NAME=RUN_DIR, got {spec!r}")
        run_dir = Path(path)
        clf = load(run_dir)
        unknown = sorted(set(gold) - set(clf.labels))
        if unknown:
            print(f"{name}: labels {unknown} of {args.data} are unknown to the model", file=sys.stderr)
            return 1
        t0 = time.perf_counter()
        probs = clf.predict_proba(texts)
        total = time.perf_counter() - t0
        y = np.array([clf.labels.index(g) for g in gold])
        m = compute_metrics(y, probs, clf.labels)
        rows.append(
            {
                "model": name,
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "p50_ms_b1": latency_p50_ms(clf, texts, args.latency_texts),
                "ms_per_example_batched": 1e3 * total / len(texts),
                "size_mb": model_size_mb(clf, run_dir),
            }
        )
    head = "| model | accuracy | macro-F1 | CPU ms/example @1 (p50) | ms/example batched | size MB |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['p50_ms_b1']:.1f} | "
            f"{r['ms_per_example_batched']:.1f} | {r['size_mb']:.1f} |"
        )
    table = "\n".join(lines)
    print(f"{len(texts)} examples from {args.data}\n\n{table}")
    if args.output:
        args.output.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
