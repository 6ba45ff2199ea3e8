"""Logs at rest: logged inputs encrypted (AES-GCM, key id per value), readers decrypt transparently, key rotation,
purge by date / by id with an audit row, redacted text in the admin API, clear errors for wrong or unsafe keys."""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from modelyard.cli import app as cli_app
from modelyard.config import ServeConfig
from modelyard.ops.monitor import Thresholds, monitor
from modelyard.registry import open_registry
from modelyard.registry.logkeys import ENV_KEY, ENV_KEY_FILE, LogKeyError, key_id, new_key, write_key_file
from modelyard.registry.models import PredictionRecord
from modelyard.serving.predlog import mask_pii
from modelyard.serving.production import create_production_app
from tests.production_helpers import bearer, make_registry, production_app, run, running

SECRET = "quokka marmalade zeppelin"  # distinctive: must never appear in the database files
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)


def _row(text: str, at: datetime | None = None, app: str = "demo") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "at": at or datetime.now(timezone.utc),
        "app": app,
        "version": 1,
        "key_id": None,
        "text": text,
        "label": "pos",
        "scores": {"pos": 0.8, "neg": 0.2},
        "latency_ms": 3.0,
    }


def _db_bytes(store: Path) -> bytes:
    """Every byte SQLite keeps for the registry: the database, its write-ahead log and shared-memory index."""
    return b"".join(p.read_bytes() for p in store.glob("registry.db*"))


def _stored(reg: Any) -> list[tuple[str, str, str | None]]:
    with reg.engine.read() as s:
        return [
            tuple(r) for r in s.execute(select(PredictionRecord.id, PredictionRecord.text, PredictionRecord.enc_key))
        ]


