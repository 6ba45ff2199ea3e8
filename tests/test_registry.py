"""Model registry: register/list/promote/rollback, copies that survive the run, migrations, names and
traversal, pickle refusal with a canary, the CLI, and concurrent writers on SQLite (and PostgreSQL)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.cli import app as cli_app
from modelyard.registry import RegistryError, open_registry, safe_join, validate_name
from modelyard.registry.artifacts import looks_like_pickle, validate_model_dir

HEAD = "0004"  # the newest registry migration (log encryption key ids, log_purges)

POSTGRES_URL = os.environ.get("MODELYARD_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(
    not POSTGRES_URL, reason="MODELYARD_TEST_POSTGRES_URL is not set (start one with: source .ci/postgres.sh)"
)

TRAVERSAL = [
    "../x",
    "..",
    ".",
    "a/../b",
    "%2e%2e",
    "%2e%2e%2fetc",
    "%252e%252e",
    "..\\x",
    "a\\b",
    "/etc/passwd",
    "/abs",
    "file:///etc/passwd",
    "a\x00b",
    "",
    "-leading-dash",
    ".hidden",
    "x" * 129,
    "a/b",
    "name with space",
    "ümlaut",
]


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


@pytest.fixture()
def registry(tmp_path: Path):
    reg = open_registry(tmp_path / "store")
    yield reg
    reg.close()


# ---------------------------------------------------------------- names and traversal


@pytest.mark.parametrize("name", ["a", "A1", "sentiment", "my-app_2.0", "x" * 128, "0abc"])
def test_valid_names_are_accepted(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", TRAVERSAL)
def test_traversal_corpus_is_refused_everywhere(name: str, registry, tiny_trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="invalid"):
        validate_name(name)
    with pytest.raises(RegistryError):
        registry.register(tiny_trained_run, name)
    with pytest.raises(RegistryError):
        registry.promote(name, 1)
    with pytest.raises(RegistryError):
        safe_join(tmp_path, name)
    # nothing was created outside (or inside) the store for the bad name
    assert sorted(p.name for p in (registry.store / "models").iterdir()) == []
    assert registry.count("apps") == 0


def test_symlinks_are_refused(registry, tiny_trained_run: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # a symlinked app directory pointing out of the store
    (registry.store / "models" / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RegistryError, match="outside the registry store"):
        registry.register(tiny_trained_run, "evil")
    assert list(outside.iterdir()) == []
    # a symlink inside the run's model directory (e.g. to /etc/passwd)
    run = _copy_run(tiny_trained_run, tmp_path / "run-link")
    (run / "model" / "extra.json").symlink_to("/etc/hostname")
    with pytest.raises(RegistryError, match="symlink"):
        registry.register(run, "ok")
    # the run directory itself given as a symlink
    link = tmp_path / "run-as-link"
    link.symlink_to(tiny_trained_run, target_is_directory=True)
    with pytest.raises(RegistryError, match="symlink"):
        registry.register(link, "ok")
    assert registry.count("model_versions") == 0


# ---------------------------------------------------------------- pickle refusal with a canary


class _Canary:
    """Unpickling this runs a shell command that creates a file: proof that something was unpickled."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.flag}",))


@pytest.mark.parametrize(
    ("filename", "protocol"),
    [
        ("pytorch_model.bin", 4),
        ("model.safetensors", 2),  # a pickle disguised as safetensors
        ("weights.ckpt", 4),
        ("training_args.pkl", 4),
        ("extra.pt", 4),
        ("config_extra.json", 0),  # protocol 0: no magic bytes, ASCII opcodes
        ("notes.dat", 1),
        ("blob", 5),
    ],
)
def test_pickle_files_are_refused_and_never_unpickled(
    filename: str, protocol: int, registry, tiny_trained_run: Path, tmp_path: Path
) -> None:
    flag = tmp_path / "canary-ran"
    run = _copy_run(tiny_trained_run, tmp_path / "run")
    payload = pickle.dumps(_Canary(flag), protocol=protocol)
    assert looks_like_pickle(payload)
    (run / "model" / filename).write_bytes(payload)
    with pytest.raises(RegistryError, match="pickle|safetensors"):
        registry.register(run, "app")
    assert not flag.exists(), "the canary ran: something unpickled the file"
    assert registry.count("model_versions") == 0
    assert [p for p in (registry.store / "models").rglob("*") if p.is_file()] == []


def test_real_model_files_are_not_mistaken_for_pickles(tiny_trained_run: Path) -> None:
    files = validate_model_dir(tiny_trained_run / "model")
    assert Path("model.safetensors") in files and Path("modelyard.json") in files
    for path in (tiny_trained_run / "model").iterdir():
        assert not looks_like_pickle(path.read_bytes()[: 1 << 16]), path
    assert not looks_like_pickle(b"[PAD]\n[UNK]\n[CLS]\n")
    assert not looks_like_pickle(b'{"a": 1}')


