"""API-key expiry: ``modelyard keys create --expires 30d`` (s/m/h/d, validated), stored with the key,
shown by ``keys list``, and refused by the servers with 401 ``key_expired`` (not ``unauthorized``) from the
instant it passes, even while the key is cached. A controllable clock, or a 2-second key for the real one."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelyard.cli import app as cli_app
from modelyard.registry import RegistryError
from modelyard.registry import keys as keys_module
from modelyard.registry.keys import parse_duration
from modelyard.serving import security
from tests.production_helpers import bearer, make_registry, production_app, run, running

BODY = {"texts": ["a good film"]}


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, tiny_trained_run: Path):
    r = make_registry(tmp_path_factory.mktemp("expiry"), tiny_trained_run)
    yield r
    r.close()


def _error(r: Any, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("45s", timedelta(seconds=45)), ("90m", timedelta(minutes=90)), ("12h", timedelta(hours=12)),
     ("30d", timedelta(days=30)), (" 7d ", timedelta(days=7))],
)  # fmt: skip
def test_parse_duration_accepts_s_m_h_d(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "-1d", "1.5h", "30w", "1d2h", "1 d", "30D", "9999999999d"])
def test_parse_duration_refuses_anything_else(text: str) -> None:
    with pytest.raises(RegistryError, match="--expires"):
        parse_duration(text)


def test_keys_create_expires_and_keys_list_through_the_cli(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    for bad in ("30", "0d", "1.5h", "2w"):  # refused before anything is created
        r = _cli("keys", "create", "--scope", "predict", "--expires", bad, "--store", store)
        assert r.exit_code == 2 and "invalid --expires" in r.stderr, (bad, r.output)
    assert not (tmp_path / "store").exists()
    r = _cli("keys", "create", "--scope", "predict", "--expires", "999999999d", "--store", store)
    assert r.exit_code == 2 and "too long" in r.stderr, r.output

    before = datetime.now(timezone.utc)
    r = _cli("keys", "create", "--scope", "predict", "--expires", "30d", "--name", "ci", "--store", store)
    after = datetime.now(timezone.utc)
    assert r.exit_code == 0, r.output
    expiring = r.stdout.strip()
    assert expiring.startswith("my_") and "expires at" in r.stderr
    r = _cli("keys", "create", "--scope", "admin", "--store", store)
    assert r.exit_code == 0 and "expires" not in r.stderr, r.output
    forever = r.stdout.strip()

    r = _cli("keys", "list", "--store", store)
    assert r.exit_code == 0, r.output
    rows = {row["key_id"]: row for row in map(json.loads, r.stdout.splitlines())}
    first, second = rows[expiring.split("_")[1]], rows[forever.split("_")[1]]
    expires_at = datetime.fromisoformat(first["expires_at"])
    assert before + timedelta(days=30) <= expires_at <= after + timedelta(days=30)
    assert expires_at.utcoffset() == timedelta(0) and first["expired"] is False and first["name"] == "ci"
    assert second["expires_at"] is None and second["expired"] is False


def test_registry_refuses_an_expired_key_to_everyone_but_the_servers_check(
    reg, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = reg.create_key(["predict"], expires="1h")
    info = reg.lookup_key(key)
    assert info is not None and info.expires_at is not None and info.expires_at.tzinfo is not None
    assert not info.expired(info.expires_at - timedelta(microseconds=1)) and info.expired(info.expires_at)
    assert reg.verify_key(key) == info
    # an hour later: verify_key (any other caller) says no; lookup_key (the server) still names the key
    monkeypatch.setattr(keys_module, "utcnow", lambda: info.expires_at + timedelta(seconds=1))
    assert reg.verify_key(key) is None and reg.lookup_key(key) == info
    [row] = [r for r in reg.list_keys() if r["key_id"] == info.key_id]
    assert row["expired"] is True
    assert [e["detail"]["expires_at"] for e in reg.audit_trail("-", "key_create")][-1] == info.expires_at.isoformat()


class _Clock:
    """The servers' wall clock (``security.utcnow``), moved by the test."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset


