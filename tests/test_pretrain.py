"""MLM pretraining: masking statistics, whole-word masking, the backbone directory, fine-tuning on it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from modelyard.config import PretrainConfig, TokenizerConfig, load_recipe
from modelyard.errors import ConfigError
from modelyard.models.tokenization import train_tokenizer
from modelyard.training.pretrain import encode_for_mlm, mask_batch, mlm_collator, pretrain

from .test_chinese import synthetic_zh


@pytest.fixture(autouse=True, scope="module")
def _tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Trained tokenizers are cached under $MODELYARD_CACHE: keep this module's out of the home folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_CACHE", str(tmp_path_factory.mktemp("modelyard_cache")))
        yield


@pytest.fixture(scope="module")
def zh_tokenizer() -> object:
    texts = synthetic_zh(300)["text"].tolist()
    return train_tokenizer(texts, TokenizerConfig(type="char", vocab_size=300, min_frequency=1), max_length=64)


def _masked(zh_tokenizer: object, whole_words: bool, n: int = 600) -> tuple[dict, dict]:
    torch.manual_seed(0)
    texts = synthetic_zh(n, seed=9)["text"].tolist()
    examples = encode_for_mlm(zh_tokenizer, texts, 64, whole_words)
    collator = mlm_collator(zh_tokenizer, PretrainConfig(whole_word_masking=whole_words))
    original = mask_batch(collator, examples, zh_tokenizer.pad_token_id)
    torch.manual_seed(0)
    return original, {"examples": examples, "texts": texts}


def test_token_masking_statistics_15_percent_80_10_10(zh_tokenizer: object) -> None:
    batch, info = _masked(zh_tokenizer, whole_words=False)
    labels, inputs = batch["labels"], batch["input_ids"]
    special = torch.zeros_like(labels, dtype=torch.bool)
    for i, e in enumerate(info["examples"]):
        special[i, : len(e["input_ids"])] = torch.as_tensor(e["special_tokens_mask"], dtype=torch.bool)
    real = (batch["attention_mask"] == 1) & ~special
    masked = labels != -100
    assert not (masked & ~real).any()  # never [CLS]/[SEP]/padding
    rate = masked.sum().item() / real.sum().item()
    assert 0.13 <= rate <= 0.17, rate
    n = masked.sum().item()
    to_mask = (inputs[masked] == zh_tokenizer.mask_token_id).sum().item() / n
    kept = (inputs[masked] == labels[masked]).sum().item() / n
    assert 0.76 <= to_mask <= 0.84, to_mask
    assert 0.07 <= kept <= 0.13, kept  # 10% unchanged (+ random draws that hit the original token)
    assert 0.07 <= 1 - to_mask - kept <= 0.13
    # unmasked positions are untouched
    original = torch.zeros_like(inputs)
    for i, e in enumerate(info["examples"]):
        original[i, : len(e["input_ids"])] = torch.as_tensor(e["input_ids"])
    original[batch["attention_mask"] == 0] = zh_tokenizer.pad_token_id
    assert torch.equal(inputs[~masked], original[~masked])


def test_whole_word_masking_masks_whole_jieba_words(zh_tokenizer: object) -> None:
    from modelyard.data.chinese import words

    batch, info = _masked(zh_tokenizer, whole_words=True)
    masked = batch["labels"] != -100
    checked = 0
    for i, text in enumerate(info["texts"][:200]):
        # char tokens follow the text's non-space characters after [CLS]
        flags = masked[i, 1 : 1 + len(text.replace(" ", ""))].tolist()
        pos = 0
        for w in words(text):
            span = flags[pos : pos + len(w)]
            pos += len(w)
            if len(w) > 1 and any(span):
                assert all(span), (text, w)  # a masked word is masked entirely
                checked += 1
    assert checked > 20
    n = masked.sum().item()
    to_mask = (batch["input_ids"][masked] == zh_tokenizer.mask_token_id).sum().item() / n
    assert 0.74 <= to_mask <= 0.86, to_mask  # 80/10/10 also for whole words
    rate = masked.sum().item() / (batch["attention_mask"].sum().item() - 2 * len(info["texts"]))
    assert 0.10 <= rate <= 0.25, rate  # ~15% of words ≈ a bit more of the tokens


def write_pretrain_recipe(tmp_path: Path, **pretrain_cfg: object) -> Path:
    data = tmp_path / "zh.csv"
    synthetic_zh(200).to_csv(data, index=False)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(synthetic_zh(100, seed=4)["text"]), encoding="utf-8")
    recipe = {
        "name": "zh-pretrain",
        "data": {"path": str(data), "valid_size": 0.2, "test_size": 0.2, "clean": {"chinese": {}}},
        "model": {
            "type": "hf-encoder",
            "max_length": 32,
            "tokenizer": {"type": "char", "vocab_size": 200, "min_frequency": 1},
            "arch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2},
        },
        "train": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "num_threads": 1},
        "pretrain": {
            "corpus": ["corpus.txt"],
            "epochs": 3,
            "batch_size": 16,
            "learning_rate": 2e-3,
            "eval_every_steps": 5,
            "num_threads": 1,
            **pretrain_cfg,
        },
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def test_pretrain_writes_a_backbone_that_fine_tunes(tmp_path: Path) -> None:
    from modelyard.training.run import train

    recipe = load_recipe(write_pretrain_recipe(tmp_path, whole_word_masking=True))
    backbone = pretrain(recipe)
    assert {p.name for p in backbone.iterdir()} == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "history.json",
        "progress.jsonl",
        "pretrain_report.html",
        "manifest.json",
    }
    history = json.loads((backbone / "history.json").read_text())
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]  # held-out MLM loss falls
    manifest = json.loads((backbone / "manifest.json").read_text())
    assert manifest["texts"]["train"] + manifest["texts"]["held_out"] > 160  # train split + corpus file
    page = (backbone / "pretrain_report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 1
    assert_report_shows_the_history(page, history)

    # the directory is a backbone for model.backbone (hf-encoder) …
    run = train(load_recipe(write_pretrain_recipe(tmp_path), [f"model.backbone={backbone}"]))
    assert json.loads((run / "metrics.json").read_text())["test"]["n"] > 0
    # … and continued pretraining starts from it
    again = pretrain(load_recipe(write_pretrain_recipe(tmp_path), [f"pretrain.init={backbone}", "pretrain.epochs=1"]))
    assert json.loads((again / "manifest.json").read_text())["init"] == str(backbone)


def _report_rows(page: str) -> list[list[str]]:
    """The cells of the report's ``<tr class="eval">`` rows."""
    import re

    rows = re.findall(r'<tr class="eval">(.*?)</tr>', page, flags=re.S)
    return [re.findall(r"<td>(.*?)</td>", row) for row in rows]


