"""The API-key store: keys for the production server, stored as hashes, with scopes and rate limits.

A key reads ``my_<16 hex id>_<secret>``; only the sha256 of the secret is stored, so a key is shown
once, when it is created. Creating and revoking a key are recorded in the audit trail (app ``-``).
Servers cache verified keys for a short while (:mod:`modelyard.serving.security`), so a revoked key
stops working within that cache lifetime, not instantly.

A key may be created with a lifetime (``modelyard keys create --expires 30d``): its ``expires_at`` is
stored with it, and from that instant on the server refuses it (401 ``key_expired``). The cached
:class:`KeyInfo` carries ``expires_at`` and the server compares it with the clock on every request,
so expiry, unlike revocation, is not delayed by the key cache.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select

from modelyard.registry.engine import RegistryEngine, add_audit_event
from modelyard.registry.models import ApiKey, utcnow
from modelyard.registry.names import RegistryError

SCOPES = ("predict", "feedback", "admin")
KEY_PREFIX = "my"


@dataclass(frozen=True)
class KeyInfo:
    """A known, unrevoked API key, as the server sees it (it may have expired: see :meth:`expired`)."""

    key_id: str
    scopes: frozenset[str]
    rate_per_s: float | None
    name: str
    expires_at: datetime | None = None  # timezone-aware UTC; None: never expires

    def allows(self, scope: str) -> bool:
        """Whether the key carries ``scope`` (``admin`` carries every scope)."""
        return scope in self.scopes or "admin" in self.scopes

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the key has expired at ``now`` (default: the current time); it expires at ``expires_at``."""
        return self.expires_at is not None and (now or utcnow()) >= self.expires_at


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones.
    return value if value is None or value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _secret_hash(secret: str) -> str:
    # Keys are 256-bit random secrets, so a fast hash is enough: there is nothing to brute-force
    # that a slow KDF would protect (unlike human passwords).
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_rate(rate: str | None) -> float | None:
    """``"10/s"``, ``"600/m"``, ``"1000/h"`` → requests per second (``None``/``""`` → unlimited).

    Raises:
        RegistryError: Any other form.
    """
    if rate is None or rate == "":
        return None
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    num, _, unit = rate.strip().partition("/")
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if value <= 0 or unit not in units:
        raise RegistryError(f"invalid rate {rate!r}; use N/s, N/m or N/h with N > 0, e.g. 10/s")
    return value / units[unit]