def test_expired_key_answers_401_key_expired_even_while_cached(reg, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(security, "utcnow", clock)
    expiring = reg.create_key(["predict"], expires="1h")
    forever = reg.create_key(["predict"])
    revoked = reg.create_key(["predict"], expires="1h")
    reg.revoke_key(revoked.split("_")[1])

    async def main() -> None:
        # a long key cache: the key is verified once and then answered from the cache
        async with running(production_app(reg, key_cache_s=3600)) as c:
            assert (await c.post("/v1/predict", json=BODY, headers=bearer(expiring))).status_code == 200
            clock.offset = timedelta(minutes=59, seconds=59)
            assert (await c.post("/v1/predict", json=BODY, headers=bearer(expiring))).status_code == 200
            clock.offset = timedelta(hours=1, seconds=1)
            r = await c.post("/v1/predict", json=BODY, headers=bearer(expiring))
            message = _error(r, 401, "key_expired")
            assert "expired at" in message and "modelyard keys create" in message
            assert r.headers["www-authenticate"].startswith("Bearer")
            # every route, every scope: the key is refused before anything else is looked at
            _error(await c.get("/v1/model", headers=bearer(expiring)), 401, "key_expired")
            _error(await c.post("/v1/feedback", json={}, headers=bearer(expiring)), 401, "key_expired")
            # distinct from an unknown or revoked key, and keys without a lifetime are unaffected
            _error(await c.post("/v1/predict", json=BODY, headers=bearer(revoked)), 401, "unauthorized")
            _error(
                await c.post("/v1/predict", json=BODY, headers=bearer("my_0123456789abcdef_wrong")), 401, "unauthorized"
            )
            assert (await c.post("/v1/predict", json=BODY, headers=bearer(forever))).status_code == 200
            clock.offset = timedelta(days=36500)
            assert (await c.post("/v1/predict", json=BODY, headers=bearer(forever))).status_code == 200

    run(main())


def test_cli_created_short_lived_key_stops_working_on_time(reg) -> None:
    """The real clock: ``keys create --expires 2s``, served by the production server, refused 2 s later."""

    async def main() -> None:
        async with running(production_app(reg)) as c:  # default key cache (5 s): longer than the key's life
            before = time.monotonic()  # the key is created (and its 2 s start) after this …
            args = ("keys", "create", "--scope", "predict", "--expires", "2s", "--store", str(reg.store))
            r = await asyncio.to_thread(_cli, *args)
            after = time.monotonic()  # … and before this
            assert r.exit_code == 0, r.output
            key = r.stdout.strip()
            ok = await c.post("/v1/predict", json=BODY, headers=bearer(key))
            if time.monotonic() < before + 1.9:  # certainly inside its lifetime
                assert ok.status_code == 200, ok.text
            await asyncio.sleep(max(0.0, after + 2.0 - time.monotonic()) + 0.1)  # certainly past it
            for _ in range(2):
                _error(await c.post("/v1/predict", json=BODY, headers=bearer(key)), 401, "key_expired")

    run(main())
    rows = [json.loads(line) for line in _cli("keys", "list", "--store", str(reg.store)).stdout.splitlines()]
    assert [r["expired"] for r in rows if r["expires_at"] is not None][-1] is True


def test_plain_server_with_serve_auth_refuses_expired_keys(
    reg, tiny_trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.serving import production

    clock = _Clock()
    monkeypatch.setattr(security, "utcnow", clock)
    captured: list[Any] = []
    monkeypatch.setattr(production, "run_app", lambda web, cfg, host, port: captured.append(web))
    r = _cli("serve", str(tiny_trained_run), "serve.auth=true", "--store", str(reg.store))
    assert r.exit_code == 0, r.output
    key = reg.create_key(["predict"], expires="10m")

    async def main() -> None:
        async with running(captured[0]) as c:
            assert (await c.post("/v1/predict", json=BODY, headers=bearer(key))).status_code == 200
            clock.offset = timedelta(minutes=10)
            _error(await c.post("/v1/predict", json=BODY, headers=bearer(key)), 401, "key_expired")

    run(main())
