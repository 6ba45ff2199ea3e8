"""Text encodings of users' files: detected, never guessed silently.

Excel on Chinese Windows writes GBK/GB18030 CSV and UTF-16 "Unicode text"; Western tools write cp1252. These are
detected (``charset-normalizer`` ranks the candidates; a candidate must decode the whole file strictly) and the
encoding used is recorded; when nothing fits, the error names the first byte that is not UTF-8 and the setting.
"""

from __future__ import annotations

from modelyard.errors import DataError

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


# Encodings auto-detection accepts when a file is not UTF-8: the Chinese ones users' Excel and Windows tools
# write (GB18030 is a superset of GBK and GB2312), Big5 and the other East Asian multi-byte codes, and the
# UTF-16/32 of Excel's "Unicode text". charset-normalizer ranks them; a candidate must decode the whole file
# strictly. Western single-byte code pages (cp1252, latin-1) decode any byte sequence, so they are never
# guessed: such a file is refused with the offset and the setting to use.
_DETECTABLE = {
    "gb18030": "gb18030",
    "gbk": "gb18030",
    "gb2312": "gb18030",
    "hz": "gb18030",
    "big5": "big5",
    "big5hkscs": "big5hkscs",
    "utf_16": "utf-16",
    "utf_16_le": "utf-16-le",
    "utf_16_be": "utf-16-be",
    "utf_32": "utf-32",
    "shift_jis": "shift_jis",
    "cp932": "cp932",
    "euc_jp": "euc_jp",
    "euc_kr": "euc_kr",
    "cp949": "cp949",
}


def _utf16_without_bom(raw: bytes) -> str | None:
    """UTF-16 without a byte-order mark: ASCII-heavy text has a zero byte in every other position."""
    head = raw[:4096]
    if len(head) < 8:
        return None
    even, odd = head[0::2].count(0), head[1::2].count(0)
    half = len(head) // 2
    if odd > 0.3 * half and even < 0.05 * half:
        return "utf-16-le"
    if even > 0.3 * half and odd < 0.05 * half:
        return "utf-16-be"
    return None


def detect_and_decode(raw: bytes, encoding: str, where: str, *, decompressed: bool = False) -> tuple[str, str]:
    """Decode ``raw``; ``encoding='auto'`` detects it. Returns ``(text, the encoding used)``.

    Detection order: UTF-8 (BOM optional) → a UTF-16/32 byte-order mark → UTF-16 without BOM (zero-byte
    pattern) → the best candidate of ``charset-normalizer`` among :data:`_DETECTABLE`, accepted only if the
    whole file decodes strictly. When nothing fits, the error names the first byte that is not UTF-8 and the
    ``data.encoding`` to set.

    Raises:
        DataError: undecodable, or an unknown explicit encoding.
    """
    of = " of the decompressed content" if decompressed else ""
    if encoding.lower() != "auto":
        try:
            text = raw.decode(encoding)
        except LookupError:
            raise DataError(
                f"data.encoding '{encoding}' is not an encoding Python knows; use e.g. utf-8, gb18030 or latin-1"
            ) from None
        except UnicodeDecodeError as err:
            raise DataError(
                f"{where}: not valid {encoding} at byte {err.start}{of}; set data.encoding to the file's real encoding"
            ) from None
        # An explicit utf-8 (not utf-8-sig) leaves the BOM in place, where it would corrupt the first column name.
        return text.removeprefix("\ufeff"), encoding
    base = len(_UTF8_BOM) if raw.startswith(_UTF8_BOM) else 0
    try:
        return raw[base:].decode("utf-8"), "utf-8"
    except UnicodeDecodeError as err:
        first_bad = base + err.start
    if base:  # the file declares itself UTF-8: a bad byte is damage, not another encoding
        raise DataError(
            f"{where}: not valid UTF-8 at byte {first_bad}{of} although it starts with a UTF-8 byte-order mark; "
            "repair the file or set data.encoding to its real encoding"
        )
    candidates: list[str] = []
    if raw.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        candidates.append("utf-32")
    elif raw.startswith(_UTF16_BOMS):
        candidates.append("utf-16")
    elif (guess := _utf16_without_bom(raw)) is not None:
        candidates.append(guess)
    try:
        from charset_normalizer import from_bytes

        for match in from_bytes(raw[: 1 << 20]):  # ranked best first; a megabyte is plenty to judge
            name = _DETECTABLE.get(match.encoding)
            if name and name not in candidates:
                candidates.append(name)
    except ImportError:  # pragma: no cover - a dependency of requests, normally present
        candidates += ["gb18030", "big5"]
    # Short Chinese files can rank a Western single-byte code first: GB18030 wins when it decodes the file and
    # what it decodes to is mostly Chinese characters.
    try:
        if candidates and candidates[0].startswith("utf-"):  # a byte-order mark or the UTF-16 zero-byte pattern
            raise UnicodeDecodeError("gb18030", b"", 0, 1, "utf-16/32 found first")
        text = raw.decode("gb18030")
        wide = [c for c in text if ord(c) > 127]
        if wide and sum("\u4e00" <= c <= "\u9fff" or "\u3000" <= c <= "\u303f" for c in wide) >= 0.6 * len(wide):
            candidates = ["gb18030", *(c for c in candidates if c != "gb18030")]
    except UnicodeDecodeError:
        pass
    for name in candidates:
        try:
            return raw.decode(name).removeprefix("\ufeff"), name
        except UnicodeDecodeError:
            continue
    raise DataError(
        f"{where}: not valid UTF-8 at byte {first_bad}{of}, and not GB18030, Big5 or UTF-16 either; "
        "set data.encoding to the file's encoding (e.g. cp1252 or latin-1 for Western Windows files, gb18030, big5)"
    )
