"""Seeded, stratified sampling and train/valid/test splitting.

The split is computed here rather than with two calls to sklearn's ``train_test_split``: sklearn
apportions each split independently, so a small class can end up with no validation example even
when it has enough rows, and the train split (the leftover) can be off by two rows. The allocation
below rounds every class's share of every split to its floor or ceiling and guarantees every class
at least one row in each split. Rows are put in a canonical order first, so
the result depends only on the *set* of rows and the seed, not on the order of the input file.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from modelyard.errors import DataError

MIN_PER_CLASS = 3  # one row for each of train, valid and test
_EPS = 1e-9  # absorbs float error in quotas like 30 * 0.1, which must floor to 3, not 2


def min_examples_per_class(valid_size: float, test_size: float) -> int:
    """Fewest rows a class needs so that its proportional share of both valid and test is ≥ 1 row.

    Example: with ``valid_size = test_size = 0.1`` a class needs 10 rows.
    """
    return max(MIN_PER_CLASS, math.ceil(round(1 / min(valid_size, test_size), 9)))


def _rng(seed: int, stream: int) -> np.random.Generator:
    # default_rng rejects negative seeds; the modulo maps every int to a distinct non-negative one.
    # ``stream`` separates sampling from splitting so changing one never shifts the other.
    return np.random.default_rng([seed % (1 << 64), stream])


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(df.columns), kind="mergesort").reset_index(drop=True)


def _apportion(quotas: np.ndarray, total: int, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Round real ``quotas`` to integers summing to ``total`` (largest remainder), within bounds.

    Every class gets the floor or the ceiling of its quota unless a bound forces otherwise. Ties go
    to the earlier class, so the result is deterministic. ``total`` is clamped to what the bounds allow.
    """
    total = int(min(max(total, int(lower.sum())), int(upper.sum())))
    alloc = np.clip(np.floor(quotas + _EPS).astype(np.int64), lower, upper)
    while (diff := total - int(alloc.sum())) != 0:
        remainder = quotas - alloc
        if diff > 0:
            k = int(np.argmax(np.where(alloc < upper, remainder, -np.inf)))
            alloc[k] += 1
        else:
            k = int(np.argmin(np.where(alloc > lower, remainder, np.inf)))
            alloc[k] -= 1
    return alloc


def _class_positions(df: pd.DataFrame) -> tuple[list[str], list[np.ndarray]]:
    labels = df["label"].astype(str).to_numpy()
    classes = sorted(set(labels))
    return classes, [np.flatnonzero(labels == c) for c in classes]


def stratified_sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Draw exactly ``n`` rows, each class keeping its share (within one row).

    Args:
        df: A frame with a ``label`` column.
        n: Rows wanted; ``n >= len(df)`` returns every row.
        seed: Random seed; the same seed and the same set of rows give the same sample.

    Returns:
        The sampled rows (canonical order, index reset).
    """
    df = _canonical(df)
    if n >= len(df):
        return df
    classes, positions = _class_positions(df)
    counts = np.array([len(p) for p in positions])
    take = _apportion(counts * (n / len(df)), n, np.zeros_like(counts), counts)
    rng = _rng(seed, 0)
    chosen = [rng.permutation(pos)[:k] for pos, k in zip(positions, take, strict=True)]
    return df.iloc[np.sort(np.concatenate(chosen))].reset_index(drop=True)


def per_class_sample(df: pd.DataFrame, per_class: int, seed: int) -> pd.DataFrame:
    """Keep at most ``per_class`` rows of each class, drawn at random (``data.train_per_class``).

    The draw is a seeded permutation per class of which the first ``per_class`` rows are kept, so for one
    seed the samples are nested: the 8-per-class rows are among the 16-per-class rows, and so on (learning
    curves compare like with like).

    Returns:
        The kept rows (canonical order, index reset).
    """
    df = _canonical(df)
    _, positions = _class_positions(df)
    rng = _rng(seed, 2)
    chosen = [rng.permutation(pos)[:per_class] for pos in positions]
    return df.iloc[np.sort(np.concatenate(chosen))].reset_index(drop=True)


def stratified_split(
    df: pd.DataFrame, valid_size: float, test_size: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split into train/valid/test, stratified by ``label``, deterministically for a seed.

    The valid and test splits get ``ceil(size * len(df))`` rows (like sklearn). Each class gets the
    floor or the ceiling of its proportional share of every split (train included), except that every
    class gets at least one row in every split even when its share is smaller.

    Args:
        df: A frame with a ``label`` column; every class needs at least 3 rows.
        valid_size: Fraction of rows for validation, in (0, 1).
        test_size: Fraction of rows for test, in (0, 1); ``valid_size + test_size < 1``.
        seed: Random seed.

    Returns:
        ``(train, valid, test)``, each shuffled with its index reset.

    Raises:
        DataError: a class has fewer than 3 rows, or the sizes leave no room for training.
    """
    if not (0 < valid_size < 1 and 0 < test_size < 1 and valid_size + test_size < 1):
        raise DataError(
            f"data.valid_size ({valid_size}) and data.test_size ({test_size}) must each be in (0, 1) "
            "and leave rows for training"
        )
    df = _canonical(df)
    classes, positions = _class_positions(df)
    counts = np.array([len(p) for p in positions])
    small = [(c, int(n)) for c, n in zip(classes, counts, strict=True) if n < MIN_PER_CLASS]
    if small:
        shown = ", ".join(f"'{c}' ({n})" for c, n in small[:5])
        raise DataError(
            f"class(es) {shown} have fewer than {MIN_PER_CLASS} rows; a stratified train/valid/test split "
            "needs one per split; add examples or leave the class out via data.labels"
        )
    n = len(df)
    # round() first: 0.1 * 30 is 3.0000000000000004 in floating point and must not become 4.
    n_test = math.ceil(round(test_size * n, 9))
    n_valid = math.ceil(round(valid_size * n, 9))
    q_test = counts * (n_test / n)
    q_valid = counts * (n_valid / n)
    # Two stages keep every split, train included, within one row of its share: first the held-out
    # rows (valid + test) per class, then those are divided between test and valid, each class's test
    # count bounded so that its valid count is also a floor or ceiling of its quota.
    held = _apportion(q_test + q_valid, n_test + n_valid, np.full_like(counts, 2), counts - 1)
    lower = np.maximum(np.floor(q_test + _EPS), held - np.ceil(q_valid - _EPS)).astype(np.int64)
    upper = np.minimum(np.ceil(q_test - _EPS), held - np.floor(q_valid + _EPS)).astype(np.int64)
    lower, upper = np.maximum(lower, 1), np.minimum(upper, held - 1)
    # Tiny classes whose share is below one row: only the one-row-per-split rule applies.
    forced = lower > upper
    lower[forced], upper[forced] = 1, held[forced] - 1
    if held.sum() != n_test + n_valid:  # bounds moved the held-out total; keep test's share of it
        n_test = round(int(held.sum()) * n_test / (n_test + n_valid))
    test_k = _apportion(q_test, n_test, lower, upper)
    valid_k = held - test_k

    rng = _rng(seed, 1)
    parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
    for pos, t, v in zip(positions, test_k, valid_k, strict=True):
        perm = rng.permutation(pos)
        parts["test"].append(perm[:t])
        parts["valid"].append(perm[t : t + v])
        parts["train"].append(perm[t + v :])
    # Shuffle within each split so batches are not grouped by class.
    out = {name: df.iloc[rng.permutation(np.concatenate(idx))].reset_index(drop=True) for name, idx in parts.items()}
    return out["train"], out["valid"], out["test"]
