"""Production server security: API keys and scopes (401/403), rate limits (429 + Retry-After),
content-type allowlist (415, pickle included), CORS off, loopback by default."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from modelyard.config import ServeConfig
from modelyard.serving import docs, security
from modelyard.serving.security import TokenBuckets, required_scope
from tests.production_helpers import bearer, make_registry, production_app, run, running


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, tiny_trained_run: Path):
    r = make_registry(tmp_path_factory.mktemp("sec"), tiny_trained_run)
    yield r
    r.close()


@pytest.fixture(scope="module")
def keys(reg) -> dict[str, str]:
    return {
        "predict": reg.create_key(["predict"]),
        "feedback": reg.create_key(["feedback"]),
        "admin": reg.create_key(["admin"]),
        "client": reg.create_key(["predict", "feedback"]),
    }


def _error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"]["code"] == code, body
    return body["error"]


def test_required_scopes() -> None:
    assert required_scope("/healthz") is None and required_scope("/readyz") is None
    assert required_scope("/v1/predict") == "predict" and required_scope("/v1/explain") == "predict"
    assert required_scope("/v1/feedback") == "feedback"
    assert required_scope("/admin/v1/versions") == "admin" and required_scope("/metrics") == "admin"
    assert required_scope("/docs") == "any" and required_scope("/nope") == "any"
    public = security.PUBLIC_PATHS | docs.public_docs_paths("public")
    assert required_scope("/docs", public) is None and required_scope("/openapi.json", public) is None
    assert required_scope("/v1/predict", public) == "predict" and required_scope("/docs/x.js", public) == "any"


def test_keys_and_scopes(reg, keys: dict[str, str]) -> None:
    async def main() -> None:
        async with running(production_app(reg)) as c:
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/readyz")).status_code == 200
            body = {"texts": ["a good film"]}
            err = _error(await c.post("/v1/predict", json=body), 401, "unauthorized")
            assert "Authorization: Bearer" in err["message"]
            r = await c.post("/v1/predict", json=body)
            assert r.headers["www-authenticate"].startswith("Bearer")
            _error(
                await c.post("/v1/predict", json=body, headers=bearer("my_0123456789abcdef_wrong")), 401, "unauthorized"
            )
            _error(await c.post("/v1/predict", json=body, headers={"Authorization": "Basic abc"}), 401, "unauthorized")
            _error(await c.post("/v1/predict", json=body, headers=bearer(keys["feedback"])), 403, "forbidden")
            ok = await c.post("/v1/predict", json=body, headers=bearer(keys["predict"]))
            assert ok.status_code == 200 and ok.json()["model"]["version"] == 1
            ok = await c.post("/v1/predict", json=body, headers={"X-API-Key": keys["admin"]})
            assert ok.status_code == 200  # admin carries every scope
            fb = {"prediction_id": ok.json()["predictions"][0]["id"], "label": "pos"}
            _error(await c.post("/v1/feedback", json=fb, headers=bearer(keys["predict"])), 403, "forbidden")
            for path in ("/admin/v1/versions", "/metrics"):
                _error(await c.get(path, headers=bearer(keys["client"])), 403, "forbidden")
                assert (await c.get(path, headers=bearer(keys["admin"]))).status_code == 200
            versions = (await c.get("/admin/v1/versions", headers=bearer(keys["admin"]))).json()
            assert [(v["version"], v["aliases"]) for v in versions] == [(1, ["production"])]
            # serve.docs: public (the default): the API docs need no key (tests/test_docs.py covers key and off)
            assert (await c.get("/openapi.json")).status_code == 200
            assert (await c.get("/openapi.json", headers=bearer(keys["predict"]))).status_code == 200
            metrics = (await c.get("/metrics", headers=bearer(keys["admin"]))).text
            assert 'modelyard_http_requests_total{method="POST",route="/v1/predict",status="401"}' in metrics
            assert 'modelyard_http_requests_total{method="POST",route="/v1/predict",status="403"}' in metrics

    run(main())


def test_revoked_key_stops_working(reg) -> None:
    key = reg.create_key(["predict"])

    async def main() -> None:
        async with running(production_app(reg, key_cache_s=0)) as c:  # no cache: revocation is immediate
            assert (await c.post("/v1/predict", json={"texts": ["x"]}, headers=bearer(key))).status_code == 200
            reg.revoke_key(key.split("_")[1])
            _error(await c.post("/v1/predict", json={"texts": ["x"]}, headers=bearer(key)), 401, "unauthorized")

    run(main())


KEY_CACHE_S = 2.0


def test_revoked_key_is_refused_once_the_key_cache_window_ends(reg) -> None:
    """The documented bound: a revoked key keeps working at most ``key_cache_s`` after the server last checked it."""
    key = reg.create_key(["predict"])
    body = {"texts": ["x"]}

    async def main() -> None:
        async with running(production_app(reg, key_cache_s=KEY_CACHE_S)) as c:
            before_check = time.monotonic()  # the server checks the key (and caches it) after this …
            assert (await c.post("/v1/predict", json=body, headers=bearer(key))).status_code == 200
            after_check = time.monotonic()  # … and before this
            await asyncio.to_thread(reg.revoke_key, key.split("_")[1])
            r = await c.post("/v1/predict", json=body, headers=bearer(key))
            if time.monotonic() < before_check + KEY_CACHE_S:  # certainly inside the window: still cached
                assert r.status_code == 200, r.text
            await asyncio.sleep(max(0.0, after_check + KEY_CACHE_S - time.monotonic()) + 0.05)
            # past the window the key is looked up again: refused, and stays refused
            for _ in range(2):
                _error(await c.post("/v1/predict", json=body, headers=bearer(key)), 401, "unauthorized")

    run(main())


def test_key_cache_answers_from_cache_for_exactly_its_lifetime() -> None:
    now = [100.0]
    answers = {"k": "info"}
    calls: list[str] = []

    def verify(key: str) -> Any:
        calls.append(key)
        return answers.get(key)

    cache = security.KeyCache(verify, ttl_s=2.0, clock=lambda: now[0])
    assert asyncio.run(cache.get("k")) == "info" and calls == ["k"]
    answers.clear()  # revoked in the registry
    now[0] += 1.999
    assert asyncio.run(cache.get("k")) == "info" and calls == ["k"]  # inside the window: cached
    now[0] += 0.001
    assert asyncio.run(cache.get("k")) is None and calls == ["k", "k"]  # at t + ttl: looked up again
    assert asyncio.run(cache.get("k")) is None and calls == ["k", "k"]  # the refusal is cached too


def test_key_cache_lifetime_setting(reg, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.registry import RegistryError

    def cache_s(app: Any) -> float:
        [auth] = [m for m in app.user_middleware if m.cls is security.ApiKeyMiddleware]
        return auth.kwargs["cache_s"]

    monkeypatch.delenv(security.KEY_CACHE_ENV, raising=False)
    assert security.key_cache_seconds() == security.KEY_CACHE_TTL_S == 5.0
    assert cache_s(production_app(reg)) == 5.0
    monkeypatch.setenv(security.KEY_CACHE_ENV, "0.25")
    assert cache_s(production_app(reg)) == 0.25
    assert cache_s(production_app(reg, key_cache_s=7)) == 7.0  # the argument wins over the environment
    for bad in ("-1", "soon", "nan", "inf"):
        monkeypatch.setenv(security.KEY_CACHE_ENV, bad)
        with pytest.raises(RegistryError, match="MODELYARD_KEY_CACHE_SECONDS must be a number of seconds >= 0"):
            production_app(reg)
    with pytest.raises(RegistryError, match="key_cache_s must be"):
        production_app(reg, key_cache_s=-0.5)


def test_token_bucket() -> None:
    now = [100.0]
    buckets = TokenBuckets(clock=lambda: now[0])
    assert [buckets.take("k", 2.0) for _ in range(2)] == [0.0, 0.0]  # burst of max(1, rate)
    assert buckets.take("k", 2.0) == pytest.approx(0.5)
    now[0] += 0.5
    assert buckets.take("k", 2.0) == 0.0
    assert buckets.take("other", 2.0) == 0.0  # per key
    assert buckets.take("slow", 0.1) == 0.0 and buckets.take("slow", 0.1) == pytest.approx(10.0)


def test_rate_limit_answers_429_with_retry_after(reg) -> None:
    key = reg.create_key(["predict"], rate="2/s")
    other = reg.create_key(["predict"])

    async def main() -> None:
        async with running(production_app(reg)) as c:
            codes = [
                (await c.post("/v1/predict", json={"texts": ["x"]}, headers=bearer(key))).status_code for _ in range(6)
            ]
            assert codes[:2] == [200, 200] and 429 in codes[2:], codes
            r = await c.post("/v1/predict", json={"texts": ["x"]}, headers=bearer(key))
            err = _error(r, 429, "rate_limited")
            assert int(r.headers["retry-after"]) >= 1 and "2 requests/s" in err["message"]
            # another key is not affected
            assert (await c.post("/v1/predict", json={"texts": ["x"]}, headers=bearer(other))).status_code == 200

    run(main())


@pytest.mark.parametrize(
    "content_type",
    ["application/x-python-pickle", "application/vnd.foo+pickle", "application/python-pickle", "text/plain", ""],
)
def test_content_type_allowlist(reg, keys: dict[str, str], content_type: str) -> None:
    import pickle

    async def main() -> None:
        async with running(production_app(reg)) as c:
            headers = {**bearer(keys["client"]), "Content-Type": content_type}
            body = pickle.dumps({"texts": ["x"]})
            for path in ("/v1/predict", "/v1/feedback"):
                _error(await c.post(path, content=body, headers=headers), 415, "unsupported_media_type")
            # without a key the body is never looked at: 401 first
            _error(
                await c.post("/v1/predict", content=body, headers={"Content-Type": content_type}), 401, "unauthorized"
            )

    run(main())


def test_cors_is_off(reg, keys: dict[str, str]) -> None:
    async def main() -> None:
        async with running(production_app(reg)) as c:
            origin = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
            r = await c.options("/v1/predict", headers={**origin, **bearer(keys["client"])})
            assert "access-control-allow-origin" not in r.headers
            r = await c.post("/v1/predict", json={"texts": ["x"]}, headers={**origin, **bearer(keys["client"])})
            assert r.status_code == 200 and "access-control-allow-origin" not in r.headers

    run(main())


def test_every_listening_socket_defaults_to_loopback(reg, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from modelyard.serving.production import run_app

    seen: list[str] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: seen.append(self.config.host))
    assert ServeConfig().host == "127.0.0.1"
    run_app(production_app(reg), ServeConfig(), host=None, port=0)
    run_app(production_app(reg), ServeConfig(), host="0.0.0.0", port=0)  # only when asked for explicitly
    assert seen == ["127.0.0.1", "0.0.0.0"]


class _Slow:
    """Wraps the served model: each batch takes 0.3 s (to fill the bounded queue)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.labels = inner.labels

    def predict_proba(self, texts: list[str]) -> Any:
        import time

        time.sleep(0.3)
        return self.inner.predict_proba(texts)

    def info(self) -> dict[str, Any]:
        return self.inner.info()


