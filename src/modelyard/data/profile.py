"""What ``modelyard init`` learns from the data before it writes a recipe.

A :class:`DataProfile` holds what a knowledgeable engineer would look at first: which columns hold the text
and the label, the script of the texts (Chinese, English, mixed), how many rows and classes there are and how
balanced, the text lengths (the ``max_length`` to use is a high percentile of them), duplicates and
conflicting labels, whether the label column holds several labels per row (multi-label), and whether the
input is images rather than text. Pure pandas and the standard library: it reads a sample, never trains.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from modelyard.errors import DataError

SAMPLE_ROWS = 20_000  # rows inspected for lengths and script (counts use every row)
_LABEL_NAMES = ("label", "labels", "class", "category", "cat", "sentiment", "target", "y", "tag", "tags", "topic")
_LABEL_NAMES_ZH = ("标签", "类别", "分类", "情感", "情绪", "类型", "主题", "极性")
_TEXT_NAMES = ("text", "review", "sentence", "content", "comment", "body", "description", "title", "document")
_TEXT_NAMES_ZH = ("评论", "文本", "内容", "句子", "评价", "正文", "标题", "描述")
_MULTI_SEPARATORS = ("|", ";", ",", "，", "、")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


@dataclass
class DataProfile:
    """The analysis behind an ``init`` recipe (also printed by ``modelyard init --explain``)."""

    path: str
    modality: str  # "text" or "image"
    rows: int = 0
    text_column: str | None = None
    label_column: str | None = None
    label_columns: list[str] = field(default_factory=list)  # one 0/1 column per label (multi-label)
    label_separator: str | None = None  # labels joined in one column (multi-label)
    multi_label: bool = False
    label_cardinality: float = 0.0  # multi-label: mean number of labels per row
    labels_per_row: dict[int, int] = field(default_factory=dict)  # multi-label: rows by number of labels
    script: str = "unknown"  # "zh", "en", "mixed", "other"
    cjk_share: float = 0.0
    classes: dict[str, int] = field(default_factory=dict)
    imbalance: float = 1.0  # largest class / smallest class
    chars_p50: int = 0
    chars_p95: int = 0
    tokens_p95: int = 0  # estimated: characters for Chinese, ~1.3 per word otherwise
    duplicates: int = 0  # rows whose (normalised) text appeared before
    conflicts: int = 0  # texts seen with more than one label
    empty_texts: int = 0
    columns: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def min_class(self) -> int:
        return min(self.classes.values()) if self.classes else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", str(text)).split()).lower()


def looks_headerless(frame: pd.DataFrame) -> bool:
    """Whether a table's "column names" are really its first data row (a CSV exported without a header).

    Names that are numbers, or long sentences, are data: real headers are short words.
    """
    names = [str(c).strip() for c in frame.columns]
    numeric = sum(bool(re.fullmatch(r"-?\d+(\.\d+)?", n)) for n in names)
    sentences = sum(len(n) > 40 or len(n.split()) > 5 for n in names)
    return numeric + sentences > 0 and not any(n.lower() in _LABEL_NAMES + _TEXT_NAMES for n in names)


def guess_columns(frame: pd.DataFrame) -> tuple[str, str]:
    """``(text column, label column)`` of a labelled table, by name first, then by content.

    The text column is the one with the longest texts; the label column a short one with few distinct values.

    Raises:
        DataError: fewer than two columns, or nothing that looks like a label.
    """
    cols = [str(c) for c in frame.columns]
    if len(cols) < 2:
        raise DataError(f"need a text column and a label column; found only {cols}")
    lowered = {c.strip().lower(): c for c in cols}
    text = next((lowered[n] for n in _TEXT_NAMES if n in lowered), None)
    text = text or next((c for c in cols if any(n in c for n in _TEXT_NAMES_ZH)), None)
    label = next((lowered[n] for n in _LABEL_NAMES if n in lowered), None)
    label = label or next((c for c in cols if any(n in c for n in _LABEL_NAMES_ZH)), None)
    sample = frame.head(SAMPLE_ROWS).astype(str)
    mean_len = {c: sample[c].str.len().mean() for c in cols}
    if text is None:
        text = max((c for c in cols if c != label), key=lambda c: mean_len[c])
    if label is None:
        candidates = [c for c in cols if c != text]
        # few distinct values relative to the rows, and short: a label, not another text
        label = min(candidates, key=lambda c: (sample[c].nunique() / max(len(sample), 1), mean_len[c]))
    if text == label:
        raise DataError(f"can't tell the text column from the label column among {cols}; pass them explicitly")
    return text, label


def _binary_label_columns(frame: pd.DataFrame, text: str) -> list[str]:
    """Columns holding only 0/1 (one per label, the other multi-label layout), if at least two."""
    out = []
    for c in frame.columns:
        if str(c) == text:
            continue
        values = set(frame[c].astype(str).str.strip().unique()[:5])
        if values and values <= {"0", "1", "0.0", "1.0", "true", "false", "True", "False"}:
            out.append(str(c))
    return out if len(out) >= 2 else []


def _separator(labels: pd.Series) -> str | None:
    """The separator joining several labels in one cell, when a fair share of rows holds more than one."""
    sample = labels.astype(str).head(SAMPLE_ROWS)
    for sep in _MULTI_SEPARATORS:
        parts = sample.str.split(re.escape(sep), regex=True)
        multi = (parts.str.len() > 1).mean()
        if multi >= 0.05:
            # the pieces must themselves look like a small label vocabulary, not free text with commas
            pieces = Counter(p.strip() for row in parts for p in row if p.strip())
            if 1 < len(pieces) <= max(50, len(sample) // 20):
                return sep
    return None


def profile_table(frame: pd.DataFrame, path: str, text: str | None = None, label: str | None = None) -> DataProfile:
    """Profile a labelled table (see :class:`DataProfile`)."""
    if text is None or label is None:
        guessed_text, guessed_label = guess_columns(frame)
        text, label = text or guessed_text, label or guessed_label
    prof = DataProfile(path=path, modality="text", rows=len(frame), text_column=text, columns=list(map(str, frame)))
    binary = _binary_label_columns(frame, text)
    texts = frame[text].astype(str)
    if binary and (label not in frame.columns or label in binary):
        prof.multi_label, prof.label_columns = True, binary
        hot = pd.DataFrame({c: frame[c].astype(str).str.strip().isin(["1", "1.0", "true", "True"]) for c in binary})
        counts = Counter({c: int(hot[c].sum()) for c in binary})
        _label_sets(prof, hot.sum(axis=1))
        prof.classes = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        labels = None
    else:
        prof.label_column = label
        labels = frame[label].astype(str).str.strip()
        sep = _separator(labels)
        if sep is not None:
            prof.multi_label, prof.label_separator = True, sep
            sets = [{p.strip() for p in row if p.strip()} for row in labels.str.split(re.escape(sep), regex=True)]
            counts = Counter(lb for s in sets for lb in s)
            _label_sets(prof, pd.Series([len(s) for s in sets]))
        else:
            counts = Counter(labels)
        prof.classes = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if prof.classes:
        prof.imbalance = round(max(prof.classes.values()) / max(min(prof.classes.values()), 1), 2)

    sample = texts.head(SAMPLE_ROWS)
    joined = "".join(sample.head(2000).tolist())
    cjk, latin = len(_CJK.findall(joined)), len(_LATIN.findall(joined))
    prof.cjk_share = round(cjk / max(cjk + latin, 1), 3)
    prof.script = (
        "zh" if prof.cjk_share >= 0.6 else "en" if prof.cjk_share <= 0.1 and latin else "mixed" if cjk else "other"
    )
    lengths = sample.str.len()
    prof.chars_p50, prof.chars_p95 = int(lengths.quantile(0.5)), int(lengths.quantile(0.95))
    # one token per character for Chinese tokenizers; ~1.3 word pieces per word otherwise
    tokens = lengths if prof.script == "zh" else (sample.str.split().str.len() * 1.3).round()
    prof.tokens_p95 = int(tokens.quantile(0.95)) + 2  # [CLS] and [SEP]
    prof.empty_texts = int((texts.str.strip() == "").sum())
    keys = texts.map(_norm)
    prof.duplicates = int(keys.duplicated().sum())
    if labels is not None:
        per_text = pd.DataFrame({"k": keys, "y": labels}).groupby("k")["y"].nunique()
        prof.conflicts = int((per_text > 1).sum())
    return prof


def _label_sets(prof: DataProfile, sizes: pd.Series) -> None:
    """Record how many labels the rows carry (multi-label): the mean and the rows by count."""
    prof.label_cardinality = round(float(sizes.mean()), 3) if len(sizes) else 0.0
    prof.labels_per_row = {int(k): int(v) for k, v in sorted(sizes.value_counts().items())}


def max_length_for(prof: DataProfile, cap: int = 512) -> int:
    """A ``model.max_length`` covering the 95th percentile of texts, rounded up to 32/64/128/256/512."""
    for size in (32, 64, 128, 256, 512):
        if prof.tokens_p95 <= size:
            return min(size, cap)
    return cap


def describe(prof: DataProfile) -> list[str]:
    """The analysis as short lines (recipe comments and ``init --explain``)."""
    if prof.modality == "image":
        return [f"{prof.path}: images, {prof.rows:,} files, {prof.n_classes} classes ({_classes(prof)})"]
    script = {"zh": "Chinese", "en": "English", "mixed": "mixed Chinese/English", "other": "other scripts"}
    lines = [
        f"{prof.path}: {prof.rows:,} rows; text column '{prof.text_column}', "
        + (
            f"labels in {len(prof.label_columns)} 0/1 columns"
            if prof.label_columns
            else f"label column '{prof.label_column}'"
            + (f" (several labels per row, joined by '{prof.label_separator}')" if prof.label_separator else "")
        ),
        f"language: {script.get(prof.script, prof.script)} ({prof.cjk_share:.0%} of letters are Chinese characters)",
        *(
            _multi_label_lines(prof)
            if prof.multi_label
            else [f"{prof.n_classes} classes ({_classes(prof)}); largest/smallest = {prof.imbalance:g}"]
        ),
        f"text length: median {prof.chars_p50} characters, 95th percentile {prof.chars_p95} "
        f"(~{prof.tokens_p95} tokens)",
    ]
    if prof.duplicates or prof.conflicts or prof.empty_texts:
        lines.append(
            f"{prof.duplicates:,} duplicate texts, {prof.conflicts:,} texts with conflicting labels, "
            f"{prof.empty_texts:,} empty texts (cleaning removes them)"
        )
    return lines


def _multi_label_lines(prof: DataProfile) -> list[str]:
    """The multi-label analysis: layout, labels, labels per row, per-label frequency and the rarest labels."""
    rows = max(prof.rows, 1)
    layout = (
        f"one 0/1 column per label ({', '.join(prof.label_columns[:8])}{' …' if len(prof.label_columns) > 8 else ''})"
        if prof.label_columns
        else f"labels joined by '{prof.label_separator}' in column '{prof.label_column}'"
    )
    per_row = ", ".join(f"{k}: {v / rows:.0%}" for k, v in prof.labels_per_row.items())
    rarest = sorted(prof.classes.items(), key=lambda kv: (kv[1], kv[0]))[:3]
    return [
        f"multi-label: {layout}",
        f"{prof.n_classes} labels; label cardinality {prof.label_cardinality:g} labels per row "
        f"(rows by number of labels: {per_row})",
        "rows per label: "
        + ", ".join(f"{k} {v:,} ({v / rows:.1%})" for k, v in list(prof.classes.items())[:12])
        + (" …" if prof.n_classes > 12 else ""),
        "rarest labels: " + ", ".join(f"{k} {v:,}" for k, v in rarest) + f"; largest/smallest = {prof.imbalance:g}",
    ]


def _classes(prof: DataProfile) -> str:
    shown = ", ".join(f"{k} {v:,}" for k, v in list(prof.classes.items())[:8])
    return shown + (" …" if len(prof.classes) > 8 else "")


def image_profile(path: Path, labels: list[str], counts: dict[str, int]) -> DataProfile:
    """The profile of an image dataset (counted by the image reader)."""
    return DataProfile(path=str(path), modality="image", rows=sum(counts.values()), classes=dict(counts))
