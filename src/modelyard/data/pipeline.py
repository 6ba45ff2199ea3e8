"""The data stage: recipe ``data`` section → cleaned, validated, split texts plus a data report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard.config import DataConfig
from modelyard.data.cleaning import as_str_list, clean_frame, normalize_label
from modelyard.data.extra import add_extra_train
from modelyard.data.sources import BUNDLED_PREFIX, SOURCE_FILE, SOURCE_ROW, load_bundled, load_table, suggest_column
from modelyard.data.split import min_examples_per_class, per_class_sample, stratified_sample, stratified_split
from modelyard.errors import DataError

SPLITS = ("train", "valid", "test")


@dataclass
class PreparedData:
    """The output of the data stage.

    Attributes:
        train: Training rows; columns exactly ``["text", "label"]``, labels ``str``, index reset.
        valid: Validation rows, same layout.
        test: Test rows, same layout.
        labels: Class order: ``data.labels`` when given, else the sorted distinct labels.
        report: JSON-serialisable data report (sources, drop counts, class balance, lengths, …).
        fingerprints: ``{absolute source file path: sha256 of its raw bytes}``.
        unlabelled: The training rows that ``data.train_per_class``/``train_fraction`` left out (same layout),
            the pool that ``train.distill.unlabelled: rest`` lets a teacher label; None when nothing was left out.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    report: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    unlabelled: pd.DataFrame | None = None


@dataclass
class _Source:
    name: str
    format: str
    compression: str | None
    frame: pd.DataFrame
    fingerprints: dict[str, str]
    encoding: str | None = None


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def _select_columns(df: pd.DataFrame, cfg: DataConfig, where: str) -> pd.DataFrame:
    found = [str(c) for c in df.columns]
    for key, col, kind in (
        ("data.text_column", cfg.text_column, "text"),
        ("data.label_column", cfg.label_column, "label"),
    ):
        if col not in df.columns:
            hint = suggest_column(col, found)
            if len(found) == 1 and any(sep in found[0] for sep in ";|"):
                hint += "; the file looks separated by ';' or '|': save it with commas or tabs"
            raise DataError(
                f"{where}: no {kind} column '{col}' (columns found: {', '.join(found)}); "
                f"set {key} to the column holding the {kind}{hint}"
            )
    return pd.DataFrame(
        {
            "text": pd.Series(as_str_list(df[cfg.text_column]), dtype=object),
            "label": pd.Series(as_str_list(df[cfg.label_column]), dtype=object),
        }
    )


def _load_source(cfg: DataConfig, base_dir: Path, source_rows: bool = False) -> _Source:
    if cfg.path.startswith(BUNDLED_PREFIX):
        bundled, fingerprints = load_bundled(cfg.path, source_rows=source_rows)
        # Bundled loaders already return text/label columns, whatever data.text_column says.
        frame = pd.DataFrame(
            {
                "text": pd.Series(as_str_list(bundled["text"]), dtype=object),
                "label": pd.Series(as_str_list(bundled["label"]), dtype=object),
            }
        )
        if source_rows:
            frame[SOURCE_ROW] = bundled[SOURCE_ROW].to_numpy() if SOURCE_ROW in bundled else np.arange(len(frame)) + 1
            frame[SOURCE_FILE] = bundled[SOURCE_FILE].to_numpy() if SOURCE_FILE in bundled else cfg.path
        return _Source(cfg.path, "bundled", None, frame, dict(fingerprints))
    path = _resolve(cfg.path, base_dir)
    table = load_table(path, cfg.format, cfg.encoding, header=cfg.header, sheet=cfg.sheet)
    frame = _select_columns(table.frame, cfg, str(path))
    if source_rows:  # a folder of .txt files: one text per file; a table: its 1-based data row
        folder = table.format == "text-folder"
        frame[SOURCE_ROW] = 1 if folder else np.arange(len(frame)) + 1
        frame[SOURCE_FILE] = table.frame["file"].to_numpy() if folder else path.name
    return _Source(
        str(path), table.format, table.compression, frame, {str(path.resolve()): table.sha256}, table.encoding
    )


def _filter_labels(frame: pd.DataFrame, cfg: DataConfig, source: str) -> tuple[pd.DataFrame, list[str] | None, int]:
    if cfg.labels is None:
        return frame, None, 0
    wanted = [normalize_label(lb, cfg.clean.unicode_nfkc) for lb in cfg.labels]
    repeated = sorted({lb for lb in wanted if wanted.count(lb) > 1})
    if repeated:
        raise DataError(
            f"data.labels lists {', '.join(repr(r) for r in repeated)} more than once; list each class once"
        )
    present = set(frame["label"])
    absent = [lb for lb in wanted if lb not in present]
    if absent:
        found = sorted(lb for lb in present if lb)
        shown = ", ".join(found[:20]) + (f" … ({len(found)} in all)" if len(found) > 20 else "")
        raise DataError(
            f"{source}: data.labels lists {', '.join(repr(a) for a in absent)}, which never occurs in column "
            f"'{cfg.label_column}'; labels found: {shown}"
        )
    keep = frame["label"].isin(set(wanted))
    return frame[keep].reset_index(drop=True), wanted, int((~keep).sum())


