"""The model registry: three stores over one database, opened with :func:`open_registry`.

* :class:`~modelyard.registry.versions.VersionStore` (``registry.versions``): versions copied into
  ``<store>/models/<app>/v<N>/``, aliases, the audit trail;
* :class:`~modelyard.registry.keys.KeyStore` (``registry.api_keys``): hashed API keys, scopes, rates;
* :class:`~modelyard.registry.predictions.PredictionStore` (``registry.prediction_log``): logged
  predictions, feedback, traffic; the logged inputs encrypted with ``registry.log_keys``
  (:mod:`~modelyard.registry.logkeys`), rotated and purged by :mod:`~modelyard.registry.retention`.

They share one :class:`~modelyard.registry.engine.RegistryEngine` (``registry.engine``: SQLite in the
store by default, or PostgreSQL). :class:`Registry` also forwards each store's methods, so callers that
use several stores (the production server, retraining, the CLI) hold one object.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from modelyard.registry.engine import RegistryEngine, default_store
from modelyard.registry.keys import KEY_PREFIX, SCOPES, KeyInfo, KeyStore, parse_duration, parse_rate
from modelyard.registry.logkeys import LogKeys
from modelyard.registry.names import RegistryError
from modelyard.registry.predictions import PredictionStore, parse_since
from modelyard.registry.retention import purge_log, purges, rotate_log_key
from modelyard.registry.versions import VersionInfo, VersionStore, tree_sha256, verify_version

__all__ = [
    "KEY_PREFIX",
    "SCOPES",
    "KeyInfo",
    "Registry",
    "VersionInfo",
    "default_store",
    "open_registry",
    "parse_duration",
    "parse_rate",
    "parse_since",
    "tree_sha256",
]


class Registry:
    """A registry: its stores over one engine. Open with :func:`open_registry`; thread-safe.

    Args:
        store: Directory for the model copies (and the SQLite file).
        db_url: SQLAlchemy URL; default ``sqlite:///<store>/registry.db``.

    Attributes:
        engine: The database (sessions, migrations, retries).
        versions: Versions, aliases and the audit trail.
        api_keys: API keys.
        prediction_log: Predictions and feedback.
        log_keys: The keys that encrypt logged inputs (:class:`~modelyard.registry.logkeys.LogKeys`).
        store: The store directory (resolved).
    """

    def __init__(self, store: Path, db_url: str | None = None) -> None:
        self.engine = RegistryEngine(store, db_url)
        self.versions = VersionStore(self.engine)
        self.api_keys = KeyStore(self.engine)
        self.log_keys = LogKeys(self.engine.store)
        self.prediction_log = PredictionStore(self.engine, self.log_keys)
        self.store = self.engine.store
        self.db_url = self.engine.db_url
        self.is_sqlite = self.engine.is_sqlite

    # --------------------------------------------------------------- engine

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at."""
        return self.engine.schema_revision()

    def count(self, table: str) -> int:
        """Row count of a registry table; see :meth:`RegistryEngine.count`."""
        return self.engine.count(table)

    def close(self) -> None:
        """Dispose of the connection pools."""
        self.engine.close()

    # --------------------------------------------------------------- versions, aliases, audit trail

    def register(self, run_dir: Path, app: str, actor: str | None = None) -> VersionInfo:
        """See :meth:`VersionStore.register`."""
        return self.versions.register(run_dir, app, actor)

    def list_versions(self, app: str | None = None) -> list[VersionInfo]:
        """See :meth:`VersionStore.list_versions`."""
        return self.versions.list_versions(app)

    def verify_files(self) -> list[str]:
        """One line per registered version whose files are damaged (empty: all intact)."""
        problems = []
        for info in self.versions.list_versions(None):
            try:
                verify_version(info)
            except RegistryError as err:
                problems.append(str(err))
        return problems

    def get_version(self, app: str, version: int) -> VersionInfo:
        """See :meth:`VersionStore.get_version`."""
        return self.versions.get_version(app, version)

    def resolve(self, app: str, alias: str) -> VersionInfo:
        """See :meth:`VersionStore.resolve`."""
        return self.versions.resolve(app, alias)

    def alias_version(self, app: str, alias: str) -> int | None:
        """See :meth:`VersionStore.alias_version`."""
        return self.versions.alias_version(app, alias)

    def promote(
        self,
        app: str,
        version: int,
        alias: str = "production",
        actor: str | None = None,
        detail: dict[str, Any] | None = None,
        action: str = "promote",
    ) -> int | None:
        """See :meth:`VersionStore.promote`."""
        return self.versions.promote(app, version, alias, actor, detail, action)

    def rollback(self, app: str, alias: str = "production", actor: str | None = None) -> int:
        """See :meth:`VersionStore.rollback`."""
        return self.versions.rollback(app, alias, actor)

    def audit_trail(self, app: str | None = None, action: str | None = None) -> list[dict[str, Any]]:
        """See :meth:`VersionStore.audit_trail`."""
        return self.versions.audit_trail(app, action)

    def record(
        self, app: str, action: str, version: int | None, detail: dict[str, Any], actor: str | None = None
    ) -> None:
        """See :meth:`VersionStore.record`."""
        self.versions.record(app, action, version, detail, actor)

    # --------------------------------------------------------------- API keys

    def create_key(
        self, scopes: Sequence[str], rate: str | None = None, name: str = "", expires: str | timedelta | None = None
    ) -> str:
        """See :meth:`KeyStore.create_key`."""
        return self.api_keys.create_key(scopes, rate, name, expires)

    def lookup_key(self, key: str) -> KeyInfo | None:
        """See :meth:`KeyStore.lookup_key` (includes expired keys; the server's key check)."""
        return self.api_keys.lookup_key(key)

    def verify_key(self, key: str) -> KeyInfo | None:
        """See :meth:`KeyStore.verify_key`."""
        return self.api_keys.verify_key(key)

    def revoke_key(self, key_id: str) -> None:
        """See :meth:`KeyStore.revoke_key`."""
        self.api_keys.revoke_key(key_id)

    def list_keys(self) -> list[dict[str, Any]]:
        """See :meth:`KeyStore.list_keys`."""
        return self.api_keys.list_keys()

    # --------------------------------------------------------------- prediction log and feedback

    def log_predictions(
        self,
        rows: Sequence[dict[str, Any]],
        feedback: Sequence[dict[str, Any]] = (),
        images: Sequence[dict[str, Any]] = (),
        encrypt: bool = True,
    ) -> None:
        """See :meth:`PredictionStore.log_predictions`."""
        self.prediction_log.log_predictions(rows, feedback, images, encrypt)

    def feedback_image(self, sha256: str) -> tuple[str, bytes] | None:
        """See :meth:`PredictionStore.feedback_image`."""
        return self.prediction_log.feedback_image(sha256)

    def prediction(self, prediction_id: str) -> dict[str, Any] | None:
        """See :meth:`PredictionStore.prediction`."""
        return self.prediction_log.prediction(prediction_id)

    def predictions(self, app: str, since: datetime | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """See :meth:`PredictionStore.predictions`."""
        return self.prediction_log.predictions(app, since, limit)

    def recent_predictions(self, app: str, limit: int = 50) -> list[dict[str, Any]]:
        """See :meth:`PredictionStore.recent_predictions`."""
        return self.prediction_log.recent_predictions(app, limit)

    def feedback(self, app: str) -> list[dict[str, Any]]:
        """See :meth:`PredictionStore.feedback`."""
        return self.prediction_log.feedback(app)

    def traffic(
        self, app: str, since: datetime, bucket_s: int, until: datetime | None = None, max_rows: int = 200_000
    ) -> dict[str, Any]:
        """See :meth:`PredictionStore.traffic`."""
        return self.prediction_log.traffic(app, since, bucket_s, until, max_rows)

    # --------------------------------------------------------------- logs at rest

    def rotate_log_key(self, batch: int = 500) -> dict[str, Any]:
        """See :func:`modelyard.registry.retention.rotate_log_key`."""
        return rotate_log_key(self.engine, self.log_keys, batch)

    def purge_predictions(self, **criteria: Any) -> dict[str, Any]:
        """See :func:`modelyard.registry.retention.purge_log` (keyword arguments: ``before``, ``ids``, ``app`` …)."""
        return purge_log(self.engine, self.log_keys, **criteria)

    def log_purges(self) -> list[dict[str, Any]]:
        """See :func:`modelyard.registry.retention.purges`."""
        return purges(self.engine)


def open_registry(store: Path | str | None = None, db: str | None = None) -> Registry:
    """Open (creating and migrating if needed) a registry.

    Args:
        store: Store directory; default ``$MODELYARD_REGISTRY`` or :func:`default_store`.
        db: Database URL; default ``$MODELYARD_REGISTRY_DB`` or SQLite in the store.

    Returns:
        The registry.
    """
    store = Path(store) if store else Path(os.environ.get("MODELYARD_REGISTRY") or default_store())
    return Registry(store, db or os.environ.get("MODELYARD_REGISTRY_DB") or None)
