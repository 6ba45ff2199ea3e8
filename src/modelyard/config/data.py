"""The `data` section: sources, cleaning (Chinese included) and splits."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from modelyard.config._base import _Stage


class ChineseCleaningConfig(_Stage):
    """Chinese text handling (`data.clean.chinese`), applied identically at training and prediction time."""

    halfwidth: bool = Field(True, description="Full-width letters/digits/punctuation → half-width.")
    punctuation: bool = Field(True, description="Chinese punctuation (。，！？“”【】《》) → ASCII equivalents.")
    traditional_to_simplified: bool = Field(False, description="Convert Traditional to Simplified (OpenCC t2s).")
    max_repeat: int | None = Field(
        3, ge=1, description="Cap runs of one repeated character (好好好好好 → 好好好); null keeps them."
    )
    segment: Literal["none", "jieba"] = Field(
        "none",
        description="`jieba`: space-separate words (for word-level tokenizers / word n-grams); "
        "`none` keeps the text as is (character-level models).",
    )


class CleaningConfig(_Stage):
    """How texts are cleaned before splitting. Every drop is counted in ``data_report.json``."""

    unicode_nfkc: bool = Field(True, description="Unicode NFKC normalisation (full-width → half-width).")
    normalize_whitespace: bool = Field(True, description="Collapse runs of whitespace and strip ends.")
    lowercase: bool = Field(False, description="Lower-case texts (leave off for cased backbones).")
    drop_duplicates: bool = Field(True, description="Drop exact duplicate (text, label) rows.")
    conflicts: Literal["drop", "majority", "error"] = Field(
        "drop",
        description="Same text with different labels: drop all copies, keep the majority label, or fail.",
    )
    min_chars: int = Field(1, ge=0, description="Drop texts shorter than this after cleaning (1 drops empties).")
    max_chars: int | None = Field(None, ge=1, description="Drop texts longer than this; null keeps all.")
    chinese: ChineseCleaningConfig | None = Field(
        None, description="Chinese normalisation/segmentation (halfwidth, punctuation, …); null = off."
    )
    pii: Literal["off", "redact", "drop", "report"] = Field(
        "off",
        description="Personal data in the texts (phones, IDs, cards, e-mail, IPs, names, addresses; English and "
        "Chinese), found before cleaning and splitting: `redact` replaces each with a typed placeholder (<PHONE>), "
        "`drop` drops the rows that hold any, `report` only counts; counts per type go to data_report.json.",
    )
    pii_lang: Literal["auto", "en", "zh"] = Field(
        "auto", description="Recognizers for data.clean.pii: `en`, `zh`, or `auto` (both, for mixed texts)."
    )
    label_issues: Literal["off", "report", "drop"] = Field(
        "off",
        description="Rows whose label looks wrong (confident learning, as `modelyard data audit` finds them), in the "
        "TRAINING split only: `report` counts and lists them in data_report.json, `drop` also removes them from "
        "training. Valid and test are never changed: dropping the rows a model disagrees with from them would "
        "inflate the score. Single-label text classification only.",
    )
    label_issues_file: str | None = Field(
        None,
        description="A label_issues.csv written by `modelyard data audit` (relative to the recipe's folder), "
        "matched by cleaned text + given label; null = audit the training split during training (TF-IDF + "
        "logistic regression, 5 folds).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> CleaningConfig:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(
                f"data.clean.max_chars ({self.max_chars}) is below data.clean.min_chars ({self.min_chars}); "
                "raise max_chars or lower min_chars"
            )
        return self


class ExtraTrainData(_Stage):
    """One extra labelled file appended to the training split (`data.extra_train`)."""

    path: str = Field(..., description="CSV/TSV/JSONL/Parquet file or .zip (relative to the recipe's folder).")
    text_column: str = Field("text", description="Column holding the text.")
    label_column: str = Field("label", description="Column holding the label.")
    label_map: dict[str, str] | None = Field(
        None, description="Rename labels, e.g. {'1': pos, '0': neg}; rows whose label is not a class are dropped."
    )
    sample: int | None = Field(None, ge=1, description="Use a random sample of this many rows; null = all.")


class DataConfig(_Stage):
    """Where the labelled texts come from and how they are split."""

    path: str = Field(
        ...,
        description="A CSV/TSV/JSONL/Parquet/Excel (.xlsx) file (relative to the recipe's folder), a folder of "
        ".txt files with one subfolder per class (one text per file), or `bundled:NAME` "
        "(bundled:rotten-tomatoes, bundled:chinese-reviews). Images: a folder with one subfolder per class, "
        "an IDX file pair/folder (MNIST format, gzip or not), or bundled:fashion-mnist, bundled:mnist-5k, "
        "bundled:digits.",
    )
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "xlsx"] = Field(
        "auto", description="File format; `auto` picks it from the file extension."
    )
    encoding: str = Field(
        "auto",
        description="Text encoding; `auto` detects it (UTF-8, UTF-16/32 as Excel's Unicode text, GB18030/GBK, "
        "Big5, Western code pages) and names the byte and the setting when it cannot.",
    )
    header: bool = Field(
        True, description="CSV/TSV/Excel: the first row holds column names; false names the columns 1, 2, 3, …"
    )
    sheet: str | None = Field(None, description="Excel: the sheet to read (name); null reads the first sheet.")
    text_column: str = Field("text", description="Column holding the input text.")
    label_column: str = Field(
        "label",
        description="Column holding the class label (multi-label: the labels of a row joined by "
        "`data.label_separator`).",
    )
    label_separator: str = Field(
        "auto",
        min_length=1,
        description="Multi-label only: the separator joining a row's labels in `data.label_column` (e.g. '|'); "
        "`auto` detects one of | ; , ， 、.",
    )
    label_columns: list[str] | None = Field(
        None,
        description="Multi-label only: one 0/1 column per label (the column names are the labels) instead of "
        "one delimited `data.label_column`; null reads `data.label_column`.",
    )
    labels: list[str] | None = Field(
        None, description="Keep only rows with these labels (also fixes the label order); null keeps all."
    )
    sample: int | None = Field(
        None,
        ge=2,
        description="Use a stratified random sample of this many rows (after cleaning); null = all.",
    )
    train_per_class: int | None = Field(
        None,
        ge=1,
        description="Small-data experiments: keep at most N training rows per class (seeded; nested across N for "
        "one seed). Only the training split shrinks: valid/test are the same rows as without it, so runs at "
        "8, 16, 64 … labels per class are scored on the same splits. null = all.",
    )
    train_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Keep this stratified fraction of the training split only (valid/test unchanged); null = all.",
    )
    valid_size: float = Field(0.1, gt=0, lt=0.5, description="Fraction of rows for the validation split.")
    test_size: float = Field(0.1, gt=0, lt=0.5, description="Fraction of rows for the test split.")
    seed: int = Field(42, description="Seed for sampling and splitting (the split is deterministic).")
    clean: CleaningConfig = Field(default_factory=CleaningConfig, description="Cleaning options.")
    extra_train: list[ExtraTrainData] = Field(
        default_factory=list,
        description="More labelled files added to the training split only (valid/test stay from `path`); "
        "rows whose text is in valid/test are dropped.",
    )
    on_bad_image: Literal["skip", "error"] = Field(
        "skip",
        description="Images only: an unreadable/corrupt image is skipped (and listed by path in "
        "data_report.json) or fails the run with its path named.",
    )
    image_size: int | None = Field(
        None, ge=4, le=1024, description="Images only: resize every image to this square size; null = keep."
    )
    channels: Literal[1, 3] | None = Field(
        None, description="Images only: 1 (grayscale) or 3 (RGB); null = 1 if every image is grayscale, else 3."
    )

    @model_validator(mode="after")
    def _columns(self) -> DataConfig:
        if self.text_column == self.label_column:
            raise ValueError(
                f"data.text_column and data.label_column are both '{self.text_column}'; "
                "point them at two different columns"
            )
        if self.train_per_class is not None and self.train_fraction is not None:
            raise ValueError("data.train_per_class and data.train_fraction both shrink the training split; set one")
        if self.label_columns is not None:
            if len(self.label_columns) < 2:
                raise ValueError("data.label_columns needs at least two 0/1 columns (one per label)")
            repeated = sorted({c for c in self.label_columns if self.label_columns.count(c) > 1})
            if repeated:
                raise ValueError(f"data.label_columns lists {', '.join(map(repr, repeated))} more than once")
            if self.text_column in self.label_columns:
                raise ValueError(
                    f"data.label_columns includes the text column '{self.text_column}'; list only the 0/1 label columns"
                )
        return self
