"""Validators behind the recognizers: a match counts only when its checksum or structure holds.

Pure functions over the matched text (separators allowed); each recognizer in :mod:`.recognizers` calls one from
its ``validate_result``, so a regex that matches a price, a date or an order number is not enough.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import re

_DIGITS = re.compile(r"\d")

# GB 11643-1999: weights of the first 17 digits (2^(17-i) mod 11), and the check character for sum mod 11.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# First two digits of a mainland resident ID: the province-level division (GB/T 2260), plus 71/81/82 (Taiwan,
# Hong Kong, Macao residence permits) and 83 (the 2019+ permits of Taiwan residents).
_ID_PROVINCES = frozenset(
    str(code)
    for code in (11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52, 53, 54,
                 61, 62, 63, 64, 65, 71, 81, 82, 83)
)  # fmt: skip


def digits_of(text: str) -> str:
    """The digits of ``text`` in order (separators such as spaces and dashes dropped)."""
    return "".join(_DIGITS.findall(text))


def cn_id_check_char(first17: str) -> str:
    """The GB 11643 MOD 11-2 check character (``0``–``9`` or ``X``) of the first 17 digits of a resident ID."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def plausible_birth_date(yyyymmdd: str, today: _dt.date | None = None) -> bool:
    """A real calendar date between 1900-01-01 and today."""
    try:
        born = _dt.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        return False
    return _dt.date(1900, 1, 1) <= born <= (today or _dt.date.today())


def valid_cn_id(text: str) -> bool:
    """An 18-character mainland resident ID: a known province code, a real birth date, and the right check character.

    Example:
        >>> valid_cn_id("11010519491231002X"), valid_cn_id("110105194912310021")
        (True, False)
    """
    s = re.sub(r"[\s-]", "", text).upper()
    if len(s) != 18 or not s[:17].isdigit() or s[:2] not in _ID_PROVINCES:
        return False
    return plausible_birth_date(s[6:14]) and cn_id_check_char(s[:17]) == s[17]


def luhn_ok(number: str) -> bool:
    """The Luhn (mod 10) checksum of a digit string (bank and payment cards)."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_issuer_ok(number: str) -> bool:
    """The number starts like a payment card: Visa 4, Mastercard 51–55/2221–2720, UnionPay 62/60/81, JCB 35,
    Discover 6011/64/65, the 19-digit legacy debit cards of Chinese banks (9558/9559/9400), and Maestro 50/56–58/67.
    """
    if number[0] == "4":
        return True
    two, four = int(number[:2]), int(number[:4])
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return True
    if two in (35, 50, 56, 57, 58, 60, 62, 64, 65, 67, 81):
        return True
    return four in (6011, 9558, 9559, 9400)


def valid_bank_card(text: str) -> bool:
    """16–19 digits (grouped by spaces/dashes or not), a card issuer prefix, the Luhn check, and not one repeated digit.

    15-digit American Express (34/37) and 14-digit Diners Club (300–305/36/38) numbers count too; other 14–15 digit
    runs (IMEIs, which also pass Luhn) do not.

    Example:
        >>> valid_bank_card("6222 0212 3456 7890 128"), valid_bank_card("4111 1111 1111 1112")
        (True, False)
    """
    number = digits_of(text)
    if not 14 <= len(number) <= 19 or len(set(number)) < 2:
        return False
    if len(number) == 15:
        issuer = number[:2] in ("34", "37")
    elif len(number) == 14:
        issuer = number[:2] in ("36", "38") or 300 <= int(number[:3]) <= 305
    else:
        issuer = card_issuer_ok(number)
    return issuer and luhn_ok(number)


# Mobile number segments of the mainland operators (MIIT numbering plan): 13x, 145–149, 15x (not 154), 162/165–167,
# 170–178, 18x, 190–193/195–199.
_CN_MOBILE_PREFIX = re.compile(r"1(?:3\d|4[5-9]|5[0-35-9]|6[25-7]|7[0-8]|8\d|9[0-35-9])")


def valid_cn_mobile(text: str) -> bool:
    """A mainland mobile number: 11 digits in an allocated segment (a +86/0086 prefix is allowed)."""
    number = digits_of(text)
    if len(number) == 13 and number.startswith("86"):
        number = number[2:]
    elif len(number) == 15 and number.startswith("0086"):
        number = number[4:]
    return len(number) == 11 and _CN_MOBILE_PREFIX.match(number) is not None and len(set(number[3:])) > 1


def valid_cn_landline(text: str) -> bool:
    """A mainland landline: area code 010/02x (then 8 digits) or 0[3-9]xx (then 7–8 digits), local part not 0/1."""
    number = digits_of(text.split("转")[0].split("ext")[0])
    if number.startswith("0086"):
        number = "0" + number[4:]
    elif number.startswith("86") and not number.startswith("860"):
        number = "0" + number[2:]
    if not number.startswith("0"):
        number = "0" + number  # "(21)…" written without the trunk 0
    if number[1] in "12":  # 010, 020–029: three-digit area codes, eight-digit local numbers
        local = number[3:]
        ok = len(local) == 8 and (number[1] == "2" or number[2] == "0")
    elif number[1] in "3456789":
        local = number[4:]
        ok = len(local) in (7, 8)
    else:
        return False
    return ok and local[0] not in "01" and len(set(local)) > 1


def valid_ipv4(text: str) -> bool:
    """Four dotted octets 0–255 without leading zeros, not 0.0.0.0 and not a broadcast-only address."""
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return not addr.is_unspecified and str(addr) != "255.255.255.255"


def valid_ipv6(text: str) -> bool:
    """An IPv6 address (full, ``::``-compressed or with an embedded IPv4 tail) with at least two groups written."""
    if text.count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return len([g for g in text.split(":") if g]) >= 2 or text == "::1"


def valid_cn_passport(text: str) -> bool:
    """A People's Republic passport number: E/G + 8 digits, or E + a letter (not I/O) + 7 digits (2012+ e-passports)."""
    s = text.upper()
    if len(s) != 9 or s[0] not in "EG":
        return False
    if s[1:].isdigit():
        return len(set(s[1:])) > 1
    return s[0] == "E" and s[1].isalpha() and s[1] not in "IO" and s[2:].isdigit()