def test_served_inputs_are_encrypted_at_rest_and_every_reader_gets_them_back(
    tmp_path: Path, tiny_trained_run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = make_registry(tmp_path, tiny_trained_run)
    key = reg.create_key(["predict", "feedback", "admin"])
    texts = [f"{SECRET} {i} was a good film, mail me at someone@example.com" for i in range(8)]
    cfg = {"mask_pii": False}  # the log keeps the raw text (encrypted); the admin API must still redact it

    async def main() -> tuple[list[str], list[dict]]:
        async with running(production_app(reg, cfg=cfg)) as c:
            r = await c.post("/v1/predict", json={"texts": texts}, headers=bearer(key))
            assert r.status_code == 200, r.text
            ids = [p["id"] for p in r.json()["predictions"]]
            fb = await c.post("/v1/feedback", json={"prediction_id": ids[0], "label": "neg"}, headers=bearer(key))
            assert fb.status_code == 202
            assert c._transport.app.state.predlog.flush(10)  # type: ignore[attr-defined]
            admin = await c.get("/admin/v1/predictions?limit=50", headers=bearer(key))
            assert admin.status_code == 200
            return ids, admin.json()

    try:
        with caplog.at_level("WARNING", logger="modelyard.registry"):
            ids, shown = run(main())
        # no key configured: one was generated in the store, owner-only, and the user was told
        key_file = reg.store / "log.key"
        assert key_file.is_file() and (key_file.stat().st_mode & 0o777) == 0o600
        assert any("log.key" in r.getMessage() for r in caplog.records)

        raw = _db_bytes(reg.store)
        assert SECRET.encode() not in raw and b"someone@example.com" not in raw and b"quokka" not in raw
        assert all(kid == key_id(reg.log_keys.keyring().keys[0]) for _, _, kid in _stored(reg))

        # the admin API (and the console built on it) shows decrypted, PII-redacted text only
        assert sorted(r["text"] for r in shown) == sorted(mask_pii(t) for t in texts)
        assert not any("someone@example.com" in r["text"] for r in shown)
        # the drift monitor reads the live texts (text length is one of its signals)
        summary = monitor(reg, "demo", since="1h", thresholds=Thresholds(min_samples=5), output=tmp_path / "d.html")
        assert summary["n_live"] == len(texts) and summary["status"] in ("ok", "drift")
        assert sorted(r["text"] for r in reg.predictions("demo")) == sorted(texts)
        # retraining reads feedback joined with the logged text
        assert [(f["prediction_id"], f["text"], f["label"]) for f in reg.feedback("demo")] == [
            (ids[0], texts[0], "neg")
        ]
        assert reg.prediction(ids[0])["text"] == texts[0]
    finally:
        reg.close()


def test_feedback_images_are_encrypted_and_bound_to_their_row(tmp_path: Path) -> None:
    reg = open_registry(tmp_path / "store")
    png = b"\x89PNG fake image bytes " + SECRET.encode()
    sha = "ab" * 32
    now = datetime.now(timezone.utc)
    pred = _row(f"image/png 28x28 sha256:{sha}")
    reg.log_predictions(
        [pred],
        [{"at": now, "prediction_id": pred["id"], "app": "demo", "key_id": None, "label": "pos"}],
        [{"sha256": sha, "app": "demo", "media_type": "image/png", "data": png, "at": now}],
    )
    try:
        assert SECRET.encode() not in _db_bytes(reg.store)
        assert reg.feedback_image(sha) == ("image/png", png)
        # a ciphertext moved onto another row does not decrypt (the row id is bound as associated data)
        other = _row("another text")
        reg.log_predictions([other])
        with reg.engine.write() as s:
            moved = s.scalar(select(PredictionRecord.text).where(PredictionRecord.id == pred["id"]))
            s.execute(update(PredictionRecord).where(PredictionRecord.id == other["id"]).values(text=moved))
        with pytest.raises(LogKeyError, match="altered or damaged"):
            reg.predictions("demo")
        assert reg.prediction(other["id"])["text"].startswith("<not decryptable here")  # display paths: a marker
    finally:
        reg.close()


def test_rotation_re_encrypts_old_rows_under_the_new_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = new_key(), new_key()
    old_id, new_id = (key_id(base64.urlsafe_b64decode(k)) for k in (old, new))
    monkeypatch.setenv(ENV_KEY, old)
    reg = open_registry(tmp_path / "store")
    rows = [_row(f"{SECRET} {i}") for i in range(7)]
    reg.log_predictions(rows[:3])
    reg.log_predictions(rows[3:], encrypt=False)  # rows stored in clear (e.g. logged before encryption existed)
    now = datetime.now(timezone.utc)
    sha = "cd" * 32
    reg.log_predictions([], [], [{"sha256": sha, "app": "demo", "media_type": "image/png", "data": b"px", "at": now}])
    try:
        assert {kid for _, _, kid in _stored(reg)} == {old_id, None}

        # the new key alone cannot read rows written under the old one: a clear error naming the key
        monkeypatch.setenv(ENV_KEY, new)
        with pytest.raises(LogKeyError, match=f"log key {old_id}, which is not configured"):
            reg.predictions("demo")
        assert sum(f"log key {old_id}" in r["text"] for r in reg.recent_predictions("demo")) == 3  # display: markers
        result = reg.rotate_log_key(batch=2)  # nothing decrypts the old rows: left alone and reported
        assert result["unreadable"] == {old_id: 4} and result["predictions"] == 4  # the 4 clear rows got encrypted

        # newest first, the old one still decrypts: rotation re-encrypts everything in batches of 2
        monkeypatch.setenv(ENV_KEY, f"{new},{old}")
        result = reg.rotate_log_key(batch=2)
        assert result == {"key": new_id, "predictions": 3, "images": 1, "unreadable": {}}
        assert {kid for _, _, kid in _stored(reg)} == {new_id}
        assert SECRET.encode() not in _db_bytes(reg.store)

        monkeypatch.setenv(ENV_KEY, new)  # the old key retired: everything still reads
        assert sorted(r["text"] for r in reg.predictions("demo")) == sorted(r["text"] for r in rows)
        assert reg.feedback_image(sha) == ("image/png", b"px")
        monkeypatch.setenv(ENV_KEY, old)  # and the old key alone no longer reads anything
        with pytest.raises(LogKeyError, match=new_id):
            reg.predictions("demo")
    finally:
        reg.close()


def test_rotate_key_cli_with_the_registry_key_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    reg = open_registry(store)
    rows = [_row(f"{SECRET} {i}") for i in range(5)]
    reg.log_predictions(rows)  # generates store/log.key
    first = reg.log_keys.keyring().newest_id
    reg.close()

    r = runner.invoke(cli_app, ["predictions", "rotate-key", "--retire-old", "--store", str(store)])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["predictions"] == 5 and result["key"] != first
    keys = [ln for ln in (store / "log.key").read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(keys) == 1 and key_id(base64.urlsafe_b64decode(keys[0])) == result["key"]
    assert (store / "log.key").stat().st_mode & 0o777 == 0o600

    reg = open_registry(store)
    try:
        assert {kid for _, _, kid in _stored(reg)} == {result["key"]}
        assert sorted(r["text"] for r in reg.predictions("demo")) == sorted(r["text"] for r in rows)
    finally:
        reg.close()


def test_purge_by_date_and_by_id_with_an_audit_row(tmp_path: Path) -> None:
    store = tmp_path / "store"
    reg = open_registry(store)
    now = datetime.now(timezone.utc)
    old = [_row(f"old {SECRET} {i}", at=now - timedelta(days=40 + i)) for i in range(4)]
    recent = [_row(f"recent text {i}", at=now - timedelta(days=i)) for i in range(5)]
    other_app = [_row("other app, old", at=now - timedelta(days=90), app="other")]
    feedback = [
        {
            "at": r["at"] + timedelta(minutes=1),
            "prediction_id": r["id"],
            "app": r["app"],
            "key_id": None,
            "label": "neg",
        }
        for r in (old[0], old[1], recent[0], recent[1])
    ]
    sha = "ef" * 32
    image_pred = _row(f"image/png 28x28 sha256:{sha}", at=now - timedelta(days=1))
    image = {"sha256": sha, "app": "demo", "media_type": "image/png", "data": b"pixels", "at": now}
    reg.log_predictions([*old, *recent, *other_app, image_pred], feedback, [image])
    reg.close()

    dry = runner.invoke(
        cli_app, ["predictions", "purge", "--before", "30d", "--app", "demo", "--dry-run", "--store", str(store)]
    )
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["predictions"] == 4
    r = runner.invoke(
        cli_app,
        ["predictions", "purge", "--before", "30d", "--app", "demo", "--reason", "retention", "--store", str(store)],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) | {"criteria": None} == {
        "predictions": 4,
        "feedback": 2,
        "images": 0,
        "not_found": 0,
        "undecryptable": 0,
        "criteria": None,
        "dry_run": False,
    }
    reg = open_registry(store)
    try:
        assert {p["id"] for p in reg.predictions("demo")} == {p["id"] for p in [*recent, image_pred]}
        assert len(reg.predictions("other")) == 1  # another app's old rows were out of scope
        assert {f["prediction_id"] for f in reg.feedback("demo")} == {recent[0]["id"], recent[1]["id"]}
        [audit] = reg.log_purges()
        assert audit["predictions"] == 4 and audit["feedback"] == 2 and audit["actor"].startswith("user:")
        assert audit["criteria"]["app"] == "demo" and audit["criteria"]["reason"] == "retention"
        assert datetime.fromisoformat(audit["criteria"]["before"]) < now - timedelta(days=29)
        assert b"old " + SECRET.encode() not in _db_bytes(store)

        # the right to be forgotten: one person's predictions by id, with the image sent back for one of them
        result = reg.purge_predictions(
            ids=[recent[0]["id"], image_pred["id"], str(uuid.uuid4())],
            image_of=lambda t: t.rsplit("sha256:", 1)[1] if "sha256:" in t else None,
        )
        assert (result["predictions"], result["feedback"], result["images"], result["not_found"]) == (2, 1, 1, 1)
        assert {p["id"] for p in reg.predictions("demo")} == {p["id"] for p in recent[1:]}
        assert reg.feedback_image(sha) is None and reg.count("feedback_images") == 0
        assert [f["prediction_id"] for f in reg.feedback("demo")] == [recent[1]["id"]]
        audits = reg.log_purges()
        assert len(audits) == 2 and recent[0]["id"] in audits[1]["criteria"]["ids"]

        listed = runner.invoke(cli_app, ["predictions", "purges", "--store", str(store)])
        assert listed.exit_code == 0 and len(listed.stdout.strip().splitlines()) == 2
        neither = runner.invoke(cli_app, ["predictions", "purge", "--store", str(store)])
        assert neither.exit_code == 2 and "exactly one of --before" in neither.output
        bad_date = runner.invoke(cli_app, ["predictions", "purge", "--before", "last week", "--store", str(store)])
        assert bad_date.exit_code == 2 and "is not a date" in bad_date.output
    finally:
        reg.close()


def test_wrong_missing_or_unsafe_keys_give_clear_errors(
    tmp_path: Path, tiny_trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = make_registry(tmp_path, tiny_trained_run)
    monkeypatch.setenv(ENV_KEY, new_key())
    reg.log_predictions([_row(f"{SECRET} {i}") for i in range(3)])
    written_with = reg.log_keys.keyring().newest_id
    reg.close()
    store = str(reg.store)

    # the wrong key: the monitor stops with one line naming the key it needs (exit 2, no traceback)
    monkeypatch.setenv(ENV_KEY, new_key())
    r = runner.invoke(cli_app, ["monitor", "demo", "--since", "1h", "--store", store])
    assert r.exit_code == 2, r.output
    assert f"log key {written_with}, which is not configured" in r.output and "Traceback" not in r.output

    # a malformed key
    monkeypatch.setenv(ENV_KEY, "not-a-key")
    r = runner.invoke(cli_app, ["monitor", "demo", "--since", "1h", "--store", store])
    assert r.exit_code == 2 and "is not the base64 of 32 bytes" in r.output

    # a key file other users can read is refused, as ssh refuses such a private key; the server does not start
    monkeypatch.delenv(ENV_KEY)
    key_file = tmp_path / "log.keys"
    write_key_file(key_file, [os.urandom(32)])
    key_file.chmod(0o644)
    reg = open_registry(reg.store)
    try:
        with pytest.raises(LogKeyError, match="chmod 600"):
            create_production_app(reg, "demo", "production", ServeConfig(log_key_file=str(key_file)), poll_s=0)
        key_file.chmod(0o600)
        app = create_production_app(reg, "demo", "production", ServeConfig(log_key_file=str(key_file)), poll_s=0)
        assert app.state.jobs.env[ENV_KEY_FILE] == str(key_file.resolve())  # drift jobs read the same keys
        missing = tmp_path / "nope.key"
        with pytest.raises(LogKeyError, match="does not exist"):
            create_production_app(reg, "demo", "production", ServeConfig(log_key_file=str(missing)), poll_s=0)
    finally:
        reg.close()


def test_plaintext_logging_only_when_chosen(tmp_path: Path, tiny_trained_run: Path) -> None:
    reg = make_registry(tmp_path, tiny_trained_run)
    key = reg.create_key(["predict"])

    async def main() -> None:
        async with running(production_app(reg, cfg={"log_inputs": "plaintext"})) as c:
            r = await c.post("/v1/predict", json={"texts": [SECRET]}, headers=bearer(key))
            assert r.status_code == 200
            assert c._transport.app.state.predlog.flush(10)  # type: ignore[attr-defined]

    try:
        run(main())
        assert _stored(reg)[0][1:] == (SECRET, None)
        assert not (reg.store / "log.key").exists()
        assert reg.predictions("demo")[0]["text"] == SECRET
    finally:
        reg.close()


def test_new_key_cli(tmp_path: Path) -> None:
    r = runner.invoke(cli_app, ["predictions", "new-key"])
    assert r.exit_code == 0 and len(base64.urlsafe_b64decode(r.stdout.strip())) == 32
    out = tmp_path / "k"
    r = runner.invoke(cli_app, ["predictions", "new-key", "-o", str(out)])
    assert r.exit_code == 0 and out.stat().st_mode & 0o777 == 0o600
    again = runner.invoke(cli_app, ["predictions", "new-key", "-o", str(out)])
    assert again.exit_code == 2 and "exists" in again.output


def test_two_processes_generating_the_key_at_once_share_one(tmp_path: Path) -> None:
    import threading

    from modelyard.registry.logkeys import LogKeys

    rings: list = []
    barrier = threading.Barrier(4)

    def make() -> None:
        barrier.wait()
        rings.append(LogKeys(tmp_path).for_writing())

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.newest_id for r in rings}) == 1 and [p.name for p in tmp_path.iterdir()] == ["log.key"]
