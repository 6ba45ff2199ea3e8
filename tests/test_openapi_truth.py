"""The published OpenAPI tells the truth (issue #22 item 4): every status an operation can answer is documented
with the JSON error body, protected operations declare the API-key scheme and 401/403/429, limits from the serve
settings and the served model's labels are written into the schema, and predict links to feedback."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelyard.registry.keys import KeyInfo
from modelyard.serving import create_app
from modelyard.serving.production import feedback_router
from modelyard.serving.security import install_auth
from tests.test_serving import make_cfg, run, running

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


class SpamModel:
    labels = ["spam", "ham"]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.full((len(texts), 2), 0.5)

    def info(self) -> dict[str, Any]:
        return {"name": "spam", "labels": self.labels}


def _spec(app: Any, **headers: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async with running(app) as c:
            r = await c.get("/openapi.json", headers=headers)
            assert r.status_code == 200, r.text
            return r.json()

    return run(main())


def _operations(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{m.upper()} {p}": op for p, item in spec["paths"].items() for m, op in item.items()}


def _production_like(**cfg: Any) -> Any:
    """The plain app with the feedback router and the API-key check (no registry needed to build the document)."""
    app = create_app(SpamModel, make_cfg(**cfg), routers=[feedback_router(None, None, "demo")])  # type: ignore[arg-type]
    admin = KeyInfo("k1", frozenset({"admin"}), None, "admin")
    install_auth(app, lambda key: admin if key == "good" else None, cache_s=0)
    return app


def test_plain_server_documents_every_status_with_the_error_body() -> None:
    spec = _spec(create_app(SpamModel, make_cfg(max_texts_per_request=7, max_chars_per_text=99, max_body_bytes=5000)))
    ops = _operations(spec)
    for label, op in ops.items():
        codes = set(op["responses"])
        assert {"400", "413", "500"} <= codes, (label, codes)
        assert "security" not in op and "401" not in codes, label  # the plain server checks no keys
        for code, resp in op["responses"].items():
            if code.startswith(("4", "5")) and not label.endswith("/readyz"):
                assert resp["content"]["application/json"]["schema"] == ERROR_REF, (label, code)
    for label in ("POST /v1/predict", "POST /v1/explain"):
        assert {"413", "415", "422", "500", "503"} <= set(ops[label]["responses"]), label
        assert "Retry-After" in ops[label]["responses"]["503"]["headers"]
    assert "415" not in ops["GET /healthz"]["responses"] and "422" not in ops["GET /healthz"]["responses"]
    assert "securitySchemes" not in spec["components"]
    texts = spec["components"]["schemas"]["PredictRequest"]["properties"]["texts"]["description"]
    assert "at most 7" in texts and "99 characters" in texts and "5000 bytes" in texts
    target = spec["components"]["schemas"]["ExplainRequest"]["properties"]["target"]["description"]
    assert "`spam`, `ham`" in target


def test_protected_operations_declare_the_key_scheme_and_auth_statuses() -> None:
    spec = _spec(_production_like())
    schemes = spec["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    assert any(s["type"] == "apiKey" and s["name"] == "X-API-Key" for s in schemes.values())
    for label, op in _operations(spec).items():
        codes = set(op["responses"])
        if label in ("GET /healthz", "GET /readyz"):
            assert "security" not in op and "401" not in codes, label
            continue
        assert op["security"] and {"401", "403", "429"} <= codes, (label, codes)
        assert "key_expired" in op["responses"]["401"]["description"]
        assert "Retry-After" in op["responses"]["429"]["headers"]


def test_feedback_example_and_rule_use_the_served_models_labels_and_predict_links_to_it() -> None:
    spec = _spec(_production_like(), Authorization="Bearer good")
    feedback = spec["components"]["schemas"]["FeedbackRequest"]
    assert all(example["label"] in SpamModel.labels for example in feedback["examples"]), feedback["examples"]
    assert "`spam`, `ham`" in feedback["properties"]["label"]["description"]
    ops = _operations(spec)
    link = ops["POST /v1/predict"]["responses"]["200"]["links"]["Feedback"]
    assert link["operationId"] == ops["POST /v1/feedback"]["operationId"]
    assert link["requestBody"]["prediction_id"] == "$response.body#/predictions/0/id"
    assert {"401", "403", "404", "413", "415", "422", "429", "500", "503"} <= set(ops["POST /v1/feedback"]["responses"])
