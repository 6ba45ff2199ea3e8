"""Splitting a training set across simulated federated clients, and describing what each client holds.

* ``iid``: a seeded random permutation cut into near-equal shards;
* ``dirichlet:ALPHA``: label skew — for every class, its examples are divided among the clients in
  proportions drawn from Dirichlet(ALPHA, …, ALPHA) (Hsu et al. 2019, "Measuring the effects of non-identical
  data distribution"); small ALPHA (0.1) gives most clients one or two classes, large ALPHA (100) is close to iid;
  redrawn (seeded) until every client holds at least ``min_size`` examples;
* ``by-column:COL``: one client per value of a column of the data file (a natural partition: a shop, a region,
  a hospital), matched to the cleaned training rows by their cleaned text.

Flower's own partitioners live in ``flwr-datasets``, which works on Hugging Face ``datasets`` objects and pins
versions of them; these few seeded lines work on the frames and image arrays modelyard already holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard.config import Recipe
from modelyard.data.cleaning import clean_text
from modelyard.data.images import ImageSplit
from modelyard.data.sources import load_table, suggest_column
from modelyard.errors import ConfigError, DataError

MAX_DRAWS = 1000


def parse_partition(spec: str) -> tuple[str, Any]:
    """``iid`` → ``("iid", None)``; ``dirichlet:0.5`` → ``("dirichlet", 0.5)``; ``by-column:shop`` → ``("by-column",
    "shop")``.

    Raises:
        ConfigError: Any other form, or a non-positive alpha.
    """
    name, _, arg = spec.partition(":")
    if name == "iid" and not arg:
        return "iid", None
    if name == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = -1.0
        if not alpha > 0 or not np.isfinite(alpha):
            raise ConfigError(f"--partition {spec!r}: ALPHA must be a positive number, e.g. dirichlet:0.5")
        return "dirichlet", alpha
    if name == "by-column" and arg:
        return "by-column", arg
    raise ConfigError(f"--partition {spec!r}: use iid, dirichlet:ALPHA (e.g. dirichlet:0.5) or by-column:COLUMN")


def split_clients(
    y: Sequence[Any], n_clients: int, spec: str, seed: int, groups: Sequence[str] | None = None, min_size: int = 2
) -> tuple[list[np.ndarray], list[str]]:
    """Row indices of each client's shard (sorted), and the clients' names.

    Args:
        y: The label of every training row.
        n_clients: How many clients (``by-column``: ignored, one per value of ``groups``).
        spec: ``iid``, ``dirichlet:ALPHA`` or ``by-column:COL``.
        seed: Seeds the permutation / the Dirichlet draws.
        groups: ``by-column``: each row's column value.
        min_size: ``dirichlet``: redraw until every client holds at least this many rows.

    Raises:
        DataError: Fewer rows than clients, or no draw in :data:`MAX_DRAWS` gives every client ``min_size`` rows.
    """
    kind, arg = parse_partition(spec)
    y = np.asarray([str(v) for v in y], dtype=object)
    rng = np.random.default_rng(seed)
    if kind == "by-column":
        assert groups is not None, "by-column needs each row's column value"
        values = np.asarray([str(g) for g in groups], dtype=object)
        names = sorted(set(values))
        return [np.flatnonzero(values == v) for v in names], [f"{arg}={v}" for v in names]
    if n_clients < 1 or n_clients > len(y):
        raise DataError(f"--clients {n_clients}: the training split has {len(y)} rows; use 1 to {len(y)} clients")
    names = [f"client {i}" for i in range(n_clients)]
    if kind == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(len(y)), n_clients)], names
    for _ in range(MAX_DRAWS):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for label in sorted(set(y)):
            rows = rng.permutation(np.flatnonzero(y == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_clients, arg)))[:-1] * len(rows)).astype(int)
            for client, chunk in enumerate(np.split(rows, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts], names
    raise DataError(
        f"--partition {spec} over {n_clients} clients left some client with fewer than {min_size} examples in "
        f"{MAX_DRAWS} draws; use a larger alpha or fewer --clients"
    )


def class_mix(names: Sequence[str], labels: Sequence[str]) -> dict[str, int]:
    """``{label: count}`` over ``labels`` (0 for a label a client does not hold)."""
    counts = Counter(str(n) for n in names)
    return {str(label): int(counts.get(str(label), 0)) for label in labels}


def label_names(split: pd.DataFrame | ImageSplit, labels: Sequence[str]) -> list[str]:
    """The label of every row of a text frame or an image split."""
    return split["label"].astype(str).tolist() if isinstance(split, pd.DataFrame) else [labels[i] for i in split.labels]


def subset(split: pd.DataFrame | ImageSplit, idx: np.ndarray) -> pd.DataFrame | ImageSplit:
    """Rows ``idx`` of a text frame or an image split."""
    if isinstance(split, pd.DataFrame):
        return split.iloc[idx].reset_index(drop=True)
    return ImageSplit(split.images[idx], split.labels[idx], [split.refs[i] for i in idx])


def column_groups(recipe: Recipe, train: pd.DataFrame, column: str) -> list[str]:
    """``by-column:COL``: the value of ``COL`` for every training row, matched through the cleaned text.

    Raises:
        DataError: ``data.path`` is not a file, the column is missing, or some training row has no match.
    """
    cfg = recipe.data
    if cfg.path.startswith("bundled:"):
        raise DataError(f"--partition by-column:{column} needs data.path to be a file; {cfg.path} has no columns")
    path = Path(cfg.path).expanduser()
    path = path if path.is_absolute() else recipe.base_dir / path
    frame = load_table(path, cfg.format, cfg.encoding, header=cfg.header, sheet=cfg.sheet).frame
    if column not in frame.columns:
        found = [str(c) for c in frame.columns]
        raise DataError(
            f"{path}: no column '{column}' for --partition by-column (columns found: {', '.join(found)})"
            f"{suggest_column(column, found)}"
        )
    value_of: dict[str, str] = {}
    for text, value in zip(frame[cfg.text_column].tolist(), frame[column].tolist(), strict=True):
        value_of.setdefault(clean_text(str(text), cfg.clean), "" if pd.isna(value) else str(value))
    missing = [t for t in train["text"] if t not in value_of]
    if missing:
        raise DataError(
            f"{len(missing)} training rows could not be matched to a value of '{column}' in {path} "
            f"(e.g. {missing[0][:60]!r}); by-column needs the rows of data.path itself (no data.extra_train)"
        )
    return [value_of[t] for t in train["text"]]


def require_rows(shards: Sequence[Any], minimum: int = 2) -> None:
    """Every client needs a few examples to train on.

    Raises:
        DataError: Naming the clients with fewer than ``minimum`` rows.
    """
    small = [i for i, s in enumerate(shards) if len(s) < minimum]
    if small:
        raise DataError(
            f"client(s) {', '.join(map(str, small))} got fewer than {minimum} training examples; "
            "use fewer --clients, a larger alpha, or more data"
        )
