"""The web console: its public page and security headers, the traffic/drift admin endpoints over HTTP,
and an end-to-end run in headless Chromium (Debian's chromium driven by Playwright, no browser download)."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import synthetic_sentiment
from tests.production_helpers import bearer, make_registry, production_app, run, running
from tests.production_helpers import live_server as live_server_at

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, tiny_trained_run: Path):
    r = make_registry(tmp_path_factory.mktemp("console"), tiny_trained_run, versions=2)
    yield r
    r.close()


@pytest.fixture(scope="module")
def keys(reg) -> dict[str, str]:
    return {"admin": reg.create_key(["admin"]), "client": reg.create_key(["predict", "feedback"])}


def _row(at: datetime, label: str, top: float, text: str = "a text") -> dict[str, Any]:
    other = "neg" if label == "pos" else "pos"
    return {
        "id": str(uuid.uuid4()),
        "at": at,
        "app": "demo",
        "version": 1,
        "key_id": None,
        "text": text,
        "label": label,
        "scores": {label: top, other: 1.0 - top},
        "latency_ms": 4.0,
    }


# ---------------------------------------------------------------------------------------------- HTTP


def test_console_page_is_public_with_a_strict_csp(reg) -> None:
    async def main() -> list[httpx.Response]:
        async with running(production_app(reg), ready=False) as c:
            return [await c.get(p) for p in ("/", "/console/console.js", "/console/console.css", "/console/x.js")]

    page, js, css, missing = run(main())
    for r, media in ((page, "text/html"), (js, "text/javascript"), (css, "text/css")):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith(media)
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    assert missing.status_code == 401  # only the console's own files are public
    html = page.text
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts == ['<script src="/console/console.js" defer>'], scripts  # no inline script
    assert "style=" not in html and "<style" not in html  # no inline style either
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    assert "https://" not in html and "http://" not in html  # no CDN
    assert "sessionStorage" in js.text and "innerHTML" not in js.text  # server text only via textContent


def test_traffic_endpoint(reg, keys: dict[str, str]) -> None:
    now = datetime.now(timezone.utc)
    before = reg.count("predictions")
    rows = [
        _row(now - timedelta(minutes=30, seconds=5), "pos", 0.9),
        _row(now - timedelta(minutes=30, seconds=5), "neg", 0.7),
        _row(now - timedelta(minutes=2), "pos", 0.6),
        _row(now - timedelta(hours=5), "pos", 0.99),  # outside a 1h window
    ]
    reg.log_predictions(rows)

    async def main() -> dict[str, httpx.Response]:
        async with running(production_app(reg), ready=False) as c:
            admin = bearer(keys["admin"])
            return {
                "ok": await c.get("/admin/v1/traffic?since=1h&bucket=60", headers=admin),
                "auto": await c.get("/admin/v1/traffic?since=24h", headers=admin),
                "nokey": await c.get("/admin/v1/traffic"),
                "client": await c.get("/admin/v1/traffic", headers=bearer(keys["client"])),
                "bad_since": await c.get("/admin/v1/traffic?since=1y", headers=admin),
                "zero_bucket": await c.get("/admin/v1/traffic?bucket=0", headers=admin),
                "too_many": await c.get("/admin/v1/traffic?since=30d&bucket=60", headers=admin),
                "too_long": await c.get("/admin/v1/traffic?since=999d", headers=admin),
                "openapi": await c.get("/openapi.json", headers=admin),
            }

    r = run(main())
    assert r["ok"].status_code == 200, r["ok"].text
    body = r["ok"].json()
    assert body["app"] == "demo" and body["bucket_s"] == 60
    assert body["total"] == 3 + before  # the 5-hour-old row is outside the window
    assert 60 <= len(body["buckets"]) <= 62
    assert sum(b["requests"] for b in body["buckets"]) == body["total"]
    busy = [b for b in body["buckets"] if b["requests"] == 2]
    assert len(busy) == 1 and busy[0]["mean_confidence"] == pytest.approx(0.8)
    assert body["class_mix"]["pos"] >= 2 and body["class_mix"]["neg"] >= 1
    assert body["mean_latency_ms"] > 0
    starts = [datetime.fromisoformat(b["start"]) for b in body["buckets"]]
    assert all(b - a == timedelta(seconds=60) for a, b in zip(starts, starts[1:], strict=False))
    auto = r["auto"].json()
    assert auto["total"] == 4 + before and auto["bucket_s"] == 900 and len(auto["buckets"]) <= 120
    assert r["nokey"].status_code == 401 and r["client"].status_code == 403
    for name in ("bad_since", "zero_bucket", "too_many", "too_long"):
        assert r[name].status_code == 422, (name, r[name].text)
        assert r[name].json()["error"]["code"] == "invalid_request"
    assert "2000" in r["too_many"].json()["error"]["message"]
    paths = r["openapi"].json()["paths"]
    assert "/" not in paths and "/console/console.js" not in paths
    ok = paths["/admin/v1/traffic"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/TrafficResponse"}
    assert paths["/admin/v1/drift"]["post"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DriftResponse"
    }


def test_recent_predictions_endpoint(tmp_path: Path, tiny_trained_run: Path) -> None:
    reg = make_registry(tmp_path, tiny_trained_run)
    admin, client = reg.create_key(["admin"]), reg.create_key(["predict", "feedback"])
    now = datetime.now(timezone.utc)
    rows = [_row(now - timedelta(minutes=m), "pos", 0.75, f"text {m}") for m in (5, 1, 4, 2, 3)]
    reg.log_predictions(rows)

    async def main() -> list[httpx.Response]:
        async with running(production_app(reg), ready=False) as c:
            return [
                await c.get("/admin/v1/predictions?limit=3", headers=bearer(admin)),
                await c.get("/admin/v1/predictions", headers=bearer(client)),
                await c.get("/admin/v1/predictions?limit=0", headers=bearer(admin)),
            ]

    try:
        newest, forbidden, bad = run(main())
    finally:
        reg.close()
    assert newest.status_code == 200, newest.text
    body = newest.json()
    assert [r["text"] for r in body] == ["text 3", "text 2", "text 1"]  # the newest 3, oldest of them first
    assert all(datetime.fromisoformat(r["at"]).utcoffset() == timedelta(0) for r in body)  # explicit UTC
    assert set(body[0]) == {"id", "at", "version", "text", "label", "scores"} and body[0]["scores"]["pos"] == 0.75
    assert forbidden.status_code == 403 and bad.status_code == 422


def test_drift_endpoint(tmp_path: Path, tiny_trained_run: Path) -> None:
    from modelyard.models.loading import load

    reg = make_registry(tmp_path, tiny_trained_run)
    admin = reg.create_key(["admin"])
    client = reg.create_key(["predict"])
    texts = synthetic_sentiment(60, seed=11)["text"].tolist()
    probs = load(reg.resolve("demo", "production").path).predict_proba(texts)

    async def main() -> dict[str, httpx.Response]:
        async with running(production_app(reg), ready=False) as c:
            h = bearer(admin)
            out = {"none": await c.get("/admin/v1/drift", headers=h)}
            out["few"] = await c.post("/admin/v1/drift", json={}, headers=h)
            now = datetime.now(timezone.utc)
            reg.log_predictions(
                [
                    _row(now, ["neg", "pos"][int(p.argmax())], float(p.max()), t)
                    for t, p in zip(texts, probs, strict=True)
                ]
            )
            out["ran"] = await c.post("/admin/v1/drift", json={"since": "1h"}, headers=h)
            out["latest"] = await c.get("/admin/v1/drift", headers=h)
            out["forbidden"] = await c.get("/admin/v1/drift", headers=bearer(client))
            out["bad"] = await c.post("/admin/v1/drift", json={"since": "forever"}, headers=h)
            out["extra"] = await c.post("/admin/v1/drift", json={"window": "1h"}, headers=h)
            return out

    try:
        r = run(main(), timeout=120)
    finally:
        reg.close()
    none = r["none"].json()
    assert r["none"].status_code == 200 and none["status"] == "no_report" and "modelyard monitor" in none["message"]
    assert r["few"].status_code == 200 and r["few"].json()["status"] == "insufficient_data"
    ran = r["ran"].json()
    assert r["ran"].status_code == 200, r["ran"].text
    assert ran["status"] in ("ok", "drift") and ran["n_live"] == 60 and ran["version"] == 1 and ran["since"] == "1h"
    assert {"confidence_psi", "class_mix_psi", "text_length_ks"} <= set(ran["signals"])
    for s in ran["signals"].values():
        assert s["drift"] == (s["value"] > s["threshold"]) and s["threshold"] > 0
    assert set(ran["class_mix"]) == {"reference", "live"}
    assert r["latest"].json() == {**ran, "job_id": None}  # GET returns the newest report on disk
    assert re.fullmatch(r"[0-9a-f]{16}", ran["job_id"]) and r["ran"].headers["X-Job-Id"] == ran["job_id"]
    assert r["forbidden"].status_code == 403
    assert r["bad"].status_code == 422 and r["extra"].status_code == 422


def test_concurrent_drift_requests_share_one_bounded_run(
    tmp_path: Path, tiny_trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five concurrent POST /admin/v1/drift start one monitor run (a child process) and all get its report."""
    from tests.job_targets import slow_monitor

    marker = tmp_path / "runs.txt"
    monkeypatch.setenv("MODELYARD_TEST_MARKER", str(marker))
    reg = make_registry(tmp_path, tiny_trained_run)
    admin = bearer(reg.create_key(["admin"]))

    async def main() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        async with running(production_app(reg, drift_monitor=slow_monitor), ready=False) as c:
            answers = await asyncio.gather(*(c.post("/admin/v1/drift", json={}, headers=admin) for _ in range(5)))
            job = await c.get(f"/admin/v1/jobs/{answers[0].json()['job_id']}", headers=admin)
            missing = await c.get("/admin/v1/jobs/0123456789abcdef", headers=admin)
            return list(answers), job, missing

    try:
        answers, job, missing = run(main(), timeout=120)
    finally:
        reg.close()
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    assert len({a.json()["job_id"] for a in answers}) == 1
    assert len(marker.read_text().split()) == 1  # one run, not five queued ones
    assert job.status_code == 200 and job.json()["state"] == "succeeded" and job.json()["kind"] == "drift"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"


