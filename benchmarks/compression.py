"""Compress a trained run and compare the variants with the fp32 torch model, side by side.

    python benchmarks/compression.py RUN_DIR [--methods onnx,onnx-int8] [--repeats 50]

Prints the comparison table, then the headline of the issue: torch fp32 p50@1 / onnx-int8 p50@1
(target ≥ 2.5×), the accuracy drop in points (target ≤ 0.5) and the argmax agreement (target ≥ 99%)
on the run's test split. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

TARGETS = {"speedup_b1": 2.5, "accuracy_drop_points": 0.5, "agreement": 0.99}


def main(argv: list[str] | None = None) -> int:
    from modelyard.compression import METHODS, SOURCE, compress, parse_methods

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per variant and batch size")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--recovery-steps", type=int, default=50)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and onnxruntime (default: torch's). Use 1 on a shared, busy machine: "
        "multi-threaded pools that spin-wait for descheduled threads make latencies meaningless there.",
    )
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    console = Console()
    result = compress(
        args.run_dir,
        parse_methods(args.methods),
        console=console,
        sparsity=args.sparsity,
        recovery_steps=args.recovery_steps,
        latency_repeats=args.repeats,
    )
    rows = {r["method"]: r for r in result["rows"]}
    if "onnx-int8" not in rows:
        console.print("(add onnx-int8 to --methods for the speed-up headline)")
        return 0
    base, q = rows[SOURCE], rows["onnx-int8"]
    speedup = base["p50_ms_b1"] / q["p50_ms_b1"]
    drop = q["accuracy_drop_points"]
    checks = {
        "speedup_b1": speedup >= TARGETS["speedup_b1"],
        "accuracy_drop_points": drop <= TARGETS["accuracy_drop_points"],
        "agreement": q["agreement"] >= TARGETS["agreement"],
    }

    def mark(ok: bool) -> str:
        return "[green]met[/]" if ok else "[red]missed[/]"

    console.print(
        f"torch fp32 p50@1 {base['p50_ms_b1']:.2f} ms / onnx-int8 p50@1 {q['p50_ms_b1']:.2f} ms = "
        f"[bold]{speedup:.2f}×[/] (target ≥ {TARGETS['speedup_b1']}×: {mark(checks['speedup_b1'])})"
    )
    console.print(
        f"accuracy {base['accuracy']:.4f} → {q['accuracy']:.4f}: drop [bold]{drop:.2f}[/] points "
        f"(target ≤ {TARGETS['accuracy_drop_points']}: {mark(checks['accuracy_drop_points'])})"
    )
    console.print(
        f"agreement with fp32 [bold]{100 * q['agreement']:.2f}%[/] "
        f"(target ≥ {100 * TARGETS['agreement']:.0f}%: {mark(checks['agreement'])})"
    )
    console.print(f"{result['threads']['torch_intra_op']} CPU threads · {result['n_examples']} test examples")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
