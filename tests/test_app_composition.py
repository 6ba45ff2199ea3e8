"""``create_app`` composition: extra routers are real routes (in the OpenAPI schema, labelled in metrics),
prediction hooks run in order and the first ids win, extra lifespans wrap the server's own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter

from modelyard.serving import create_app
from tests.test_serving import FakeClassifier, make_cfg, run, running


def test_routers_hooks_and_lifespans_compose() -> None:
    events: list[tuple[str, Any]] = []
    router = APIRouter()

    @router.get("/v1/extra", tags=["extra"])
    async def extra() -> dict[str, bool]:
        return {"ok": True}

    def recording_hook(name: str, ids: list[str] | None) -> Callable[..., Any]:
        def hook(request: Any, texts: list[str], probs: Any, loaded: Any, seconds: float, mask: bool = True) -> Any:
            events.append((name, (list(texts), probs.shape, loaded.labels, mask)))
            return ids

        return hook

    def lifespan(name: str) -> Callable[[Any], Any]:
        @asynccontextmanager
        async def span(app: Any) -> AsyncIterator[None]:
            events.append((f"{name} enter", app.state.runtime.loaded))
            yield
            events.append((f"{name} exit", app.state.runtime.status))

        return span

    app = create_app(
        FakeClassifier,
        make_cfg(),
        routers=(router,),
        prediction_hooks=(
            recording_hook("h1", None),
            recording_hook("h2", ["a", "b"]),
            recording_hook("h3", ["x", "y"]),
        ),
        lifespans=(lifespan("A"), lifespan("B")),
    )
    assert "/v1/extra" in app.openapi()["paths"]

    async def main() -> tuple[Any, Any, str]:
        async with running(app) as c:
            extra_r = (await c.get("/v1/extra")).json()
            predict_r = (await c.post("/v1/predict", json={"texts": ["good", "bad"]})).json()
            metrics = (await c.get("/metrics")).text
        return extra_r, predict_r, metrics

    extra_r, predict_r, metrics = run(main())
    assert extra_r == {"ok": True}
    assert [p["id"] for p in predict_r["predictions"]] == ["a", "b"]  # the first ids returned win
    assert 'route="/v1/extra"' in metrics  # a real route with its path, not an opaque included router
    calls = [(name, detail) for name, detail in events if name.startswith("h")]
    assert calls == [(h, (["good", "bad"], (2, 2), ("neg", "pos"), True)) for h in ("h1", "h2", "h3")]
    spans = [(name, detail) for name, detail in events if not name.startswith("h")]
    # entered in order before the model loaded; exited in reverse after the server began shutting down
    assert spans == [("A enter", None), ("B enter", None), ("B exit", "shutting_down"), ("A exit", "shutting_down")]


def test_no_hooks_leave_prediction_ids_empty() -> None:
    app = create_app(FakeClassifier, make_cfg())
    assert app.state.prediction_hook is None

    async def main() -> dict:
        async with running(app) as c:
            return (await c.post("/v1/predict", json={"texts": ["good"]})).json()

    assert [p["id"] for p in run(main())["predictions"]] == [None]
