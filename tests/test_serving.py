"""HTTP serving: contract, limits, errors, micro-batching, metrics and graceful shutdown.

The app runs with its real lifespan, either in-process through ``httpx.ASGITransport`` or under a
real uvicorn server on a loopback port. The model is a deterministic fake whose scores depend on
each text, so a response carrying another request's row is caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import uvicorn

from modelyard.config import ServeConfig
from modelyard.serving import create_app, serve
from modelyard.serving.batcher import BatchFailedError, MicroBatcher

T = TypeVar("T")
LABELS = ["neg", "pos"]


def expected_pos(text: str) -> float:
    """p(pos) of the fake: > 0.5 iff "good" is in the text, and different for different lengths."""
    return (0.8 if "good" in text else 0.2) + (len(text) % 10) / 100


class FakeClassifier:
    """Deterministic stand-in for a trained model; records every batch and the calling thread."""

    labels = LABELS

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay = delay
        self.gate = gate
        self.batches: list[list[str]] = []
        self.threads: set[int] = set()
        self.entered = threading.Event()

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        self.threads.add(threading.get_ident())
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.delay:
            time.sleep(self.delay)
        if any("boom" in t for t in texts):
            raise RuntimeError("boom: /secret/path/weights.bin")
        p = np.array([expected_pos(t) for t in texts])
        return np.stack([1 - p, p], axis=1)

    def info(self) -> dict[str, Any]:
        return {"name": "fake", "run_id": "run-1", "backbone": "none", "labels": list(LABELS)}


def make_cfg(**kw: Any) -> ServeConfig:
    return ServeConfig(**{"max_wait_ms": 2.0, **kw})


def run(coro: Awaitable[T], timeout: float = 20.0) -> T:
    """Run a test coroutine with a hard timeout so a hang fails fast instead of stalling the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(app: Any, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield a client talking to it in-process."""
    async with app.router.lifespan_context(app):
        # raise_app_exceptions=False: Starlette re-raises unhandled errors after answering 500; we
        # want to see the 500 the client would get.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            if ready:
                await wait_ready(client)
            yield client


async def wait_ready(client: httpx.AsyncClient, timeout: float = 5.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get("/readyz")
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        await asyncio.sleep(0.01)


def serve_app(fake: FakeClassifier, **cfg: Any) -> Any:
    return create_app(lambda: fake, make_cfg(**cfg))


def assert_prediction(pred: dict[str, Any], text: str) -> None:
    p = expected_pos(text)
    assert pred["label"] == ("pos" if p > 0.5 else "neg"), (pred, text)
    assert set(pred["scores"]) == set(LABELS)
    assert math.isclose(pred["scores"]["pos"], p, abs_tol=1e-9), (pred, text)
    assert math.isclose(sum(pred["scores"].values()), 1.0, abs_tol=1e-9)


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# ---------------------------------------------------------------- happy path and readiness


def test_predict_returns_one_prediction_per_text_in_order() -> None:
    fake = FakeClassifier()
    texts = ["a good film", "dull", "good good good!", "meh, not for me"]

    async def main() -> None:
        async with running(serve_app(fake)) as c:
            r = await c.post("/v1/predict", json={"texts": texts})
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body) == {"predictions", "model"}
            assert body["model"] == fake.info()
            assert [p["label"] for p in body["predictions"]] == ["pos", "neg", "pos", "neg"]
            for pred, text in zip(body["predictions"], texts, strict=True):
                assert_prediction(pred, text)
            # charset parameters on the JSON content type are fine
            r = await c.post(
                "/v1/predict",
                content=json.dumps({"texts": ["good"]}).encode(),
                headers={"content-type": "application/json; charset=utf-8"},
            )
            assert r.status_code == 200, r.text
            r = await c.get("/v1/model")
            assert r.status_code == 200 and r.json() == fake.info()

    run(main())
    # The model ran in one worker thread, never on the event loop (which is the main thread here).
    assert len(fake.threads) == 1 and threading.main_thread().ident not in fake.threads


def test_readyz_reports_loading_until_the_loader_returns() -> None:
    release = threading.Event()
    fake = FakeClassifier()

    def slow_loader() -> FakeClassifier:
        assert release.wait(10)
        return fake

    app = create_app(slow_loader, make_cfg())

    async def main() -> None:
        async with running(app, ready=False) as c:
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json() == {"status": "loading"}
            r = await c.get("/healthz")
            assert r.status_code == 200 and r.json() == {"status": "ok"}
            r = await c.post("/v1/predict", json={"texts": ["good"]})
            assert_error(r, 503, "model_not_ready")
            assert r.headers["retry-after"] == "1"
            assert_error(await c.get("/v1/model"), 503, "model_not_ready")

            release.set()
            r = await wait_ready(c)
            assert r.status_code == 200
            assert r.json() == {"status": "ready", "model": fake.info()}
            r = await c.post("/v1/predict", json={"texts": ["good"]})
            assert r.status_code == 200
            assert_prediction(r.json()["predictions"][0], "good")

    run(main())


def test_readyz_reports_a_failed_load() -> None:
    def broken_loader() -> FakeClassifier:
        raise FileNotFoundError("no weights in runs/x/model")

    app = create_app(broken_loader, make_cfg())

    async def main() -> None:
        async with running(app, ready=False) as c:
            deadline = time.monotonic() + 5
            while (r := await c.get("/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert r.status_code == 503
            assert r.json() == {"status": "error", "detail": "no weights in runs/x/model"}
            assert (await c.get("/healthz")).status_code == 200
            r = await c.post("/v1/predict", json={"texts": ["good"]})
            assert_error(r, 503, "model_not_ready")
            # Retrying can't fix a broken model, so no Retry-After invites clients to hammer.
            assert "retry-after" not in r.headers

    run(main())


# ---------------------------------------------------------------- validation and limits


@pytest.mark.parametrize(
    ("content", "status", "code", "needle"),
    [
        (b'{"texts": ["a", ', 422, "invalid_json", "not valid JSON"),
        (b"not json at all", 422, "invalid_json", "not valid JSON"),
        (b'{"texts": ["caf\xe9"]}', 422, "invalid_json", "UTF-8"),
        (b'{"texts": "abc"}', 422, "invalid_request", "body.texts: Input should be a valid list"),
        (b'{"texts": [1, 2]}', 422, "invalid_request", "body.texts.0: Input should be a valid string"),
        (b'{"texts": []}', 422, "invalid_request", "body.texts: must contain at least 1 text"),
        (b"{}", 422, "invalid_request", "body.texts: Field required"),
        (b'{"text": ["a"]}', 422, "invalid_request", "body.text: Extra inputs are not permitted"),
        (b"", 422, "invalid_request", "Field required"),
    ],
    ids=["truncated", "garbage", "latin1", "str", "ints", "empty", "missing", "typo", "no-body"],
)
def test_bad_bodies_get_json_errors(content: bytes, status: int, code: str, needle: str) -> None:
    fake = FakeClassifier()

    async def main() -> None:
        async with running(serve_app(fake)) as c:
            r = await c.post("/v1/predict", content=content, headers={"content-type": "application/json"})
            err = assert_error(r, status, code)
            assert needle in err["message"], err
            if code == "invalid_request":
                assert err["details"] and all({"loc", "msg", "type"} == set(d) for d in err["details"])

    run(main())
    assert fake.batches == []


def test_both_wrong_items_are_listed() -> None:
    async def main() -> None:
        async with running(serve_app(FakeClassifier())) as c:
            err = assert_error(await c.post("/v1/predict", json={"texts": [1, "ok", 2]}), 422, "invalid_request")
            assert "body.texts.0: Input should be a valid string" in err["message"]
            assert "body.texts.2: Input should be a valid string" in err["message"]
            assert [d["loc"] for d in err["details"]] == [["body", "texts", 0], ["body", "texts", 2]]

    run(main())


def test_size_limits_answer_413_naming_the_limit() -> None:
    fake = FakeClassifier()
    app = serve_app(fake, max_texts_per_request=5, max_chars_per_text=20, max_body_bytes=2048)

    async def main() -> None:
        async with running(app) as c:
            err = assert_error(await c.post("/v1/predict", json={"texts": ["x"] * 6}), 413, "too_many_texts")
            assert err["limit"] == 5 and "5" in err["message"] and "6" in err["message"]

            r = await c.post("/v1/predict", json={"texts": ["short", "y" * 21]})
            err = assert_error(r, 413, "text_too_long")
            assert err["limit"] == 20 and err["index"] == 1
            assert "texts[1]" in err["message"] and "20" in err["message"]

            # Content-Length declares too much: rejected before reading anything.
            big = json.dumps({"texts": ["z" * 3000]}).encode()
            r = await c.post("/v1/predict", content=big, headers={"content-type": "application/json"})
            err = assert_error(r, 413, "body_too_large")
            assert err["limit"] == 2048 and "2048" in err["message"]

            # Chunked upload (no Content-Length): the bytes themselves are counted.
            async def chunks() -> AsyncIterator[bytes]:
                yield b'{"texts": ["'
                for _ in range(10):
                    yield b"z" * 300
                yield b'"]}'

            r = await c.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
            assert "content-length" not in r.request.headers
            assert_error(r, 413, "body_too_large")

            # Exactly at the limits is fine.
            r = await c.post("/v1/predict", json={"texts": ["good" * 5] * 5})
            assert r.status_code == 200, r.text

    run(main())
    assert fake.batches == [["good" * 5] * 5]


async def raw_asgi_exchange(app: Any, headers: list[tuple[bytes, bytes]], messages: list[dict]) -> list[dict]:
    """Drive one POST /v1/predict through ASGI with exactly these receive ``messages``; what the app sent."""
    messages = list(messages)
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    return sent


async def _raw_asgi_post(app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, dict]:
    """POST straight through ASGI, so the Content-Length header can lie about the body."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = await raw_asgi_exchange(app, headers, messages)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


def test_body_cap_does_not_trust_a_lying_content_length() -> None:
    fake = FakeClassifier()
    app = serve_app(fake, max_body_bytes=1024)

    async def main() -> None:
        async with running(app):
            headers = [(b"content-type", b"application/json"), (b"content-length", b"20")]
            status, body = await _raw_asgi_post(app, headers, [b'{"texts": ["', b"a" * 2000, b'"]}'])
            assert status == 413 and body["error"]["code"] == "body_too_large"
            headers = [(b"content-type", b"application/json"), (b"content-length", b"lots")]
            status, body = await _raw_asgi_post(app, headers, [b'{"texts": ["a"]}'])
            assert status == 400 and body["error"]["code"] == "bad_request"

    run(main())
    assert fake.batches == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_content_type_is_415(content_type: str | None) -> None:
    async def main() -> None:
        async with running(serve_app(FakeClassifier())) as c:
            headers = {"content-type": content_type} if content_type else {}
            r = await c.post("/v1/predict", content=b'{"texts": ["a"]}', headers=headers)
            err = assert_error(r, 415, "unsupported_media_type")
            assert "application/json" in err["message"]

    run(main())


def test_unknown_route_and_wrong_method_are_json_errors() -> None:
    async def main() -> None:
        async with running(serve_app(FakeClassifier())) as c:
            # a POST to an unknown path is a 404, not a 415, even without a JSON content type
            assert_error(await c.post("/v1/nope", content=b"x"), 404, "not_found")
            r = await c.get("/v1/predict")
            assert_error(r, 405, "method_not_allowed")
            assert "POST" in r.headers["allow"]

    run(main())


def test_unhandled_errors_are_500_json_without_internals(caplog: pytest.LogCaptureFixture) -> None:
    app = serve_app(FakeClassifier())

    @app.get("/explode")
    async def explode() -> None:
        raise KeyError("/secret/internal/path")

    async def main() -> None:
        async with running(app) as c:
            r = await c.get("/explode")
            assert_error(r, 500, "internal_error")
            assert "secret" not in r.text and "Traceback" not in r.text
            assert (await c.get("/healthz")).status_code == 200

    run(main())
    assert "secret" in caplog.text  # the details went to the server log instead


# ---------------------------------------------------------------- overload and model failures


def test_queue_overflow_is_503_with_retry_after() -> None:
    gate = threading.Event()
    fake = FakeClassifier(gate=gate)
    app = serve_app(fake, max_batch_size=1, max_queue=4, max_texts_per_request=4)

    async def main() -> None:
        async with running(app) as c:
            batcher = app.state.batcher
            busy = asyncio.create_task(c.post("/v1/predict", json={"texts": ["good 0"]}))
            while not fake.entered.is_set():  # the model is now stuck on that one text
                await asyncio.sleep(0.005)
            queued = asyncio.create_task(c.post("/v1/predict", json={"texts": ["a", "b", "c", "good d"]}))
            while batcher.queue_depth < 4:
                await asyncio.sleep(0.005)

            r = await c.post("/v1/predict", json={"texts": ["one too many"]})
            err = assert_error(r, 503, "overloaded")
            assert r.headers["retry-after"].isdigit()
            assert "4" in err["message"]
            metrics = (await c.get("/metrics")).text
            assert "modelyard_queue_depth 4.0" in metrics

            gate.set()
            r1, r2 = await busy, await queued
            assert r1.status_code == 200 and r2.status_code == 200
            for pred, text in zip(r2.json()["predictions"], ["a", "b", "c", "good d"], strict=True):
                assert_prediction(pred, text)
            # the queue drained, so the same request is accepted now
            assert (await c.post("/v1/predict", json={"texts": ["one too many"]})).status_code == 200

    try:
        run(main())
    finally:
        gate.set()


def test_a_failing_batch_fails_only_its_requests() -> None:
    fake = FakeClassifier()
    app = serve_app(fake)

    async def main() -> None:
        async with running(app) as c:
            r = await c.post("/v1/predict", json={"texts": ["fine", "boom"]})
            assert_error(r, 500, "prediction_failed")
            assert "secret" not in r.text and "Traceback" not in r.text
            r = await c.post("/v1/predict", json={"texts": ["good afterwards"]})
            assert r.status_code == 200
            assert_prediction(r.json()["predictions"][0], "good afterwards")
            stats = app.state.batcher.stats()
            assert stats["failed_batches"] == 1 and stats["batches"] == 2
            metrics = (await c.get("/metrics")).text
            assert "modelyard_batch_failures_total 1.0" in metrics
            assert 'modelyard_http_requests_total{method="POST",route="/v1/predict",status="500"} 1.0' in metrics

    run(main())


# ---------------------------------------------------------------- micro-batching


def test_concurrent_requests_are_batched_without_cross_talk() -> None:
    fake = FakeClassifier(delay=0.02)
    app = serve_app(fake, max_batch_size=16, max_wait_ms=50)
    texts = [("good " if i % 3 == 0 else "bad ") + "x" * i for i in range(32)]

    async def main() -> list[httpx.Response]:
        async with running(app) as c:
            return await asyncio.gather(*(c.post("/v1/predict", json={"texts": [t]}) for t in texts))

    responses = run(main())
    for r, text in zip(responses, texts, strict=True):
        assert r.status_code == 200, r.text
        (pred,) = r.json()["predictions"]
        assert_prediction(pred, text)  # its own text's label and scores, not a neighbour's
    sizes = [len(b) for b in fake.batches]
    assert len(fake.batches) < 32 and max(sizes) > 1 and max(sizes) <= 16, sizes
    assert sorted(t for b in fake.batches for t in b) == sorted(texts)
    stats = app.state.batcher.stats()
    assert stats["batches"] == len(sizes) and stats["texts"] == 32
    assert stats["max_batch_size_seen"] == max(sizes) and stats["recent_sizes"] == sizes
    assert len(fake.threads) == 1


def test_with_the_default_wait_texts_that_arrive_while_the_model_is_busy_are_still_batched() -> None:
    """``max_wait_ms`` 0 (the default): nothing waits while the model is idle, yet under load batches form."""
    assert ServeConfig().max_wait_ms == 0
    fake = FakeClassifier(delay=0.03)
    app = serve_app(fake, max_batch_size=16, max_wait_ms=0)
    texts = [f"good {i}" for i in range(24)]

    async def main() -> list[httpx.Response]:
        async with running(app) as c:
            return await asyncio.gather(*(c.post("/v1/predict", json={"texts": [t]}) for t in texts))

    responses = run(main())
    assert all(r.status_code == 200 for r in responses)
    sizes = [len(b) for b in fake.batches]
    assert sum(sizes) == 24 and len(sizes) < 24 and max(sizes) > 1, sizes


def test_a_large_request_is_split_across_batches_in_order() -> None:
    fake = FakeClassifier()
    app = serve_app(fake, max_batch_size=16, max_wait_ms=5)
    texts = [f"{'good' if i % 2 else 'bad'} {i}" + "!" * (i % 7) for i in range(40)]

    async def main() -> httpx.Response:
        async with running(app) as c:
            return await c.post("/v1/predict", json={"texts": texts})

    r = run(main())
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 40
    for pred, text in zip(preds, texts, strict=True):
        assert_prediction(pred, text)
    assert len(fake.batches) >= 3 and all(len(b) <= 16 for b in fake.batches)
    assert [t for b in fake.batches for t in b] == texts


def test_batcher_skips_cancelled_callers() -> None:
    gate = threading.Event()
    fake = FakeClassifier(gate=gate)

    async def main() -> None:
        b = MicroBatcher(fake.predict_proba, max_batch_size=4, max_wait_ms=0, max_queue=100)
        await b.start()
        first = asyncio.create_task(b.submit(["good first"]))
        while not fake.entered.is_set():
            await asyncio.sleep(0.005)
        gone = asyncio.create_task(b.submit(["abandoned"]))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while queued
        kept = asyncio.create_task(b.submit(["kept"]))
        await asyncio.sleep(0.01)
        gate.set()
        assert (await first)[0][1] == pytest.approx(expected_pos("good first"))
        assert (await kept)[0][1] == pytest.approx(expected_pos("kept"))
        failing = b.submit(["boom"])
        with pytest.raises(BatchFailedError):
            await failing
        await b.close()
        assert ["abandoned"] not in fake.batches
        assert b.stats()["failed_batches"] == 1

    try:
        run(main())
    finally:
        gate.set()


# ---------------------------------------------------------------- contract and metrics


def test_openapi_documents_the_predict_contract() -> None:
    async def main() -> None:
        async with running(serve_app(FakeClassifier())) as c:
            spec = (await c.get("/openapi.json")).json()
            post = spec["paths"]["/v1/predict"]["post"]
            ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/PredictRequest")
            schemas = spec["components"]["schemas"]
            texts = schemas["PredictRequest"]["properties"]["texts"]
            assert texts["type"] == "array" and texts["items"]["type"] == "string"
            assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/PredictResponse"
            )
            for status in ("413", "415", "422", "503"):
                assert post["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
                    "/ErrorResponse"
                )
            assert {"Prediction", "ErrorResponse"} <= set(schemas)
            assert "/readyz" in spec["paths"] and "/v1/model" in spec["paths"]
            r = await c.get("/docs")
            assert r.status_code == 200 and "swagger" in r.text.lower()

    run(main())


