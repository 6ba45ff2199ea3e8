"""The API-key store: keys for the production server, stored as hashes, with scopes and rate limits.

A key reads ``my_<16 hex id>_<secret>``; only the sha256 of the secret is stored, so a key is shown
once, when it is created. Creating and revoking a key are recorded in the audit trail (app ``-``).
Servers cache verified keys for a short while (:mod:`modelyard.serving.security`), so a revoked key
stops working within that cache lifetime, not instantly.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from modelyard.registry.engine import RegistryEngine, add_audit_event
from modelyard.registry.models import ApiKey, utcnow
from modelyard.registry.names import RegistryError

SCOPES = ("predict", "feedback", "admin")
KEY_PREFIX = "my"


@dataclass(frozen=True)
class KeyInfo:
    """A valid (not revoked) API key, as the server sees it."""

    key_id: str
    scopes: frozenset[str]
    rate_per_s: float | None
    name: str

    def allows(self, scope: str) -> bool:
        """Whether the key carries ``scope`` (``admin`` carries every scope)."""
        return scope in self.scopes or "admin" in self.scopes


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


class KeyStore:
    """API keys of a registry (one session per call; thread-safe).

    Args:
        engine: The registry's database.
    """

    def __init__(self, engine: RegistryEngine) -> None:
        self._engine = engine

    def create_key(self, scopes: Sequence[str], rate: str | None = None, name: str = "") -> str:
        """Create an API key; returns the full key (shown once; only its hash is stored).

        Raises:
            RegistryError: Unknown scope or bad rate.
        """
        scopes = sorted(set(scopes))
        if not scopes or any(s not in SCOPES for s in scopes):
            raise RegistryError(
                f"invalid --scope {','.join(scopes) or '(none)'}; use one or more of {', '.join(SCOPES)}"
            )
        rate_per_s = parse_rate(rate)
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
                        created_at=utcnow(),
                    )
                )
                add_audit_event(
                    session, "-", "key_create", None, {"key_id": key_id, "scopes": scopes, "rate": rate}, None
                )

        self._engine.retry(do)
        return f"{KEY_PREFIX}_{key_id}_{secret}"

    def verify_key(self, key: str) -> KeyInfo | None:
        """The key's info if ``key`` is a valid, unrevoked key; else ``None`` (constant-time compare)."""
        parts = key.split("_", 2) if isinstance(key, str) else []
        if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 16:
            return None
        with self._engine.read() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.key_id == parts[1])).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.secret_sha256, _secret_hash(parts[2])):
            return None
        return KeyInfo(row.key_id, frozenset(row.scopes.split(",")), row.rate_per_s, row.name)

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
        """Key ids, scopes, rates and state (never secrets)."""
        with self._engine.read() as session:
            return [
                {
                    "key_id": k.key_id,
                    "scopes": k.scopes,
                    "rate_per_s": k.rate_per_s,
                    "name": k.name,
                    "created_at": k.created_at.isoformat(),
                    "revoked": k.revoked_at is not None,
                }
                for k in session.scalars(select(ApiKey).order_by(ApiKey.id)).all()
            ]
