"""The published OpenAPI document (``/openapi.json``), made to tell the truth about what the server answers.

FastAPI documents what the route declarations say; the layers around the routes answer more. This module
post-processes FastAPI's document, lazily (at the first request for it, and again when the served model's
labels change), so that:

* every operation lists every status the server can really return, each with the JSON error body
  (``ErrorResponse``): 400 (bad framing: ``Content-Length`` with ``Transfer-Encoding``, or an invalid
  ``Content-Length``; :mod:`.server`, :mod:`.middleware`), 413 (a body over ``max_body_bytes``), 415 and 422
  ``invalid_json`` (operations taking a JSON body), 422 (operations with parameters), 500 (``internal_error``,
  the last-resort handler) and, with API keys checked (:mod:`.security`), 401 (``unauthorized``,
  ``key_expired``), 403 (``forbidden``) and 429 (``rate_limited``) on every protected operation;
* 429 and 503 declare their ``Retry-After`` header;
* the API-key security scheme (HTTP bearer, or the ``X-API-Key`` header) is declared and required by every
  protected operation, so Swagger UI shows its Authorize button;
* limits that depend on the serve settings and rules across fields (a feedback label must be one of the
  served model's labels) are written into the schema descriptions with their current values, and the
  feedback example uses a label of the served model;
* ``POST /v1/predict`` links each ``predictions[i].id`` to ``POST /v1/feedback`` (OpenAPI links; for a
  multi-label model ``predictions[i].labels`` to the feedback's ``labels``);
* when the served model classifies images, ``POST /v1/predict`` documents the bodies it then takes (a
  multipart upload or JSON ``{"images": [base64, …]}``, answered by :mod:`.images`) and their limits and
  errors, instead of the texts body.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from modelyard.config import ServeConfig

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
BEARER_SCHEME = "ApiKeyBearer"
HEADER_SCHEME = "ApiKeyHeader"
_BODY_METHODS = {"post", "put", "patch"}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying; sent when a retry can succeed.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_FEEDBACK_LINK = "Feedback"


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}
    if retry_after:
        out["headers"] = copy.deepcopy(_RETRY_AFTER)
    return out


def _add(responses: dict[str, Any], status: int, description: str, *, retry_after: bool = False) -> None:
    """Document ``status`` unless the route already does (its own description is more precise)."""
    key = str(status)
    if key not in responses:
        responses[key] = _error(description, retry_after)
    elif retry_after:
        responses[key].setdefault("headers", copy.deepcopy(_RETRY_AFTER))


def _with_errors(
    doc: dict[str, Any],
    cfg: ServeConfig,
    labels: tuple[str, ...] | None,
    needs_key: Callable[[str], bool] | None,
    images: bool = False,
    multi_label: bool = False,
) -> dict[str, Any]:
    """Add the statuses, security, descriptions, examples and links to a copy of FastAPI's document."""
    doc = copy.deepcopy(doc)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    if "ErrorResponse" not in schemas:  # every app route set declares it today; keep the $refs valid regardless
        from modelyard.serving.schemas import ErrorResponse

        for name, schema in (
            ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {}).items()
        ):
            schemas.setdefault(name, schema)
        body = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        body.pop("$defs", None)
        schemas["ErrorResponse"] = body
    protected_any = False
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses = op["responses"]
            has_body = method in _BODY_METHODS and "requestBody" in op
            if needs_key is not None and needs_key(path):
                protected_any = True
                op["security"] = [{BEARER_SCHEME: []}, {HEADER_SCHEME: []}]
                _add(
                    responses,
                    401,
                    "No API key, an unknown or revoked one (`unauthorized`), or an expired one (`key_expired`).",
                )
                _add(responses, 403, "The API key lacks the scope this operation needs (`forbidden`).")
                _add(responses, 429, "The API key's rate limit is exhausted (`rate_limited`).", retry_after=True)
            _add(
                responses,
                400,
                "Bad framing (`bad_request`): both Content-Length and Transfer-Encoding (the connection is "
                "closed), or an invalid Content-Length.",
            )
            _add(
                responses,
                413,
                f"The request body is larger than {cfg.max_body_bytes} bytes (`body_too_large`, max_body_bytes).",
            )
            if has_body:
                _add(responses, 415, "Content-Type is not application/json (`unsupported_media_type`).")
            if has_body or op.get("parameters"):
                _add(responses, 422, "Malformed JSON (`invalid_json`) or a schema violation (`invalid_request`).")
            _add(responses, 500, "An unexpected server error (`internal_error`); the server log has the details.")
            if (
                "503" in responses
                and responses["503"].get("content", {}).get("application/json", {}).get("schema") == ERROR_REF
            ):
                responses["503"].setdefault("headers", copy.deepcopy(_RETRY_AFTER))
    if protected_any:
        doc["components"]["securitySchemes"] = {
            BEARER_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (`modelyard keys create --scope predict`) as `Authorization: Bearer KEY`.",
            },
            HEADER_SCHEME: {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "The same API key in the `X-API-Key` header.",
            },
        }
    _describe_limits(schemas, cfg)
    _describe_labels(doc, schemas, labels, multi_label)
    if images:
        _describe_images(doc, cfg)
    return doc


