"""The API docs (``/docs``): Swagger UI served by the app itself from a PyPI package (no CDN) under the
console's Content-Security-Policy; the ``serve.docs`` setting (public | key | off) on the plain and the
production server; and Swagger UI rendered in headless Chromium with every non-loopback request blocked."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
import pytest

from modelyard.config import ServeConfig
from modelyard.errors import ConfigError
from modelyard.serving import create_app, docs
from modelyard.serving.headers import CONTENT_SECURITY_POLICY
from tests.production_helpers import bearer, live_server, make_registry, production_app, run, running

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
DOCS_PATHS = ["/docs", *sorted(set(docs.DOCS_FILES) - {"/docs"}), "/openapi.json"]
MEDIA = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


class _Fake:
    labels = ["neg", "pos"]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.tile([0.25, 0.75], (len(texts), 1))

    def info(self) -> dict[str, Any]:
        return {"name": "fake"}


def _plain(**cfg: Any) -> Any:
    return create_app(_Fake, ServeConfig(**cfg))


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, tiny_trained_run: Path):
    r = make_registry(tmp_path_factory.mktemp("docs"), tiny_trained_run)
    yield r
    r.close()


@pytest.fixture(scope="module")
def keys(reg) -> dict[str, str]:
    return {"feedback": reg.create_key(["feedback"]), "admin": reg.create_key(["admin"])}


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.request.url, r.status_code, r.text[:200])
    assert r.json()["error"]["code"] == code, r.text


# ---------------------------------------------------------------------------------------------- HTTP


def test_docs_page_and_every_file_it_loads_come_from_the_app_under_the_console_csp() -> None:
    async def main() -> None:
        async with running(_plain(), ready=False) as c:
            page = await c.get("/docs")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert "unsafe-inline" not in CONTENT_SECURITY_POLICY and "unsafe-eval" not in CONTENT_SECURITY_POLICY
            html = page.text
            # no inline script, style or event handler: all of them would need 'unsafe-inline'
            scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S)
            assert len(scripts) == 2 and all("src=" in attrs and not body.strip() for attrs, body in scripts), scripts
            assert "<style" not in html and " style=" not in html and not re.search(r"\son[a-z]+=", html)
            refs = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", html)
            assert len(refs) == 4, refs  # icon, style sheet, Swagger UI, its start-up script
            for ref in refs:
                parts = urlsplit(ref)
                assert not parts.scheme and not parts.netloc, ref  # same origin: no other host, no CDN
                url = urljoin(str(page.url), ref)
                assert urlsplit(url).netloc == "test" and urlsplit(url).path in docs.DOCS_FILES, url
                r = await c.get(url)
                assert r.status_code == 200, (url, r.status_code)
                assert r.headers["content-type"].startswith(MEDIA[Path(ref).suffix]), (url, r.headers)
                assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
                assert r.headers["x-content-type-options"] == "nosniff"
                assert len(r.content) > 100
            init = (await c.get("/docs/swagger-init.js")).text
            # the document is fetched relative to the page (works under a path prefix); no validator, no URL
            assert '"openapi.json"' in init and "validatorUrl: null" in init and "://" not in init
            spec_url = urljoin(str(page.url), "openapi.json")
            spec = (await c.get(spec_url)).json()
            assert "/v1/predict" in spec["paths"]
            assert not {"/docs", *docs.DOCS_FILES} & set(spec["paths"])  # the docs don't document themselves
            assert "SwaggerUIBundle" in (await c.get("/docs/swagger-ui-bundle.js")).text[:2000]
            # FastAPI's own CDN-backed pages are gone
            assert "cdn.jsdelivr.net" not in html
            for gone in ("/redoc", "/docs/oauth2-redirect"):
                _error(await c.get(gone), 404, "not_found")

    run(main())


@pytest.mark.parametrize("mode", ["public", "key", "off"])
def test_serve_docs_setting_on_the_production_server(reg, keys: dict[str, str], mode: str) -> None:
    async def main() -> None:
        async with running(production_app(reg, cfg={"docs": mode}), ready=False) as c:
            for path in DOCS_PATHS:
                anonymous = await c.get(path)
                # any valid key reads the docs, whatever its scope
                keyed = await c.get(path, headers=bearer(keys["feedback"]))
                wrong = await c.get(path, headers=bearer("my_0123456789abcdef_wrong"))
                if mode == "public":
                    assert anonymous.status_code == keyed.status_code == wrong.status_code == 200, path
                elif mode == "key":
                    _error(anonymous, 401, "unauthorized")
                    assert anonymous.headers["www-authenticate"].startswith("Bearer")
                    _error(wrong, 401, "unauthorized")
                    assert keyed.status_code == 200, (path, keyed.text[:200])
                else:
                    _error(anonymous, 404, "not_found")
                    _error(keyed, 404, "not_found")
                    assert "see /docs" not in keyed.json()["error"]["message"]
            # the setting is about the docs only: the API still needs a key, and other paths stay private
            _error(await c.post("/v1/predict", json={"texts": ["x"]}), 401, "unauthorized")
            _error(await c.get("/docs/other.js"), 401, "unauthorized")
            _error(await c.get("/redoc"), 401, "unauthorized")

    run(main())


def test_serve_docs_setting_on_the_plain_server(reg, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.serving import serve
    from modelyard.serving.security import install_auth

    async def get_all(app: Any, headers: dict[str, str] | None = None) -> dict[str, int]:
        async with running(app, ready=False) as c:
            return {p: (await c.get(p, headers=headers)).status_code for p in DOCS_PATHS}

    assert run(get_all(_plain())) == dict.fromkeys(DOCS_PATHS, 200)  # the default: public
    assert run(get_all(_plain(docs="off"))) == dict.fromkeys(DOCS_PATHS, 404)
    # serve.auth: true (install_auth over the plain app): docs public by default, keyed with `key`
    public = _plain(auth=True)
    install_auth(public, reg.verify_key)
    assert run(get_all(public)) == dict.fromkeys(DOCS_PATHS, 200)
    keyed = _plain(auth=True, docs="key")
    install_auth(keyed, reg.verify_key)
    assert run(get_all(keyed)) == dict.fromkeys(DOCS_PATHS, 401)
    key = reg.create_key(["predict"])
    assert run(get_all(keyed, bearer(key))) == dict.fromkeys(DOCS_PATHS, 200)

    # `key` on a server that checks no keys would silently publish the docs: it refuses to start instead
    with pytest.raises(ConfigError, match="serve.docs is 'key' but this server checks no API keys"):
        run(get_all(_plain(docs="key")))
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **kw: pytest.fail("the server must not start"))
    with pytest.raises(ConfigError, match="serve.auth: true"):
        serve(_Fake, ServeConfig(docs="key"))
    with pytest.raises(ValueError, match="docs"):
        ServeConfig(docs="private")


def test_serve_cli_honours_serve_docs(reg, tiny_trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from modelyard.cli import app as cli_app
    from modelyard.serving import production

    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **kw: pytest.fail("the server must not start"))
    runner = CliRunner()
    r = runner.invoke(cli_app, ["serve", str(tiny_trained_run), "serve.docs=key", "--store", str(reg.store)])
    assert r.exit_code == 2 and "serve.docs is 'key'" in r.output, r.output

    captured: list[Any] = []
    monkeypatch.setattr(production, "run_app", lambda web, cfg, host, port: captured.append(web))
    args = ["serve", str(tiny_trained_run), "serve.auth=true", "serve.docs=key", "--store", str(reg.store)]
    r = runner.invoke(cli_app, args)
    assert r.exit_code == 0, r.output
    key = reg.create_key(["predict"])

    async def main() -> tuple[int, int]:
        async with running(captured[0], ready=False) as c:
            return (await c.get("/docs")).status_code, (await c.get("/docs", headers=bearer(key))).status_code

    assert run(main()) == (401, 200)


# ---------------------------------------------------------------------------------------------- browser


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: apt-get install chromium")
def test_swagger_ui_renders_offline_in_headless_chromium(reg) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    with live_server(production_app(reg)) as base, sync_api.sync_playwright() as pw:
        origin = urlsplit(base).netloc
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            messages: list[str] = []
            requested: list[str] = []
            blocked: list[str] = []
            page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))

            def loopback_only(route: Any) -> None:
                url = route.request.url
                requested.append(url)
                if urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1"):
                    route.continue_()
                else:  # the machine may be online: the page must work without anything from outside
                    blocked.append(url)
                    route.abort()

            page.route("**/*", loopback_only)
            page.goto(base + "/docs")
            expect = sync_api.expect
            predict = page.locator('.opblock-summary-path[data-path="/v1/predict"]')
            expect(predict).to_be_visible()
            expect(predict).to_have_text("/v1/predict")
            paths = page.locator(".opblock-summary-path").all_text_contents()
            assert {"/v1/predict", "/v1/feedback", "/admin/v1/versions"} <= {p.strip() for p in paths}, paths
            assert page.locator("link[rel=stylesheet]").evaluate("l => l.sheet.cssRules.length") > 100  # styled

            # Try it out: the page calls the API from its own origin (connect-src 'self'); no key → the API's 401
            predict.click()
            page.locator("button.try-out__btn").first.click()
            page.locator("button.execute").first.click()
            expect(page.locator(".live-responses-table tbody .response-col_status")).to_contain_text(["401"])

            assert blocked == [], blocked  # nothing was even asked of another origin
            assert requested and all(urlsplit(u).netloc == origin for u in requested), requested
            bad = [m for m in messages if m.startswith(("error", "pageerror")) and "401" not in m]
            assert bad == [], bad  # no CSP violation, no script error
            assert not [m for m in messages if "Content Security Policy" in m], messages
        finally:
            browser.close()
