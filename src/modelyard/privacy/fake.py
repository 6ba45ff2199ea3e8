"""``replace`` mode: a synthetic value of the same type for each entity — format-valid, but clearly not real.

Values come from ranges reserved for examples where those exist (``example.com`` e-mail, the TEST-NET and
``2001:db8::`` documentation addresses, US 555-01xx and UK Ofcom drama numbers, card test numbers), placeholder
names (张三, Jane Doe) and ``示例路`` ("example road") addresses. The choice is keyed by a hash of the original
value (and the salt), so one person or number gets the same stand-in everywhere in a file.
"""

from __future__ import annotations

import hashlib
import random

import modelyard.privacy.checks as checks

_CN_NAMES = ("张三", "李四", "王五", "赵六", "钱七", "孙八", "周九", "吴十")
_EN_NAMES = ("Jane Doe", "John Doe", "Alex Example", "Sam Sample", "Pat Placeholder", "Chris Test")
_CN_PROVINCES = ("北京市东城区", "上海市黄浦区", "广东省广州市越秀区", "浙江省杭州市上城区", "四川省成都市锦江区")


def _rng(kind: str, value: str, salt: str) -> random.Random:
    digest = hashlib.sha256(f"{salt}\0{kind}\0{value}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in text)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(n))


def _luhn_complete(prefix: str) -> str:
    for d in "0123456789":
        if checks.luhn_ok(prefix + d):
            return prefix + d
    raise AssertionError("unreachable: one check digit always fits")


def _phone(value: str, rng: random.Random) -> str:
    digits = checks.digits_of(value)
    if digits.startswith(("86", "0086")) or (len(digits) == 11 and digits[0] == "1"):
        return f"170-0000-{_digits(rng, 4)}"  # 170: a virtual-operator segment
    if digits.startswith("0") and len(digits) >= 10 and not value.startswith("+"):
        if digits.startswith(("02", "01")) and len(digits) <= 11:
            return f"020 7946 0{_digits(rng, 3)}"  # Ofcom's numbers for drama
        return f"010-6555{_digits(rng, 4)}"
    if value.startswith("+44"):
        return f"+44 20 7946 0{_digits(rng, 3)}"
    return f"(201) 555-01{_digits(rng, 2)}"  # 555-0100…0199: reserved for fiction in every area code


def _cn_id(rng: random.Random) -> str:
    body = f"110101{1970 + rng.randrange(30)}{1 + rng.randrange(12):02d}{1 + rng.randrange(28):02d}{_digits(rng, 3)}"
    return body + checks.cn_id_check_char(body)


def fake_value(kind: str, value: str, salt: str = "") -> str:
    """A synthetic stand-in for ``value`` (an entity of type ``kind``), the same for the same value and salt.

    Example:
        >>> fake_value("EMAIL", "bob@corp.com").endswith("@example.com")
        True
    """
    rng = _rng(kind, value, salt)
    if kind == "PHONE":
        return _phone(value, rng)
    if kind == "CN_ID":
        return _cn_id(rng)
    if kind == "BANK_CARD":
        number = _luhn_complete("4000000000" + _digits(rng, 5))  # a Visa test-range number
        return " ".join(number[i : i + 4] for i in range(0, 16, 4))
    if kind == "EMAIL":
        return f"user{rng.randrange(1000, 9999)}@example.com"
    if kind == "IP":
        return f"2001:db8::{rng.randrange(1, 0xFFFF):x}" if ":" in value else f"192.0.2.{rng.randrange(1, 255)}"
    if kind == "URL_CREDENTIALS":
        scheme = value.split("://", 1)[0]
        return f"{scheme}://user:REDACTED@example.com"
    if kind == "PASSPORT":
        return f"E{rng.randrange(10**7, 10**8):08d}" if value[:1].upper() in "EG" else f"X{_digits(rng, 8)}"
    if kind == "ADDRESS":
        return f"{rng.choice(_CN_PROVINCES)}示例路{rng.randrange(1, 200)}号"
    if kind == "PERSON":
        return rng.choice(_CN_NAMES) if _has_cjk(value) else rng.choice(_EN_NAMES)
    return f"<{kind}>"
