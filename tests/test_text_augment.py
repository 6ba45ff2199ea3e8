"""train.augment.text: seeded, label-preserving text augmentation of the training split only."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from modelyard.config import load_recipe
from modelyard.config.train import TextAugment
from modelyard.data.wordlists import chinese_synonyms, english_synonyms
from modelyard.errors import ConfigError
from modelyard.training.augment_models import MaskedLMFiller, clean_paraphrase, paraphrase_table
from modelyard.training.batch_sources import Encoded
from modelyard.training.run import TrainingInterrupted, train
from modelyard.training.text_augment import (
    TextAugmenter,
    Words,
    eda_delete,
    eda_swap,
    expand,
    row_rng,
    script_variant,
    simple_variant,
    width_variant,
)
from tests.conftest import build_tiny_backbone, synthetic_sentiment, write_tiny_recipe

EN = [
    "The movie was good, but the actors were not great and the plot was boring.",
    "A lovely film with a brilliant story and very fun actors.",
    "Dull plot, awful acting, and a terrible ending; I did not enjoy it.",
    "Superb direction and a really great cast make this film a joy.",
] * 5
ZH = ["这部电影真的不好看，演员很快乐，故事情节太无聊了", "我们今天很高兴，买到了好东西", "质量很差，不会再买了"] * 4
# WordNet 3.0 synonyms of "good" (adjective senses listing "good") and a 同义词词林 `=` group holding 快乐
GOOD = {"beneficial", "estimable", "honorable", "respectable", "right", "ripe", "sound", "just", "upright", "dear"}
HAPPY = {"高兴", "开心", "愉快", "欢快", "快活", "欢乐", "欢喜", "喜悦", "愉悦", "欣喜"}


def _texts(aug: TextAugmenter, texts: list[str], epoch: int) -> list[str]:
    return aug.epoch(texts, epoch)[0]


def test_same_seed_same_texts_other_seed_or_epoch_different() -> None:
    spec = TextAugment(prob=0.8)
    a, b, c = (TextAugmenter(spec, "en", s) for s in (1, 1, 2))
    first = _texts(a, EN, 0)
    assert first == _texts(b, EN, 0)  # a fresh augmenter, same seed: identical texts
    assert first != _texts(c, EN, 0)
    assert first != _texts(a, EN, 1)  # the next epoch draws other variants
    assert first != EN and sum(x != y for x, y in zip(first, EN, strict=True)) >= len(EN) // 3
    # a row's variant depends only on (seed, epoch, row): computing epoch 1 first changes nothing
    d = TextAugmenter(spec, "en", 1)
    _texts(d, EN, 1)
    assert _texts(d, EN, 0) == first


def test_replace_mode_keeps_rows_and_prob_add_mode_keeps_originals_and_labels() -> None:
    texts, stats = TextAugmenter(TextAugment(prob=0.3), "en", 0).epoch(EN, 0)
    assert len(texts) == len(EN) and 0 < stats["augmented"] < len(EN)
    train = Encoded(texts=EN, ids=[[1]] * len(EN), labels=np.arange(len(EN)) % 2)
    big = expand(train, 2)
    assert big.texts[: len(EN)] == EN and len(big.texts) == 3 * len(EN)
    assert (big.labels == np.tile(train.labels, 3)).all()  # each variant keeps the label of its original
    out, stats = TextAugmenter(TextAugment(copies=2), "en", 0).epoch(big.texts, 0)
    assert out[: len(EN)] == EN  # originals untouched
    assert stats["augmented"] == 2 * len(EN) and stats["changed"] > len(EN)


def test_swap_keeps_the_multiset_of_words_and_negations_in_place() -> None:
    text = EN[0]
    for seed in range(20):
        out = eda_swap(Words(text, "en"), 0.3, row_rng(seed, 0, 0))
        assert Counter(out.split()) == Counter(text.split())
        assert out.split().index("not") == text.split().index("not")


def test_delete_never_empties_a_text_nor_drops_negations() -> None:
    for seed in range(30):
        out = eda_delete(Words(EN[2], "en"), 0.5, row_rng(seed, 0, 0))
        assert out.strip() and "not" in out.split()
        assert eda_delete(Words("two words", "en"), 0.5 if seed % 2 else 0.99, row_rng(seed, 0, 0)).strip()
    assert eda_delete(Words("alone", "en"), 0.5, row_rng(0, 0, 0)) == "alone"
    zh = eda_delete(Words(ZH[2], "zh"), 0.5, row_rng(3, 0, 0))
    assert "不会" in zh and len(zh) < len(ZH[2])


def test_synonyms_come_from_wordnet_and_cilin() -> None:
    assert set(english_synonyms("good")) >= GOOD
    assert "good" not in english_synonyms("good")
    assert english_synonyms("actors") == ()  # no sense lists the plural itself (WordNet's lemma is "actor")
    assert set(chinese_synonyms("快乐")) >= HAPPY
    changed = {simple_variant("good", "synonym", "en", 0.1, row_rng(s, 0, 0)) for s in range(40)}
    assert changed and changed <= set(english_synonyms("good"))
    assert len(changed) > 3
    zh = {simple_variant("我很快乐", "synonym", "zh", 0.1, row_rng(s, 0, 0)) for s in range(40)}
    assert {z.removeprefix("我很") for z in zh} <= set(chinese_synonyms("快乐"))  # 我/很 are not content words
    # stop words and negations are never replaced
    for s in range(20):
        out = simple_variant("It is not good", "synonym", "en", 0.5, row_rng(s, 0, 0)).split()
        assert out[:3] == ["It", "is", "not"]


def test_chinese_width_and_script_variants() -> None:
    text = "质量OK，价格100元，这个东西很好"
    out = width_variant(text, 0.5, row_rng(0, 0, 0))
    assert out != text and len(out) == len(text)
    from modelyard.data.chinese import to_halfwidth

    assert to_halfwidth(out) == to_halfwidth(text)  # only widths changed (both ways: ， → , too)
    back = width_variant("ＡＢＣ", 1.0, row_rng(0, 0, 0))
    assert back == "ABC"
    script = script_variant("这个东西质量很好，价格也便宜", 0.5, row_rng(1, 0, 0))
    import opencc

    assert script != "这个东西质量很好，价格也便宜"
    assert opencc.OpenCC("t2s").convert(script) == "这个东西质量很好，价格也便宜"


def _tiny_mlm(path: Path, corpus: list[str]) -> Path:
    """A tiny BertForMaskedLM (random weights) with a WordPiece tokenizer over ``corpus``."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    build_tiny_backbone(path, corpus)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig.from_pretrained(path)).save_pretrained(path)
    return path