def test_backpressure_bounded_queue_answers_503_with_retry_after(reg, keys: dict[str, str]) -> None:
    app = production_app(reg, cfg={"max_queue": 4, "max_texts_per_request": 2, "max_batch_size": 2})

    async def main() -> list[Any]:
        async with running(app) as c:
            app.state.runtime.swap(_Slow(app.state.runtime.loaded.classifier))
            reqs = [
                c.post("/v1/predict", json={"texts": ["a", "b"]}, headers=bearer(keys["client"])) for _ in range(12)
            ]
            return list(await asyncio.gather(*reqs))

    responses = run(main())
    codes = [r.status_code for r in responses]
    assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
    for r in responses:
        if r.status_code == 503:
            assert _error(r, 503, "overloaded") and r.headers["retry-after"] == "1"


def test_serve_run_dir_with_serve_auth_true_requires_keys(
    reg, keys: dict[str, str], tiny_trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import yaml
    from typer.testing import CliRunner

    from modelyard.cli import app as cli_app
    from modelyard.serving import production

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_trained_run, run_dir)
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe.setdefault("serve", {})["auth"] = True
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    captured: list[Any] = []
    monkeypatch.setattr(production, "run_app", lambda web, cfg, host, port: captured.append(web))
    r = CliRunner().invoke(cli_app, ["serve", str(run_dir), "--store", str(reg.store)])
    assert r.exit_code == 0, r.output
    [web] = captured

    async def main() -> None:
        async with running(web) as c:
            _error(await c.post("/v1/predict", json={"texts": ["x"]}), 401, "unauthorized")
            ok = await c.post("/v1/predict", json={"texts": ["x"]}, headers=bearer(keys["predict"]))
            assert ok.status_code == 200 and ok.json()["predictions"][0]["id"] is None  # no log without a registry app

    run(main())


