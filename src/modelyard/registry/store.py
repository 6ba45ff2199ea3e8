"""The model registry: versions, aliases, audit trail, API keys, prediction log and feedback.

One database (SQLite file ``<store>/registry.db`` by default, or PostgreSQL via ``--db
postgresql://…``) plus one directory of model copies (``<store>/models/<app>/v<N>/``). The schema
is migrated with Alembic whenever a registry is opened, under a lock so concurrent openers don't
race. SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE`` so concurrent writers queue on the lock instead of failing with
"database is locked" when a read transaction tries to upgrade.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import secrets
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, func, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from modelyard._internal.io import sha256_file
from modelyard.registry.artifacts import looks_like_pickle, validate_model_dir
from modelyard.registry.models import (
    Alias,
    ApiKey,
    App,
    AuditEvent,
    FeedbackRecord,
    ModelVersion,
    PredictionRecord,
    utcnow,
)
from modelyard.registry.names import RegistryError, safe_join, validate_alias, validate_name

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
SCOPES = ("predict", "feedback", "admin")
KEY_PREFIX = "my"
# Run files copied next to the model: what serving, monitoring and retraining need from the run.
_RUN_FILES = ("metrics.json", "manifest.json", "recipe.yaml", "data_report.json", "fingerprints.json")
_RUN_SPLITS = ("train.parquet", "valid.parquet", "test.parquet", "labels.json")


def default_store() -> Path:
    """``$MODELYARD_HOME/registry`` (default ``~/.modelyard/registry``)."""
    home = os.environ.get("MODELYARD_HOME")
    return (Path(home) if home else Path.home() / ".modelyard") / "registry"


@dataclass(frozen=True)
class VersionInfo:
    """A registered model version (a detached snapshot of its row)."""

    app: str
    version: int
    run_id: str
    path: Path
    sha256: str
    labels: list[str]
    metrics: dict[str, Any]
    created_at: datetime
    aliases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for ``registry list --json`` and the admin API)."""
        test = self.metrics.get("test", {}) if isinstance(self.metrics, dict) else {}
        return {
            "app": self.app,
            "version": self.version,
            "run_id": self.run_id,
            "aliases": list(self.aliases),
            "labels": self.labels,
            "test_accuracy": test.get("accuracy"),
            "test_macro_f1": test.get("macro_f1"),
            "sha256": self.sha256,
            "created_at": self.created_at.isoformat(),
        }


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


def _tree_sha256(root: Path, files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.as_posix().encode() + b"\0" + sha256_file(root / rel).encode() + b"\n")
    return h.hexdigest()


