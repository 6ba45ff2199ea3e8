"""``ADDRESS``: mainland postal addresses, province to room (``上海市浦东新区张江路123弄4号``).

A chain of administrative levels (province → city → district → town) and street parts (road, house number,
complex, building, unit, room) is parsed from each plausible start (a province name, a jieba place word, a word
ending like a place, or the word after ``寄到``/``地址``), and kept when it is detailed enough to be a postal address
rather than a place name: a street with a number or a unit after an administrative level or a cue, or three
administrative levels.
"""

from __future__ import annotations

import re

from presidio_analyzer import LocalRecognizer, RecognizerResult

import modelyard.privacy.lexicon as lx
from modelyard.privacy.names import _CJK, _cue_before, _result, _tokens

_PROVINCE = "|".join(sorted(lx.CN_PROVINCES, key=len, reverse=True))
_NAME = f"[{_CJK}]"
_ALNUM = f"[{_CJK}A-Za-z0-9]"
_NUM = "[0-9一二三四五六七八九十百零〇]"
_ROAD = "(?:大街|大道|胡同|公路|路|街|道|巷|弄|里|村|屯)"
_ROAD_LOOSE = "(?:大街|大道|胡同|公路|路|街|巷|弄)"  # without a house number after it: not 里/道/村 ("几天里")
_SECTION = f"(?:[东西南北中]?{_NUM}+(?:段|巷|弄|条|组|排))?"
_LEVELS = (
    ("province", re.compile(f"(?:{_PROVINCE}|{_NAME}{{2,7}}?(?:省|自治区|特别行政区))")),
    ("city", re.compile(f"{_NAME}{{1,6}}?(?:市|自治州|地区|盟)")),
    ("district", re.compile(f"{_NAME}{{1,6}}?(?:新区|区|县|旗|市)")),
    ("town", re.compile(f"{_NAME}{{1,6}}?(?:街道|镇|乡|开发区|高新区|工业园|科技园|园区)")),
    (
        "road",
        re.compile(f"(?:{_NAME}{{1,10}}{_ROAD}{_SECTION}(?={_NUM}|[A-Za-z])|{_ALNUM}{{1,10}}?{_ROAD_LOOSE}{_SECTION})"),
    ),
    ("number", re.compile(f"{_NUM}+(?:[-之]{_NUM}+)?(?:号院|号|弄|栋|幢|组)")),
    (
        "complex",
        re.compile(
            f"{_ALNUM}{{1,12}}?(?:小区|花园|大厦|公寓|广场|中心|家园|新村|社区|大楼|公馆|写字楼|商场|酒店|苑|园|城|院|府|庭|湾)"
        ),
    ),
)
_COMPLEX_TAIL = re.compile("(?:小区|花园|大厦|公寓|广场|中心|家园|新村|社区|大楼|公馆|写字楼)")
_UNIT = re.compile(
    f"(?:[A-Za-z]?{_NUM}+[A-Za-z]?|[A-Za-z])(?:号楼|栋|幢|座|单元|层|楼|室|号房|房|户|号|门|区)"
    f"|(?<=[栋幢座单元层楼])[0-9]{{2,5}}|[0-9]{{1,3}}-[0-9]{{1,3}}(?:-[0-9]{{2,5}})?"
)
_START_SUFFIX = tuple("省市区县镇乡旗州盟路街道巷弄村园城苑") + ("大厦", "广场", "中心", "小区")
_STOP_TAGS = ("v", "p", "r", "d", "c", "u", "x", "m", "q", "a", "t", "f", "y", "e", "o")


class ChineseAddressRecognizer(LocalRecognizer):
    """``ADDRESS``: a mainland postal address, province to room (``上海市浦东新区张江路123弄4号``)."""

    def __init__(self, language: str) -> None:
        super().__init__(supported_entities=["ADDRESS"], name="zh_address", supported_language=language)

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: ANN001, ANN201 - Presidio's signature
        toks = _tokens(nlp_artifacts)
        if not toks or not any(re.match(f"[{_CJK}]", w) for w, _, _ in toks):
            return []
        out: list[RecognizerResult] = []
        covered = 0
        for word, flag, start in toks:
            if start < covered or not re.match(f"[{_CJK}A-Za-z]", word):
                continue
            province = re.match(_PROVINCE, text[start:]) is not None
            proper = flag.startswith(("ns", "nr", "nt", "nz")) or word.endswith(_START_SUFFIX)
            cue = _cue_before(text, start, lx.CN_ADDRESS_CUES)
            if not (province or proper or (cue and not flag.startswith(_STOP_TAGS))):
                continue
            parsed = _parse_address(text, start)
            if parsed is None:
                continue
            end, levels, units = parsed
            score = _address_score(levels, units, cue)
            if score:
                out.append(_result("ADDRESS", start, end, score, self))
                covered = end
        return out


def _parse_address(text: str, start: int) -> tuple[int, list[str], int] | None:
    pos, levels = start, []
    for name, pattern in _LEVELS:
        m = pattern.match(text, pos)
        if m is None:
            continue
        if name in ("city", "district") and levels and levels[-1] in ("road", "number", "complex"):
            continue
        levels.append(name)
        pos = m.end()
        if name == "complex":  # 绿城|小区: the lazy match stopped at a shorter ending
            longer = _COMPLEX_TAIL.match(text, pos)
            pos = longer.end() if longer else pos
    units = 0
    while True:
        m = _UNIT.match(text, pos)
        if m is None or m.end() == pos:
            break
        units += 1
        pos = m.end()
    return (pos, levels, units) if levels or units else None


def _address_score(levels: list[str], units: int, cue: bool) -> float:
    admin = sum(level in ("province", "city", "district", "town") for level in levels)
    road, number, complex_ = "road" in levels, "number" in levels, "complex" in levels
    street = (road and (number or units)) or ((number or complex_) and units)
    if street and (admin or cue):
        return 0.9
    if admin >= 3 or (admin >= 2 and (road or complex_ or units)):
        return 0.85
    if road and number and units:
        return 0.7
    if road and number:
        return 0.6
    return 0.0
