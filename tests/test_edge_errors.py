"""One error contract at the edge: parse failures of any depth or size are 422 ``invalid_json``, a client that
hangs up mid-body is recorded as 499 (not a 500), and every response says ``nosniff``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from modelyard.serving import create_app  # noqa: I001  (after the shared test helpers)
from tests.test_serving import FakeClassifier, make_cfg, raw_asgi_exchange, run, running

JSON = {"Content-Type": "application/json"}


def test_json_too_deep_or_with_huge_integers_is_422_invalid_json() -> None:
    app = create_app(FakeClassifier, make_cfg())

    async def main() -> list[httpx.Response]:
        async with running(app) as c:
            deep = b"[" * 5000 + b"]" * 5000
            huge = b'{"texts": [' + b"7" * 5000 + b"]}"
            bad = b'{"texts": ["a",]}'
            return [await c.post("/v1/predict", content=body, headers=JSON) for body in (deep, huge, bad)]

    deep, huge, bad = run(main())
    assert deep.status_code == 422 and deep.json()["error"]["code"] == "invalid_json"
    assert "nested too deeply" in deep.json()["error"]["message"]
    assert huge.status_code == 422 and huge.json()["error"]["code"] == "invalid_json"
    assert "4300" in huge.json()["error"]["message"]
    # a plain syntax error keeps the framework's message with its position
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_json"


def test_every_response_carries_nosniff() -> None:
    app = create_app(FakeClassifier, make_cfg())

    async def main() -> list[httpx.Response]:
        async with running(app) as c:
            return [
                await c.post("/v1/predict", json={"texts": ["good film"]}),
                await c.post("/v1/predict", json={"texts": []}),
                await c.get("/nowhere"),
                await c.get("/healthz"),
                await c.get("/metrics"),
                await c.get("/openapi.json"),
            ]

    answers = run(main())
    assert [r.status_code for r in answers] == [200, 422, 404, 200, 200, 200]
    assert all(r.headers.get("x-content-type-options") == "nosniff" for r in answers)


def test_a_client_that_hangs_up_mid_body_is_499_not_500_in_metrics() -> None:
    app = create_app(FakeClassifier, make_cfg())

    async def abort_upload() -> list[dict[str, Any]]:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"1000")]
        messages = [
            {"type": "http.request", "body": b'{"texts": ["a lo', "more_body": True},
            {"type": "http.disconnect"},
        ]
        return await raw_asgi_exchange(app, headers, messages)

    async def main() -> tuple[list[dict[str, Any]], str]:
        async with running(app) as c:
            sent = await abort_upload()
            await asyncio.sleep(0)
            return sent, (await c.get("/metrics")).text

    sent, metrics = run(main())
    assert sent == []  # nobody to answer
    lines = [
        ln for ln in metrics.splitlines() if ln.startswith("modelyard_http_requests_total{") and "/v1/predict" in ln
    ]
    assert any('status="499"' in ln and ln.endswith(" 1.0") for ln in lines), lines
    assert not any('status="500"' in ln for ln in lines), lines
