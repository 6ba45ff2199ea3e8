"""Files as users have them: GBK and UTF-16 CSV (detected, no setting), Excel workbooks, folders of .txt files
(one subfolder per class), header-less CSV; for training, evaluation and prediction alike."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
import yaml

from modelyard.config import load_recipe
from modelyard.data import prepare_data
from modelyard.data.encodings import detect_and_decode
from modelyard.data.sources import read_table
from modelyard.errors import DataError
from tests.fault_helpers import modelyard

POS = ["这家酒店很好", "房间干净舒适", "服务热情周到", "早餐丰富好吃", "位置方便安静"]
NEG = ["房间太小了", "服务态度很差", "卫生不干净", "隔音效果太差", "早餐难吃极了"]


def hotel_reviews(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Chinese hotel reviews with the column names a Chinese user's export has (评论, 情感)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = i % 2 == 0
        words = rng.sample(POS if pos else NEG, 2) + [f"第{i}次入住"]
        rng.shuffle(words)
        rows.append({"评论": "，".join(words), "情感": "正面" if pos else "负面"})
    return pd.DataFrame(rows)


def _tfidf_recipe(tmp_path: Path, data: Path, **data_cfg: object) -> Path:
    recipe = {
        "name": "hotel",
        "data": {"path": str(data), "text_column": "评论", "label_column": "情感", **data_cfg},
        "model": {"type": "tfidf-logreg", "tfidf": {"analyzer": "char", "ngram_min": 1, "ngram_max": 3}},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "utf-16", "utf-16-le", "utf-8-sig"])
def test_a_csv_in_the_encodings_excel_writes_trains_without_naming_it(tmp_path: Path, encoding: str) -> None:
    data = tmp_path / "hotel.csv"
    frame = hotel_reviews()
    data.write_bytes(frame.to_csv(index=False).encode(encoding))
    prepared = prepare_data(load_recipe(_tfidf_recipe(tmp_path, data)).data, tmp_path)
    assert sorted(prepared.labels) == ["正面", "负面"]
    texts = set(prepared.train["text"]) | set(prepared.valid["text"]) | set(prepared.test["text"])
    assert unicodedata.normalize("NFKC", frame.iloc[0]["评论"]) in texts  # decoded exactly (then NFKC), not mojibake
    res = modelyard("train", _tfidf_recipe(tmp_path, data))
    assert res.rc == 0, res.stderr[-1500:]


def test_detection_reports_what_it_used_and_refuses_what_it_cannot_read() -> None:
    text = "评论,情感\n很好,正面\n"
    assert detect_and_decode(text.encode("gbk"), "auto", "f.csv") == (text, "gb18030")
    assert detect_and_decode(text.encode("utf-16"), "auto", "f.csv") == (text, "utf-16")
    with pytest.raises(DataError, match=r"at byte 2, .*set data\.encoding .*cp1252"):  # never guessed: ambiguous
        detect_and_decode("naïve café\n".encode("cp1252"), "auto", "f.csv")
    assert detect_and_decode("naïve café\n".encode("cp1252"), "cp1252", "f.csv")[0] == "naïve café\n"
    with pytest.raises(DataError, match=r"f\.csv: not valid gb18030 at byte 4"):
        detect_and_decode(b"ab,c\xff\xff\xff", "gb18030", "f.csv")
    # random bytes: named with the first byte that is not UTF-8 and the setting to use
    blob = bytes(random.Random(1).randrange(128, 256) for _ in range(4000))
    with pytest.raises(DataError, match=r"not valid UTF-8 at byte 0.*set data\.encoding"):
        detect_and_decode(b"\x81\x30" + blob, "auto", "f.csv")


def test_an_excel_workbook_trains_and_predicts(tmp_path: Path) -> None:
    data = tmp_path / "hotel.xlsx"
    with pd.ExcelWriter(data) as xl:
        pd.DataFrame({"note": ["a cover sheet"]}).to_excel(xl, sheet_name="说明", index=False)
        hotel_reviews().to_excel(xl, sheet_name="评论", index=False)
    assert read_table(data, sheet="评论").shape == (200, 2)
    recipe = _tfidf_recipe(tmp_path, data, sheet="评论")
    res = modelyard("train", recipe)
    assert res.rc == 0, res.stderr[-1500:]
    run = Path(res.stdout.strip().splitlines()[-1])
    unlabelled = tmp_path / "new.xlsx"
    hotel_reviews(20, seed=3)[["评论"]].to_excel(unlabelled, index=False)
    out = tmp_path / "pred.xlsx.csv"
    res = modelyard("predict", run, "-i", unlabelled, "-o", out)
    assert res.rc == 0, res.stderr[-1500:]
    pred = pd.read_csv(out)
    assert len(pred) == 20 and set(pred["pred"]) <= {"正面", "负面"}
    missing = modelyard("train", _tfidf_recipe(tmp_path, data, sheet="nope"))
    assert missing.rc == 2 and "data.sheet" in missing.stderr


def test_a_folder_of_text_files_per_class_trains_evaluates_and_predicts(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    for i, row in hotel_reviews(120).iterrows():
        folder = corpus / row["情感"]
        folder.mkdir(parents=True, exist_ok=True)
        # mixed encodings, as files collected from several tools are
        (folder / f"{i:03d}.txt").write_bytes(row["评论"].encode("gbk" if i % 3 == 0 else "utf-8"))
    frame = read_table(corpus)
    assert list(frame.columns) == ["text", "label", "file"] and len(frame) == 120
    assert set(frame["label"]) == {"正面", "负面"} and frame.loc[0, "file"].endswith(".txt")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "folder",
                "data": {"path": str(corpus)},
                "model": {"type": "tfidf-logreg", "tfidf": {"analyzer": "char", "ngram_min": 1, "ngram_max": 3}},
                "output_dir": str(tmp_path / "runs"),
            },
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    res = modelyard("train", recipe)
    assert res.rc == 0, res.stderr[-1500:]
    run = Path(res.stdout.strip().splitlines()[-1])
    assert modelyard("evaluate", run, "--data", corpus).rc == 0
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, text in enumerate(["房间干净舒适，服务热情周到", "卫生不干净，隔音效果太差"]):
        (inbox / f"{i}.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "pred.csv"
    res = modelyard("predict", run, "-i", inbox, "-o", out)
    assert res.rc == 0, res.stderr[-1500:]
    pred = pd.read_csv(out)
    assert list(pred["file"]) == ["0.txt", "1.txt"] and list(pred["pred"]) == ["正面", "负面"]


def test_a_folder_mixing_labelled_and_loose_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pos").mkdir()
    (tmp_path / "pos" / "a.txt").write_text("good")
    (tmp_path / "loose.txt").write_text("which class?")
    with pytest.raises(DataError, match=r"loose\.txt"):
        read_table(tmp_path)


def test_a_csv_without_header_reads_positional_columns(tmp_path: Path) -> None:
    data = tmp_path / "news.csv"
    data.write_text('3,"Title one","A long description of business news"\n1,"T2","World news here"\n')
    frame = read_table(data, header=False)
    assert list(frame.columns) == ["1", "2", "3"] and list(frame["1"]) == ["3", "1"]