def test_metrics_count_requests_per_app() -> None:
    fake = FakeClassifier()
    app = serve_app(fake, max_batch_size=8)
    other = serve_app(FakeClassifier())  # a second app in the same process must not collide

    async def main() -> str:
        async with running(other) as c2:
            await c2.post("/v1/predict", json={"texts": ["other"]})
        async with running(app) as c:
            for _ in range(3):
                assert (await c.post("/v1/predict", json={"texts": ["good", "bad"]})).status_code == 200
            await c.post("/v1/predict", json={"texts": []})
            await c.get("/no/such/path/123")
            r = await c.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            return r.text

    text = run(main())
    assert 'modelyard_http_requests_total{method="POST",route="/v1/predict",status="200"} 3.0' in text
    assert 'modelyard_http_requests_total{method="POST",route="/v1/predict",status="422"} 1.0' in text
    # unknown paths share one label value, so scanners can't explode the series count
    assert 'route="unmatched",status="404"' in text and "/no/such" not in text
    assert 'modelyard_http_request_duration_seconds_count{route="/v1/predict"} 4.0' in text
    assert "modelyard_batch_size_count 3.0" in text and "modelyard_batch_size_sum 6.0" in text
    assert 'modelyard_batch_size_bucket{le="8.0"} 3.0' in text
    assert "modelyard_predicted_texts_total 6.0" in text
    assert "modelyard_queue_depth 0.0" in text
    assert "modelyard_model_ready 1.0" in text
    assert 'modelyard_model_info{backbone="none",labels="neg,pos",name="fake",run_id="run-1"} 1.0' in text


