"""Tokenizers trained on the user's own texts with the ``tokenizers`` library (char, WordPiece, BPE).

The result is a ``PreTrainedTokenizerFast`` — saved next to the model as ``tokenizer.json`` +
``tokenizer_config.json``, so ``AutoTokenizer.from_pretrained(model_dir)`` loads it with no modelyard code.
Every type adds ``[CLS] … [SEP]`` around a text and reserves ids 0–4 for ``[PAD] [UNK] [CLS] [SEP] [MASK]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from modelyard.config import TokenizerConfig
from modelyard.errors import DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, max_length: int = 512) -> Any:
    """Train a tokenizer of type ``cfg.type`` on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    * ``char`` — one token per non-space character (a word-level model over characters).
    * ``wordpiece`` — BERT's recipe: CJK ideographs become single tokens, other words WordPiece pieces.
    * ``bpe`` — byte-pair sub-words of whitespace-separated words (jieba-segmented Chinese gives words).

    Raises:
        DataError: no texts to train on.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DataError("cannot train a tokenizer: no non-empty training texts")
    norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if cfg.lowercase else [])
    common = {
        "vocab_size": cfg.vocab_size,
        "min_frequency": cfg.min_frequency,
        "special_tokens": SPECIAL_TOKENS,
        "show_progress": False,
    }
    if cfg.type == "char":
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.normalizer = normalizers.Sequence(norm)
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
        )
        trainer: Any = trainers.WordLevelTrainer(**common)
        tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces; nothing to merge
    elif cfg.type == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=cfg.lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(**common)
        tok.decoder = decoders.WordPiece(prefix="##")
    else:
        tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
        tok.normalizer = normalizers.Sequence(norm)
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
        trainer = trainers.BpeTrainer(**common, continuing_subword_prefix="##")
        tok.decoder = decoders.WordPiece(prefix="##")
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )
