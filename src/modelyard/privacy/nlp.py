"""A Presidio NLP engine that needs no downloaded model: jieba words with part-of-speech tags, or plain word tokens.

Presidio's default engine loads a spaCy pipeline (``en_core_web_lg``), which is a download; its NER would find
English names but nothing Chinese. This engine gives Presidio the token stream its API expects (a spaCy ``Doc``
built from our own tokens, with the jieba tag of each word as ``token.tag_``) and no entities: every entity comes
from a recognizer of :mod:`modelyard.privacy`. Texts with Chinese characters are segmented by ``jieba.posseg``
(its HMM finds unknown names and tags them ``nr``); other texts by a regex, which costs microseconds.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
from spacy.tokens import Doc
from spacy.vocab import Vocab

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_TOKEN = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*|\d+|\s+|.", re.S)
_STOP = frozenset(
    ("a", "an", "the", "of", "to", "and", "or", "in", "on", "at", "for", "is", "are", "was", "were", "be", "been",
     "it", "this", "that", "with", "as", "by", "的", "了", "和", "是")
)  # fmt: skip
_jieba_lock = threading.Lock()
_pseg: Any = None


def _posseg() -> Any:
    """``jieba.posseg``, with its dictionary loaded once (quietly)."""
    global _pseg
    with _jieba_lock:
        if _pseg is None:
            import jieba
            import jieba.posseg

            jieba.setLogLevel(logging.WARNING)
            jieba.initialize()
            _pseg = jieba.posseg
    return _pseg


def word_freq(word: str) -> int:
    """How often ``word`` occurs in jieba's dictionary (0 for a word it does not know, e.g. most personal names)."""
    return int(_posseg().dt.tokenizer.FREQ.get(word, 0) or 0) if _pseg is not None else 0


def _tag(word: str, table: dict[str, str]) -> str:
    tag = table.get(word)
    if tag is not None:
        return tag
    if CJK.match(word):
        return "un"  # a word jieba's HMM put together that its dictionary lacks: most often a personal name
    return "m" if word.isdigit() else "eng" if word.isascii() and word.isalpha() else "x"


def tokenize(text: str) -> tuple[list[str], list[str]]:
    """Words covering ``text`` exactly (whitespace included) and their tags.

    Chinese text: ``jieba.lcut`` (dictionary + HMM for unknown words) and each word's part of speech from jieba's
    dictionary, ``un`` for a word it does not know. That is ten times faster than ``jieba.posseg`` with its HMM
    tagger (0.04 vs 0.4 ms a sentence) and finds the same unknown names. Other text: a regex, ``x`` tags.
    """
    if CJK.search(text):
        pseg = _posseg()
        words = pseg.dt.tokenizer.lcut(text)
        if "".join(words) == text:
            table = pseg.dt.word_tag_tab
            return words, [_tag(w, table) for w in words]
    words = _TOKEN.findall(text)
    return words, ["x"] * len(words)


class LightNlpEngine(NlpEngine):
    """Tokens (and jieba tags) for every language key it was given; no entities, no model files."""

    engine_name = "modelyard-light"
    is_available = True

    def __init__(self, languages: Iterable[str]) -> None:
        self._languages = list(languages)
        self._vocab = Vocab()
        self._loaded = False

    def load(self) -> None:
        self._loaded = True

    def is_loaded(self) -> bool:
        return self._loaded

    def process_text(self, text: str, language: str) -> NlpArtifacts:
        words, tags = tokenize(text)
        doc = Doc(self._vocab, words=words, spaces=[False] * len(words), tags=tags)
        indices = [t.idx for t in doc]
        return NlpArtifacts(
            entities=[],
            tokens=doc,
            tokens_indices=indices,
            lemmas=[w.lower() for w in words],
            nlp_engine=self,
            language=language,
            scores=[],
        )

    def process_batch(
        self, texts: Iterable[str], language: str, batch_size: int = 1, n_process: int = 1, **kwargs: Any
    ) -> Iterator[tuple[str, NlpArtifacts]]:
        for text in texts:
            yield text, self.process_text(text, language)

    def is_stopword(self, word: str, language: str) -> bool:
        return word.lower() in _STOP

    def is_punct(self, word: str, language: str) -> bool:
        return len(word) == 1 and not word.isalnum()

    def get_supported_entities(self) -> list[str]:
        return []

    def get_supported_languages(self) -> list[str]:
        return list(self._languages)