def _describe_images(doc: dict[str, Any], cfg: ServeConfig) -> None:
    """``POST /v1/predict`` of an image model: the two request bodies :mod:`.images` accepts, and its errors."""
    from modelyard.serving.images import IMAGE_FORMATS, body_limit

    op = doc.get("paths", {}).get("/v1/predict", {}).get("post")
    if op is None:
        return
    formats = ", ".join(sorted(IMAGE_FORMATS - {"MPO"}))
    one = (
        f"An encoded image ({formats}), at most {cfg.max_image_bytes} bytes (`max_image_bytes`; more: HTTP 413 "
        f"`image_too_large`) and {cfg.max_image_pixels} pixels (`max_image_pixels`; more: 413 "
        "`image_too_many_pixels`); another format or a damaged file: 415 `unsupported_image`."
    )
    count = {"minItems": 1, "maxItems": cfg.max_images_per_request}
    op["requestBody"] = {
        "required": True,
        "description": (
            f"This model classifies images: 1 to {cfg.max_images_per_request} per request "
            f"(`max_images_per_request`; more: 413 `too_many_images`), the whole body at most {body_limit(cfg)} "
            "bytes (413 `body_too_large`); answered in order. A texts body: 422 `invalid_request`."
            + (
                f" Every prediction also carries `ood`: {{score, threshold, flagged}} from the VAE run {cfg.ood_from} "
                "(`serve.ood_from`); a flagged image is still classified."
                if cfg.ood_from
                else ""
            )
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {
                            "type": "array",
                            **count,
                            "items": {
                                "type": "string",
                                "contentEncoding": "base64",
                                "description": one + " Base64; a `data:image/...;base64,` prefix is allowed.",
                            },
                        }
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            **count,
                            "items": {"type": "string", "format": "binary", "description": one},
                            "description": "One file part per image (any field name: file, files, image).",
                        }
                    },
                    "required": ["file"],
                }
            },
        },
    }
    responses = op["responses"]
    responses["413"] = _error(
        "Too large (`body_too_large`, `too_many_images`, `image_too_large`, `image_too_many_pixels`)."
    )
    responses["415"] = _error(
        "Neither multipart/form-data nor application/json (`unsupported_media_type`), or a file that is not a "
        f"supported image ({formats}; `unsupported_image`)."
    )
    responses["422"] = _error(
        "Malformed JSON (`invalid_json`), bad base64 (`invalid_base64`), no images or a texts body (`invalid_request`)."
    )


def _describe_limits(schemas: dict[str, Any], cfg: ServeConfig) -> None:
    texts = schemas.get("PredictRequest", {}).get("properties", {}).get("texts")
    if texts is not None:
        texts["description"] = (
            f"Texts to classify, answered in the same order. At least 1; at most {cfg.max_texts_per_request} "
            f"(`max_texts_per_request`; more: HTTP 413 `too_many_texts`), each at most {cfg.max_chars_per_text} "
            f"characters (`max_chars_per_text`; longer: 413 `text_too_long`); the whole body at most "
            f"{cfg.max_body_bytes} bytes (413 `body_too_large`). Lone UTF-16 surrogates: 422."
        )
    text = schemas.get("ExplainRequest", {}).get("properties", {}).get("text")
    if text is not None:
        text["description"] = (
            f"The text to explain; at most {cfg.max_chars_per_text} characters (`max_chars_per_text`; "
            "longer: HTTP 413 `text_too_long`)."
        )


