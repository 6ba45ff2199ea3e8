"""Presidio pattern recognizers for the structured types: IDs, cards, phones, e-mail, IP, credentials, passports.

Each is a :class:`presidio_analyzer.PatternRecognizer`: a regex proposes, a validator from :mod:`.checks` decides
(Presidio gives a validated match the top score and drops a failed one), and cue words read from the raw text
just before the match settle what a checksum cannot: ``订单号 6222…`` is an order number, ``tel 02112345678`` a
landline. Patterns are compiled once per recognizer (Presidio caches them) and recognizers are built once per
engine (:func:`modelyard.privacy.engine.get_engine`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import phonenumbers
import regex
from presidio_analyzer import Pattern, PatternRecognizer, RecognizerResult

import modelyard.privacy.checks as checks
from modelyard.privacy.lexicon import phrases

CUE_SCORE = 0.85
_FLAGS = regex.UNICODE | regex.MULTILINE
_ENHANCED = RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY

# Cue words (lower case; "_" joins a phrase) looked for in the characters just before a match.
PHONE_CUES = phrases(
    "电话 手机 座机 联系方式 致电 来电 拨打 打 热线 tel phone call fax mobile cell contact reach text_me whatsapp 号码"
)
NUMBER_BLOCKS = phrases(
    "订单 单号 运单 快递单 物流 编号 流水 交易号 工单 批次 序列号 型号 货号 发票 order "
    "tracking invoice ref sku serial batch ticket case_# "
    "case_no isbn model part_no item_# item_no "
    "confirmation imei 串号"
)
CARD_CUES = phrases(
    "卡号 银行卡 信用卡 借记卡 储蓄卡 卡 账号 帐号 账户 card account acct visa mastercard amex unionpay 银联 iban bank"
)
ID_CUES = phrases("身份证 证件 身份 id_number id_card id_no identity")
VERSION_BLOCKS = phrases("version ver 版本 固件 firmware build release v oid")
PASSPORT_CUES = phrases("passport 护照 travel_document 旅行证件")


def _nearest(before: str, cues: Iterable[str]) -> int:
    """How far back (in characters) the nearest of ``cues`` ends in ``before``; -1 when none occurs."""
    best = -1
    for cue in cues:
        i = before.rfind(cue)
        while (
            i >= 0
            and cue[0].isascii()
            and (
                (i > 0 and before[i - 1].isascii() and before[i - 1].isalpha())
                or (i + len(cue) < len(before) and before[i + len(cue)].isascii() and before[i + len(cue)].isalpha())
            )
        ):  # an English cue counts as a whole word only ("v" is not the one in "server")
            i = before.rfind(cue, 0, i)
        if i >= 0:
            gap = len(before) - (i + len(cue))
            if best < 0 or gap < best:
                best = gap
    return best


class CheckedPatternRecognizer(PatternRecognizer):
    """A pattern recognizer with a validator and cue words read from the raw text before each match.

    Args:
        entity: The entity type (``PHONE``, ``CN_ID`` …).
        name: The recognizer's name (in Presidio's explanations).
        language: The Presidio language key of the engine.
        patterns: ``(name, regex, score)`` triples.
        validator: ``matched text → bool``; ``None`` keeps the pattern's own score.
        cues: Words that support the match: the score becomes at least :data:`CUE_SCORE`.
        blocks: Words that rule it out (``订单号``, ``version``) — unless a supporting cue is nearer.
        need_cue: Keep a match only when a supporting cue is near (contiguous landlines, other passports).
        window: How many characters before the match are searched for cues.
    """

    def __init__(
        self,
        entity: str,
        name: str,
        language: str,
        patterns: list[tuple[str, str, float]],
        *,
        validator: Callable[[str], bool] | None = None,
        cues: tuple[str, ...] = (),
        blocks: tuple[str, ...] = (),
        need_cue: bool = False,
        window: int = 16,
    ) -> None:
        self._validator = validator
        self._cues, self._blocks, self._need_cue, self._window = cues, blocks, need_cue, window
        super().__init__(
            supported_entity=entity,
            name=name,
            supported_language=language,
            patterns=[Pattern(n, r, s) for n, r, s in patterns],
            global_regex_flags=_FLAGS,
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        return None if self._validator is None else self._validator(pattern_text)

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: ANN001, ANN201 - Presidio's
        kept = []
        for res in super().analyze(text, entities, nlp_artifacts, regex_flags):
            before = text[max(0, res.start - self._window) : res.start].lower()
            cue = _nearest(before, self._cues) if self._cues else -1
            block = _nearest(before, self._blocks) if self._blocks else -1
            if block >= 0 and (cue < 0 or block < cue):
                continue
            if cue >= 0:
                res.score = max(res.score, CUE_SCORE)
            elif self._need_cue:
                continue
            res.recognition_metadata[_ENHANCED] = True  # context is settled here, not by Presidio's lemma enhancer
            res.recognition_metadata["cue"] = cue >= 0
            kept.append(res)
        return kept


def _valid_url_credentials(text: str) -> bool:
    userinfo = text.split("://", 1)[1].split("@", 1)[0]
    user, _, password = userinfo.partition(":")
    return bool(user) and bool(password)


def _possible_phone(region: str | None) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            return False
        return phonenumbers.is_possible_number(number) and len(set(str(number.national_number))) > 2

    return check


def _en_national_phone(text: str) -> bool:
    """A national number written with a leading 0 (UK, Ireland, Australia, New Zealand, India …)."""
    return any(_possible_phone(region)(text) for region in ("GB", "AU", "IE", "NZ", "IN"))


# Numbers stand alone: not inside a longer run of letters/digits, not the tail of a date (2024-06-03), not a
# clock time (14:00).
_NO_LEFT = r"(?<![0-9A-Za-z_+]|\d[-/.])"
_NO_RIGHT = r"(?![0-9A-Za-z_]|:\d)"
_SEP = r"[ \-\u2010-\u2015]"  # space, hyphen and the dash family
_EXT = r"(?:\s?(?:x|ext\.?|#)\s?\d{1,5})?"  # an extension: x632, ext. 12


def structured_recognizers(language: str, *, chinese: bool, english: bool) -> list[PatternRecognizer]:
    """The structured recognizers for an engine: shared ones always, mainland ones if ``chinese``, English phone
    formats if ``english``."""
    cn_prefix = rf"(?:(?:\+|00)86{_SEP}?|[(（]\+?86[)）]{_SEP}?)"
    recs: list[PatternRecognizer] = [
        CheckedPatternRecognizer(
            "EMAIL",
            "email",
            language,
            [
                (
                    "email",
                    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                    r"[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])",
                    0.95,
                )
            ],
            validator=lambda t: ".." not in t and not t.split("@")[0].endswith("."),
        ),
        CheckedPatternRecognizer(
            "URL_CREDENTIALS",
            "url_credentials",
            language,
            [
                (
                    "url_userinfo",
                    r"(?<![A-Za-z0-9])[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s:/@<>\"'，。、；）]+:[^\s/@<>\"'，。、；）]+@"
                    r"[^\s/?#<>\"'，。、；）]+(?:[/?#][^\s<>\"'，。、；）]*)?(?<![.,;:!?)\]])",
                    0.9,
                )
            ],
            validator=_valid_url_credentials,
        ),
        CheckedPatternRecognizer(
            "IP",
            "ipv4",
            language,
            [("ipv4", r"(?<![0-9A-Za-z.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)(?![A-Za-z])", 0.9)],
            validator=checks.valid_ipv4,
            blocks=VERSION_BLOCKS,
            window=12,
        ),
        CheckedPatternRecognizer(
            "IP",
            "ipv6",
            language,
            [
                (
                    "ipv6",
                    r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?"
                    r"(?![0-9A-Za-z:])",
                    0.9,
                )
            ],
            validator=checks.valid_ipv6,
        ),
        CheckedPatternRecognizer(
            "BANK_CARD",
            "bank_card",
            language,
            [
                ("grouped", rf"{_NO_LEFT}\d{{4}}(?:{_SEP}?\d{{4}}){{3}}(?:{_SEP}?\d{{1,3}})?{_NO_RIGHT}", 0.5),
                ("six_then_rest", rf"{_NO_LEFT}\d{{6}}{_SEP}\d{{10,13}}{_NO_RIGHT}", 0.5),
                ("amex_diners", rf"{_NO_LEFT}\d{{4}}{_SEP}?\d{{6}}{_SEP}?\d{{4,5}}{_NO_RIGHT}", 0.5),
            ],
            validator=checks.valid_bank_card,
            cues=CARD_CUES,
            blocks=NUMBER_BLOCKS,
            window=20,
        ),
        CheckedPatternRecognizer(
            "PHONE",
            "international_phone",
            language,
            [("plus", rf"{_NO_LEFT}(?:\+|00)[1-9]\d{{0,2}}(?:{_SEP}?\(?\d{{1,5}}\)?){{1,5}}{_NO_RIGHT}", 0.6)],
            validator=_possible_phone(None),
            blocks=NUMBER_BLOCKS,
        ),
    ]
    if chinese:
        recs += [
            CheckedPatternRecognizer(
                "CN_ID",
                "cn_resident_id",
                language,
                [("id18", rf"{_NO_LEFT}[1-9]\d{{5}}{_SEP}?\d{{4}}{_SEP}?\d{{4}}{_SEP}?\d{{3}}[0-9Xx]{_NO_RIGHT}", 0.5)],
                validator=checks.valid_cn_id,
                cues=ID_CUES,
            ),
            CheckedPatternRecognizer(
                "PHONE",
                "cn_mobile",
                language,
                [
                    ("mobile", rf"{_NO_LEFT}{cn_prefix}?1[3-9]\d{_SEP}?\d{{4}}{_SEP}?\d{{4}}{_NO_RIGHT}", 0.5),
                    ("mobile_4_3_4", rf"{_NO_LEFT}{cn_prefix}?1[3-9]\d\d{_SEP}\d{{3}}{_SEP}\d{{4}}{_NO_RIGHT}", 0.5),
                ],
                validator=checks.valid_cn_mobile,
                cues=PHONE_CUES,
                blocks=NUMBER_BLOCKS,
            ),
            CheckedPatternRecognizer(
                "PHONE",
                "cn_landline",
                language,
                [
                    (
                        "area_code",
                        rf"{_NO_LEFT}{cn_prefix}?(?:[(（]0?\d{{2,3}}[)）]{_SEP}?|0\d{{2,3}}{_SEP}|(?<=86{_SEP}?)[1-9]\d{{1,2}}"
                        rf"{_SEP})[2-9]\d{{2,3}}{_SEP}?\d{{4}}(?:{_SEP}?(?:转|ext\.?|x){_SEP}?\d{{1,5}})?{_NO_RIGHT}",
                        0.5,
                    )
                ],
                validator=checks.valid_cn_landline,
                cues=PHONE_CUES,
                blocks=NUMBER_BLOCKS,
            ),
            CheckedPatternRecognizer(
                "PHONE",
                "cn_landline_plain",
                language,
                [("contiguous", rf"{_NO_LEFT}0\d{{9,11}}{_NO_RIGHT}", 0.4)],
                validator=checks.valid_cn_landline,
                cues=PHONE_CUES,
                blocks=NUMBER_BLOCKS,
                need_cue=True,
                window=12,
            ),
            CheckedPatternRecognizer(
                "PASSPORT",
                "cn_passport",
                language,
                [("cn_passport", r"(?<![0-9A-Za-z])(?:[EG]\d{8}|E[A-HJ-NP-Z]\d{7})(?![0-9A-Za-z])", 0.6)],
                validator=checks.valid_cn_passport,
                blocks=NUMBER_BLOCKS,
            ),
        ]
    recs.append(
        CheckedPatternRecognizer(
            "PASSPORT",
            "passport_with_cue",
            language,
            [("passport", r"(?<![0-9A-Za-z])[A-Z]{0,2}\d{6,9}[A-Z]?(?![0-9A-Za-z])", 0.3)],
            cues=PASSPORT_CUES,
            need_cue=True,
            window=30,
        )
    )
    if english:
        recs += [
            CheckedPatternRecognizer(
                "PHONE",
                "nanp_phone",
                language,
                [
                    (
                        "nanp",
                        rf"{_NO_LEFT}(?:(?:\+|001{_SEP}?)?1{_SEP}?|001{_SEP})?(?:\(\d{{3}}\){_SEP}?|\d{{3}}[ .\-])"
                        rf"\d{{3}}[ .\-]\d{{4}}{_EXT}{_NO_RIGHT}",
                        0.75,
                    ),
                    ("nanp_plain", rf"{_NO_LEFT}\+1{_SEP}?\d{{10}}{_EXT}{_NO_RIGHT}", 0.75),
                ],
                validator=lambda t: checks.digits_of(t)[-10] in "23456789" and len(set(checks.digits_of(t))) > 2,
                cues=PHONE_CUES,
                blocks=NUMBER_BLOCKS,
            ),
            CheckedPatternRecognizer(
                "PHONE",
                "nanp_contiguous",
                language,
                [("ten_digits", rf"{_NO_LEFT}[2-9]\d{{9}}{_EXT}{_NO_RIGHT}", 0.4)],
                validator=lambda t: len(set(checks.digits_of(t)[:10])) > 2,
                cues=PHONE_CUES,
                blocks=NUMBER_BLOCKS,
                need_cue=True,
                window=16,
            ),
            CheckedPatternRecognizer(
                "PHONE",
                "national_phone",
                language,
                [
                    (
                        "trunk_zero",
                        rf"{_NO_LEFT}(?:\(0\d{{1,4}}\)|0\d{{1,4}})(?:{_SEP}?\d{{2,4}}){{2,3}}{_NO_RIGHT}",
                        0.6,
                    )
                ],
                validator=_en_national_phone,
                cues=PHONE_CUES,
                blocks=NUMBER_BLOCKS,
            ),
        ]
    return recs