def _no_rows_error(source: str, rows_in: int, dropped: dict[str, int]) -> DataError:
    reasons = []
    if dropped["empty"] or dropped["too_short"]:
        reasons.append("empty/too short")
    if dropped["too_long"]:
        reasons.append("too long (data.clean.max_chars)")
    if dropped["missing_label"]:
        reasons.append("without a label")
    if dropped.get("pii"):
        reasons.append("holding personal data (data.clean.pii: drop)")
    if dropped["conflicts_rows"]:
        reasons.append("conflicting labels")
    hint = "check data.text_column" if reasons[:1] == ["empty/too short"] else "check data.text_column and data.clean"
    if reasons == ["without a label"]:
        hint = "check data.label_column"
    return DataError(
        f"{source}: no usable texts after cleaning ({rows_in} rows in, all {' or '.join(reasons)}); {hint}"
    )


def _validate_classes(
    counts: dict[str, int], labels: list[str], cfg: DataConfig, source: str, label_column: str, sampled: bool
) -> None:
    if len(labels) < 2:
        only = labels[0] if labels else "?"
        raise DataError(
            f"{source}: only one class ('{only}') in column '{label_column}'; classification needs at least "
            "2 classes; check data.label_column and data.labels"
        )
    need = min_examples_per_class(cfg.valid_size, cfg.test_size)
    small = sorted(((counts.get(lb, 0), lb) for lb in labels if counts.get(lb, 0) < need), key=lambda x: x[0])
    if not small:
        return
    n, name = small[0]
    more = ""
    if len(small) > 1:
        others = ", ".join(f"'{lb}' ({c})" for c, lb in small[1:5])
        more = f" (also below it: {others}{' …' if len(small) > 5 else ''})"
    fixes = "add examples, leave it out by listing the other classes in data.labels"
    if sampled:
        fixes += ", raise data.sample"
    raise DataError(
        f"{source}: class '{name}' has {n} example(s) after cleaning but needs at least {need} so that "
        f"train, valid and test each get one (valid_size={cfg.valid_size}, test_size={cfg.test_size}){more}; "
        f"{fixes}, or raise data.valid_size/data.test_size"
    )


def _balance(df: pd.DataFrame, labels: list[str]) -> dict[str, int]:
    counts = df["label"].value_counts()
    return {lb: int(counts.get(lb, 0)) for lb in labels}


def _shrink_train(train: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, Any]]:
    """``data.train_per_class`` / ``data.train_fraction``: a subset of the training split only."""
    if cfg.train_per_class is None and cfg.train_fraction is None:
        return train, None, {}
    if cfg.train_per_class is not None:
        kept = per_class_sample(train, cfg.train_per_class, cfg.seed)
    else:
        kept = stratified_sample(train, max(round(len(train) * (cfg.train_fraction or 1.0)), 1), cfg.seed)
    key = kept["text"] + "\x00" + kept["label"]
    rest = train[~(train["text"] + "\x00" + train["label"]).isin(set(key))].reset_index(drop=True)
    info = {
        "per_class": cfg.train_per_class,
        "fraction": cfg.train_fraction,
        "rows_before": len(train),
        "rows_after": len(kept),
        "left_out": len(rest),
    }
    return kept, (rest if len(rest) else None), info


def _length_stats(texts: pd.Series) -> dict[str, float | int]:
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    p5, p50, p95 = np.percentile(lengths, [5, 50, 95])
    return {
        "min": int(lengths.min()),
        "p5": round(float(p5), 1),
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 1),
    }