# ---------------------------------------------------------------- graceful shutdown


def test_lifespan_exit_finishes_in_flight_and_queued_requests() -> None:
    fake = FakeClassifier(delay=0.3)
    app = serve_app(fake, max_batch_size=1)

    async def main() -> None:
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            await wait_ready(c)
            in_flight = asyncio.create_task(c.post("/v1/predict", json={"texts": ["good in flight"]}))
            while not fake.entered.is_set():
                await asyncio.sleep(0.005)
            queued = asyncio.create_task(c.post("/v1/predict", json={"texts": ["queued"]}))
            while app.state.batcher.queue_depth < 1:
                await asyncio.sleep(0.005)

            # Leave the lifespan (what the server does on SIGTERM) while both requests are pending.
            exiting = asyncio.create_task(lifespan.__aexit__(None, None, None))
            await asyncio.sleep(0.02)
            assert not exiting.done()  # it is draining the queue
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json() == {"status": "shutting_down"}
            late = await c.post("/v1/predict", json={"texts": ["too late"]})
            assert_error(late, 503, "shutting_down")
            assert late.headers["retry-after"] == "1"

            r1, r2 = await in_flight, await queued
            assert r1.status_code == 200, r1.text
            assert_prediction(r1.json()["predictions"][0], "good in flight")
            assert r2.status_code == 200, r2.text
            assert_prediction(r2.json()["predictions"][0], "queued")
            await exiting

    run(main())
    assert fake.batches == [["good in flight"], ["queued"]]