_DURATION = re.compile(r"([1-9][0-9]{0,9})([smhd])")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str | timedelta) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"`` (a whole number > 0, one unit) → a positive ``timedelta``.

    Raises:
        RegistryError: Any other form (zero, negative, fractional, no or an unknown unit, several units).
    """
    if isinstance(text, timedelta):
        if text <= timedelta(0):
            raise RegistryError(f"invalid --expires {text}; the lifetime must be positive")
        return text
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise RegistryError(
            f"invalid --expires {text!r}; use a whole number > 0 and a unit s, m, h or d, e.g. 30d, 12h, 90m"
        )
    try:
        return timedelta(**{_DURATION_UNITS[match[2]]: int(match[1])})
    except OverflowError:
        raise RegistryError(f"--expires {text!r} is too long: it ends after the year 9999") from None


class KeyStore:
    """API keys of a registry (one session per call; thread-safe).

    Args:
        engine: The registry's database.
    """

    def __init__(self, engine: RegistryEngine) -> None:
        self._engine = engine

    def create_key(
        self,
        scopes: Sequence[str],
        rate: str | None = None,
        name: str = "",
        expires: str | timedelta | None = None,
    ) -> str:
        """Create an API key; returns the full key (shown once; only its hash is stored).

        Args:
            scopes: ``predict``, ``feedback``, ``admin``.
            rate: Rate limit (:func:`parse_rate`); ``None``: unlimited.
            name: A note: who or what uses the key.
            expires: Lifetime from now (``"30d"``, ``"12h"``, ``"90m"``, ``"45s"`` or a ``timedelta``;
                :func:`parse_duration`); ``None``: the key never expires.

        Raises:
            RegistryError: Unknown scope, bad rate or bad lifetime.
        """
        scopes = sorted(set(scopes))
        if not scopes or any(s not in SCOPES for s in scopes):
            raise RegistryError(
                f"invalid --scope {','.join(scopes) or '(none)'}; use one or more of {', '.join(SCOPES)}"
            )
        rate_per_s = parse_rate(rate)
        now = utcnow()
        try:
            expires_at = None if expires is None else now + parse_duration(expires)
        except OverflowError:
            raise RegistryError(f"--expires {expires} is too long: it ends after the year 9999") from None
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)

        def do() -> None:
            with self._engine.write() as session:
                session.add(
                    ApiKey(
                        key_id=key_id,
                        secret_sha256=_secret_hash(secret),
                        scopes=",".join(scopes),
                        rate_per_s=rate_per_s,
                        name=name,
                        created_at=now,
                        expires_at=expires_at,
                    )
                )
                detail = {
                    "key_id": key_id,
                    "scopes": scopes,
                    "rate": rate,
                    "expires_at": None if expires_at is None else expires_at.isoformat(),
                }
                add_audit_event(session, "-", "key_create", None, detail, None)

        self._engine.retry(do)
        return f"{KEY_PREFIX}_{key_id}_{secret}"

    def lookup_key(self, key: str) -> KeyInfo | None:
        """The key's info if ``key`` is a known, unrevoked key with the right secret (constant-time compare),
        whether or not it has expired; else ``None``.

        What the server's key check asks (:mod:`modelyard.serving.security`): it refuses an expired key
        itself (``KeyInfo.expired``), with its own error. Anything else should call :meth:`verify_key`.
        """
        parts = key.split("_", 2) if isinstance(key, str) else []
        if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 16:
            return None
        with self._engine.read() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.key_id == parts[1])).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.secret_sha256, _secret_hash(parts[2])):
            return None
        return KeyInfo(row.key_id, frozenset(row.scopes.split(",")), row.rate_per_s, row.name, _utc(row.expires_at))

    def verify_key(self, key: str) -> KeyInfo | None:
        """The key's info if ``key`` is a valid key now (known, unrevoked, not expired); else ``None``."""
        info = self.lookup_key(key)
        return None if info is None or info.expired() else info

    def revoke_key(self, key_id: str) -> None:
        """Revoke a key by its id (the part after ``my_``).

        Raises:
            RegistryError: No such key.
        """

        def do() -> None:
            with self._engine.write() as session:
                row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).one_or_none()
                if row is None:
                    raise RegistryError(f"no API key with id '{key_id}'")
                row.revoked_at = utcnow()
                add_audit_event(session, "-", "key_revoke", None, {"key_id": key_id}, None)

        self._engine.retry(do)

    def list_keys(self) -> list[dict[str, Any]]:
        """Key ids, scopes, rates and state (never secrets): ``expires_at`` (ISO 8601 UTC, ``None``: never)
        and ``expired`` (whether it has passed)."""
        now = utcnow()
        with self._engine.read() as session:
            rows = session.scalars(select(ApiKey).order_by(ApiKey.id)).all()
        out = []
        for k in rows:
            expires_at, created_at = _utc(k.expires_at), _utc(k.created_at)
            out.append(
                {
                    "key_id": k.key_id,
                    "scopes": k.scopes,
                    "rate_per_s": k.rate_per_s,
                    "name": k.name,
                    "created_at": None if created_at is None else created_at.isoformat(),
                    "revoked": k.revoked_at is not None,
                    "expires_at": None if expires_at is None else expires_at.isoformat(),
                    "expired": expires_at is not None and now >= expires_at,
                }
            )
        return out
