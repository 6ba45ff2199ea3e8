"""Extra labelled files added to the training split only (``data.extra_train``).

Valid and test come from ``data.path`` alone, so metrics stay comparable with and without the extra data;
an extra row whose cleaned text also occurs in valid or test is dropped (it would leak the answer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from modelyard.config import CleaningConfig, ExtraTrainData
from modelyard.data.cleaning import as_str_list, clean_frame, normalize_label
from modelyard.data.sources import load_table, suggest_column
from modelyard.errors import DataError


def load_extra(
    spec: ExtraTrainData, clean: CleaningConfig, base_dir: Path, labels: list[str], seed: int
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, str]]:
    """Read, relabel and clean one extra file.

    Returns:
        The cleaned ``text``/``label`` rows whose label is one of ``labels``, a report entry, and the
        file's fingerprint.

    Raises:
        DataError: the file can't be read, a column is missing, or no row maps onto a class.
    """
    p = Path(spec.path).expanduser()
    path = p if p.is_absolute() else Path(base_dir) / p
    table = load_table(path, "auto", "auto")
    found = [str(c) for c in table.frame.columns]
    for key, col in (("text_column", spec.text_column), ("label_column", spec.label_column)):
        if col not in table.frame.columns:
            raise DataError(
                f"{path}: no column '{col}' (columns found: {', '.join(found)}); "
                f"set data.extra_train[].{key}{suggest_column(col, found)}"
            )
    raw_labels = [normalize_label(x, clean.unicode_nfkc) for x in as_str_list(table.frame[spec.label_column])]
    mapping = {normalize_label(k): v for k, v in (spec.label_map or {}).items()}
    mapped = [mapping.get(x, x) if mapping else x for x in raw_labels]
    frame = pd.DataFrame({"text": as_str_list(table.frame[spec.text_column]), "label": mapped})
    keep = frame["label"].isin(set(labels))
    if not keep.any():
        shown = ", ".join(sorted(set(raw_labels))[:10])
        raise DataError(
            f"{path}: no label of column '{spec.label_column}' ({shown}) is one of the classes {labels}; "
            "set data.extra_train[].label_map"
        )
    frame = frame[keep].reset_index(drop=True)
    if spec.sample is not None and spec.sample < len(frame):
        frame = frame.sample(n=spec.sample, random_state=seed).reset_index(drop=True)
    cleaned, counts = clean_frame(frame, clean)
    report = {
        "path": str(path),
        "rows_in": len(table.frame),
        "not_a_class": int((~keep).sum()),
        "dropped": counts["dropped"],
        **({"pii": counts["pii"]} if "pii" in counts else {}),
    }
    return cleaned, report, {str(path.resolve()): table.sha256}


def add_extra_train(
    train: pd.DataFrame,
    held_out: list[pd.DataFrame],
    specs: list[ExtraTrainData],
    clean: CleaningConfig,
    base_dir: Path,
    labels: list[str],
    seed: int,
) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, str]]:
    """Append every ``data.extra_train`` file to ``train``; drop rows already in train or held out."""
    seen_eval = set().union(*(set(f["text"]) for f in held_out))
    reports: list[dict[str, Any]] = []
    fingerprints: dict[str, str] = {}
    parts = [train]
    seen_train = set(train["text"])
    for spec in specs:
        extra, rep, fp = load_extra(spec, clean, base_dir, labels, seed)
        leak = extra["text"].isin(seen_eval)
        dup = extra["text"].isin(seen_train) & ~leak
        extra = extra[~leak & ~dup]
        rep |= {"in_valid_or_test": int(leak.sum()), "already_in_train": int(dup.sum()), "added": len(extra)}
        seen_train |= set(extra["text"])
        parts.append(extra)
        reports.append(rep)
        fingerprints |= fp
    merged = pd.concat(parts, ignore_index=True)
    return merged, reports, fingerprints