def assert_report_shows_the_history(page: str, history: list[dict]) -> None:
    """One table row per evaluation in history.json, each number rounded as displayed."""
    rows = _report_rows(page)
    assert len(rows) == len(history)
    for (step, train, held_out, perplexity), record in zip(rows, history, strict=True):
        assert int(step) == record["step"]
        assert train == ("—" if "train_loss" not in record else f"{record['train_loss']:.4f}")
        assert held_out == f"{record['eval_loss']:.4f}" and perplexity == f"{record['eval_perplexity']:.2f}"


def test_pretrain_report_escapes_the_run_id_and_shows_history_json(tmp_path: Path) -> None:
    import math

    from modelyard.training.pretrain import write_pretrain_report

    history = [{"step": 0, "eval_loss": 5.123456, "eval_perplexity": math.exp(5.123456)}] + [
        {
            "step": s,
            "train_loss": 5.0 - s / 10,
            "eval_loss": 4.98765 - s / 10,
            "eval_perplexity": math.exp(4.98765 - s / 10),
        }
        for s in (5, 10)
    ]
    (tmp_path / "history.json").write_text(json.dumps(history), encoding="utf-8")
    progress = tmp_path / "progress.jsonl"
    lines = [json.dumps({"step": s, "loss": 5.5 - s / 20}) for s in range(1, 11)]
    progress.write_text("\n".join([*lines, '{"step": 1']), encoding="utf-8")  # a torn last line is skipped
    hostile = "<script>alert(1)</script>"
    write_pretrain_report(tmp_path / "report.html", history, progress, hostile)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 2  # <title> and <h1>
    assert page.count("<svg") == 1 and "held-out perplexity" in page
    assert_report_shows_the_history(page, json.loads((tmp_path / "history.json").read_text(encoding="utf-8")))
    assert _report_rows(page)[0] == ["0", "—", "5.1235", f"{math.exp(5.123456):.2f}"]


def test_pretrain_without_section_or_texts_fails_clearly(tmp_path: Path) -> None:
    path = write_pretrain_recipe(tmp_path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw.pop("pretrain")
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match="needs a `pretrain` section"):
        pretrain(load_recipe(path))
    with pytest.raises(ConfigError, match="no texts to learn from"):
        pretrain(load_recipe(path, ["pretrain.use_train_texts=false"]))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_corpus_excludes_valid_and_test_texts(tmp_path: Path) -> None:
    from modelyard.data import prepare_data
    from modelyard.training.pretrain import corpus_texts

    recipe = load_recipe(write_pretrain_recipe(tmp_path))
    data = prepare_data(recipe.data, recipe.base_dir)
    leaked = data.test["text"].iloc[0]
    (tmp_path / "corpus.txt").write_text(f"{leaked}\n全新的无标签评论\n", encoding="utf-8")
    texts = corpus_texts(recipe)
    assert "全新的无标签评论" in texts and leaked not in texts
    assert set(data.train["text"]) <= set(texts)
    assert not (set(texts) & (set(data.valid["text"]) | set(data.test["text"])))