def _describe_labels(
    doc: dict[str, Any], schemas: dict[str, Any], labels: tuple[str, ...] | None, multi_label: bool = False
) -> None:
    known = (
        f"one of the served model's labels: {', '.join(f'`{x}`' for x in labels)}"
        if labels
        else ("one of the served model's labels (`GET /v1/model`, `labels`)")
    )
    feedback = schemas.get("FeedbackRequest")
    if feedback is not None:
        label = feedback.get("properties", {}).get("label")
        if label is not None:
            label["description"] = (
                f"The correct label: {known} (the labels of the model that made the prediction); "
                "another: HTTP 422 `invalid_request`."
            )
        label_set = feedback.get("properties", {}).get("labels")
        if label_set is not None:
            label_set["description"] = (
                f"Multi-label models only, instead of `label`: the correct label set, each {known}, in any order; "
                "`[]` means none applies (another label: HTTP 422 `invalid_request` naming it). Send `label` or "
                "`labels`, not both."
            )
        if labels:
            for example in feedback.get("examples", []):
                if isinstance(example, dict):
                    example.pop("label" if multi_label else "labels", None)
                    example.update({"labels": [labels[0]]} if multi_label else {"label": labels[0]})
    target = schemas.get("ExplainRequest", {}).get("properties", {}).get("target")
    if target is not None:
        target["description"] = (
            f"Label to explain, {known} (another: HTTP 422 `invalid_request`); default: the predicted label."
        )
    paths = doc.get("paths", {})
    feedback_op = paths.get("/v1/feedback", {}).get("post")
    predict_ok = paths.get("/v1/predict", {}).get("post", {}).get("responses", {}).get("200")
    if feedback_op is not None and predict_ok is not None and "operationId" in feedback_op:
        predict_ok["links"] = {
            _FEEDBACK_LINK: {
                "operationId": feedback_op["operationId"],
                "description": "Send the correct label for the first prediction (use the same API key).",
                "requestBody": {
                    "prediction_id": "$response.body#/predictions/0/id",
                    # a multi-label model answers a label set: its feedback is `labels`
                    **(
                        {"labels": "$response.body#/predictions/0/labels"}
                        if multi_label
                        else {"label": "$response.body#/predictions/0/label"}
                    ),
                },
            }
        }


def install_openapi(app: FastAPI, cfg: ServeConfig, checks_api_keys: Callable[[FastAPI], bool]) -> None:
    """Replace ``app.openapi`` with the truthful, lazily built document (see the module docstring).

    Args:
        app: The app being built by :func:`modelyard.serving.create_app`; ``app.state.runtime`` tells the
            served model's labels, ``app.state.public_paths`` the docs paths that need no key.
        cfg: The serve settings (limits written into the descriptions).
        checks_api_keys: Whether the app checks API keys; asked at the first request, since the production
            server adds its API-key middleware after the app is built.
    """
    built: dict[str, Any] = {}

    from modelyard.serving.images import is_image_model

    def openapi() -> dict[str, Any]:
        base = FastAPI.openapi(app)  # FastAPI's own document, built once and kept in app.openapi_schema
        loaded = app.state.runtime.loaded
        labels = tuple(loaded.labels) if loaded is not None else None
        images = loaded is not None and is_image_model(loaded.classifier)
        needs_key: Callable[[str], bool] | None = None
        if checks_api_keys(app):
            from modelyard.serving.security import PUBLIC_PATHS, required_scope

            public = PUBLIC_PATHS | getattr(app.state, "public_paths", frozenset())

            def needs_key(path: str) -> bool:
                return required_scope(path, public) is not None

        multi_label = loaded is not None and loaded.multi_label
        key = (labels, needs_key is not None, images, multi_label)
        if built.get("key") != key:
            built["doc"] = _with_errors(base, cfg, labels, needs_key, images, multi_label)
            built["key"] = key
        return built["doc"]

    app.openapi = openapi  # type: ignore[method-assign]
