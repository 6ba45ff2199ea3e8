"""The version/alias store: registered model versions, their aliases and the audit trail.

A version is a validated copy of a finished run under ``<store>/models/<app>/v<N>/`` plus a row in the
registry database (:mod:`.engine`); aliases (``production``, ``staging``) point at versions, and every
decision (register, promote, rollback, retrain verdicts, hot-swap results …) is appended to the audit
trail, which is also the history :meth:`VersionStore.rollback` walks back through.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelyard._internal.integrity import verify_recorded
from modelyard._internal.io import sha256_file
from modelyard._internal.layout import (
    DATA_REPORT,
    FINGERPRINTS,
    MANIFEST,
    METRICS,
    MODEL_DIR,
    MODEL_META,
    RECIPE,
    SPLITS_DIR,
)
from modelyard._internal.rundir import find_run
from modelyard.registry.artifacts import check_zip_members, looks_like_pickle, validate_model_dir
from modelyard.registry.engine import RegistryEngine, add_audit_event
from modelyard.registry.models import Alias, App, AuditEvent, ModelVersion, utcnow
from modelyard.registry.names import RegistryError, safe_join, validate_alias, validate_name

# Run files copied next to the model: what serving, monitoring and retraining need from the run.
_RUN_FILES = (METRICS, MANIFEST, RECIPE, DATA_REPORT, FINGERPRINTS)
# text runs keep their splits as Parquet, image runs as .npz (uint8 arrays, no object arrays: checked below)
_RUN_SPLITS = tuple(f"{n}.{ext}" for ext in ("parquet", "npz") for n in ("train", "valid", "test")) + ("labels.json",)


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


def tree_sha256(root: Path, files: Sequence[Path]) -> str:
    """One digest of ``files`` (paths relative to ``root``, in the given order) and their contents."""
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.as_posix().encode() + b"\0" + sha256_file(root / rel).encode() + b"\n")
    return h.hexdigest()


def verify_version(version: VersionInfo) -> None:
    """A registered version's files are well formed and exactly the ones registered (their joint sha256).

    Raises:
        RegistryError: naming the version, the damaged file when it can be told, and what to do.
    """
    root = version.path
    fix = f"promote another version, or re-register the run of {version.app} v{version.version}"
    try:
        validate_model_dir(root / MODEL_DIR)
    except RegistryError as err:
        raise RegistryError(f"{version.app} v{version.version} is damaged: {err}; {fix}") from None
    if not root.is_dir():
        raise RegistryError(f"{version.app} v{version.version}: {root} is missing; {fix}")
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() or p.is_symlink())
    if tree_sha256(root, files) != version.sha256:
        raise RegistryError(
            f"{version.app} v{version.version} is damaged: the files in {root} changed since registration "
            f"(sha256 mismatch); {fix}"
        )


def _read_json_or(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return default


class VersionStore:
    """Versions, aliases and the audit trail of a registry (one session per call; thread-safe).

    Args:
        engine: The registry's database.
    """

    def __init__(self, engine: RegistryEngine) -> None:
        self._engine = engine
        self.store = engine.store

    def _app(self, session: Session, name: str, create: bool = False) -> App:
        validate_name(name)
        query = select(App).where(App.name == name)
        if not self._engine.is_sqlite:
            query = query.with_for_update()
        app = session.scalars(query).one_or_none()
        if app is None:
            if not create:
                raise RegistryError(f"no app named '{name}' in the registry; register a run with --app {name}")
            app = App(name=name, created_at=utcnow())
            session.add(app)
            session.flush()
        return app

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

        validate_name(app)
        run_dir = Path(run_dir)
        if run_dir.is_symlink():
            raise RegistryError(f"{run_dir}: a symlink; pass the run directory itself")
        run = find_run(run_dir)
        validate_name(run.name, "run name")
        files = [Path("model") / rel for rel in validate_model_dir(run / MODEL_DIR)]
        # then the run's recorded checksums: a damaged model file is refused here, not discovered when serving
        verify_recorded(run, f"it cannot be registered; re-run `modelyard train` or restore {run} from a backup")
        for name in _RUN_FILES:
            if (run / name).is_file():
                files.append(Path(name))
        for name in _RUN_SPLITS:
            if (run / SPLITS_DIR / name).is_file():
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
            if rel.suffix == ".npz":
                check_zip_members(src)  # np.load(allow_pickle=False) later; refuse object arrays now
        metrics = _read_json_or(run / METRICS, {})
        manifest = _read_json_or(run / MANIFEST, {})
        meta = _read_json_or(run / MODEL_DIR / MODEL_META, {})
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
            digest = tree_sha256(staging, sorted(files))

            def allocate() -> VersionInfo:
                with Session(self._engine.writer, expire_on_commit=False) as session:
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
                    add_audit_event(
                        session, app, "register", version, {"run": str(run.resolve()), "sha256": digest}, actor
                    )
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

            return self._engine.retry(allocate)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _info(self, app: str, mv: ModelVersion, aliases: tuple[str, ...] = ()) -> VersionInfo:
        path = safe_join(self.store, *Path(mv.path).parts)
        return VersionInfo(
            app, mv.version, mv.run_id, path, mv.sha256, list(mv.labels), mv.metrics, mv.created_at, aliases
        )

    def list_versions(self, app: str | None = None) -> list[VersionInfo]:
        """Every version (of one app, or of all apps), oldest first, with their aliases."""
        with self._engine.read() as session:
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
        with self._engine.read() as session:
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
        with self._engine.read() as session:
            row = self._app(session, app)
            version = session.scalar(select(Alias.version).where(Alias.app_id == row.id, Alias.alias == alias))
        if version is None:
            raise RegistryError(f"app '{app}' has no '{alias}' version; run `modelyard registry promote {app} N`")
        return self.get_version(app, version)

    def alias_version(self, app: str, alias: str) -> int | None:
        """The version number an alias points at, or ``None`` (cheap: used by the hot-swap poller)."""
        with self._engine.read() as session:
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
            with self._engine.write() as session:
                row = self._app(session, app)
                return self._set_alias(session, row, int(version), alias, action, actor, detail)

        return self._engine.retry(do)

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
        add_audit_event(session, row.name, action, version, info, actor)
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
            with self._engine.write() as session:
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

        return self._engine.retry(do)

    def audit_trail(self, app: str | None = None, action: str | None = None) -> list[dict[str, Any]]:
        """Recorded decisions, oldest first."""
        with self._engine.read() as session:
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
            with self._engine.write() as session:
                add_audit_event(session, app, action, version, detail, actor)

        self._engine.retry(do)
