"""Active-learning simulation on Rotten Tomatoes: accuracy vs number of labels for each `label queue` strategy.

    python benchmarks/active_learning.py --kind tfidf --repeats 5            # minutes
    python benchmarks/active_learning.py --kind minilm --out al-minilm        # ~1 h on a 2-core CPU

The recipe's own split of ``bundled:rotten-tomatoes`` (seed 42, 10% valid, 10% test, as
examples/rotten_tomatoes_minilm.yaml) is prepared once. A stratified, seeded ``--pool`` of its training split is
the unlabelled pool, the gold label the oracle. Every strategy starts from the same ``--start`` labels per class
(drawn from the pool with the repeat's seed); each round a model is trained on the labelled rows with modelyard's
training function (``training.run.train(recipe, data=…)``: the labelled rows are the train split and the valid
and test splits are the full, identical splits every round — the way ``modelyard retrain`` trains on given
splits), scored on the full test split, and asked for the next ``--step`` rows by the same function
``modelyard label queue`` ranks with (:func:`modelyard.ops.active.rank_queue`, which also drops every pool text
already in the run's splits). Those rows get their gold labels and the next round begins.

Writes ``<out>/active_learning.json`` (after every round, so a long run can be read while it runs),
``<out>/active_learning.svg`` / ``.png`` (test accuracy vs labels, one line per strategy; the band is ± one
standard deviation over repeats) and prints the table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
console = Console(stderr=True)
STRATEGIES = ("margin", "entropy", "diverse", "random")


def recipe_for(kind: str, out: Path, epochs: int) -> Any:
    """The recipe trained every round: tf-idf (fast) or the bundled MiniLM (examples/rotten_tomatoes_minilm.yaml,
    plain cross-entropy: R-Drop doubles the cost of each step)."""
    from modelyard.config import recipe_from_dict

    data = {"path": "bundled:rotten-tomatoes", "valid_size": 0.1, "test_size": 0.1, "seed": 42}
    if kind == "tfidf":
        model: dict[str, Any] = {"type": "tfidf-logreg"}
        train: dict[str, Any] = {}
    else:
        model = {"backbone": "bundled:minilm-l6", "max_length": 64}
        train = {
            "epochs": epochs,
            "batch_size": 16,
            "learning_rate": 1.0e-4,
            "warmup_ratio": 0.06,
            "weight_decay": 0.01,
            "metric": "accuracy",
            "patience": None,
            "seed": 7,
        }
    raw = {"name": f"al-{kind}", "data": data, "model": model, "train": train, "output_dir": str(out / "runs")}
    return recipe_from_dict(raw, base_dir=ROOT, source=f"active_learning.py --kind {kind}")


def start_rows(pool: pd.DataFrame, per_class: int, seed: int) -> list[int]:
    """``per_class`` pool positions of each class, seeded (the same start set for every strategy)."""
    rng = np.random.default_rng(seed)
    rows: list[int] = []
    for label in sorted(pool["label"].unique()):
        where = np.flatnonzero(pool["label"].to_numpy() == label)
        rows += sorted(rng.choice(where, size=min(per_class, len(where)), replace=False).tolist())
    return rows


def run_strategy(
    recipe: Any,
    full: Any,
    pool: pd.DataFrame,
    start: list[int],
    strategy: str,
    rounds: int,
    step: int,
    seed: int,
    points: list[dict[str, Any]],
    on_point: Any = None,
    first: tuple[Path, dict[str, Any]] | None = None,
) -> tuple[Path, dict[str, Any]] | None:
    """One learning curve into ``points``: ``rounds + 1`` trainings, ``step`` more gold labels between two.

    ``first``: the round-0 run (the start set is the same for every strategy, and so is its model) and its
    point; without it round 0 is trained here and kept (returned) for the next strategy, not deleted.
    """
    from modelyard.config import CleaningConfig
    from modelyard.data import PreparedData
    from modelyard.models.loading import load
    from modelyard.ops.active import labelled_keys, rank_queue
    from modelyard.rundir import RunDir
    from modelyard.training.run import train

    quiet = Console(file=io.StringIO())
    labelled = list(start)
    texts = pool["text"].tolist()
    for r in range(rounds + 1):
        t0 = time.time()
        data = PreparedData(
            train=pool.iloc[labelled].reset_index(drop=True),
            valid=full.valid,
            test=full.test,
            labels=list(full.labels),
            report=dict(full.report or {}),
            fingerprints=dict(full.fingerprints or {}),
        )
        if r == 0 and first is not None:
            run_dir, point = first[0], {k: v for k, v in first[1].items() if k not in ("queue_s", "embedding")}
        else:
            run_dir = train(recipe, data=data, console=quiet)
            metrics = RunDir(run_dir).metrics()
            point = {
                "round": r,
                "labels": len(labelled),
                "accuracy": metrics["test"]["accuracy"],
                "macro_f1": metrics["test"]["macro_f1"],
                "class_mix": {lab: int((pool["label"].iloc[labelled] == lab).sum()) for lab in full.labels},
                "train_s": round(time.time() - t0, 1),
            }
            if r == 0:
                first = (run_dir, point)
        if r < rounds:
            t1 = time.time()
            clf = load(run_dir)
            splits = RunDir(run_dir).splits()
            in_splits, _ = labelled_keys(
                [t for part in (splits.train, splits.valid, splits.test) for t in part["text"]], [], CleaningConfig()
            )
            queue = rank_queue(
                clf, texts, step, strategy=strategy, seed=seed * 1000 + r, in_splits=in_splits, console=quiet
            )
            new = (queue.frame["row"] - 1).tolist()
            assert not set(new) & set(labelled), "the queue returned a labelled row"
            labelled += new
            point["queue_s"] = round(time.time() - t1, 1)
            if queue.embedding:
                point["embedding"] = queue.embedding
        if first is None or run_dir != first[0]:
            shutil.rmtree(run_dir, ignore_errors=True)
        points.append(point)
        if on_point is not None:
            on_point()
        console.print(
            f"  {strategy:8s} round {r}: {point['labels']:4d} labels → test accuracy {point['accuracy']:.4f} "
            f"(train {point['train_s']}s" + (f", queue {point['queue_s']}s)" if "queue_s" in point else ")"),
            highlight=False,
        )
    return first


def summarise(curves: dict[str, list[list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """Mean and standard deviation over repeats, per strategy and number of labels."""
    out: dict[str, list[dict[str, Any]]] = {}
    for strategy, reps in curves.items():
        done = [rep for rep in reps if rep]
        if not done:
            continue
        n = min(len(rep) for rep in done)
        out[strategy] = [
            {
                "labels": done[0][i]["labels"],
                "accuracy": float(np.mean([rep[i]["accuracy"] for rep in done])),
                "accuracy_sd": float(np.std([rep[i]["accuracy"] for rep in done])),
                "macro_f1": float(np.mean([rep[i]["macro_f1"] for rep in done])),
                "repeats": len(done),
            }
            for i in range(n)
        ]
    return out


def table(summary: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: one row per number of labels, one column per strategy (test accuracy, mean over repeats)."""
    strategies = list(summary)
    if not strategies:
        return "(no results yet)"
    n = max(len(v) for v in summary.values())
    lines = ["| labels | " + " | ".join(strategies) + " |", "|---:|" + "---:|" * len(strategies)]
    for i in range(n):
        labels = next(v[i]["labels"] for v in summary.values() if len(v) > i)
        cells = []
        for s in strategies:
            p = summary[s][i] if len(summary[s]) > i else None
            cells.append(
                "" if p is None else f"{p['accuracy']:.4f}" + (f" ± {p['accuracy_sd']:.4f}" if p["repeats"] > 1 else "")
            )
        lines.append(f"| {labels} | " + " | ".join(cells) + " |")
    means = [float(np.mean([p["accuracy"] for p in summary[s]])) for s in strategies]
    lines.append("| **mean over the curve** | " + " | ".join(f"**{m:.4f}**" for m in means) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, list[dict[str, Any]]], title: str, out: Path) -> None:
    """Accuracy vs labels, one line per strategy (random dashed), ± one standard deviation as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for strategy, points in summary.items():
        x = [p["labels"] for p in points]
        y = np.array([p["accuracy"] for p in points])
        sd = np.array([p["accuracy_sd"] for p in points])
        style = {"random": "--", "entropy": ":"}.get(strategy, "-")  # two labels: entropy ranks like margin
        (line,) = ax.plot(x, y, style, marker="o", markersize=3, label=strategy)
        if points and points[0]["repeats"] > 1:
            ax.fill_between(x, y - sd, y + sd, color=line.get_color(), alpha=0.12)
    ax.set_xlabel("labelled examples")
    ax.set_ylabel("test accuracy (full test split)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    for ext in ("svg", "png"):
        fig.savefig(out.with_suffix(f".{ext}"), dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("tfidf", "minilm"), default="tfidf")
    parser.add_argument("--pool", type=int, default=3000, help="Pool rows (a stratified sample of the train split).")
    parser.add_argument("--start", type=int, default=20, help="Labels per class to start with.")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--step", type=int, default=50, help="Labels added per round.")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--repeats", type=int, default=1, help="Repeats with other pools and start sets.")
    parser.add_argument("--epochs", type=int, default=5, help="minilm: training epochs per round.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Output folder (default: al-<kind>).")
    args = parser.parse_args(argv)

    from modelyard.data import prepare_data
    from modelyard.data.split import stratified_sample

    out = (args.out or Path(f"al-{args.kind}")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipe = recipe_for(args.kind, out, args.epochs)
    full = prepare_data(recipe.data, ROOT)
    console.print(
        f"rotten tomatoes: train {len(full.train)}, valid {len(full.valid)}, test {len(full.test)}; "
        f"pool {args.pool}, start {args.start}/class, {args.rounds} rounds of {args.step}; kind {args.kind}",
        highlight=False,
    )
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["test_rows"] = len(full.test)
    curves: dict[str, list[list[dict[str, Any]]]] = {s: [] for s in args.strategies}
    t0 = time.time()

    def save() -> None:  # after every round: a long run can be read while it runs
        result = {
            "settings": settings,
            "seconds": round(time.time() - t0),
            "summary": summarise(curves),
            "curves": curves,
        }
        (out / "active_learning.json").write_text(json.dumps(result, indent=2), encoding="utf-8")

    for rep in range(args.repeats):
        seed = args.seed + rep
        pool = stratified_sample(full.train, args.pool, seed).reset_index(drop=True)
        start = start_rows(pool, args.start, seed)
        first = None  # the round-0 model: the same start set (and seed) for every strategy, trained once
        for strategy in args.strategies:
            console.print(f"repeat {rep + 1}/{args.repeats} · {strategy}", highlight=False)
            curves[strategy].append([])
            first = run_strategy(
                recipe, full, pool, start, strategy, args.rounds, args.step, seed, curves[strategy][-1], save, first
            )
        if first is not None:
            shutil.rmtree(first[0], ignore_errors=True)
    summary = summarise(curves)
    title = f"Rotten Tomatoes, {args.kind}: pool {args.pool}, {args.start}/class + {args.rounds}×{args.step}" + (
        f", mean of {args.repeats} repeats" if args.repeats > 1 else ""
    )
    plot(summary, title, out / "active_learning")
    text = table(summary)
    (out / "active_learning.md").write_text(f"{title}\n\n{text}\n", encoding="utf-8")
    print(text)
    console.print(f"wrote {out / 'active_learning.json'}, .svg, .png, .md in {time.time() - t0:.0f}s", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
