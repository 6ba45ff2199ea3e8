"""The data stage of ``task: multi-label-classification``: texts with a *set* of labels each.

Two input layouts give the same :class:`PreparedData`:

* one column (``data.label_column``) holding a row's labels joined by ``data.label_separator``
  (``auto`` detects ``| ; , ， 、`` the way ``modelyard init`` does, :func:`modelyard.data.profile._separator`);
  an empty cell is a missing label and the row is dropped;
* one 0/1 column per label (``data.label_columns``; the column names are the labels); a row whose cells are
  all 0 has the empty label set and is kept (it is a legitimate answer: "none of these").

In :class:`PreparedData` the ``label`` column holds a **tuple of labels in label order** (``labels``); the
multi-hot matrix is :func:`multi_hot`. Splits are written to parquet as a list column; :func:`label_sets`
turns what parquet reads back (numpy arrays) into tuples again.

Cleaning reuses :func:`clean_frame` unchanged: each label set is encoded as one canonical string (a JSON list in
label order), so duplicates, conflicts (one text, several different label sets) and missing labels are handled
and counted exactly as for single-label data. The split is an **iterative stratification** (Sechidis,
Tsoumakas & Vlahavas 2011): rarest label first, each of its rows goes to the split that most lacks that label;
rows are put in a canonical order first, so the split depends only on the set of rows and the seed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard.config import DataConfig
from modelyard.data.cleaning import as_str_list, clean_frame, normalize_label
from modelyard.data.pipeline import PreparedData, _length_stats, _no_rows_error, _resolve
from modelyard.data.profile import _separator
from modelyard.data.sources import BUNDLED_PREFIX, load_table, suggest_column
from modelyard.data.split import MIN_PER_CLASS, _rng
from modelyard.errors import DataError

_TRUE = {"1", "1.0", "true", "True", "TRUE", "yes"}
_FALSE = {"0", "0.0", "false", "False", "FALSE", "no"}


def label_sets(values: Iterable[Any]) -> list[tuple[str, ...]]:
    """Cells of a ``label`` column (tuples, lists or the numpy arrays parquet returns) → tuples of ``str``."""
    out = []
    for v in values:
        if isinstance(v, str):
            out.append((v,) if v else ())
        else:
            out.append(tuple(str(x) for x in v))
    return out


def multi_hot(sets: Iterable[Any], labels: Sequence[str]) -> np.ndarray:
    """The ``(n, len(labels))`` 0/1 matrix of label sets (labels not in ``labels`` are ignored)."""
    index = {lb: i for i, lb in enumerate(labels)}
    rows = label_sets(sets)
    y = np.zeros((len(rows), len(labels)), dtype=np.int64)
    for r, s in enumerate(rows):
        for lb in s:
            if lb in index:
                y[r, index[lb]] = 1
    return y


def _key(labels: Iterable[str]) -> str:
    """A label set as one canonical string (what clean_frame compares); the empty set is ``[]``."""
    return json.dumps(sorted(set(labels)), ensure_ascii=False, separators=(",", ":"))


def _columns_error(where: str, key: str, col: str, found: list[str], kind: str) -> DataError:
    return DataError(
        f"{where}: no {kind} column '{col}' (columns found: {', '.join(found)}); "
        f"set {key} to the column holding the {kind}{suggest_column(col, found)}"
    )


def _read(cfg: DataConfig, base_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read the source into ``text`` + ``label`` (canonical label-set keys) and describe the layout."""
    if cfg.path.startswith(BUNDLED_PREFIX):
        raise DataError(
            f"{cfg.path}: the bundled corpora are single-label; task multi-label-classification needs a file with "
            "a delimited label column (data.label_separator) or one 0/1 column per label (data.label_columns)"
        )
    path = _resolve(cfg.path, base_dir)
    table = load_table(path, cfg.format, cfg.encoding, header=cfg.header, sheet=cfg.sheet)
    df, where = table.frame, str(path)
    found = [str(c) for c in df.columns]
    if cfg.text_column not in df.columns:
        raise _columns_error(where, "data.text_column", cfg.text_column, found, "text")
    nfkc = cfg.clean.unicode_nfkc
    info: dict[str, Any] = {
        "source": where,
        "format": table.format,
        "compression": table.compression,
        "decoded_as": table.encoding,
        "sha256": {str(path.resolve()): table.sha256},
    }
    if cfg.label_columns is not None:
        missing = [c for c in cfg.label_columns if c not in df.columns]
        if missing:
            raise _columns_error(where, "data.label_columns", missing[0], found, "0/1 label")
        names = [normalize_label(c, nfkc) for c in cfg.label_columns]
        cells = {c: as_str_list(df[c]) for c in cfg.label_columns}
        keys = []
        for i in range(len(df)):
            row: list[str] = []
            missing_cell = False
            for c, name in zip(cfg.label_columns, names, strict=True):
                v = cells[c][i].strip()
                if v in _TRUE:
                    row.append(name)
                elif v == "":
                    missing_cell = True
                elif v not in _FALSE:
                    raise DataError(
                        f"{where}: label column '{c}' holds {v!r} in row {i + 1}; "
                        "data.label_columns must be 0/1 columns"
                    )
            keys.append("" if missing_cell else _key(row))
        info |= {"layout": "columns", "label_columns": list(cfg.label_columns), "label_separator": None}
    else:
        if cfg.label_column not in df.columns:
            raise _columns_error(where, "data.label_column", cfg.label_column, found, "label")
        raw = pd.Series(as_str_list(df[cfg.label_column]), dtype=object)
        sep = _separator(raw) if cfg.label_separator == "auto" else cfg.label_separator
        keys = []
        for cell in raw:
            parts = [cell] if sep is None else cell.split(sep)
            row = [lb for lb in (normalize_label(p, nfkc) for p in parts) if lb]
            keys.append(_key(row) if row else "")
        info |= {"layout": "delimited", "label_column": cfg.label_column, "label_separator": sep}
    frame = pd.DataFrame({"text": pd.Series(as_str_list(df[cfg.text_column]), dtype=object), "label": keys})
    return frame, info


