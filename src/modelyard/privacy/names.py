"""``PERSON`` recognizers, Chinese and English (addresses: :mod:`modelyard.privacy.address`).

Chinese names: a surname after a cue (``联系人：王小明``, ``骑手李建国``) or
before a title (``王先生``, ``刘师傅``), a nickname (``快递员小刘``), or a
word jieba tags as a name (``nr``) or does not know (found by its HMM) that
starts with a common surname and is made of given-name characters.
English names: capitalised words after a title (``Mr.``) or a cue (``my name is``, ``the driver``), or a listed
first name (Faker's lists, see :mod:`.lexicon`), alone or followed by a surname.
"""

from __future__ import annotations

import re

from presidio_analyzer import LocalRecognizer, RecognizerResult

import modelyard.privacy.lexicon as lx
from modelyard.privacy.nlp import word_freq

_CJK = "\u3400-\u4dbf\u4e00-\u9fff"
_ENHANCED = RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY
_ADDRESS_ENDINGS = tuple("路街道巷弄区市县镇乡村省号楼栋室院园城苑")
_CUE_GAP = re.compile(r"[：:，,\s]*(?:是|为|叫|姓)?[：:\s]*$")
_NICK = ("小", "老", "阿")


def _result(entity: str, start: int, end: int, score: float, rec: LocalRecognizer) -> RecognizerResult:
    return RecognizerResult(
        entity,
        start,
        end,
        score,
        recognition_metadata={
            RecognizerResult.RECOGNIZER_NAME_KEY: rec.name,
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: rec.id,
            _ENHANCED: True,
        },
    )


def _tokens(nlp_artifacts) -> list[tuple[str, str, int]]:  # noqa: ANN001 - presidio's NlpArtifacts
    if nlp_artifacts is None or nlp_artifacts.tokens is None:
        return []
    return [(t.text, t.tag_, t.idx) for t in nlp_artifacts.tokens]


def _cue_before(text: str, start: int, cues: tuple[str, ...]) -> bool:
    before = text[max(0, start - 8) : start]
    gap = _CUE_GAP.search(before)
    head = before[: gap.start()] if gap else before
    return head.endswith(cues)


def _surname_len(word: str, common_only: bool) -> int:
    """Length of the surname ``word`` starts with (2 for 欧阳…), 0 when it starts with none."""
    if word[:2] in lx.CN_COMPOUND_SURNAMES:
        return 2
    return 1 if word[:1] in (lx.CN_COMMON_SURNAMES if common_only else lx.CN_SURNAMES) else 0


