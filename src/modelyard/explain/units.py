"""Words and CJK characters ("units") of a text, and the map from model tokens to them.

Attributions are computed per token, but a WordPiece token (``##ing``) or a ``[UNK]`` means little
to a reader. Units are what a reader sees: English (or any space-delimited script) words, single
punctuation marks, and single CJK characters, found on the *normalised* text the model receives.
Tokens are mapped to units through the fast tokenizer's ``offset_mapping``; special tokens
(``[CLS]``, ``[SEP]``, padding) map to none.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Characters that are their own unit: the CJK ideograph blocks BERT's tokenizer splits one by one
# (see ``BasicTokenizer._is_chinese_char``), plus kana, which Japanese also writes without spaces.
_CJK = (
    "\u3040-\u30ff\u31f0-\u31ff"  # hiragana, katakana, katakana extensions
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    "\U00020000-\U0002a6df\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f"
)
# One CJK character | a run of other word characters | one other non-space character (punctuation).
_UNIT = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")
_CJK_CHAR = re.compile(rf"[{_CJK}]")


def split_units(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the units of ``text``, in order.

    Example:
        >>> [("这个 great, film!"[s:e]) for s, e in split_units("这个 great, film!")]
        ['这', '个', 'great', ',', 'film', '!']
    """
    spans: list[tuple[int, int]] = []
    for m in _UNIT.finditer(text):
        s, e = m.span()
        # Combining marks (Devanagari vowel signs, a decomposed accent) are not \w in Python's re:
        # glue them to the word they modify, and glue the rest of that word after them.
        glued = _is_mark(text[s]) or (s > 0 and _is_mark(text[s - 1]) and text[s].isalnum())
        if glued and spans and spans[-1][1] == s and not _CJK_CHAR.match(text, s):
            spans[-1] = (spans[-1][0], e)
            continue
        spans.append((s, e))
    return spans


def _is_mark(char: str) -> bool:
    return unicodedata.category(char).startswith("M")


@dataclass(frozen=True)
class UnitMap:
    """How the tokens of one encoded text map to its units.

    Attributes:
        spans: ``(start, end)`` in the normalised text of every unit that has at least one token
            (units cut off by truncation are left out).
        token_unit: for every token position, the index into ``spans``, or ``-1`` for special tokens.
        truncated: whether some non-blank text was cut off by ``max_length``.
    """

    spans: list[tuple[int, int]]
    token_unit: list[int]
    truncated: bool


def map_tokens(text: str, offsets: list[tuple[int, int]], special: list[int]) -> UnitMap:
    """Group token positions by unit.

    A token belongs to the unit holding its first non-blank character (byte-level BPE offsets may
    include the leading space). A non-special token with an empty span joins the previous token's
    unit (or the next one's when it comes first).

    Args:
        text: The normalised text that was tokenized.
        offsets: ``offset_mapping`` of the encoding (one ``(start, end)`` per token).
        special: ``special_tokens_mask`` of the encoding (1 for special tokens).

    Returns:
        The :class:`UnitMap`.
    """
    spans = split_units(text)
    owner = [-1] * (len(text) + 1)
    for u, (s, e) in enumerate(spans):
        for c in range(s, e):
            owner[c] = u
    raw: list[int] = []
    for (s, e), is_special in zip(offsets, special, strict=True):
        if is_special:
            raw.append(-1)
            continue
        while s < e and text[s].isspace():
            s += 1
        raw.append(owner[s] if s < e else -2)  # -2: a non-special token without characters
    # Empty-span tokens join a neighbour.
    content = [i for i, r in enumerate(raw) if r != -1]
    last = -2
    for i in content:
        if raw[i] == -2:
            raw[i] = last
        else:
            last = raw[i]
    nxt = -2
    for i in reversed(content):
        if raw[i] == -2:
            raw[i] = nxt
        else:
            nxt = raw[i]
    used = sorted({r for r in raw if r >= 0})
    new_index = {old: new for new, old in enumerate(used)}
    token_unit = [new_index.get(r, -1) for r in raw]
    end_seen = max((offsets[i][1] for i in content), default=0)
    truncated = bool(text[end_seen:].strip()) and (not used or used[-1] < len(spans) - 1)
    return UnitMap([spans[u] for u in used], token_unit, truncated)
