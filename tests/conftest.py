"""Shared fixtures: a tiny seeded BERT backbone built in the test, and small learnable datasets."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POS = ["good", "great", "lovely", "superb", "fun", "brilliant"]
NEG = ["bad", "awful", "dull", "boring", "poor", "terrible"]
FILLER = ["the", "film", "movie", "was", "a", "plot", "actors", "very", "and", "story", "really", "quite"]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def synthetic_sentiment(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Texts whose label is decided by one sentiment word among fillers (learnable by a tiny model)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, rng.randint(3, 7))
        words.insert(rng.randint(0, len(words)), rng.choice(POS if label == "pos" else NEG))
        rows.append({"text": " ".join(words) + f" {i}", "label": label})
    return pd.DataFrame(rows)


def build_tiny_backbone(path: Path, corpus: list[str], seed: int = 0) -> Path:
    """A 2-layer, hidden-32 BERT with a WordPiece vocabulary trained on ``corpus`` (offline, seconds)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    # An explicit vocabulary (not WordPieceTrainer): the trainer breaks frequency ties in hash order,
    # which differs between processes, and golden values need the same ids in every session.
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for text in corpus for w in text.lower().split() if w.isalpha()})
    chars = sorted({c for text in corpus for c in text.lower() if c.isalnum()})
    tokens = list(dict.fromkeys(specials + words + chars + [f"##{c}" for c in chars]))  # dedupe, keep order
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    BertModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a tiny BERT backbone directory usable as ``model.backbone``."""
    corpus = synthetic_sentiment(400, seed=1)["text"].tolist()
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny_backbone"), corpus)


@pytest.fixture()
def sentiment_csv(tmp_path: Path) -> Path:
    """A small learnable sentiment CSV."""
    path = tmp_path / "reviews.csv"
    synthetic_sentiment(240).to_csv(path, index=False)
    return path


def write_tiny_recipe(tmp_path: Path, data: Path, backbone: Path, **train: object) -> Path:
    """A recipe for the tiny backbone; ``train`` keys override the train section."""
    import yaml

    recipe = {
        "name": "tiny",
        "data": {"path": str(data), "valid_size": 0.2, "test_size": 0.2, "seed": 3},
        "model": {"backbone": str(backbone), "max_length": 32},
        "train": {
            "epochs": 3,
            "batch_size": 16,
            "learning_rate": 1e-2,
            "warmup_ratio": 0.1,
            "seed": 7,
            "metric": "accuracy",
            "log_every_steps": 2,
            **train,
        },
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    """A finished run of the tiny backbone on synthetic sentiment (shared by registry/production tests)."""
    from modelyard.config import load_recipe
    from modelyard.training.run import train

    tmp = tmp_path_factory.mktemp("tiny_trained_run")
    data = tmp / "reviews.csv"
    synthetic_sentiment(240).to_csv(data, index=False)
    return train(load_recipe(write_tiny_recipe(tmp, data, tiny_backbone)))