class ChineseNameRecognizer(LocalRecognizer):
    """``PERSON`` in Chinese text: a surname after a cue or before a title, or a word jieba tags ``nr``.

    The given name after a surname is one or two characters; it stops early at a character that is rarely part of
    a name when jieba also puts a word boundary before it (``张伟|说``), so ``王小明`` keeps its ``明``.
    """

    def __init__(self, language: str) -> None:
        super().__init__(supported_entities=["PERSON"], name="zh_person", supported_language=language)

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: ANN001, ANN201 - Presidio's signature
        toks = _tokens(nlp_artifacts)
        if not toks or not _HAS_CJK.search(text):
            return []
        bounds = {start: (word, flag) for word, flag, start in toks}
        spans: dict[tuple[int, int], float] = {}
        for m in _CN_CUE.finditer(text):  # 联系人：王小明, 骑手李建国, 户名诸葛磊倩, 快递员小刘
            if m.end() not in bounds and _inside_known_word(bounds, m.end()):
                continue  # the cue is part of a longer word (联系方式)
            span = _name_after(text, m.end(), bounds)
            if span:
                spans[span] = 0.85
        for m in _CN_TITLE.finditer(text):  # 王先生, 白颖女士, 刘师傅 (a title that starts a word: not 班主任)
            if m.start() not in bounds and not _glued_title(bounds, m.start(), m.end()):
                continue
            span = _name_before(text, m.start(), bounds)
            if span:
                spans[span] = 0.85
        given_chars = lx.cn_given_chars()
        for i, (word, flag, start) in enumerate(toks):  # jieba's person names (nr), or surname + given name words
            if not _HAS_CJK.fullmatch(word[0]) or word in lx.CN_NOT_NAMES:
                continue
            if not flag.startswith(("nr", "un")):
                # a common surname jieba left on its own, then a given name (林|建平, 张|淑珍)
                if len(word) == 1 and word in lx.CN_COMMON_SURNAMES and i + 1 < len(toks):
                    nxt, nflag, _ = toks[i + 1]
                    if (
                        1 <= len(nxt) <= 2
                        and nflag.startswith(("nr", "n", "j", "a", "un"))
                        and all(c in given_chars for c in nxt)
                        and nxt not in lx.CN_NOT_NAMES
                        and not any(start < e and s < start + 1 + len(nxt) for s, e in spans)
                    ):
                        spans[(start, start + 1 + len(nxt))] = 0.6
                continue
            n = _surname_len(word, common_only=False)
            if not n:
                continue
            end = start + len(word)
            if len(word) == n and i + 1 < len(toks):  # 胡|红梅, 欧阳|娜娜: both tagged as names
                nxt, nflag, _ = toks[i + 1]
                if nflag.startswith(("nr", "un")) and 1 <= len(nxt) <= 2 and all(_HAS_CJK.fullmatch(c) for c in nxt):
                    end += len(nxt)
            if not n or not 2 <= end - start <= 4 or text[start:end].endswith(_ADDRESS_ENDINGS + lx.CN_NAME_SUFFIXES):
                continue
            name = text[start:end]
            if not all(c in given_chars for c in name[n:]):
                continue
            if (name != word or word_freq(word) == 0) and _surname_len(name, common_only=True) and len(name) > 1:
                score = 0.7  # not in jieba's dictionary: found by its HMM or by joining two name-tagged words
            elif _surname_len(word, common_only=True) and word not in lx.CN_NOT_NAMES:
                score = 0.6  # a known name (celebrities, common given names)
            else:
                continue
            if not any(start < e and s < end for s, e in spans):
                spans[(start, end)] = score
        return [_result("PERSON", s, e, score, self) for (s, e), score in spans.items()]


_HAS_CJK = re.compile(f"[{_CJK}]")
_CN_CUE = re.compile(
    "(?:(?:" + "|".join(sorted(lx.CN_NAME_CUES, key=len, reverse=True)) + r")[：:\s]*(?:是|为|叫|姓)?[：:\s]*"
    "|(?:" + "|".join(sorted(lx.CN_NAME_LABELS, key=len, reverse=True)) + r")[：:，,\s]*(?:是|为|叫|姓)?[：:\s]*)"
)
_CN_TITLE = re.compile("(?:" + "|".join(sorted(lx.CN_NAME_SUFFIXES, key=len, reverse=True)) + ")")
# Characters that seldom end a given name: when jieba starts a word at one of them, the name ends before it.
_NOT_GIVEN = frozenset(
    "说讲问答送打来去到给帮要想让叫回发买卖做办看听找拿放催骂收寄取接态服您你我他她它们这那先女小老师经总同电"
    "手地邮号今昨明后前上下里外中每一二三四五六七八九十零年月日天点分元块个件次的了是在和与很也都就还又把被对"
    "向跟及或而但却才再已正刚太最更挺真好不没别吗呢吧啊呀哦嘛啦"
)
_NEVER_FIRST = frozenset("的了是在和与很也都就还说您你我他她们这那每先女")