def _restrict(frame: pd.DataFrame, wanted: list[str] | None, where: str) -> tuple[pd.DataFrame, list[str]]:
    """Apply ``data.labels`` (keep only those labels in every set, in that order) and return the label order."""
    present = sorted({lb for k in frame["label"] if k for lb in json.loads(k)})
    if wanted is None:
        return frame, present
    absent = [lb for lb in wanted if lb not in present]
    if absent:
        raise DataError(
            f"{where}: data.labels lists {', '.join(map(repr, absent))}, which no row carries; "
            f"labels found: {', '.join(present[:20])}"
        )
    keep = set(wanted)
    keys = [k if not k else _key(lb for lb in json.loads(k) if lb in keep) for k in frame["label"]]
    return frame.assign(label=keys), list(wanted)


def iterative_split(
    y: np.ndarray, valid_size: float, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train/valid/test by iterative stratification of the multi-hot ``y`` (rows in canonical order).

    Labels are taken rarest first; each row carrying the label goes to the split with the largest remaining
    demand for that label (ties: the largest remaining demand overall, then a seeded random pick). Rows without
    labels fill the remaining demand. Deterministic for a seed.
    """
    n, n_labels = y.shape
    ratios = np.array([1.0 - valid_size - test_size, valid_size, test_size])
    demand = ratios * n
    label_demand = np.outer(ratios, y.sum(axis=0)).astype(np.float64)  # (3, L)
    fold = np.full(n, -1, dtype=np.int64)
    rng = _rng(seed, 2)
    remaining = y.astype(bool).copy()
    while remaining.any():
        counts = remaining.sum(axis=0)
        lab = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        for r in rng.permutation(np.flatnonzero(remaining[:, lab])):
            want = label_demand[:, lab]
            best = np.flatnonzero(want == want.max())
            if len(best) > 1:
                best = best[demand[best] == demand[best].max()]
            j = int(best[0] if len(best) == 1 else rng.choice(best))
            fold[r] = j
            label_demand[j] -= y[r]
            demand[j] -= 1
            remaining[r] = False
    for r in rng.permutation(np.flatnonzero(fold < 0)):
        j = int(np.argmax(demand))
        fold[r] = j
        demand[j] -= 1
    parts = [rng.permutation(np.flatnonzero(fold == j)) for j in range(3)]
    return parts[0], parts[1], parts[2]


def _per_label(y: np.ndarray, labels: list[str]) -> dict[str, int]:
    return {lb: int(c) for lb, c in zip(labels, y.sum(axis=0), strict=True)}


def prepare_multilabel(cfg: DataConfig, base_dir: Path) -> PreparedData:
    """Read, clean, validate and split multi-label data (the multi-label counterpart of ``prepare_data``).

    Returns:
        :class:`PreparedData` whose ``label`` cells are tuples of labels (in ``labels`` order) and whose report
        has ``task: multi-label-classification``, the layout, per-label counts overall and per split, label
        cardinality and the number of distinct label sets.

    Raises:
        DataError: unreadable source, missing columns, a non-0/1 cell in a label column, fewer than two labels,
            or a label with too few rows to appear in every split.
    """
    if cfg.train_per_class is not None or cfg.train_fraction is not None:
        raise DataError(
            "data.train_per_class / data.train_fraction shrink text single-label training splits only; "
            "remove them for multi-label data (data.sample draws a smaller stratified sample)"
        )
    frame, info = _read(cfg, base_dir)
    rows_in = len(frame)
    wanted = [normalize_label(lb, cfg.clean.unicode_nfkc) for lb in cfg.labels] if cfg.labels else None
    frame, labels = _restrict(frame, wanted, info["source"])
    cleaned, clean_counts = clean_frame(frame, cfg.clean)
    dropped = {**clean_counts["dropped"]}
    if cleaned.empty:
        raise _no_rows_error(info["source"], rows_in, dropped)
    labels = labels if wanted is not None else sorted({lb for k in cleaned["label"] for lb in json.loads(k)})
    if len(labels) < 2:
        raise DataError(
            f"{info['source']}: {len(labels)} distinct label(s) after cleaning; multi-label classification needs "
            "at least 2; check data.label_column / data.label_columns / data.label_separator"
        )
    order = {lb: i for i, lb in enumerate(labels)}
    sets = [tuple(sorted(json.loads(k), key=order.__getitem__)) for k in cleaned["label"]]
    canon = pd.DataFrame({"text": cleaned["text"], "key": ["\x1f".join(s) for s in sets], "label": sets})
    canon = canon.sort_values(["text", "key"], kind="mergesort").reset_index(drop=True)[["text", "label"]]
    y = multi_hot(canon["label"], labels)
    counts = _per_label(y, labels)
    need = MIN_PER_CLASS
    small = [(c, lb) for lb, c in counts.items() if c < need]
    if small:
        shown = ", ".join(f"'{lb}' ({c})" for c, lb in sorted(small)[:5])
        raise DataError(
            f"{info['source']}: label(s) {shown} have fewer than {need} rows after cleaning; each label needs one row "
            "in each of train, valid and test; add examples or leave them out by listing the others in data.labels"
        )
    if not (cfg.valid_size > 0 and cfg.test_size > 0 and cfg.valid_size + cfg.test_size < 1):
        raise DataError("data.valid_size and data.test_size must leave rows for training")
    idx = iterative_split(y, cfg.valid_size, cfg.test_size, cfg.seed)
    splits = dict(zip(("train", "valid", "test"), (canon.iloc[i].reset_index(drop=True) for i in idx), strict=True))
    by_split = {name: _per_label(multi_hot(df["label"], labels), labels) for name, df in splits.items()}
    absent = {name: [lb for lb, c in per.items() if c == 0] for name, per in by_split.items()}
    if absent["train"]:
        raise DataError(f"{info['source']}: label(s) {absent['train']} got no training row; add examples")
    report: dict[str, Any] = {
        "task": "multi-label-classification",
        "source": info["source"],
        "format": info["format"],
        "compression": info["compression"],
        "encoding": cfg.encoding,
        "decoded_as": info["decoded_as"],
        "text_column": cfg.text_column,
        "layout": info["layout"],
        "label_column": info.get("label_column"),
        "label_columns": info.get("label_columns"),
        "label_separator": info["label_separator"],
        "rows_in": rows_in,
        "dropped": dropped,
        "rows_out": len(canon),
        "conflicts": clean_counts["conflicts"],
        "conflicts_resolved": clean_counts["conflicts_resolved"],
        "conflict_examples": clean_counts["conflict_examples"],
        "labels": list(labels),
        "n_classes": len(labels),
        "class_balance": counts,
        "class_balance_by_split": by_split,
        "labels_missing_from_split": {k: v for k, v in absent.items() if v},
        "label_cardinality": round(float(y.sum(axis=1).mean()), 3),
        "empty_label_sets": int((y.sum(axis=1) == 0).sum()),
        "distinct_label_sets": len({tuple(r) for r in y.tolist()}),
        "split_method": "iterative stratification (Sechidis et al. 2011)",
        "split_sizes": {name: len(df) for name, df in splits.items()},
        "valid_size": cfg.valid_size,
        "test_size": cfg.test_size,
        "seed": cfg.seed,
        "length_chars": _length_stats(canon["text"]),
        "fingerprints": dict(info["sha256"]),
        **({"pii": clean_counts["pii"]} if "pii" in clean_counts else {}),
    }
    return PreparedData(
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        labels=list(labels),
        report=report,
        fingerprints=dict(info["sha256"]),
    )


def read_label_sets(cfg: DataConfig, base_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a multi-label file in the recipe's layout, uncleaned and unsplit (``modelyard evaluate FILE``).

    Returns ``text`` + ``label`` (sorted label tuples) for every row whose labels are known (a row with an empty
    delimited cell or an empty 0/1 cell is left out), and the description of the source (``source``, ``layout``).
    """
    frame, info = _read(cfg, base_dir)
    known = frame["label"] != ""
    sets = [tuple(json.loads(k)) for k in frame.loc[known, "label"]]
    out = pd.DataFrame({"text": frame.loc[known, "text"].tolist(), "label": sets}, index=frame.index[known])
    return out, info


def join_labels(labels: Iterable[str], sep: str = "|") -> str:
    """A label set as one string (``pred`` column of ``modelyard predict``)."""
    return sep.join(labels)
