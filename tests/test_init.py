"""``modelyard init --data``: the analysis decides the recipe, and each written recipe trains without edits.

Pinned choices on real data (bundled corpora, ``../shared/data`` read in place) and on files shaped like users'
exports: English sentiment → fine-tuned MiniLM (ensemble with ``--budget best``), Chinese sentiment and
Chinese topic → Chinese cleaning and a Chinese-capable model (TF-IDF; a character TextCNN with an hour),
English 4-class news without a header row → MiniLM on the positional columns, very few labels → the prompt
model, an image folder → an image recipe, a multi-label file (labels joined in one column, or one 0/1 column
per label; Chinese or English) → task multi-label-classification with that layout and TF-IDF (Chinese cleaning
for Chinese).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from modelyard.config import load_recipe
from modelyard.data.profile import profile_table
from modelyard.starter import choose_recipe
from modelyard.training.run import train
from tests.conftest import SHARED, synthetic_sentiment
from tests.fault_helpers import modelyard
from tests.test_user_files import hotel_reviews

SHOPPING = SHARED / "online_shopping_10_cats.zip"
AG_NEWS = SHARED / "ag_news" / "test.csv"


def _init(tmp_path: Path, *args: str | Path) -> tuple[dict, str]:
    out = tmp_path / "recipe.yaml"
    res = modelyard("init", *args, "-o", out, "--force", cwd=tmp_path)
    assert res.rc == 0, res.stderr[-2000:]
    text = out.read_text(encoding="utf-8")
    return yaml.safe_load(text), text


def _trains(tmp_path: Path, *overrides: str) -> Path:
    recipe = load_recipe(tmp_path / "recipe.yaml", [f"output_dir={tmp_path / 'runs'}", *overrides])
    run = train(recipe)
    assert (run / "model").is_dir() and (run / "metrics.json").is_file()
    return run


def test_english_sentiment_fine_tunes_minilm_within_the_budget(tmp_path: Path) -> None:
    raw, text = _init(tmp_path, "--data", "bundled:rotten-tomatoes")
    assert raw["model"]["type"] == "hf-encoder" and raw["model"]["backbone"] == "bundled:minilm-l6"
    assert raw["model"]["max_length"] == 64 and raw["train"]["epochs"] == 1  # 3 epochs would exceed 10 minutes
    assert "examples/rotten_tomatoes_minilm.yaml" in text and "0.8464" in text and "fit the 10m budget" in text
    best, _ = _init(tmp_path, "--data", "bundled:rotten-tomatoes", "--budget", "best")
    assert best["model"]["type"] == "ensemble" and len(best["model"]["members"]) == 3
    _trains(tmp_path, "data.sample=160", "train.epochs=1")


def test_chinese_sentiment_from_a_gbk_export_uses_chinese_cleaning_and_tfidf(tmp_path: Path) -> None:
    data = tmp_path / "hotel.csv"
    data.write_bytes(hotel_reviews(300).to_csv(index=False).encode("gbk"))  # 评论, 情感; as Excel writes it
    raw, text = _init(tmp_path, "--data", data)
    assert raw["data"]["text_column"] == "评论" and raw["data"]["label_column"] == "情感"
    assert raw["data"]["clean"]["chinese"]["traditional_to_simplified"] is True
    assert raw["model"]["type"] == "tfidf-logreg" and raw["model"]["tfidf"]["word_ngram_max"] == 2
    assert "the texts are Chinese" in text and "0.8715" in text
    run = _trains(tmp_path)
    assert yaml.safe_load((run / "metrics.json").read_text())["test"]["accuracy"] >= 0.9


def test_chinese_reviews_bundled_choose_the_shipped_chinese_recipe() -> None:
    from modelyard.data.sources import load_bundled

    prof = profile_table(load_bundled("bundled:chinese-reviews")[0], "bundled:chinese-reviews")
    assert prof.script == "zh" and prof.n_classes == 2 and prof.conflicts > 0
    choice = choose_recipe(prof, "10m")
    assert choice.key == "zh-tfidf" and choice.recipe["clean"]["conflicts"] == "majority"


@pytest.mark.skipif(not SHOPPING.is_file(), reason=f"{SHOPPING} is not present")
def test_chinese_ten_class_topic_tfidf_in_10_minutes_textcnn_with_an_hour(tmp_path: Path) -> None:
    raw, _ = _init(tmp_path, "--data", SHOPPING, "--label-column", "cat")
    assert raw["data"]["text_column"] == "review" and raw["model"]["type"] == "tfidf-logreg"
    assert raw["train"]["metric"] == "macro_f1"  # 热水器 575 vs 10,000 reviews: imbalanced
    _trains(tmp_path, "data.sample=1500")
    raw, text = _init(tmp_path, "--data", SHOPPING, "--label-column", "cat", "--budget", "1h")
    assert raw["model"]["type"] == "textcnn" and raw["model"]["tokenizer"]["type"] == "char"
    assert raw["data"]["clean"]["chinese"] and "examples/chinese_topic.yaml" in text
    _trains(tmp_path, "data.sample=1500", "train.epochs=1", "model.max_length=64")


@pytest.mark.skipif(not AG_NEWS.is_file(), reason=f"{AG_NEWS} is not present")
def test_english_four_class_news_without_a_header_row(tmp_path: Path) -> None:
    raw, _ = _init(tmp_path, "--data", AG_NEWS)
    assert raw["data"]["header"] is False
    assert raw["data"]["label_column"] == "1" and raw["data"]["text_column"] == "3"  # class id, description
    assert raw["model"]["type"] == "hf-encoder"
    _trains(tmp_path, "data.sample=200", "train.epochs=1")


def test_very_few_labels_take_the_prompt_path(tmp_path: Path) -> None:
    few = synthetic_sentiment(10).rename(columns={"text": "review", "label": "sentiment"})
    prof = profile_table(few, "few.csv")
    choice = choose_recipe(prof, "10m")
    assert choice.key == "en-prompt" and choice.recipe["model"]["type"] == "prompt"


def test_an_image_folder_gets_an_image_recipe(tmp_path: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(60):
        folder = tmp_path / "digits" / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 16).astype(np.uint8)).save(folder / f"{i}.png")
    raw, _ = _init(tmp_path, "--data", tmp_path / "digits")
    assert raw["task"] == "image-classification" and raw["model"]["type"] == "cnn-small"


ASPECTS = {
    "zh": {
        "服务": ["服务员很热情", "前台态度冷淡", "入住办理很快", "保洁阿姨很周到"],
        "价格": ["价格太贵了", "性价比很高", "房价便宜实惠", "收费不合理"],
        "卫生": ["床单不干净", "卫生间有异味", "房间打扫得很整洁", "地毯很脏"],
        "位置": ["离地铁站很近", "交通方便", "位置太偏僻", "周边吃饭方便"],
    },
    "en": {
        "service": ["the staff were friendly", "reception was rude", "check-in was quick", "housekeeping was great"],
        "price": ["far too expensive", "good value for money", "cheap room rate", "hidden fees everywhere"],
        "cleanliness": ["dirty sheets", "the bathroom smelled", "spotless room", "stained carpet"],
        "location": ["close to the metro", "easy transport", "remote location", "plenty of restaurants nearby"],
    },
}


def aspect_reviews(lang: str, layout: str, n: int = 160, seed: int = 0) -> pd.DataFrame:
    """Hotel reviews mentioning 1-3 aspects each (the labels), as users export them: ``评论`` + ``标签`` joined
    by ``、`` (Chinese), ``review`` + ``labels`` joined by ``|`` (English), or one 0/1 column per aspect."""
    rng = np.random.default_rng(seed)
    phrases = ASPECTS[lang]
    names = list(phrases)
    text_col, label_col, sep = ("评论", "标签", "、") if lang == "zh" else ("review", "labels", "|")
    rows = []
    for i in range(n):
        chosen = sorted(rng.choice(names, size=int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])), replace=False))
        parts = [str(rng.choice(phrases[a])) for a in chosen]
        filler = f"第{i}次入住" if lang == "zh" else f"stay number {i}"
        rows.append({text_col: ("，" if lang == "zh" else ", ").join([filler, *parts]), label_col: sep.join(chosen)})
    frame = pd.DataFrame(rows)
    if layout == "columns":
        for a in names:
            frame[a] = frame[label_col].str.split(sep).map(lambda s, a=a: int(a in s))
        frame = frame.drop(columns=label_col)
    return frame


@pytest.mark.parametrize("layout", ["delimited", "columns"])
@pytest.mark.parametrize("lang", ["zh", "en"])
def test_a_multi_label_file_gets_a_multi_label_recipe_that_trains(tmp_path: Path, lang: str, layout: str) -> None:
    data = tmp_path / "aspects.csv"
    aspect_reviews(lang, layout).to_csv(data, index=False)
    raw, text = _init(tmp_path, "--data", data)
    names = list(ASPECTS[lang])
    assert raw["task"] == "multi-label-classification" and raw["model"]["type"] == "tfidf-logreg"
    if layout == "columns":
        assert raw["data"]["label_columns"] == names and raw["data"]["label_separator"] == "auto"
    else:
        assert raw["data"]["label_columns"] is None
        assert (raw["data"]["label_column"], raw["data"]["label_separator"]) == (
            ("标签", "、") if lang == "zh" else ("labels", "|")
        )
    if lang == "zh":
        assert raw["data"]["clean"]["chinese"]["traditional_to_simplified"] is True
        assert raw["model"]["tfidf"]["word_ngram_max"] == 2 and raw["model"]["tfidf"]["ngram_max"] == 4
        assert "examples/chinese_multilabel.yaml" in text and "0.8052" in text  # the measured test micro-F1
    else:
        assert "clean" not in raw["data"] or not raw["data"]["clean"].get("chinese")
        assert raw["model"]["tfidf"]["ngram_max"] == 5 and "0.8446" in text
    flat = " ".join(line.lstrip("# ") for line in text.splitlines())  # the header comment is wrapped
    assert "textcnn, bilstm or hf-encoder also learn label sets" in flat and "label cardinality" in text
    run = _trains(tmp_path)
    metrics = yaml.safe_load((run / "metrics.json").read_text())
    assert metrics["test"]["micro_f1"] >= 0.8 and set(metrics["test"]["per_label"]) == set(names)


def test_explain_prints_the_multi_label_analysis(tmp_path: Path) -> None:
    data = tmp_path / "aspects.csv"
    aspect_reviews("zh", "delimited").to_csv(data, index=False)
    res = modelyard("init", "--data", data, "--explain", "-o", tmp_path / "r.yaml", cwd=tmp_path)
    assert res.rc == 0 and not (tmp_path / "r.yaml").exists(), res.stderr[-1500:]
    assert "multi-label: labels joined by '、' in column '标签'" in res.stdout
    assert "4 labels; label cardinality" in res.stdout and "rows per label: " in res.stdout
    assert "rarest labels: " in res.stdout and "recipe: model.type tfidf-logreg" in res.stdout


def test_explain_prints_the_analysis_and_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "hotel.csv"
    hotel_reviews(100).to_csv(data, index=False)
    res = modelyard("init", "--data", data, "--explain", "-o", tmp_path / "r.yaml", cwd=tmp_path)
    assert res.rc == 0 and not (tmp_path / "r.yaml").exists()
    assert "language: Chinese" in res.stdout and "recipe: model.type tfidf-logreg" in res.stdout
    assert "2 classes (正面 50, 负面 50)" in res.stdout