def test_auth_runs_before_every_other_middleware_but_metrics(reg) -> None:
    from modelyard.serving.middleware import MetricsMiddleware
    from modelyard.serving.security import ApiKeyMiddleware

    classes = [m.cls for m in production_app(reg).user_middleware]
    # outermost first: metrics count the 401s, and no body/image handler runs before the key check
    assert classes[:2] == [MetricsMiddleware, ApiKeyMiddleware], classes


def test_in_flight_requests_per_key_are_capped_and_other_keys_are_unaffected(reg, keys: dict[str, str]) -> None:
    other = reg.create_key(["predict"])
    app = production_app(reg, cfg={"max_in_flight_per_key": 2, "max_batch_size": 1})

    async def main() -> tuple[list[Any], Any, Any]:
        async with running(app) as c:
            app.state.runtime.swap(_Slow(app.state.runtime.loaded.classifier))
            same = [c.post("/v1/predict", json={"texts": ["a"]}, headers=bearer(keys["client"])) for _ in range(6)]
            others = c.post("/v1/predict", json={"texts": ["b"]}, headers=bearer(other))
            *answers, second_key = await asyncio.gather(*same, others)
            after = await c.post("/v1/predict", json={"texts": ["c"]}, headers=bearer(keys["client"]))
            return answers, second_key, after

    answers, second_key, after = run(main())
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 2 and codes.count(429) == 4, codes
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["error"]["code"] == "too_many_in_flight" and refused.headers["Retry-After"] == "1"
    assert second_key.status_code == 200  # the cap is per key
    assert after.status_code == 200  # the count went back to zero (no leak)