@pytest.mark.parametrize("language", ["en", "zh"])
def test_contextual_fills_chosen_words_from_the_masked_lm(tmp_path: Path, language: str) -> None:
    import torch

    texts = EN[:4] if language == "en" else ZH[:3]
    filler = MaskedLMFiller(_tiny_mlm(tmp_path / "mlm", texts), language, 0.3, 64, torch.device("cpu"))
    rngs = lambda seed: [row_rng(seed, 0, i) for i in range(len(texts))]  # noqa: E731
    out = filler.fill(texts, rngs(1))
    assert out == filler.fill(texts, rngs(1))  # seeded
    assert out != filler.fill(texts, rngs(2))
    for before, after in zip(texts, out, strict=True):
        assert after != before
        if language == "en":  # same number of words; the changed ones are vocabulary words, not stop words
            a, b = before.split(), after.split()
            assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) >= 1
        else:  # whole jieba words replaced by as many CJK characters; negations and punctuation stay
            assert len(after) == len(before) and after.count("，") == before.count("，")
            assert ("不" in before) == ("不" in after)


def test_backbone_without_mlm_head_fails_before_a_run_directory(
    tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path
) -> None:
    recipe = load_recipe(
        write_tiny_recipe(tmp_path, sentiment_csv, tiny_backbone, augment={"text": {"methods": ["contextual"]}})
    )
    with pytest.raises(ConfigError, match=r"no masked-LM head.*contextual_model.*modelyard pretrain"):
        train(recipe)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bundled_minilm_has_no_mlm_head(tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path) -> None:
    from modelyard.llm.backbones import resolve_backbone

    try:
        resolve_backbone("bundled:minilm-l6", tmp_path)
    except Exception:  # noqa: BLE001
        pytest.skip("bundled MiniLM not installed")
    path = write_tiny_recipe(tmp_path, sentiment_csv, tiny_backbone, augment={"text": {"methods": ["contextual"]}})
    raw = yaml.safe_load(path.read_text())
    raw["model"]["backbone"] = "bundled:minilm-l6"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"bundled:minilm-l6.*no masked-LM head"):
        train(load_recipe(path))
    mlm = _tiny_mlm(tmp_path / "mlm", EN)  # with a masked LM of its own, the same recipe passes the check
    raw["train"]["augment"]["text"]["contextual_model"] = str(mlm)
    path.write_text(yaml.safe_dump(raw))
    from modelyard.training.text_augment import mlm_dir

    assert mlm_dir(load_recipe(path)) == mlm


