"""The registry's one database: engines, sessions, migrations, retries and the shared audit writer.

One database (SQLite file ``<store>/registry.db`` by default, or PostgreSQL via ``--db
postgresql://…``) serves the three stores (:mod:`.versions`, :mod:`.keys`, :mod:`.predictions`). The
schema is migrated with Alembic whenever a registry is opened, under a lock so concurrent openers
don't race. SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE`` so concurrent writers queue on the lock instead of failing with "database is
locked" when a read transaction tries to upgrade.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from modelyard._internal.storage import describe_storage_error, make_dir
from modelyard.errors import StorageError
from modelyard.registry.models import (
    Alias,
    ApiKey,
    App,
    AuditEvent,
    FeedbackImage,
    FeedbackRecord,
    LogPurge,
    ModelVersion,
    PredictionRecord,
    utcnow,
)
from modelyard.registry.names import RegistryError

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
_TABLES = {
    "apps": App,
    "model_versions": ModelVersion,
    "aliases": Alias,
    "audit_events": AuditEvent,
    "api_keys": ApiKey,
    "predictions": PredictionRecord,
    "feedback": FeedbackRecord,
    "feedback_images": FeedbackImage,
    "log_purges": LogPurge,
}


def default_store() -> Path:
    """``$MODELYARD_HOME/registry`` (default ``~/.modelyard/registry``)."""
    home = os.environ.get("MODELYARD_HOME")
    return (Path(home) if home else Path.home() / ".modelyard") / "registry"


def default_actor() -> str:
    """``user:<OS user>`` (``user:unknown`` when the OS cannot say): who did something, for the audit trail."""
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "user:unknown"


def add_audit_event(
    session: Session, app: str, action: str, version: int | None, detail: dict[str, Any], actor: str | None
) -> None:
    """Add one audit-trail row to ``session`` (committed with the change it records).

    Args:
        session: An open write session.
        app: The app the decision concerns (``-`` for API keys).
        action: ``register``, ``promote``, ``rollback``, ``retrain``, ``key_create`` …
        version: The version concerned, if any.
        detail: JSON-able details (anything else is turned into its ``str``).
        actor: Who decided (default: :func:`default_actor`).
    """
    session.add(
        AuditEvent(
            app=app,
            action=action,
            version=version,
            actor=actor or default_actor(),
            detail=json.loads(json.dumps(detail, default=str)),
            at=utcnow(),
        )
    )


class RegistryEngine:
    """The database behind a registry: a reader and a writer engine, migrated on open; thread-safe.

    Args:
        store: Directory for the model copies (and the SQLite file); created if missing.
        db_url: SQLAlchemy URL, ``postgresql://…`` or ``sqlite:///…``; default ``sqlite:///<store>/registry.db``.

    Raises:
        RegistryError: An unsupported database URL.
    """

    def __init__(self, store: Path, db_url: str | None = None) -> None:
        self.store = Path(store).resolve()
        make_dir(self.store / "models", "--store")
        if db_url is None:
            db_url = f"sqlite:///{self.store / 'registry.db'}"
        elif db_url.startswith("postgresql://"):
            db_url = "postgresql+psycopg://" + db_url.removeprefix("postgresql://")
        self.db_url = db_url
        self.is_sqlite = db_url.startswith("sqlite")
        if self.is_sqlite:
            self.reader = self._sqlite_engine(immediate=False)
            self.writer = self._sqlite_engine(immediate=True)
        elif db_url.startswith("postgresql+psycopg://"):
            self.reader = self.writer = create_engine(db_url, pool_pre_ping=True, pool_size=4, max_overflow=4)
        else:
            raise RegistryError(f"unsupported --db {db_url!r}; use sqlite:///PATH or postgresql://USER@HOST/DB")
        self._migrate()

    def _sqlite_engine(self, immediate: bool) -> Engine:
        engine = create_engine(self.db_url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (pysqlite's own is deferred)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA secure_delete=ON")  # purged/re-encrypted rows are zeroed, not left in free pages
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        @event.listens_for(engine, "handle_error")
        def _on_error(ctx: Any) -> Exception | None:
            return self._damaged(ctx.original_exception)

        return engine

    def _damaged(self, err: BaseException) -> Exception | None:
        """A damaged SQLite file or a failing disk as the one-line :class:`RegistryError` (else ``None``)."""
        text = str(err)
        path = self.db_url.removeprefix("sqlite:///")
        if any(s in text for s in ("malformed", "not a database", "disk I/O error", "database corrupt")):
            return RegistryError(
                f"the registry database {path} is damaged ({text.splitlines()[0]}); restore it from a backup, "
                "or move it aside to start an empty registry (registered model files stay in the store)"
            )
        storage = describe_storage_error(err, path, "the registry database", "--store")
        return StorageError(storage) if storage else None

    def check(self) -> None:
        """Verify the whole database (SQLite ``PRAGMA integrity_check``; a query on PostgreSQL).

        Raises:
            RegistryError: the database is damaged, naming the file and what to do.
        """
        with self.reader.connect() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT 1"))
                return
            rows = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check").fetchall()]
        if rows != ["ok"]:
            raise self._damaged(Exception(f"database corrupt: {'; '.join(map(str, rows[:3]))}"))  # type: ignore[misc]

    def _migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.writer.begin() as conn:  # BEGIN IMMEDIATE / advisory lock: one migrator at a time
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(727001)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at."""
        with self.reader.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed when the block ends without error."""
        with Session(self.writer, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read transaction."""
        with Session(self.reader, expire_on_commit=False) as session, session.begin():
            yield session

    def retry(self, fn: Callable[[], T], attempts: int = 8) -> T:
        """Run a write, retrying unique-key races (PostgreSQL) and transient lock timeouts with jittered backoff."""
        for i in range(attempts):
            try:
                return fn()
            except (IntegrityError, OperationalError):
                if i == attempts - 1:
                    raise
                time.sleep(0.05 * (2**i) * (0.5 + secrets.randbelow(100) / 100))
        raise AssertionError("unreachable")

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database file and truncate it (after a purge, so deleted
        values do not linger in ``registry.db-wal``); best effort while other connections read. No-op elsewhere."""
        if not self.is_sqlite:
            return
        raw = self.writer.raw_connection()  # the driver's connection: no BEGIN (a checkpoint cannot run in one)
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cur.close()
        finally:
            raw.close()

    def count(self, table: str) -> int:
        """Row count of a registry table (tests, ``registry stats``).

        Args:
            table: ``apps``, ``model_versions``, ``aliases``, ``audit_events``, ``api_keys``,
                ``predictions``, ``feedback``, ``feedback_images`` or ``log_purges``.
        """
        with self.read() as session:
            return int(session.scalar(select(func.count()).select_from(_TABLES[table])) or 0)

    def close(self) -> None:
        """Dispose of the connection pools."""
        self.reader.dispose()
        self.writer.dispose()
