"""Text and label cleaning. Every row that is dropped is counted, so the data report adds up."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

import pandas as pd

from modelyard.config import CleaningConfig
from modelyard.data.chinese import normalize_chinese, segment
from modelyard.data.sources import SOURCE_FILE, SOURCE_ROW
from modelyard.errors import DataError

# Python's \s matches every Unicode whitespace character (ideographic space U+3000, NBSP, tabs,
# newlines …). Cleaning runs in Python rather than through pandas' .str methods on purpose: with the
# pyarrow-backed string dtype those use RE2, whose \s is ASCII-only.
_WHITESPACE = re.compile(r"\s+")

CLEAN_DROP_KEYS = (
    "pii",
    "missing_label",
    "empty",
    "too_short",
    "too_long",
    "duplicates",
    "conflicts_rows",
    "conflicting_texts",
)
# Keys of counts["dropped"] returned by clean_frame; conflicting_texts counts texts, the others rows.

_MAX_EXAMPLES = 5


def as_str_list(values: Iterable[Any]) -> list[str]:
    """Convert cells to ``str``, missing values (None/NaN/NA) to ``""``."""
    out = []
    for v in values:
        if isinstance(v, str):
            out.append(v)
            continue
        try:
            missing = v is None or bool(pd.isna(v))
        except (TypeError, ValueError):  # list/array cells: pd.isna is element-wise, so not "missing"
            missing = False
        out.append("" if missing else str(v))
    return out


def normalize_label(label: str, nfkc: bool = True) -> str:
    """Canonical form of a class label: NFKC (when enabled), whitespace collapsed, ends stripped.

    Labels are identifiers, so ``" pos"``, ``"pos\\n"`` and ``"ｐｏｓ"`` (full-width) all become ``"pos"``.
    """
    if nfkc:
        label = unicodedata.normalize("NFKC", label)
    return _WHITESPACE.sub(" ", label).strip()


def clean_text(text: str, cfg: CleaningConfig) -> str:
    """Apply the text transformations of ``cfg`` (NFKC → Chinese → whitespace → lowercase → jieba) to one text."""
    zh = cfg.chinese
    if cfg.unicode_nfkc:
        text = unicodedata.normalize("NFKC", text)
    if zh is not None:
        text = normalize_chinese(
            text,
            halfwidth=zh.halfwidth,
            punctuation=zh.punctuation,
            traditional=zh.traditional_to_simplified,
            max_repeat=zh.max_repeat,
        )
    if cfg.normalize_whitespace:
        text = _WHITESPACE.sub(" ", text).strip()
    if cfg.lowercase:
        text = text.lower()
    if zh is not None and zh.segment == "jieba":
        text = segment(text)
    return text


def find_pii(texts: list[str], cfg: CleaningConfig) -> tuple[list[str], list[bool], dict[str, Any] | None]:
    """``data.clean.pii``: the texts (with placeholders under ``redact``), which rows hold personal data, the report.

    Runs on the texts as read, before any other cleaning (lower-casing would hide names, segmentation would split
    numbers). ``off`` returns the texts untouched and no report.
    """
    if cfg.pii == "off":
        return texts, [False] * len(texts), None
    from modelyard.privacy import redact_texts

    out, found, summary = redact_texts(texts, lang=cfg.pii_lang, mode="mask", redact=cfg.pii == "redact")
    has = [bool(f) for f in found]
    report: dict[str, Any] = {"mode": cfg.pii, "lang": cfg.pii_lang, **summary.as_dict()}
    if cfg.pii == "redact":
        report["texts_changed"] = sum(a != b for a, b in zip(out, texts, strict=True))
    elif cfg.pii == "drop":
        report["rows_dropped"] = sum(has)
    return out, has, report


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clean_frame(df: pd.DataFrame, cfg: CleaningConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Normalise texts and labels and drop unusable rows, counting every drop.

    Steps, in order: texts to ``str`` → personal data (``cfg.pii``: redacted, or the row dropped as ``pii``, or
    counted) → NFKC → whitespace collapse/strip → lowercase; labels stripped
    and NFKC'd; rows without a label dropped (``missing_label``); texts shorter than ``min_chars``
    dropped (``empty`` when zero-length, else ``too_short``); texts longer than ``max_chars`` dropped
    (``too_long``); conflicting texts (one text, several labels) resolved per ``cfg.conflicts``
    (``conflicts_rows`` rows of ``conflicting_texts`` texts); exact duplicate (text, label) rows
    dropped keeping the first (``duplicates``).

    Conflicts are resolved *before* duplicates are removed, so that ``majority`` counts every copy
    of a text (after de-duplication each (text, label) pair would occur once and every vote would tie).

    Args:
        df: A frame with ``text`` and ``label`` columns (other columns are ignored, except that the optional
            ``source_row``/``source_file`` columns are carried along).
        cfg: The cleaning options.

    Returns:
        The cleaned frame (columns ``text``, ``label``, both ``str``; index reset; input order kept)
        and a JSON-serialisable counts dict: ``rows_in``, ``dropped`` (keys :data:`CLEAN_DROP_KEYS`),
        ``rows_out``, ``conflicts`` (the mode), ``conflicts_resolved`` (texts kept under ``majority``),
        ``conflict_examples`` (up to 5 conflicting texts) and, unless ``cfg.pii`` is off, ``pii`` (entities per
        type, texts with any, and ``texts_changed`` or ``rows_dropped``).

    Raises:
        DataError: ``cfg.conflicts == "error"`` and some text carries more than one label.
    """
    raw, has_pii, pii_report = find_pii(as_str_list(df["text"]), cfg)
    texts = [clean_text(t, cfg) for t in raw]
    labels = [normalize_label(lb, cfg.unicode_nfkc) for lb in as_str_list(df["label"])]
    work = pd.DataFrame({"text": pd.Series(texts, dtype=object), "label": pd.Series(labels, dtype=object)})
    for col in (SOURCE_ROW, SOURCE_FILE):  # where each row came from (modelyard data audit), carried when present
        if col in df.columns:
            work[col] = df[col].to_numpy()
    rows_in = len(work)
    dropped = dict.fromkeys(CLEAN_DROP_KEYS, 0)

    def drop(mask: pd.Series, key: str) -> None:
        nonlocal work
        dropped[key] += int(mask.sum())
        work = work[~mask]

    if cfg.pii == "drop":
        drop(pd.Series(has_pii, index=work.index), "pii")
    drop(work["label"] == "", "missing_label")
    lengths = work["text"].map(len)
    drop((lengths == 0) & (cfg.min_chars > 0), "empty")
    lengths = work["text"].map(len)
    drop((lengths > 0) & (lengths < cfg.min_chars), "too_short")
    if cfg.max_chars is not None:
        drop(work["text"].map(len) > cfg.max_chars, "too_long")

    # sort=False keeps first-occurrence order, so the examples shown are the first in the file.
    n_labels = work.groupby("text", sort=False)["label"].nunique()
    conflicting = list(n_labels.index[n_labels > 1])
    examples = conflicting[:_MAX_EXAMPLES]
    resolved = 0
    if conflicting:
        is_conflict = work["text"].isin(set(conflicting))
        if cfg.conflicts == "error":
            sub = work[is_conflict]
            shown = "; ".join(
                f"'{_short(t)}' ({', '.join(sorted(set(sub.loc[sub['text'] == t, 'label'])))})" for t in examples
            )
            raise DataError(
                f"{len(conflicting)} text(s) appear with different labels, e.g. {shown}; "
                "fix the labels or set data.clean.conflicts to drop or majority"
            )
        if cfg.conflicts == "drop":
            drop(is_conflict, "conflicts_rows")
        else:  # majority: the most frequent label wins; a tie means nobody knows, so the text goes
            votes = work[is_conflict].groupby(["text", "label"], sort=False).size()
            winners: dict[str, str] = {}
            for text, per_label in votes.groupby(level=0, sort=False):
                counts = per_label.droplevel(0)
                top = counts.max()
                if int((counts == top).sum()) == 1:
                    winners[text] = str(counts.idxmax())
            resolved = len(winners)
            loser = is_conflict & (work["text"].map(winners) != work["label"])
            drop(loser, "conflicts_rows")
        dropped["conflicting_texts"] = len(conflicting)

    if cfg.drop_duplicates:
        drop(work.duplicated(["text", "label"], keep="first"), "duplicates")

    work = work.reset_index(drop=True)
    counts: dict[str, Any] = {
        "rows_in": rows_in,
        "dropped": dropped,
        "rows_out": len(work),
        "conflicts": cfg.conflicts,
        "conflicts_resolved": resolved,
        "conflict_examples": examples,
    }
    if pii_report is not None:
        counts["pii"] = pii_report
    return work, counts