def test_malformed_safetensors_is_refused(registry, tiny_trained_run: Path, tmp_path: Path) -> None:
    run = _copy_run(tiny_trained_run, tmp_path / "run")
    (run / "model" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(RegistryError, match="not a safetensors file"):
        registry.register(run, "app")


# ---------------------------------------------------------------- lifecycle


def test_register_list_promote_rollback_and_audit(registry, tiny_trained_run: Path, tmp_path: Path) -> None:
    run = _copy_run(tiny_trained_run, tmp_path / tiny_trained_run.name)
    v1 = registry.register(run, "sentiment")
    v2 = registry.register(run, "sentiment")
    assert (v1.version, v2.version) == (1, 2)
    assert v1.labels == ["neg", "pos"] and v1.metrics["test"]["accuracy"] >= 0
    assert v1.sha256 == v2.sha256 and v1.path != v2.path
    # the store holds its own copy: deleting the run does not break the version
    shutil.rmtree(run)
    from modelyard.serving.production import load_version

    model = load_version(registry.get_version("sentiment", 1), "production")
    assert model.info()["version"] == 1 and model.predict_proba(["good film"]).shape == (1, 2)
    for name in ("metrics.json", "manifest.json", "recipe.yaml", "splits/test.parquet", "model/model.safetensors"):
        assert (v1.path / name).is_file(), name

    with pytest.raises(RegistryError, match="no 'production' version"):
        registry.resolve("sentiment", "production")
    assert registry.promote("sentiment", 1) is None
    assert registry.promote("sentiment", 2) == 1
    assert registry.promote("sentiment", 1, alias="staging") is None
    assert registry.resolve("sentiment", "production").version == 2
    versions = {v.version: v.aliases for v in registry.list_versions("sentiment")}
    assert versions == {1: ("staging",), 2: ("production",)}
    assert registry.rollback("sentiment") == 1
    assert registry.resolve("sentiment", "production").version == 1
    with pytest.raises(RegistryError, match="no version 7"):
        registry.promote("sentiment", 7)
    with pytest.raises(RegistryError, match="unknown alias"):
        registry.promote("sentiment", 1, alias="canary")
    actions = [(e["action"], e["version"]) for e in registry.audit_trail("sentiment")]
    assert actions == [
        ("register", 1),
        ("register", 2),
        ("promote", 1),
        ("promote", 2),
        ("promote", 1),
        ("rollback", 1),
    ]
    assert registry.audit_trail("sentiment", "rollback")[0]["detail"] == {"alias": "production", "from": 2, "to": 1}


def check_rollbacks_walk_back(reg, run: Path) -> None:
    """Repeated rollbacks undo promotes newest first, down to the first one, then fail clearly."""
    for _ in range(3):
        reg.register(run, "walk")
    with pytest.raises(RegistryError, match="never been promoted to 'production'"):
        reg.rollback("walk")
    for v in (1, 2, 3):
        reg.promote("walk", v)
    reg.promote("walk", 2, alias="staging")
    assert reg.rollback("walk") == 2
    assert reg.rollback("walk") == 1  # the old code toggled back to 2 here
    assert reg.resolve("walk", "production").version == 1
    with pytest.raises(RegistryError, match="no earlier 'production' version.*version 1 was its first"):
        reg.rollback("walk")
    assert reg.resolve("walk", "production").version == 1  # a refused rollback changes nothing
    assert reg.resolve("walk", "staging").version == 2  # other aliases have their own history
    reg.promote("walk", 3)  # a promote after rollbacks is undone first …
    assert reg.rollback("walk") == 1
    reg.promote("walk", 3)
    reg.promote("walk", 2)
    assert reg.rollback("walk") == 3  # … then the walk goes on from there
    assert reg.rollback("walk") == 1
    with pytest.raises(RegistryError, match="version 1 was its first"):
        reg.rollback("walk")
    with pytest.raises(RegistryError, match="version 2 was its first"):
        reg.rollback("walk", alias="staging")
    reg.promote("walk", 1, alias="staging")
    assert reg.rollback("walk", alias="staging") == 2
    trail = [(e["action"], e["detail"]["from"], e["detail"]["to"]) for e in reg.audit_trail("walk", "rollback")]
    assert trail == [
        ("rollback", 3, 2),
        ("rollback", 2, 1),
        ("rollback", 3, 1),
        ("rollback", 2, 3),
        ("rollback", 3, 1),
        ("rollback", 1, 2),
    ]


def test_repeated_rollbacks_walk_back_through_history_sqlite(registry, tiny_trained_run: Path) -> None:
    check_rollbacks_walk_back(registry, tiny_trained_run)


@needs_postgres
def test_repeated_rollbacks_walk_back_through_history_postgres(tiny_trained_run: Path, tmp_path: Path) -> None:
    reg = open_registry(tmp_path / "store", _fresh_postgres_db())
    try:
        check_rollbacks_walk_back(reg, tiny_trained_run)
    finally:
        reg.close()


def test_migrations_match_models_and_reopen_is_idempotent(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from modelyard.registry.models import Base

    reg = open_registry(tmp_path / "s")
    assert reg.schema_revision() == HEAD
    with reg.engine.reader.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], diff
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    reg.close()
    again = open_registry(tmp_path / "s")
    assert again.schema_revision() == HEAD and again.count("apps") == 0


def _migrate_to(url: str, revision: str, down: bool = False) -> None:
    """Run the registry's Alembic migrations up (or down) to ``revision`` on the database at ``url``."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    import modelyard.registry

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(modelyard.registry.__file__).parent / "migrations"))
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, revision)
    finally:
        engine.dispose()


def check_key_expiry_migration(tmp_path: Path, db: str | None) -> None:
    """A registry at revision 0001 holding a key is upgraded to 0002 (``api_keys.expires_at``) on open; the
    key keeps working and never expires; 0002 downgrades and upgrades again."""
    from datetime import datetime, timezone

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine, text

    from modelyard.registry.keys import _secret_hash
    from modelyard.registry.models import Base

    store = tmp_path / "store"
    store.mkdir()
    url = db or f"sqlite:///{store / 'registry.db'}"
    _migrate_to(url, "0001")
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (key_id, secret_sha256, scopes, rate_per_s, name, created_at) "
                "VALUES ('0123456789abcdef', :h, 'predict', NULL, 'old', :at)"
            ),
            {"h": _secret_hash("s3cret"), "at": datetime.now(timezone.utc)},
        )
    engine.dispose()
    old_key = "my_0123456789abcdef_s3cret"

    reg = open_registry(store, db)  # migrates to head
    try:
        assert reg.schema_revision() == HEAD
        with reg.engine.reader.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        info = reg.verify_key(old_key)
        assert info is not None and info.name == "old" and info.expires_at is None
        [row] = reg.list_keys()
        assert row["expires_at"] is None and row["expired"] is False
        new_key = reg.create_key(["predict"], expires="30d")
        assert reg.verify_key(new_key).expires_at is not None
    finally:
        reg.close()
    _migrate_to(url, "0001", down=True)
    _migrate_to(url, "head")
    reg = open_registry(store, db)
    try:
        assert reg.verify_key(old_key) is not None
        renewed = reg.verify_key(new_key)
        assert renewed is not None and renewed.expires_at is None  # the column was dropped and added again
    finally:
        reg.close()


def test_key_expiry_migration_sqlite(tmp_path: Path) -> None:
    check_key_expiry_migration(tmp_path, None)


@needs_postgres
def test_key_expiry_migration_postgres(tmp_path: Path) -> None:
    check_key_expiry_migration(tmp_path, _fresh_postgres_db())


def test_cli_register_list_promote_rollback(tiny_trained_run: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    runner = CliRunner()

    def ok(*args: str) -> str:
        r = runner.invoke(cli_app, [*args, "--store", store])
        assert r.exit_code == 0, (args, r.output, r.stderr if r.stderr_bytes else "")
        return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""

    assert ok("registry", "register", str(tiny_trained_run), "--app", "demo") == "demo@1"
    assert ok("registry", "register", str(tiny_trained_run), "--app", "demo") == "demo@2"
    assert ok("registry", "promote", "demo", "1", "--alias", "production") == "demo@1"
    assert ok("registry", "promote", "demo", "2") == "demo@2"
    rows = [
        json.loads(line)
        for line in runner.invoke(cli_app, ["registry", "list", "--json", "--store", store]).stdout.splitlines()
    ]
    assert [(r["version"], r["aliases"]) for r in rows] == [(1, []), (2, ["production"])]
    assert ok("registry", "rollback", "demo") == "demo@1"
    bad = runner.invoke(cli_app, ["registry", "register", str(tiny_trained_run), "--app", "../etc", "--store", store])
    assert bad.exit_code == 2 and "invalid app name" in bad.stderr
    bad = runner.invoke(cli_app, ["registry", "promote", "demo", "9", "--store", store])
    assert bad.exit_code == 2 and "no version 9" in bad.stderr
    key = ok("keys", "create", "--scope", "predict", "--scope", "feedback", "--rate", "10/s")
    assert key.startswith("my_") and len(key) > 40
    db = (tmp_path / "store" / "registry.db").read_bytes()
    assert key.split("_", 2)[2].encode() not in db  # only the hash is stored
    bad = runner.invoke(cli_app, ["keys", "create", "--scope", "root", "--store", store])
    assert bad.exit_code == 2 and "invalid --scope" in bad.stderr


# ---------------------------------------------------------------- concurrent writers

_WORKER = textwrap.dedent(
    """
    import json, sys, time, uuid
    from datetime import datetime, timezone
    from modelyard.registry import open_registry
    store, db, run, worker, seconds = sys.argv[1], sys.argv[2] or None, sys.argv[3], sys.argv[4], float(sys.argv[5])
    reg = open_registry(store, db)
    counts = {"predictions": 0, "audit_events": 0, "versions": [], "errors": 0}
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline or i < 3:
        try:
            rows = [{"id": str(uuid.uuid4()), "at": datetime.now(timezone.utc), "app": "conc", "version": 1,
                     "key_id": worker, "text": f"t{i}", "label": "pos", "scores": {"pos": 1.0}, "latency_ms": 1.0}
                    for _ in range(5)]
            reg.log_predictions(rows)
            counts["predictions"] += 5
            reg.record("conc", "note", None, {"worker": worker, "i": i})
            counts["audit_events"] += 1
            if i % 4 == 0:
                counts["versions"].append(reg.register(run, "conc").version)
                counts["audit_events"] += 1
        except Exception as err:  # a lock error would land here
            counts["errors"] += 1
            print(repr(err), file=sys.stderr)
        i += 1
    print(json.dumps(counts))
    """
)


def run_concurrent_writers(store: Path, db: str | None, run: Path, seconds: float, workers: int = 4) -> None:
    reg = open_registry(store, db)  # migrate once up front, then measure the writers only
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(store), db or "", str(run), f"w{n}", str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(workers)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=seconds + 120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["errors"] for r in results) == 0, results
    print(  # shown with -s: the numbers behind the hand-over note
        f"{workers} writers x {seconds:g}s: {sum(r['predictions'] for r in results)} predictions, "
        f"{sum(r['audit_events'] for r in results)} audit events, {sum(len(r['versions']) for r in results)} versions"
    )
    versions = sorted(v for r in results for v in r["versions"])
    assert versions == list(range(1, len(versions) + 1))  # no gaps, no duplicates
    assert reg.count("predictions") == sum(r["predictions"] for r in results)
    assert reg.count("audit_events") == sum(r["audit_events"] for r in results)
    assert reg.count("model_versions") == len(versions)
    assert sorted(p.name for p in (store / "models" / "conc").iterdir()) == sorted(f"v{v}" for v in versions)
    reg.close()


@pytest.mark.faults_slow  # a one-minute stress run: `make test-faults` (run by .ci/run), not the default suite
def test_four_concurrent_writer_processes_sqlite_one_minute(tiny_trained_run: Path, tmp_path: Path) -> None:
    run_concurrent_writers(tmp_path / "store", None, tiny_trained_run, seconds=60)


def _fresh_postgres_db() -> str:
    """A new empty database on the test server, so tests never see each other's rows."""
    import uuid

    import psycopg

    assert POSTGRES_URL
    name = f"my_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_URL.rpartition("/")
    return f"{base}/{name}"


@needs_postgres
def test_four_concurrent_writer_processes_postgres_one_minute(tiny_trained_run: Path, tmp_path: Path) -> None:
    run_concurrent_writers(tmp_path / "store", _fresh_postgres_db(), tiny_trained_run, seconds=60)


@needs_postgres
def test_lifecycle_on_postgres(tiny_trained_run: Path, tmp_path: Path) -> None:
    reg = open_registry(tmp_path / "store", _fresh_postgres_db())
    assert reg.schema_revision() == HEAD
    assert reg.register(tiny_trained_run, "pg").version == 1
    assert reg.register(tiny_trained_run, "pg").version == 2
    reg.promote("pg", 1)
    reg.promote("pg", 2)
    assert reg.rollback("pg") == 1
    key = reg.create_key(["predict"], "5/s")
    assert reg.verify_key(key).scopes == frozenset({"predict"})
    assert reg.verify_key(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    expiring = reg.lookup_key(reg.create_key(["predict"], expires="30d"))  # timestamptz round trip
    assert expiring is not None and expiring.expires_at.utcoffset().total_seconds() == 0 and not expiring.expired()
    assert [r["expires_at"] is not None for r in reg.list_keys()] == [False, True]
    reg.close()