def prepare_data(cfg: DataConfig, base_dir: Path, *, source_rows: bool = False) -> PreparedData:
    """Read, clean, validate and split the data described by a recipe's ``data`` section.

    Steps: resolve ``cfg.path`` (relative to ``base_dir``; ``bundled:NAME`` from the registry) → read →
    select the text/label columns → keep only ``cfg.labels`` (when given) → :func:`clean_frame` →
    stratified ``cfg.sample`` (when given) → validate class counts → :func:`stratified_split`.
    Nothing is printed; the caller shows ``report``.

    The split depends only on the set of cleaned rows and ``cfg.seed``, not on the row order of the file.

    Args:
        cfg: The recipe's data section.
        base_dir: Folder that a relative ``cfg.path`` resolves against (the recipe's folder).
        source_rows: Also carry ``source_row`` (the 1-based data row of a table, the line of a bundled text
            file) and ``source_file`` columns in the splits, for ``modelyard data audit``; the rows and the split
            are the same as without it.

    Returns:
        The three splits, the class order, the data report and the source fingerprints.

    Raises:
        DataError: the source can't be read, or the data can't support a classifier (no usable texts,
            a single class, a class too small to split, an unknown ``data.labels`` entry, …).
    """
    src = _load_source(cfg, base_dir, source_rows)
    rows_in = len(src.frame)
    # Labels are normalised before filtering, so data.labels: [pos] also keeps " pos" rows.
    frame = src.frame.assign(label=[normalize_label(lb, cfg.clean.unicode_nfkc) for lb in src.frame["label"]])
    frame, wanted, label_filtered = _filter_labels(frame, cfg, src.name)

    cleaned, clean_counts = clean_frame(frame, cfg.clean)
    dropped = {"label_filter": label_filtered, **clean_counts["dropped"], "sampled_out": 0}
    if cleaned.empty:
        raise _no_rows_error(src.name, rows_in, dropped)

    rows_before = len(cleaned)
    sample_info: dict[str, Any] = {
        "requested": cfg.sample,
        "rows_before": rows_before,
        "rows_after": rows_before,
    }
    if cfg.sample is not None:
        if cfg.sample >= rows_before:
            sample_info["note"] = f"data.sample ({cfg.sample}) ≥ rows after cleaning ({rows_before}); kept all rows"
        else:
            cleaned = stratified_sample(cleaned, cfg.sample, cfg.seed)
            sample_info["rows_after"] = len(cleaned)
            sample_info["stratified"] = True
            dropped["sampled_out"] = rows_before - len(cleaned)

    labels = wanted if wanted is not None else sorted(set(cleaned["label"]))
    overall = _balance(cleaned, labels)
    label_column = "label" if src.format == "bundled" else cfg.label_column
    _validate_classes(overall, labels, cfg, src.name, label_column, dropped["sampled_out"] > 0)

    train, valid, test = stratified_split(cleaned, cfg.valid_size, cfg.test_size, cfg.seed)
    train, unlabelled, subset_info = _shrink_train(train, cfg)
    extra_reports: list[dict[str, Any]] = []
    if cfg.extra_train:
        train, extra_reports, extra_fp = add_extra_train(
            train, [valid, test], cfg.extra_train, cfg.clean, base_dir, list(labels), cfg.seed
        )
        src.fingerprints.update(extra_fp)
    issues_report: dict[str, Any] | None = None
    if cfg.clean.label_issues != "off":  # training split only; sklearn/cleanlab are imported when it runs
        from modelyard.data.label_issues import apply_label_issues

        train, issues_report = apply_label_issues(
            train, list(labels), cfg.clean.label_issues, cfg.clean.label_issues_file, base_dir, cfg.seed
        )
    splits = {"train": train, "valid": valid, "test": test}
    report: dict[str, Any] = {
        "source": cfg.path if src.format == "bundled" else src.name,
        "format": src.format,
        "compression": src.compression,
        "encoding": cfg.encoding,
        "decoded_as": src.encoding,  # what `auto` detected (e.g. gb18030 for an Excel CSV); null for binary formats
        "text_column": "text" if src.format == "bundled" else cfg.text_column,
        "label_column": label_column,
        "rows_in": rows_in,
        "dropped": dropped,
        "rows_out": len(cleaned),
        "conflicts": clean_counts["conflicts"],
        "conflicts_resolved": clean_counts["conflicts_resolved"],
        "conflict_examples": clean_counts["conflict_examples"],
        "labels": list(labels),
        "n_classes": len(labels),
        "class_balance": overall,
        "class_balance_by_split": {name: _balance(df, labels) for name, df in splits.items()},
        "split_sizes": {name: len(df) for name, df in splits.items()},
        "valid_size": cfg.valid_size,
        "test_size": cfg.test_size,
        "seed": cfg.seed,
        "length_chars": _length_stats(cleaned["text"]),
        "sample": sample_info,
        "fingerprints": dict(src.fingerprints),
    }
    if subset_info:
        report["train_subset"] = subset_info
    if extra_reports:
        report["extra_train"] = extra_reports
    if issues_report is not None:
        report["label_issues"] = issues_report
    if "pii" in clean_counts:
        report["pii"] = clean_counts["pii"]
    return PreparedData(
        train=train,
        valid=valid,
        test=test,
        labels=list(labels),
        report=report,
        fingerprints=dict(src.fingerprints),
        unlabelled=unlabelled,
    )