class Registry:
    """A registry store. Open with :func:`open_registry`; thread-safe (one session per call).

    Args:
        store: Directory for the model copies (and the SQLite file).
        db_url: SQLAlchemy URL; default ``sqlite:///<store>/registry.db``.
    """

    def __init__(self, store: Path, db_url: str | None = None) -> None:
        self.store = Path(store).resolve()
        self.store.mkdir(parents=True, exist_ok=True)
        (self.store / "models").mkdir(exist_ok=True)
        if db_url is None:
            db_url = f"sqlite:///{self.store / 'registry.db'}"
        elif db_url.startswith("postgresql://"):
            db_url = "postgresql+psycopg://" + db_url.removeprefix("postgresql://")
        self.db_url = db_url
        self.is_sqlite = db_url.startswith("sqlite")
        if self.is_sqlite:
            self._reader = self._sqlite_engine(immediate=False)
            self._writer = self._sqlite_engine(immediate=True)
        elif db_url.startswith("postgresql+psycopg://"):
            self._reader = self._writer = create_engine(db_url, pool_pre_ping=True, pool_size=4, max_overflow=4)
        else:
            raise RegistryError(f"unsupported --db {db_url!r}; use sqlite:///PATH or postgresql://USER@HOST/DB")
        self._migrate()

    # ------------------------------------------------------------------ engines and migrations

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
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    def _migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self._writer.begin() as conn:  # BEGIN IMMEDIATE / advisory lock: one migrator at a time
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(727001)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at."""
        with self._reader.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._reader, expire_on_commit=False) as session, session.begin():
            yield session

    def _retry(self, fn: Callable[[], T], attempts: int = 8) -> T:
        """Run a write, retrying unique-key races (PostgreSQL) and transient lock timeouts."""
        for i in range(attempts):
            try:
                return fn()
            except (IntegrityError, OperationalError):
                if i == attempts - 1:
                    raise
                time.sleep(0.05 * (2**i) * (0.5 + secrets.randbelow(100) / 100))
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Dispose of the connection pools."""
        self._reader.dispose()
        self._writer.dispose()

    # ------------------------------------------------------------------ apps and versions

    def _app(self, session: Session, name: str, create: bool = False) -> App:
        validate_name(name)
        query = select(App).where(App.name == name)
        if not self.is_sqlite:
            query = query.with_for_update()
        app = session.scalars(query).one_or_none()
        if app is None:
            if not create:
                raise RegistryError(f"no app named '{name}' in the registry; register a run with --app {name}")
            app = App(name=name, created_at=utcnow())
            session.add(app)
            session.flush()
        return app

    def _audit(
        self, session: Session, app: str, action: str, version: int | None, detail: dict[str, Any], actor: str | None
    ) -> None:
        session.add(
            AuditEvent(
                app=app,
                action=action,
                version=version,
                actor=actor or _default_actor(),
                detail=json.loads(json.dumps(detail, default=str)),
                at=utcnow(),
            )
        )

    def register(self, run_dir: Path, app: str, actor: str | None = None) -> VersionInfo:
        """Validate a run, copy it into the store and record it as the app's next version.

        Args:
            run_dir: A finished run directory (``manifest.json`` + ``model/``).
            app: The app name.
            actor: Who registers (default: the OS user).

        Returns:
            The new version.

        Raises:
            RegistryError: Bad name, not a finished run, or a file that is not acceptable (pickle,
                symlink, malformed safetensors/JSON).
        """
        from modelyard._internal.rundir import find_run

        validate_name(app)
        run_dir = Path(run_dir)
        if run_dir.is_symlink():
            raise RegistryError(f"{run_dir}: a symlink; pass the run directory itself")
        run = find_run(run_dir)
        validate_name(run.name, "run name")
        files = [Path("model") / rel for rel in validate_model_dir(run / "model")]
        for name in _RUN_FILES:
            if (run / name).is_file():
                files.append(Path(name))
        for name in _RUN_SPLITS:
            if (run / "splits" / name).is_file():
                files.append(Path("splits") / name)
        for rel in files:
            src = run / rel
            if src.is_symlink():
                raise RegistryError(f"{src}: symlinks are not accepted in a registered run")
            with open(src, "rb") as f:
                head = f.read(1 << 16)
            if rel.parts[0] != "model" and looks_like_pickle(head):
                raise RegistryError(f"{src}: the content is a pickle; pickles are never loaded")
            if rel.suffix == ".parquet" and head[:4] != b"PAR1":
                raise RegistryError(f"{src}: not a Parquet file (no PAR1 magic)")
        metrics = _read_json_or(run / "metrics.json", {})
        manifest = _read_json_or(run / "manifest.json", {})
        meta = _read_json_or(run / "model" / "modelyard.json", {})
        labels = [str(x) for x in meta.get("labels", [])]
        if not labels:
            raise RegistryError(f"{run}/model/modelyard.json has no labels")

        app_dir = self.store / "models" / app
        app_dir.mkdir(parents=True, exist_ok=True)
        safe_join(self.store / "models", app)  # the app directory must not be a symlink out of the store
        staging = app_dir / f".staging-{uuid.uuid4().hex}"
        try:
            for rel in files:
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run / rel, staging / rel, follow_symlinks=False)
            digest = _tree_sha256(staging, sorted(files))

            def allocate() -> VersionInfo:
                with Session(self._writer, expire_on_commit=False) as session:
                    session.begin()
                    row = self._app(session, app, create=True)
                    last = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.app_id == row.id))
                    version = int(last or 0) + 1
                    target = safe_join(self.store / "models", app, f"v{version}")
                    mv = ModelVersion(
                        app_id=row.id,
                        version=version,
                        run_id=run.name,
                        source=str(run.resolve()),
                        path=target.relative_to(self.store).as_posix(),
                        sha256=digest,
                        labels=labels,
                        metrics=metrics,
                        manifest=manifest,
                        created_at=utcnow(),
                    )
                    session.add(mv)
                    self._audit(session, app, "register", version, {"run": str(run.resolve()), "sha256": digest}, actor)
                    session.flush()
                    if target.exists():  # left over from a crashed registration that never committed
                        shutil.rmtree(target)
                    os.rename(staging, target)  # inside the transaction: a failed commit removes it below
                    try:
                        session.commit()
                    except BaseException:
                        os.rename(target, staging)
                        raise
                    return VersionInfo(app, version, run.name, target, digest, labels, metrics, mv.created_at)

            return self._retry(allocate)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _info(self, app: str, mv: ModelVersion, aliases: tuple[str, ...] = ()) -> VersionInfo:
        path = safe_join(self.store, *Path(mv.path).parts)
        return VersionInfo(
            app, mv.version, mv.run_id, path, mv.sha256, list(mv.labels), mv.metrics, mv.created_at, aliases
        )

    def list_versions(self, app: str | None = None) -> list[VersionInfo]:
        """Every version (of one app, or of all apps), oldest first, with their aliases."""
        with self._read() as session:
            query = select(App.name, ModelVersion).join(ModelVersion, ModelVersion.app_id == App.id)
            if app is not None:
                validate_name(app)
                query = query.where(App.name == app)
            rows = session.execute(query.order_by(App.name, ModelVersion.version)).all()
            aliases: dict[tuple[str, int], list[str]] = {}
            for name, alias, version in session.execute(
                select(App.name, Alias.alias, Alias.version).join(Alias, Alias.app_id == App.id)
            ).all():
                aliases.setdefault((name, version), []).append(alias)
            return [self._info(name, mv, tuple(sorted(aliases.get((name, mv.version), [])))) for name, mv in rows]

    def get_version(self, app: str, version: int) -> VersionInfo:
        """One version.

        Raises:
            RegistryError: No such app or version.
        """
        with self._read() as session:
            row = self._app(session, app)
            mv = session.scalars(
                select(ModelVersion).where(ModelVersion.app_id == row.id, ModelVersion.version == int(version))
            ).one_or_none()
            if mv is None:
                raise RegistryError(f"app '{app}' has no version {version}; see `modelyard registry list {app}`")
            return self._info(app, mv)

    def resolve(self, app: str, alias: str) -> VersionInfo:
        """The version an alias points at.

        Raises:
            RegistryError: Unknown app/alias, or the alias is not set.
        """
        validate_alias(alias)
        with self._read() as session:
            row = self._app(session, app)
            version = session.scalar(select(Alias.version).where(Alias.app_id == row.id, Alias.alias == alias))
        if version is None:
            raise RegistryError(f"app '{app}' has no '{alias}' version; run `modelyard registry promote {app} N`")
        return self.get_version(app, version)

    def alias_version(self, app: str, alias: str) -> int | None:
        """The version number an alias points at, or ``None`` (cheap: used by the hot-swap poller)."""
        with self._read() as session:
            return session.scalar(
                select(Alias.version).join(App, App.id == Alias.app_id).where(App.name == app, Alias.alias == alias)
            )

    def promote(
        self,
        app: str,
        version: int,
        alias: str = "production",
        actor: str | None = None,
        detail: dict[str, Any] | None = None,
        action: str = "promote",
    ) -> int | None:
        """Point ``alias`` at ``version``; record the decision. Returns the previous version (or ``None``).

        Raises:
            RegistryError: Unknown app, version or alias.
        """
        validate_alias(alias)

        def do() -> int | None:
            with self._write() as session:
                row = self._app(session, app)
                return self._set_alias(session, row, int(version), alias, action, actor, detail)

        return self._retry(do)

    def _set_alias(
        self,
        session: Session,
        row: App,
        version: int,
        alias: str,
        action: str,
        actor: str | None,
        detail: dict[str, Any] | None = None,
    ) -> int | None:
        """Point ``alias`` of the (locked) app ``row`` at ``version`` and audit it; returns the previous version."""
        exists = session.scalar(
            select(ModelVersion.id).where(ModelVersion.app_id == row.id, ModelVersion.version == version)
        )
        if exists is None:
            raise RegistryError(f"app '{row.name}' has no version {version}; see `modelyard registry list {row.name}`")
        current = session.scalars(select(Alias).where(Alias.app_id == row.id, Alias.alias == alias)).one_or_none()
        previous = None if current is None else current.version
        if current is None:
            session.add(Alias(app_id=row.id, alias=alias, version=version, updated_at=utcnow()))
        else:
            current.version = version
            current.updated_at = utcnow()
        info = {"alias": alias, "from": previous, "to": version, **(detail or {})}
        self._audit(session, row.name, action, version, info, actor)
        return previous

    def rollback(self, app: str, alias: str = "production", actor: str | None = None) -> int:
        """Undo the most recent not-yet-undone promote of ``alias``. Returns the version it points at now.

        Repeated rollbacks walk further back through the alias's history: after promoting 1, 2, 3,
        the first rollback returns to 2, the next to 1, and a third fails (nothing left to undo). A
        promote made after a rollback is undone first. The history is the audit trail (``promote``
        events, each later ``rollback`` cancelling the latest promote it has not cancelled yet); it is
        read and the alias moved in one write transaction, so two concurrent rollbacks undo two promotes.

        Raises:
            RegistryError: Unknown app or alias; the alias was never promoted, or every promote that
                moved it from an earlier version has been undone already.
        """
        validate_alias(alias)

        def do() -> int:
            with self._write() as session:
                row = self._app(session, app)  # locks the app row (PostgreSQL); SQLite: BEGIN IMMEDIATE
                events = session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.app == app, AuditEvent.action.in_(("promote", "rollback")))
                    .order_by(AuditEvent.id)
                ).all()
                live: list[AuditEvent] = []  # promotes not undone yet, oldest first
                promotes = 0
                for event in events:
                    if event.detail.get("alias") != alias:
                        continue
                    if event.action == "promote":
                        live.append(event)
                        promotes += 1
                    elif live:
                        live.pop()
                if not live:
                    raise RegistryError(
                        f"app '{app}' has nothing left to roll back on '{alias}': its {promotes} promote(s) "
                        "have all been rolled back"
                        if promotes
                        else f"app '{app}' has never been promoted to '{alias}'; nothing to roll back"
                    )
                target = live[-1].detail.get("from")
                if target is None:
                    raise RegistryError(
                        f"app '{app}' has no earlier '{alias}' version to roll back to: version "
                        f"{live[-1].version} was its first"
                    )
                self._set_alias(session, row, int(target), alias, "rollback", actor)
                return int(target)

        return self._retry(do)

    def audit_trail(self, app: str | None = None, action: str | None = None) -> list[dict[str, Any]]:
        """Recorded decisions, oldest first."""
        with self._read() as session:
            query = select(AuditEvent).order_by(AuditEvent.id)
            if app is not None:
                query = query.where(AuditEvent.app == app)
            if action is not None:
                query = query.where(AuditEvent.action == action)
            return [
                {
                    "at": e.at,
                    "app": e.app,
                    "action": e.action,
                    "version": e.version,
                    "actor": e.actor,
                    "detail": e.detail,
                }
                for e in session.scalars(query).all()
            ]

    def record(
        self, app: str, action: str, version: int | None, detail: dict[str, Any], actor: str | None = None
    ) -> None:
        """Append a decision to the audit trail (retrain verdicts, hot-swap failures …)."""

        def do() -> None:
            with self._write() as session:
                self._audit(session, app, action, version, detail, actor)

        self._retry(do)

    # ------------------------------------------------------------------ API keys

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
            with self._write() as session:
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
                self._audit(session, "-", "key_create", None, {"key_id": key_id, "scopes": scopes, "rate": rate}, None)

        self._retry(do)
        return f"{KEY_PREFIX}_{key_id}_{secret}"

    def verify_key(self, key: str) -> KeyInfo | None:
        """The key's info if ``key`` is a valid, unrevoked key; else ``None`` (constant-time compare)."""
        parts = key.split("_", 2) if isinstance(key, str) else []
        if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 16:
            return None
        with self._read() as session:
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
            with self._write() as session:
                row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).one_or_none()
                if row is None:
                    raise RegistryError(f"no API key with id '{key_id}'")
                row.revoked_at = utcnow()
                self._audit(session, "-", "key_revoke", None, {"key_id": key_id}, None)

        self._retry(do)

    def list_keys(self) -> list[dict[str, Any]]:
        """Key ids, scopes, rates and state (never secrets)."""
        with self._read() as session:
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

    # ------------------------------------------------------------------ prediction log and feedback

    def log_predictions(self, rows: Sequence[dict[str, Any]], feedback: Sequence[dict[str, Any]] = ()) -> None:
        """Insert prediction rows (and feedback rows) in one transaction (the log writer's batch)."""
        if not rows and not feedback:
            return

        def do() -> None:
            with self._write() as session:
                if rows:
                    session.execute(insert(PredictionRecord), list(rows))
                if feedback:
                    session.execute(insert(FeedbackRecord), list(feedback))

        self._retry(do)

    def prediction(self, prediction_id: str) -> dict[str, Any] | None:
        """One logged prediction, or ``None``."""
        with self._read() as session:
            p = session.get(PredictionRecord, prediction_id)
            if p is None:
                return None
            return {
                "id": p.id,
                "at": p.at,
                "app": p.app,
                "version": p.version,
                "key_id": p.key_id,
                "text": p.text,
                "label": p.label,
                "scores": p.scores,
                "latency_ms": p.latency_ms,
            }

    def predictions(self, app: str, since: datetime | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Logged predictions of an app (newest last), optionally since a time."""
        with self._read() as session:
            query = select(PredictionRecord).where(PredictionRecord.app == app)
            if since is not None:
                query = query.where(PredictionRecord.at >= since)
            query = query.order_by(PredictionRecord.at)
            if limit is not None:
                query = query.limit(limit)
            return [
                {"id": p.id, "at": p.at, "version": p.version, "text": p.text, "label": p.label, "scores": p.scores}
                for p in session.scalars(query).all()
            ]

    def recent_predictions(self, app: str, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` logged predictions of an app (oldest of them first), read with a LIMIT query."""
        with self._read() as session:
            query = (
                select(PredictionRecord)
                .where(PredictionRecord.app == app)
                .order_by(PredictionRecord.at.desc(), PredictionRecord.id)
                .limit(limit)
            )
            rows = [
                {"id": p.id, "at": p.at, "version": p.version, "text": p.text, "label": p.label, "scores": p.scores}
                for p in session.scalars(query).all()
            ]
        return rows[::-1]

    def feedback(self, app: str) -> list[dict[str, Any]]:
        """Feedback of an app joined with its predictions' texts; the latest label per prediction wins."""
        with self._read() as session:
            rows = session.execute(
                select(FeedbackRecord, PredictionRecord.text)
                .join(PredictionRecord, PredictionRecord.id == FeedbackRecord.prediction_id)
                .where(FeedbackRecord.app == app)
                .order_by(FeedbackRecord.at, FeedbackRecord.id)
            ).all()
        latest: dict[str, dict[str, Any]] = {}
        for fb, text_ in rows:
            latest[fb.prediction_id] = {
                "prediction_id": fb.prediction_id,
                "text": text_,
                "label": fb.label,
                "at": fb.at,
            }
        return list(latest.values())

    def traffic(
        self, app: str, since: datetime, bucket_s: int, until: datetime | None = None, max_rows: int = 200_000
    ) -> dict[str, Any]:
        """Logged traffic of an app per time bucket: request count, mean confidence, and the class mix.

        Counts, the class mix and the mean latency are aggregated by the database; the per-bucket mean
        confidence (the top score of each prediction, kept in a JSON column) from the newest
        ``max_rows`` rows of the window.

        Args:
            app: The app.
            since: Start of the window (UTC).
            bucket_s: Bucket width in seconds; buckets are aligned to multiples of it since the epoch.
            until: End of the window (default: now).
            max_rows: Most rows read for the confidence means.

        Returns:
            ``{"since", "until", "bucket_s", "total", "buckets": [{"start", "requests", "mean_confidence"}],
            "class_mix": {label: count}, "mean_latency_ms"}``; every bucket of the window is present.
        """
        until = until or datetime.now(timezone.utc)
        window = (PredictionRecord.app == app, PredictionRecord.at >= since, PredictionRecord.at <= until)
        with self._read() as session:
            mix = session.execute(
                select(PredictionRecord.label, func.count()).where(*window).group_by(PredictionRecord.label)
            ).all()
            total, latency = session.execute(
                select(func.count(), func.avg(PredictionRecord.latency_ms)).where(*window)
            ).one()
            rows = session.execute(
                select(PredictionRecord.at, PredictionRecord.scores)
                .where(*window)
                .order_by(PredictionRecord.at.desc())
                .limit(max_rows)
            ).all()
        first = int(since.timestamp()) // bucket_s
        last = int(until.timestamp()) // bucket_s
        counts = [0] * (last - first + 1)
        conf_sum = [0.0] * len(counts)
        conf_n = [0] * len(counts)
        for at, scores in rows:
            if at.tzinfo is None:  # SQLite returns naive UTC datetimes
                at = at.replace(tzinfo=timezone.utc)
            i = min(max(int(at.timestamp()) // bucket_s - first, 0), len(counts) - 1)
            counts[i] += 1
            values = [float(v) for v in (scores or {}).values()]
            if values:
                conf_sum[i] += max(values)
                conf_n[i] += 1
        return {
            "since": since,
            "until": until,
            "bucket_s": bucket_s,
            "total": int(total or 0),
            "buckets": [
                {
                    "start": datetime.fromtimestamp((first + i) * bucket_s, timezone.utc),
                    "requests": counts[i],
                    "mean_confidence": conf_sum[i] / conf_n[i] if conf_n[i] else None,
                }
                for i in range(len(counts))
            ],
            "class_mix": {str(label): int(n) for label, n in sorted(mix)},
            "mean_latency_ms": None if latency is None else float(latency),
        }

    def count(self, table: str) -> int:
        """Row count of a registry table (tests, ``registry stats``)."""
        tables = {
            "apps": App,
            "model_versions": ModelVersion,
            "aliases": Alias,
            "audit_events": AuditEvent,
            "api_keys": ApiKey,
            "predictions": PredictionRecord,
            "feedback": FeedbackRecord,
        }
        with self._read() as session:
            return int(session.scalar(select(func.count()).select_from(tables[table])) or 0)


def _default_actor() -> str:
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "user:unknown"


def _read_json_or(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return default


def parse_since(since: str | None) -> datetime | None:
    """``"7d"``, ``"12h"``, ``"30m"`` → the UTC time that long ago (``None`` → ``None``).

    Raises:
        RegistryError: Any other form.
    """
    if not since:
        return None
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    try:
        value = float(since[:-1])
        unit = units[since[-1]]
        return datetime.now(timezone.utc) - timedelta(**{unit: value})
    except (ValueError, KeyError, IndexError):
        raise RegistryError(f"invalid --since {since!r}; use e.g. 7d, 12h, 30m") from None
    except OverflowError:  # found by fuzzing: 999999d is before year 1
        raise RegistryError(f"--since {since!r} reaches back before year 1; use a shorter window") from None


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