def _given(text: str, pos: int, bounds: dict[int, tuple[str, str]], most: int = 2) -> int:
    """How many characters from ``pos`` make a given name (0–``most``)."""
    n = 0
    while n < most and pos + n < len(text) and _HAS_CJK.fullmatch(text[pos + n]):
        ch = text[pos + n]
        if n == 0 and ch in _NEVER_FIRST:
            break
        # a name character, or one jieba glued to the name and that rarely follows one (王小|明 vs 张伟|说)
        if ch not in lx.cn_given_chars() and (ch in _NOT_GIVEN or pos + n in bounds):
            break
        if n and text.startswith(lx.CN_NAME_SUFFIXES, pos + n):
            break
        n += 1
    return n


def _inside_known_word(bounds: dict[int, tuple[str, str]], pos: int) -> bool:
    """``pos`` falls inside a word of jieba's dictionary (not inside an unknown word such as 员孙涛)."""
    for start in range(pos - 1, max(-1, pos - 8), -1):
        if start in bounds:
            word = bounds[start][0]
            return start + len(word) > pos and word_freq(word) > 0
    return False


def _glued_title(bounds: dict[int, tuple[str, str]], start: int, end: int) -> bool:
    """jieba made one word of a surname and the title at ``start:end`` (李女士, 王先生)."""
    for pos in range(start - 1, max(-1, start - 4), -1):
        if pos in bounds:
            word = bounds[pos][0]
            return pos + len(word) == end and _surname_len(word, common_only=False) > 0
    return False


def _common_word(bounds: dict[int, tuple[str, str]], pos: int) -> bool:
    """jieba starts a frequent non-name word of two or more characters at ``pos`` (高中生, 明天)."""
    word, flag = bounds.get(pos, ("", ""))
    if word in lx.CN_COMPOUND_SURNAMES:
        return False
    return len(word) >= 2 and not flag.startswith("nr") and word_freq(word) >= 50


def _name_after(text: str, pos: int, bounds: dict[int, tuple[str, str]]) -> tuple[int, int] | None:
    if text[pos : pos + 1] in _NICK and _surname_len(text[pos + 1 : pos + 3], common_only=True) == 1:
        return pos, pos + 2  # 小刘, 老陈
    word, flag = bounds.get(pos, ("", ""))
    named = flag.startswith(("nr", "un")) and 2 <= len(word) <= 4 and _surname_len(word, common_only=False)
    if named and all(_HAS_CJK.fullmatch(c) for c in word):
        return pos, pos + len(word)  # after a cue, jieba's own name word counts whole (张三, 李四, 诸葛亮)
    n = _surname_len(text[pos : pos + 2], common_only=False)
    if not n or _common_word(bounds, pos):
        return None
    if n == 1 and text[pos] not in lx.CN_COMMON_SURNAMES and not bounds.get(pos, ("", ""))[1].startswith(("nr", "un")):
        return None  # a rare surname (付, 都, 来) counts only where jieba also reads a name
    given = _given(text, pos + n, bounds)
    if given == 0:
        return (pos, pos + n) if text.startswith(lx.CN_NAME_SUFFIXES, pos + n) else None
    return pos, pos + n + given


def _name_before(text: str, end: int, bounds: dict[int, tuple[str, str]]) -> tuple[int, int] | None:
    """The name right before a title at ``end``: the longest surname + given name that fits, else a common surname."""
    for length in (4, 3, 2):
        start = end - length
        head = text[max(0, start) : end]
        if start < 0 or start not in bounds or not all(_HAS_CJK.fullmatch(c) for c in head):
            continue
        n = _surname_len(head, common_only=False)
        if not n or (length == 4 and n != 2) or _common_word(bounds, start):
            continue
        word, flag = bounds[start]
        if start + n in bounds and len(word) == n and not flag.startswith("nr"):
            continue  # 和|张伟先生: a word of its own before the name, not a surname
        if _given(text, start + n, bounds, length - n) == length - n:
            return start, end
    if end >= 1 and (end - 1) in bounds and _surname_len(text[end - 1], common_only=True) == 1:
        return end - 1, end
    return None


