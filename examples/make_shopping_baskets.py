"""Build a real multi-label text corpus ("shopping baskets") from a single-label one, deterministically.

    python examples/make_shopping_baskets.py            # -> runs/data/shopping_baskets.csv (10,000 rows)
    python examples/make_shopping_baskets.py --layout columns --out runs/data/shopping_baskets_columns.csv
    python examples/make_shopping_baskets.py --source ../shared/data/ag_news/test.csv --out runs/data/news_baskets.csv

No installable package ships a real multi-label text corpus, so this one is *composed* from real single-label
texts, and says so. The default source is online_shopping_10_cats (62,774 Chinese product reviews, 10 product
categories, read in place from ``../shared/data``; never copied into the project). Each output row is a
"basket" of k real reviews from k **distinct** categories, and its labels are exactly those categories:

1. Reviews are deduplicated first: whitespace-normalised (NFKC) text; empty texts and texts that appear under
   more than one category are dropped, repeats within a category kept once.
2. k is drawn from {1, 2, 3} with probabilities 0.5 / 0.35 / 0.15 (label cardinality about 1.65).
3. The k categories are drawn one after the other without replacement, each with probability proportional to
   the **square root of the reviews it still has** (tempered availability): large categories stay more
   frequent than small ones, yet the rarest (热水器, 574 reviews vs 10,000 for 平板) appears in about 3% of
   the rows instead of 0.6%; a category whose reviews are used up stops being drawn.
4. One review per chosen category is drawn without replacement (no review is used twice); the reviews are
   joined with a space in random order, the labels sorted and joined with ``|``.

The output is a CSV (UTF-8) with ``text`` and either ``labels`` (``--layout delimited``, the default) or one
0/1 column per category (``--layout columns``); it is written atomically. The same ``--seed`` and ``--rows``
give byte-identical files. ``--source`` may also be AG News (headerless ``label,title,description`` CSV with
``classes.txt`` beside it; 4 English news topics): the format follows from the file name, or ``--format``.

This is a real-text, synthetic-composition benchmark: every sentence is a real review, but a multi-topic
basket is an assembly, and its categories are signalled by separate sentences (easier than a single
text that is about several topics at once).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT / ".." / "shared" / "data" / "online_shopping_10_cats.zip"
DEFAULT_OUT = ROOT / "runs" / "data" / "shopping_baskets.csv"
K_PROBS = {1: 0.5, 2: 0.35, 3: 0.15}


def _normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", str(text)).split())


def read_source(path: Path, fmt: str = "auto") -> pd.DataFrame:
    """The single-label source as a ``text``, ``category`` frame (``shopping`` or ``ag_news`` format)."""
    if fmt == "auto":
        fmt = "ag_news" if "ag_news" in str(path) else "shopping"
    if fmt == "shopping":  # CSV cat,label,review (UTF-8 with BOM), optionally inside a .zip
        raw = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
        return pd.DataFrame({"text": raw["review"], "category": raw["cat"]})
    if fmt == "ag_news":  # headerless CSV: class id 1-4, title, description; names in classes.txt
        raw = pd.read_csv(path, header=None, names=["id", "title", "description"], dtype=str, keep_default_na=False)
        names = (path.parent / "classes.txt").read_text(encoding="utf-8").split("\n")
        names = [n.strip() for n in names if n.strip()]
        text = raw["title"].str.strip() + ". " + raw["description"].str.strip()
        return pd.DataFrame({"text": text, "category": [names[int(i) - 1] for i in raw["id"]]})
    raise ValueError(f"unknown --format {fmt!r}; use auto, shopping or ag_news")


def deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """Normalised, non-empty texts, each once; texts seen under several categories are dropped."""
    frame = frame.assign(text=frame["text"].map(_normalise))
    frame = frame[frame["text"] != ""]
    cats_per_text = frame.groupby("text")["category"].nunique()
    ambiguous = set(cats_per_text[cats_per_text > 1].index)
    frame = frame[~frame["text"].isin(ambiguous)].drop_duplicates(["text", "category"])
    return frame.reset_index(drop=True)


def make_baskets(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """``rows`` baskets (``text``, ``labels`` as sorted tuples) from a deduplicated ``text``/``category`` frame."""
    rng = np.random.default_rng(seed)
    categories = sorted(frame["category"].unique())
    # each category's reviews in a seeded random order; drawing = popping from the end (without replacement)
    pools = {c: list(rng.permutation(frame.loc[frame["category"] == c, "text"].to_numpy())) for c in categories}
    ks, probs = np.array(list(K_PROBS)), np.array(list(K_PROBS.values()))
    texts: list[str] = []
    labels: list[tuple[str, ...]] = []
    for _ in range(rows):
        k = int(rng.choice(ks, p=probs))
        chosen: list[str] = []
        for _ in range(k):
            left = [c for c in categories if pools[c] and c not in chosen]
            if not left:
                break
            weights = np.sqrt([len(pools[c]) for c in left])
            chosen.append(left[int(rng.choice(len(left), p=weights / weights.sum()))])
        if not chosen:
            raise SystemExit(f"the source ran out of texts after {len(texts)} rows; ask for fewer --rows")
        parts = [pools[c].pop() for c in chosen]
        texts.append(" ".join(parts[i] for i in rng.permutation(len(parts))))
        labels.append(tuple(sorted(chosen)))
    return pd.DataFrame({"text": texts, "labels": labels})


def to_layout(baskets: pd.DataFrame, layout: str, categories: list[str]) -> pd.DataFrame:
    """``delimited``: ``text``, ``labels`` ("a|b"); ``columns``: ``text`` and one 0/1 column per category."""
    if layout == "delimited":
        return pd.DataFrame({"text": baskets["text"], "labels": ["|".join(s) for s in baskets["labels"]]})
    if layout == "columns":
        out = pd.DataFrame({"text": baskets["text"]})
        for c in categories:
            out[c] = [int(c in s) for s in baskets["labels"]]
        return out
    raise ValueError(f"unknown --layout {layout!r}; use delimited or columns")


def write_atomically(frame: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            frame.to_csv(f, index=False, lineterminator="\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="single-label corpus (read in place)")
    parser.add_argument("--format", default="auto", choices=["auto", "shopping", "ag_news"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output CSV (runs/ is git-ignored)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--layout", default="delimited", choices=["delimited", "columns"])
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"{args.source} not found; pass --source", file=sys.stderr)
        return 1
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    source = deduplicate(read_source(args.source, args.format))
    baskets = make_baskets(source, args.rows, args.seed)
    categories = sorted(source["category"].unique())
    write_atomically(to_layout(baskets, args.layout, categories), args.out)
    counts = pd.Series([c for s in baskets["labels"] for c in s]).value_counts()
    card = baskets["labels"].map(len).mean()
    print(
        f"{args.out}: {len(baskets):,} rows from {len(source):,} distinct texts; label cardinality {card:.3f}; "
        + ", ".join(f"{c} {n:,}" for c, n in counts.items()),
        file=sys.stderr,
    )
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