def _free_loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # loopback only: tests never listen on a public interface
    return sock


def test_uvicorn_graceful_shutdown_answers_the_in_flight_request() -> None:
    fake = FakeClassifier(delay=0.5)
    app = serve_app(fake, max_body_bytes=1024)
    sock = _free_loopback_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    result: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as c:
            while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert c.get("/healthz").json() == {"status": "ok"}
            # a real chunked upload over the socket is counted and capped too
            r = c.post(
                "/v1/predict",
                content=iter([b'{"texts": ["', b"z" * 2000, b'"]}']),
                headers={"content-type": "application/json"},
            )
            assert r.request.headers.get("transfer-encoding") == "chunked"
            assert_error(r, 413, "body_too_large")

        def slow_request() -> None:
            with httpx.Client(base_url=base, timeout=10) as c2:
                result["response"] = c2.post("/v1/predict", json={"texts": ["good, slow"]})

        client_thread = threading.Thread(target=slow_request)
        client_thread.start()
        assert fake.entered.wait(5)
        server.should_exit = True  # what SIGTERM does
        client_thread.join(10)
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()
    r = result["response"]
    assert r.status_code == 200, r.text
    assert_prediction(r.json()["predictions"][0], "good, slow")
    assert app.state.runtime.status == "shutting_down" and not app.state.batcher.accepting


def test_serve_binds_loopback_and_sets_a_shutdown_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.serving.server import GuardedH11Protocol

    configs: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: configs.append(self.config))
    serve(FakeClassifier, ServeConfig())
    serve(FakeClassifier, ServeConfig(host="0.0.0.0", port=9000, header_timeout_s=3, max_connections=7), port=0)
    first, second = configs
    assert first.host == "127.0.0.1" and first.port == 8000
    assert first.timeout_graceful_shutdown > 0
    assert hasattr(first.app.state, "batcher")
    assert second.host == "0.0.0.0" and second.port == 0
    # connection hygiene comes with the server: read deadlines, keep-alive, connection and header caps
    assert issubclass(first.http, GuardedH11Protocol) and first.http.header_timeout_s == 10.0
    assert first.http.body_timeout_s == 30.0 and first.timeout_keep_alive == 5
    assert first.http.max_connections == 512 and first.h11_max_incomplete_event_size == 16384
    assert first.limit_concurrency is None  # the protocol enforces the cap (its refusal is the JSON 503)
    assert second.http.header_timeout_s == 3.0 and second.http.max_connections == 7