_UP, _LOW = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
_CAP = rf"(?:[A-Z]['’])?[{_UP}][{_LOW}]+(?:[A-Z][{_LOW}]+)?(?:-[{_UP}][{_LOW}]+)?"
_RUN = re.compile(rf"{_CAP}(?:[ \u00a0](?:[A-Z]\.[ \u00a0])?{_CAP}){{0,3}}")
_TITLE_BEFORE = re.compile(r"\b(?:" + "|".join(t.rstrip(".") for t in lx.EN_TITLES) + r")\.?[ \u00a0]*$")
_SENTENCE_START = re.compile(r"(?:^|[.!?。！？\n]\s*|[\"“(]\s*)$")


_EN_CUES = sorted(lx.EN_NAME_CUES, key=len, reverse=True)
_TITLES = frozenset(t.rstrip(".") for t in lx.EN_TITLES)


def _en_cue(before: str) -> str | None:
    """The cue phrase ``before`` ends with (whole words; trailing spaces and ``,:;-`` ignored), else ``None``."""
    low = before.lower().rstrip(" ,:;-—\u00a0")
    for cue in _EN_CUES:
        if low.endswith(cue) and (len(low) == len(cue) or not low[-len(cue) - 1].isalpha()):
            return cue
    return None


class EnglishNameRecognizer(LocalRecognizer):
    """``PERSON``: capitalised words after a title or cue, or a listed first name (with a surname, or alone)."""

    def __init__(self, language: str) -> None:
        super().__init__(supported_entities=["PERSON"], name="en_person", supported_language=language)

    def load(self) -> None:
        self._first, self._last = lx.english_names()

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: ANN001, ANN201 - Presidio's signature
        out = []
        for m in _RUN.finditer(text):
            words, offsets = [], []
            for w in re.finditer(r"[^ \u00a0]+", m.group()):
                words.append(w.group())
                offsets.append(m.start() + w.start())
            found = self._name_in_run(text, words, offsets)
            if found is not None:
                out.append(_result("PERSON", *found, self))
        return out

    def _name_in_run(self, text, words, offsets):  # noqa: ANN001, ANN202
        j, titled = 0, False
        while j < len(words) - 1 and (words[j].lower() in lx.EN_NAME_CUES or words[j].rstrip(".") in _TITLES):
            titled = titled or words[j].rstrip(".") in _TITLES  # "Thanks John", "Dear Mary", "Mr Linda Rodriguez"
            j += 1
        start = offsets[j]
        before = text[max(0, start - 24) : start] if j == 0 else text[max(0, start - 24) : start]
        titled = titled or _TITLE_BEFORE.search(before) is not None
        cue = _en_cue(before)
        strong = titled or cue in lx.EN_STRONG_CUES
        role = strong or cue in lx.EN_ROLE_CUES or _cue_before(text, start, lx.CN_NAME_CUES)
        name: list[str] = []
        for w in words[j : j + 3]:
            if w in lx.EN_NOT_SURNAMES or w.rstrip(".") in _TITLES or (name and w.lower() in lx.EN_NAME_CUES):
                break
            name.append(w)
        if not name:
            return None
        first = name[0]
        listed = first in self._first and first not in lx.EN_AMBIGUOUS_FIRST
        surname = len(name) >= 2 and (name[1] in self._last or name[1] in self._first or listed)
        end = offsets[j + len(name) - 1] + len(name[-1])
        one = offsets[j] + len(first)
        if strong:
            return start, end, 0.9
        if len(name) >= 2 and surname and (listed or role or first in self._first):
            return start, end, 0.85
        if listed:
            return (start, end if len(name) >= 2 else one, 0.8) if (cue or role) else (start, one, 0.6)
        if role and first not in lx.EN_AMBIGUOUS_FIRST and first.lower() not in lx.EN_NAME_CUES:
            return start, end if len(name) >= 2 else one, 0.7
        return None