# ---------------------------------------------------------------------------------------------- browser


@pytest.fixture()
def live_server(tmp_path: Path, tiny_trained_run: Path) -> Iterator[tuple[str, Any, Any, dict[str, str]]]:
    """The real production server (uvicorn, loopback, a free port) in a thread."""

    reg = make_registry(tmp_path, tiny_trained_run, versions=2)
    keys = {"admin": reg.create_key(["admin"]), "client": reg.create_key(["predict", "feedback"])}
    app = production_app(reg)
    try:
        with live_server_at(app) as base:
            yield base, app, reg, keys
    finally:
        reg.close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: apt-get install chromium")
def test_console_end_to_end_in_headless_chromium(live_server: tuple[str, Any, Any, dict[str, str]]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    base, app, reg, keys = live_server
    # A prediction made with another key: the console's feedback on it must show the API's 404.
    other = httpx.post(base + "/v1/predict", json={"texts": ["someone else's text"]}, headers=bearer(keys["client"]))
    assert other.status_code == 200, other.text
    other_id = other.json()["predictions"][0]["id"]

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            messages: list[str] = []
            page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            page.goto(base + "/")
            expect = sync_api.expect
            expect(page.locator("#key-status")).to_contain_text("No API key")

            page.fill("#api-key", keys["admin"])
            page.click("#key-save")
            expect(page.locator("#key-status")).to_contain_text("Key accepted")
            assert page.evaluate("sessionStorage.getItem('modelyard.apiKey')") == keys["admin"]

            # Try the model: label, one bar per class, and the token heat of the explanation.
            page.fill("#try-text", "a great and lovely film")
            page.click("#try-run")
            expect(page.locator("#try-result")).to_be_visible()
            label = page.text_content("#try-label")
            assert label in ("neg", "pos")
            expect(page.locator("#try-scores .bar")).to_have_count(2)
            shares = [float(t.rstrip("%")) for t in page.locator("#try-scores .bar .p").all_text_contents()]
            assert sum(shares) == pytest.approx(100.0, abs=0.2) and max(shares) == shares[0]
            expect(page.locator("#explain-tokens .tok").first).to_be_visible()
            assert page.locator("#explain-tokens .tok").all_text_contents()[:2] == ["a", "great"]
            pid = page.text_content("#try-id").removeprefix("id ").strip()
            assert uuid.UUID(pid).version == 4

            # Recent predictions: the new one appears; feedback lands in the database.
            row = page.locator(f'#recent-table tr[data-id="{pid}"]')
            expect(row).to_be_visible()
            expect(row.locator("td.input")).to_have_text("a great and lovely film")
            correct = "neg" if label == "pos" else "pos"
            row.locator("select").select_option(correct)
            row.locator("button.send").click()
            expect(row.locator(".msg.ok")).to_contain_text(f"sent: {correct}")
            assert app.state.predlog.flush(10)
            assert [(f["prediction_id"], f["label"]) for f in reg.feedback("demo")] == [(pid, correct)]

            # Feedback on another key's prediction: the 404 is shown, nothing is stored.
            page.click("#recent-refresh")
            foreign = page.locator(f'#recent-table tr[data-id="{other_id}"]')
            foreign.locator("button.send").click()
            expect(foreign.locator(".msg.bad")).to_contain_text("404")
            expect(foreign.locator(".msg.bad")).to_contain_text("made with this API key")
            assert app.state.predlog.flush(10) and len(reg.feedback("demo")) == 1

            # Registry: both versions, the production alias on v1.
            expect(page.locator("#registry-table tbody tr")).to_have_count(2)
            expect(page.locator('#registry-table tr[data-version="1"] .badge')).to_have_text(["production"])
            expect(page.locator('#registry-table tr[data-version="2"] .badge')).to_have_count(0)

            # Traffic: points on the request and confidence charts, a bar per predicted class.
            page.click("#traffic-refresh")
            expect(page.locator("#traffic-summary")).to_contain_text("2 predictions")
            assert page.locator("#chart-requests circle.pt").count() >= 1
            assert page.locator("#chart-confidence circle.pt").count() >= 1
            assert page.locator("#chart-mix rect.bar-rect").count() >= 1
            expect(page.locator("#drift-status")).to_contain_text("no drift report yet")
            page.click("#drift-run")
            # the run is a job in a child process (imports the monitor, scores the reference): seconds, not ms
            expect(page.locator("#drift-status")).to_contain_text("insufficient_data", timeout=60_000)
            assert not page.locator("#traffic-error").is_visible() and not page.locator("#drift-error").is_visible()

            # A wrong key: the 401 is shown in the key status and in every panel.
            page.fill("#api-key", "my_0123456789abcdef_wrong")
            page.click("#key-save")
            expect(page.locator("#key-status")).to_contain_text("401 Unauthorized")
            expect(page.locator("#key-status")).to_contain_text("unknown or revoked")
            expect(page.locator("#registry-error")).to_contain_text("401")
            expect(page.locator("#recent-error")).to_be_visible()
            csp = [m for m in messages if "Content Security Policy" in m or m.startswith("pageerror")]
            assert csp == [], csp  # nothing the page does is blocked by its own CSP, and no script errors
        finally:
            browser.close()