@pytest.mark.parametrize(
    ("text_cfg", "clean", "data", "message"),
    [
        ({"methods": ["paraphrase"]}, {}, "zh", "English LM"),
        ({"methods": ["width"]}, {}, "zh", "unicode_nfkc"),
        ({"methods": ["script"]}, {"chinese": {"traditional_to_simplified": True}}, "zh", "traditional_to_simplified"),
        ({"methods": ["width", "swap"]}, {"unicode_nfkc": False}, "en", "apply to Chinese"),
    ],
)
def test_methods_that_contradict_the_data_fail_early(
    tmp_path: Path, tiny_backbone: Path, text_cfg: dict, clean: dict, data: str, message: str
) -> None:
    csv = tmp_path / "d.csv"
    rows = ZH * 10 if data == "zh" else EN * 6
    pd.DataFrame({"text": [f"{t}{i}" for i, t in enumerate(rows)], "label": ["a", "b"] * (len(rows) // 2)}).to_csv(
        csv, index=False
    )
    path = write_tiny_recipe(tmp_path, csv, tiny_backbone, augment={"text": text_cfg})
    raw = yaml.safe_load(path.read_text())
    raw["data"]["clean"] = clean
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        train(load_recipe(path))


def test_training_augments_train_only_and_resumes_exactly(
    tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path
) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "aug").mkdir()
    plain = train(load_recipe(write_tiny_recipe(tmp_path / "plain", sentiment_csv, tiny_backbone, epochs=2)))
    aug = {"text": {"methods": ["synonym", "swap", "delete"], "alpha": 0.2, "prob": 0.7}}
    recipe = load_recipe(
        write_tiny_recipe(
            tmp_path / "aug", sentiment_csv, tiny_backbone, epochs=2, checkpoint_every_steps=4, augment=aug
        )
    )
    reference = train(recipe)
    for split in ("valid", "test", "train"):  # the saved splits are the data stage's, byte for byte
        assert (plain / "splits" / f"{split}.parquet").read_bytes() == (
            reference / "splits" / f"{split}.parquet"
        ).read_bytes()
    plain_preds = pd.read_parquet(plain / "predictions.parquet")
    aug_preds = pd.read_parquet(reference / "predictions.parquet")
    assert plain_preds["text"].tolist() == aug_preds["text"].tolist()  # valid/test texts scored unchanged
    manifest = json.loads((reference / "manifest.json").read_text())["augment_text"]
    assert manifest["methods"] == ["synonym", "swap", "delete"] and manifest["language"] == "en"
    assert [e["epoch"] for e in manifest["epochs"]] == [1, 2]
    n = manifest["original_train_rows"]
    assert all(0.5 * n < e["augmented"] <= n and e["changed"] > 0 for e in manifest["epochs"])
    a = load_file(str(plain / "model" / "model.safetensors"))
    b = load_file(str(reference / "model" / "model.safetensors"))
    assert any(not np.allclose(a[k], b[k]) for k in a)  # the model did see other texts

    # interrupted mid-epoch 2 and resumed: the same weights as the uninterrupted run
    with pytest.raises(TrainingInterrupted):
        train(recipe, stop_after_step=11)
    (partial,) = list((tmp_path / "aug" / "runs").glob("*.incomplete"))
    resumed = train(recipe, resume=partial)
    c = load_file(str(resumed / "model" / "model.safetensors"))
    for k in b:
        np.testing.assert_allclose(b[k], c[k], atol=1e-6, rtol=0, err_msg=k)


def test_add_mode_multiplies_the_steps(tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path) -> None:
    aug = {"text": {"methods": ["swap"], "copies": 2}}
    run = train(load_recipe(write_tiny_recipe(tmp_path, sentiment_csv, tiny_backbone, epochs=1, augment=aug)))
    manifest = json.loads((run / "manifest.json").read_text())
    n = manifest["augment_text"]["original_train_rows"]
    assert manifest["data_sizes"]["train"] == 3 * n  # rows per epoch: originals + 2 variants each
    assert manifest["total_steps"] == -(-3 * n // 16)
    assert manifest["data_sizes"]["valid"] == len(pd.read_parquet(run / "splits" / "valid.parquet"))


def test_paraphrase_filter_rejects_degenerate_outputs() -> None:
    src = "The plot was thin but the actors were charming."
    assert clean_paraphrase(src, '"The story was weak, yet the cast charmed."\nMore text')[0] == (
        "The story was weak, yet the cast charmed."
    )
    assert clean_paraphrase(src, "   ") == (None, "empty")
    assert clean_paraphrase(src, "the plot was thin, but the actors were CHARMING") == (None, "identical")
    assert clean_paraphrase(src, src + " " + src + " " + src + " and more")[1] == "length"
    assert clean_paraphrase(src, "Sure! Here is the rewritten text: the story was thin")[1] == "prompt"
    assert clean_paraphrase(src, "Text: the story was weak but the cast charmed")[1] == "prompt"
    assert clean_paraphrase(src, "The text says the plot was thin and the cast charming")[1] == "prompt"


def test_paraphrases_are_generated_once_and_cached(tmp_path: Path) -> None:
    from rich.console import Console

    calls: list[tuple[list[str], int]] = []

    def fake() -> object:
        def generate(texts: list[str], seed: int) -> list[list[str]]:
            calls.append((texts, seed))
            return [[f"{t} indeed", "", t, f"so {t.lower()}"] for t in texts]

        return generate

    texts = EN[:4]
    console = Console(quiet=True)
    table, stats = paraphrase_table(texts, tmp_path, seed=3, k=4, console=console, generator=fake, batch_size=3)
    assert len(calls) == 2 and [len(c[0]) for c in calls] == [3, 1]
    assert table[0] == [f"{texts[0]} indeed", f"so {texts[0].lower()}"]
    assert stats["accepted"] == 8 and stats["rejected"] == {"empty": 4, "identical": 4}
    again, _ = paraphrase_table(texts, tmp_path, seed=3, k=4, console=console, generator=fake)
    assert again == table and len(calls) == 2  # read from augment/paraphrases.jsonl, no generation
    aug = TextAugmenter(TextAugment(methods=["paraphrase"], prob=1.0), "en", 0, paraphrases=table)
    out = _texts(aug, texts, 0)
    assert all(o in table[i] for i, o in enumerate(out))
    _, other = paraphrase_table(texts[:2], tmp_path, seed=3, k=4, console=console, generator=fake)
    assert len(calls) == 3 and other["texts"] == 2  # other texts: generated anew


@pytest.mark.slow
def test_paraphrase_with_the_bundled_lm(tmp_path: Path) -> None:
    import torch
    from rich.console import Console

    from modelyard.training.augment_models import smollm_generator

    texts = EN[:4]
    table, stats = paraphrase_table(
        texts, tmp_path, seed=0, k=2, console=Console(), generator=lambda: smollm_generator(2, torch.device("cpu"))
    )
    print(stats)
    assert stats["accepted"] >= 2 and sum(map(len, table)) == stats["accepted"]


def test_synthetic_fixture_texts_have_synonyms() -> None:
    """The fixture data of the training tests has replaceable words (otherwise those tests prove nothing)."""
    texts = synthetic_sentiment(20)["text"].tolist()
    out = _texts(TextAugmenter(TextAugment(methods=["synonym"], prob=1.0), "en", 0), texts, 0)
    assert sum(a != b for a, b in zip(texts, out, strict=True)) >= 10
