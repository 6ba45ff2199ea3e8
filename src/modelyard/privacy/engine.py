"""The PII engine: Presidio's analyzer with modelyard's recognizers, and redaction through Presidio's anonymizer.

``PiiEngine(lang).find(text)`` lists the entities; ``redact(text, mode)`` replaces them with typed placeholders
(``<PHONE>``), synthetic values of the same type, or salted HMAC tokens (``<PHONE:3f9a1c2b>``). One engine per
language is built on first use and cached (:func:`get_engine`): regexes compile once, jieba loads once.

Languages: ``en`` (English phone formats and names, plus the shared types), ``zh`` (mainland IDs, phones,
passports, addresses and Chinese names, plus the shared types), ``auto`` (both). ``auto`` runs both sets on every
text rather than guessing a language from the share of Chinese characters: support tickets and chats mix them
(``客服Tom``, ``+1 phone numbers in a Chinese review``), and the Chinese recognizers cost nothing on a text with no
Chinese character (they return before any work), so guessing would only lose entities.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from modelyard.errors import ModelyardError

ENTITY_TYPES = ("PHONE", "CN_ID", "BANK_CARD", "EMAIL", "IP", "URL_CREDENTIALS", "PASSPORT", "ADDRESS", "PERSON")
LANGS = ("auto", "en", "zh")
MODES = ("mask", "replace", "hash")
THRESHOLD = 0.5
# When two entities overlap and score alike, the earlier type wins (a URL holds an e-mail-like part; an 18-digit
# resident ID can also pass a card's Luhn check).
_PRIORITY = {
    t: i
    for i, t in enumerate(
        ("URL_CREDENTIALS", "EMAIL", "CN_ID", "BANK_CARD", "PASSPORT", "IP", "PHONE", "ADDRESS", "PERSON")
    )
}


_HALFWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


@dataclass(frozen=True)
class Entity:
    """One detected entity: its type, character span in the text, the text itself, and the recognizer's score."""

    type: str
    start: int
    end: int
    text: str
    score: float


class PiiEngine:
    """Detects and redacts personal data in English and Chinese text.

    Args:
        lang: ``auto`` (English and Chinese recognizers), ``en`` or ``zh``.
        threshold: The lowest recognizer score kept (0–1).

    Example:
        >>> PiiEngine("zh").redact("电话13800138000")
        '电话<PHONE>'
    """

    def __init__(self, lang: str = "auto", threshold: float = THRESHOLD) -> None:
        if lang not in LANGS:
            raise ModelyardError(f"unknown PII language '{lang}'; use one of {', '.join(LANGS)}")
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_anonymizer import AnonymizerEngine

        from modelyard.privacy.address import ChineseAddressRecognizer
        from modelyard.privacy.names import ChineseNameRecognizer, EnglishNameRecognizer
        from modelyard.privacy.nlp import LightNlpEngine
        from modelyard.privacy.recognizers import structured_recognizers

        self.lang = lang
        self.threshold = threshold
        chinese, english = lang in ("auto", "zh"), lang in ("auto", "en")
        recognizers = structured_recognizers(lang, chinese=chinese, english=english)
        if chinese:
            recognizers += [ChineseAddressRecognizer(lang), ChineseNameRecognizer(lang)]
        recognizers.append(EnglishNameRecognizer(lang))  # also English names inside Chinese text (客服Tom)
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[lang])
        self._analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=LightNlpEngine([lang]),
            supported_languages=[lang],
            default_score_threshold=threshold,
        )
        self._anonymizer = AnonymizerEngine()
        if chinese:
            self.find("联系人王小明")  # loads jieba's dictionary now rather than on the first real text

    def find(self, text: str) -> list[Entity]:
        """The entities in ``text``, in order, without overlaps."""
        if not text or not text.strip():
            return []
        # Full-width letters and digits (１３８…, common in Chinese input) read as ASCII; one character each, so
        # the offsets hold for the original text.
        results = self._analyzer.analyze(
            text=text.translate(_HALFWIDTH), language=self.lang, score_threshold=self.threshold
        )
        ranked = sorted(
            results,
            key=lambda r: (
                -round(r.score, 2),
                -bool((r.recognition_metadata or {}).get("cue")),
                -(r.end - r.start),
                _PRIORITY.get(r.entity_type, 99),
                r.start,
            ),
        )
        kept: list = []
        for r in ranked:
            if all(r.end <= k.start or r.start >= k.end for k in kept):
                kept.append(r)
        kept.sort(key=lambda r: r.start)
        return [Entity(r.entity_type, r.start, r.end, text[r.start : r.end], round(float(r.score), 3)) for r in kept]

    def redact(self, text: str, mode: str = "mask", salt: str | None = None) -> str:
        """``text`` with every entity replaced (see :meth:`redact_found`)."""
        return self.redact_found(text, mode, salt)[0]

    def redact_found(
        self, text: str, mode: str = "mask", salt: str | None = None, entities: Sequence[Entity] | None = None
    ) -> tuple[str, list[Entity]]:
        """Redact ``text``; returns the new text and the entities replaced.

        Args:
            text: The text.
            mode: ``mask`` (``<PHONE>``), ``replace`` (a synthetic value of the type) or ``hash``
                (``<PHONE:` + 8 hex digits of HMAC-SHA256(salt, value) + ``>``).
            salt: The secret of ``hash`` (required there) and the seed of ``replace``.
            entities: Already found entities of ``text`` (else :meth:`find` is called).
        """
        ops = _operators(mode, salt)
        found = list(self.find(text) if entities is None else entities)
        if not found:
            return text, found
        from presidio_anonymizer.entities import ConflictResolutionStrategy, RecognizerResult

        result = self._anonymizer.anonymize(
            text=text,
            analyzer_results=[RecognizerResult(e.type, e.start, e.end, e.score) for e in found],
            operators={t: ops(t) for t in {e.type for e in found}},
            conflict_resolution=ConflictResolutionStrategy.REMOVE_INTERSECTIONS,
            merge_entities_with_spaces=False,
        )
        return result.text, found


