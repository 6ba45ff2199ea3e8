"""Federated (FedAvg, simulated clients) against centralised training on Rotten Tomatoes, on the same split.

    python benchmarks/federated.py [--epochs 4] [--rounds 16] [--clients 5] [--partitions iid,dirichlet:0.5]
                                   [--sample N] [--output FILE.md]

One recipe (a ``textcnn`` with a learned WordPiece vocabulary over the bundled Rotten Tomatoes snippets, the same
data split for every row) is trained three ways through modelyard's ordinary paths:

* centralised: ``modelyard train`` for ``--epochs`` epochs;
* federated: ``modelyard federate`` with ``--clients`` clients and ``--rounds`` rounds of one local epoch each (a
  round is one pass over the training rows, split across the clients), once per ``--partitions`` entry; the
  accuracy after round ``--epochs`` (the same number of passes as the centralised run) is shown too.

Each run keeps its best epoch / round on the validation split; the table shows test accuracy and macro-F1, how
skewed the clients' class mix was (the mean share of each client's majority class) and the wall time (on a busy
machine, wall times are only indicative). Prints a Markdown table (and writes it with ``--output``); the runs are
kept under ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def recipe(args: argparse.Namespace, name: str, epochs: int = 1) -> Any:
    from modelyard.config import recipe_from_dict

    raw = {
        "name": name,
        "data": {"path": "bundled:rotten-tomatoes", "valid_size": 0.05, "test_size": 0.15, "seed": 0},
        "model": {
            "type": "textcnn",
            "max_length": 64,
            "tokenizer": {"type": "wordpiece", "vocab_size": 8000, "min_frequency": 2},
            "arch": {"embedding_dim": 64, "num_filters": 64, "dropout": 0.3},
        },
        "train": {
            "epochs": epochs,
            "batch_size": 32,
            "learning_rate": args.lr,
            "warmup_ratio": 0.0,
            "seed": 0,
            "metric": "accuracy",
            "num_threads": args.threads,
        },
        "output_dir": str(args.output_dir),
    }
    if args.sample:
        raw["data"]["sample"] = args.sample
    return recipe_from_dict(raw, base_dir=Path.cwd())


def row(label: str, run: Path, minutes: float, clients: str, skew: str, at_epochs: str = "-") -> str:
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    test = metrics["test"]
    return (
        f"| {label} | {clients} | {skew} | {at_epochs} | {metrics['valid']['accuracy']:.4f} | "
        f"{test['accuracy']:.4f} | {test['macro_f1']:.4f} | {minutes:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from modelyard.training.federated import FederationSpec, federate
    from modelyard.training.run import train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="centralised epochs")
    parser.add_argument("--rounds", type=int, default=16, help="federated rounds (one local epoch each)")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--partitions", default="iid,dirichlet:0.5")
    parser.add_argument("--lr", type=float, default=3e-3, help="train.learning_rate")
    parser.add_argument("--threads", type=int, default=2, help="train.num_threads")
    parser.add_argument("--sample", type=int, default=None, help="data.sample (rows before the split); default all")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/federated-benchmark"))
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    console = Console(stderr=True)

    rows = []
    t0 = time.perf_counter()
    run = train(recipe(args, "central", args.epochs), console=console)
    best = json.loads((run / "manifest.json").read_text(encoding="utf-8"))["best_epoch"]
    label = f"centralised, {args.epochs} epochs (best epoch {best})"
    history = json.loads((run / "history.json").read_text(encoding="utf-8"))
    rows.append(row(label, run, (time.perf_counter() - t0) / 60, "1", "-", f"{history[-1]['valid_accuracy']:.4f}"))
    for partition in args.partitions.split(","):
        t0 = time.perf_counter()
        spec = FederationSpec(clients=args.clients, rounds=args.rounds, local_epochs=1, partition=partition)
        run = federate(recipe(args, f"fed-{partition.replace(':', '-')}"), spec, console=console)
        fed = json.loads((run / "federation.json").read_text(encoding="utf-8"))
        majority = [max(mix.values()) / max(sum(mix.values()), 1) for mix in fed["class_mix"].values()]
        sizes = sorted(sum(mix.values()) for mix in fed["class_mix"].values())
        label = f"FedAvg {partition}, {args.rounds} rounds × 1 local epoch (best round {fed['best_round']})"
        clients = f"{args.clients} ({sizes[0]}–{sizes[-1]} rows)"
        early = next((e for e in fed["per_round"] if e["round"] == args.epochs), None)
        at_epochs = f"{early['valid_accuracy']:.4f}" if early else "-"
        skew = f"{sum(majority) / len(majority):.2f}"
        rows.append(row(label, run, (time.perf_counter() - t0) / 60, clients, skew, at_epochs))

    header = (
        "| training | clients (rows each) | majority-class share per client | valid acc after "
        f"{args.epochs} passes | valid acc | test acc | test macro-F1 | minutes |\n|---|---|---|---|---|---|---|---|"
    )
    table = "\n".join([header, *rows])
    print(table)
    if args.output:
        args.output.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
