"""Chinese text handling for the data stage: width/punctuation normalisation, Traditional → Simplified,
word segmentation (jieba) and character tokenisation.

Enabled per recipe with ``data.clean.chinese`` (see :class:`~modelyard.config.ChineseCleaningConfig`);
:func:`~modelyard.data.cleaning.clean_text` calls :func:`normalize_chinese` and, for word-level models,
:func:`segment` — so training, evaluation, prediction and serving all see the same text.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from modelyard.errors import ConfigError

# Full-width ASCII variants (U+FF01–U+FF5E) → ASCII, ideographic space → space. NFKC does this too, but
# the Chinese options work with data.clean.unicode_nfkc off as well.
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}

# CJK punctuation that NFKC leaves alone → one ASCII spelling, so "好！" "好!" and "好！！" share features.
_PUNCTUATION = str.maketrans(
    {
        "。": ".",
        "｡": ".",
        "、": ",",
        "，": ",",
        "；": ";",
        "：": ":",
        "？": "?",
        "！": "!",
        "“": '"',
        "”": '"',
        "„": '"',
        "「": '"',
        "」": '"',
        "『": '"',
        "』": '"',
        "‘": "'",
        "’": "'",
        "（": "(",
        "）": ")",
        "【": "[",
        "】": "]",
        "〔": "[",
        "〕": "]",
        "［": "[",
        "］": "]",
        "《": "<",
        "》": ">",
        "〈": "<",
        "〉": ">",
        "～": "~",
        "〜": "~",
        "—": "-",
        "–": "-",
        "－": "-",
        "…": "...",
        "⋯": "...",
    }
)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")


def has_cjk(text: str) -> bool:
    """Whether ``text`` contains at least one CJK ideograph."""
    return _CJK.search(text) is not None


def to_halfwidth(text: str) -> str:
    """Full-width letters, digits and ASCII punctuation → half-width; ideographic space → space."""
    return text.translate(_FULLWIDTH)


def normalize_punctuation(text: str) -> str:
    """Map Chinese punctuation (。，、！？“”【】《》… ) to ASCII equivalents."""
    return text.translate(_PUNCTUATION)


def squeeze_repeats(text: str, max_repeat: int) -> str:
    """Cap runs of one repeated character at ``max_repeat`` ("好好好好好!!!!!!" → "好好好!!!" for 3)."""
    if max_repeat < 1:
        raise ValueError("max_repeat must be ≥ 1")
    return re.sub(rf"(.)\1{{{max_repeat},}}", lambda m: m.group(1) * max_repeat, text, flags=re.S)


@functools.lru_cache(maxsize=1)
def _opencc() -> Any:
    """OpenCC's ``t2s`` converter (built once: loading its dictionaries is the expensive part).

    ``t2s`` converts the script only (characters and multi-character phrases such as 頭髮 → 头发), not
    regional vocabulary (軟體 stays 软体). The regional configs (``tw2s``, ``hk2s``) were measured and
    rejected: on Simplified input, which mixed corpora are mostly made of, they rewrite 么 → 幺 (什么 → 什幺).
    """
    try:
        import opencc
    except ImportError:
        raise ConfigError(
            "data.clean.chinese.traditional_to_simplified needs the opencc package: pip install opencc"
        ) from None
    return opencc.OpenCC("t2s")


def traditional_to_simplified(text: str) -> str:
    """Convert Traditional Chinese characters and phrases to Simplified (OpenCC's ``t2s`` configuration).

    Example:
        >>> traditional_to_simplified("這部電影很好看")
        '这部电影很好看'
    """
    return _opencc().convert(text)


@functools.lru_cache(maxsize=1)
def _jieba() -> Any:
    import logging

    try:
        import jieba
    except ImportError:
        raise ConfigError("Chinese word segmentation needs the jieba package: pip install jieba") from None
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def words(text: str) -> list[str]:
    """jieba's word segmentation of ``text`` (precise mode, HMM for unknown words), without whitespace tokens.

    Example:
        >>> words("我喜欢这本书 very much")
        ['我', '喜欢', '这', '本书', 'very', 'much']
    """
    return [w for w in _jieba().lcut(text, HMM=True) if w.strip()]


def segment(text: str) -> str:
    """Space-separated jieba words: the input form of word-level tokenizers and word n-gram TF-IDF."""
    return " ".join(words(text))


def chars(text: str) -> list[str]:
    """Character tokens: every non-whitespace character on its own (the unit of char-level models)."""
    return [c for c in text if not c.isspace()]


def normalize_chinese(
    text: str,
    *,
    halfwidth: bool = True,
    punctuation: bool = True,
    traditional: bool = False,
    max_repeat: int | None = None,
) -> str:
    """Normalise one Chinese (or mixed) text; each step can be switched off.

    Args:
        text: The raw text.
        halfwidth: Full-width ASCII → half-width (ＡＢＣ１２３ → ABC123).
        punctuation: Chinese punctuation → ASCII (。，！？ → . , ! ?).
        traditional: Traditional → Simplified characters (這個產品 → 这个产品).
        max_repeat: Cap runs of a repeated character at this length; None keeps them.
    """
    if halfwidth:
        text = to_halfwidth(text)
    if traditional:
        text = traditional_to_simplified(text)
    if punctuation:
        text = normalize_punctuation(text)
    if max_repeat is not None:
        text = squeeze_repeats(text, max_repeat)
    return text