def _normalized(kind: str, value: str) -> str:
    """The value hashed: digits for numbers (``138 0013 8000`` = ``13800138000``), lower case for e-mail."""
    if kind in ("PHONE", "CN_ID", "BANK_CARD"):
        return "".join(c for c in value.upper() if c.isdigit() or c == "X")
    return value.lower() if kind == "EMAIL" else value.strip()


def hash_token(kind: str, value: str, salt: str) -> str:
    """``<KIND:xxxxxxxx>``: the first 8 hex digits of HMAC-SHA256(salt, kind + normalised value)."""
    digest = hmac.new(salt.encode(), f"{kind}\0{_normalized(kind, value)}".encode(), hashlib.sha256).hexdigest()
    return f"<{kind}:{digest[:8]}>"


def _operators(mode: str, salt: str | None):  # noqa: ANN202 - returns entity type → presidio OperatorConfig
    from presidio_anonymizer.entities import OperatorConfig

    from modelyard.privacy.fake import fake_value

    if mode == "mask":
        return lambda kind: OperatorConfig("replace", {"new_value": f"<{kind}>"})
    if mode == "hash":
        if not salt:
            raise ModelyardError(
                "hash mode needs a secret salt (else a phone number's token can be found by trying every number); "
                "pass salt=… or, on the command line, --salt-env VAR naming an environment variable that holds it"
            )
        return lambda kind: OperatorConfig("custom", {"lambda": lambda v, k=kind: hash_token(k, v, salt)})
    if mode == "replace":
        return lambda kind: OperatorConfig("custom", {"lambda": lambda v, k=kind: fake_value(k, v, salt or "")})
    raise ModelyardError(f"unknown redaction mode '{mode}'; use one of {', '.join(MODES)}")


_engines: dict[str, PiiEngine] = {}
_lock = threading.Lock()


def get_engine(lang: str = "auto") -> PiiEngine:
    """The shared engine for ``lang``, built on first use (thread-safe)."""
    engine = _engines.get(lang)
    if engine is None:
        with _lock:
            engine = _engines.get(lang)
            if engine is None:
                engine = _engines[lang] = PiiEngine(lang)
    return engine


@dataclass
class RedactionSummary:
    """What a batch redaction found: entities per type and how many texts had at least one."""

    texts: int = 0
    texts_with_pii: int = 0
    counts: Counter | None = None

    def as_dict(self) -> dict:
        counts = self.counts or Counter()
        return {
            "texts": self.texts,
            "texts_with_pii": self.texts_with_pii,
            "entities": int(sum(counts.values())),
            "counts": {t: int(counts[t]) for t in sorted(counts)},
        }


def redact_texts(
    texts: Iterable[str], *, lang: str = "auto", mode: str = "mask", salt: str | None = None, redact: bool = True
) -> tuple[list[str], list[list[Entity]], RedactionSummary]:
    """Find (and, when ``redact``, replace) the entities of many texts.

    Returns:
        The texts (redacted, or as given when ``redact`` is false), each text's entities, and the summary.
    """
    engine = get_engine(lang)
    _operators(mode, salt)  # a bad mode or a missing salt fails before any work
    out, found_all, counts, touched, n = [], [], Counter(), 0, 0
    for text in texts:
        n += 1
        found = engine.find(text) if isinstance(text, str) else []
        if found and redact:
            text, _ = engine.redact_found(text, mode, salt, found)
        out.append(text)
        found_all.append(found)
        counts.update(e.type for e in found)
        touched += bool(found)
    return out, found_all, RedactionSummary(texts=n, texts_with_pii=touched, counts=counts)
