"""``POST /v1/feedback``: the correct answer for a logged prediction, from the API key that asked for it.

A single-label model's prediction takes ``{"prediction_id", "label"}``. A multi-label model's takes
``{"prediction_id", "labels": [...]}`` — the correct label *set*, every label one of the model's, ``[]`` for
"none of them" (``{"label": "x"}`` is accepted too and means the set ``["x"]``). The log keeps a label set as
one string, its labels in the model's label order joined by ``|`` (``""``: the empty set), the encoding of the
prediction log's ``label`` column (:func:`modelyard._internal.labels.join_label_set`); ``modelyard retrain``
splits it again.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelyard._internal.labels import join_label_set
from modelyard.config import ServeConfig
from modelyard.registry.models import utcnow
from modelyard.registry.store import Registry
from modelyard.serving.http_errors import ApiError
from modelyard.serving.images import described_sha256, feedback_image
from modelyard.serving.predlog import LABEL_CHARS, PredictionLog
from modelyard.serving.schemas import ErrorResponse

_PID = "2f0c6a1e-8d5b-4c1e-9a57-0d1f2b3c4d5e"


class FeedbackRequest(BaseModel):
    """Body of ``POST /v1/feedback``: ``label`` (single-label models) or ``labels`` (multi-label models)."""

    model_config = ConfigDict(
        extra="forbid",
        # serving/openapi.py rewrites the example with the served model's labels (`labels` for a multi-label model)
        json_schema_extra={"examples": [{"prediction_id": _PID, "label": "pos"}]},
    )
    prediction_id: str = Field(..., description="The `id` of a prediction made with the same API key.")
    label: str | None = Field(None, min_length=1, max_length=256, description="The correct label (one of the model's).")
    labels: list[str] | None = Field(
        None,
        max_length=1000,
        description="Multi-label models only, instead of `label`: the correct label set, each one of the model's "
        "labels, in any order; `[]` means none of them applies. Send `label` or `labels`, not both.",
    )
    image: str | None = Field(
        None,
        description=(
            "Image models only: the predicted image again (base64, as sent to `/v1/predict`), so `modelyard "
            "retrain` can learn from it. Its sha256 must equal the prediction's (else 422 `image_mismatch`); "
            "the prediction log itself never keeps pixels. Without it the feedback is recorded but an image "
            "model cannot be retrained on it."
        ),
    )

    @model_validator(mode="after")
    def _label_or_labels(self) -> FeedbackRequest:
        if (self.label is None) == (self.labels is None):
            raise ValueError("send exactly one of `label` (one label) or `labels` (a multi-label model's set)")
        return self


class FeedbackResponse(BaseModel):
    """Body of an accepted ``POST /v1/feedback`` (``label`` or ``labels``, as sent)."""

    status: str = Field(..., description="`accepted`: queued for the log writer.")
    prediction_id: str
    label: str | None = Field(None, description="The label recorded (a `label` request).")
    labels: list[str] | None = Field(
        None, description="The label set recorded, in the model's label order (a `labels` request)."
    )


def _invalid(field: str, message: str) -> ApiError:
    loc: list[Any] = ["body", *(int(p) if p.isdigit() else p for p in field.replace("[", ".").rstrip("]").split("."))]
    return ApiError(
        422,
        "invalid_request",
        f"body.{field}: {message}",
        details=[{"loc": loc, "msg": message, "type": "value_error"}],
    )


def _label_set(http_request: Request, sent: list[str], labels: tuple[str, ...]) -> list[str]:
    """Check a ``labels`` body against the served model: multi-label, every label known, storable."""
    runtime = getattr(http_request.app.state, "runtime", None)
    if runtime is not None and not runtime.require_ready().multi_label:
        raise _invalid("labels", "this model predicts one label per text; send `label` instead of `labels`")
    for i, lab in enumerate(sent):
        if lab not in labels:
            raise _invalid(f"labels[{i}]", f"{lab!r} is not a label of the model; use some of {list(labels)}")
    ordered = [lab for lab in labels if lab in set(sent)]
    if len(join_label_set(ordered)) > LABEL_CHARS:
        raise _invalid("labels", f"{len(ordered)} labels are too many to record (at most {LABEL_CHARS} characters)")
    return ordered


def feedback_router(
    registry: Registry, predlog: PredictionLog, app_name: str, cfg: ServeConfig | None = None
) -> APIRouter:
    """``POST /v1/feedback``: the correct label for a prediction made with the caller's key (queued to the log)."""
    cfg = cfg or ServeConfig()
    router = APIRouter()

    @router.post(
        "/v1/feedback",
        tags=["feedback"],
        summary="The correct label (or label set) for a prediction made with this API key",
        status_code=202,
        response_model=FeedbackResponse,
        response_model_exclude_none=True,
        responses={
            404: {"model": ErrorResponse, "description": "No such prediction for this key (`prediction_not_found`)."},
            413: {"model": ErrorResponse, "description": "`body.image` over `max_image_bytes` (`image_too_large`)."},
            422: {
                "model": ErrorResponse,
                "description": (
                    "Malformed id, neither or both of `label`/`labels`, an unknown label (the message names it), "
                    "`labels` for a single-label model or an image for a text prediction (`invalid_request`); "
                    "`body.image` not base64 (`invalid_base64`) or not the predicted image (`image_mismatch`)."
                ),
            },
            503: {
                "model": ErrorResponse,
                "description": "The log queue is full (`overloaded`), or `labels` sent while the model is still "
                "loading (`model_not_ready`); honour Retry-After.",
            },
        },
    )
    async def feedback(body: FeedbackRequest, http_request: Request) -> FeedbackResponse:
        key = getattr(http_request.state, "api_key", None)
        key_id = key.key_id if key is not None else None
        try:
            parsed = uuid.UUID(body.prediction_id)
        except ValueError:
            parsed = None
        if parsed is None or parsed.version != 4 or str(parsed) != body.prediction_id.lower():
            raise ApiError(422, "invalid_request", "body.prediction_id: not a UUIDv4 prediction id")
        pid = str(parsed)
        owner = predlog.recent(pid)
        if owner is None:
            row = await asyncio.to_thread(registry.prediction, pid)
            owner = (
                None
                if row is None
                else (row["key_id"], row["app"], tuple(row["scores"]), described_sha256(row["text"]))
            )
        # Someone else's prediction is answered exactly like a missing one: ids must not be probeable.
        if owner is None or owner[0] != key_id or owner[1] != app_name:
            raise ApiError(404, "prediction_not_found", f"no prediction {pid} made with this API key")
        label_set = None if body.labels is None else _label_set(http_request, body.labels, owner[2])
        if body.label is not None and body.label not in owner[2]:
            raise ApiError(
                422,
                "invalid_request",
                f"body.label: {body.label!r} is not a label of the model; use one of {list(owner[2])}",
            )
        now = utcnow()
        image = None
        if body.image is not None:
            sha = owner[3]
            if sha is None:
                raise ApiError(422, "invalid_request", "body.image: this prediction was made for a text, not an image")
            data, media_type = feedback_image(body.image, sha, cfg)
            image = {"sha256": sha, "app": app_name, "media_type": media_type, "data": data, "at": now}
        stored = body.label if label_set is None else join_label_set(label_set)
        row = {"at": now, "prediction_id": pid, "app": app_name, "key_id": key_id, "label": stored}
        if not predlog.log_feedback(row, image):
            raise ApiError(503, "overloaded", "the log queue is full; retry shortly", headers={"Retry-After": "1"})
        return FeedbackResponse(status="accepted", prediction_id=pid, label=body.label, labels=label_set)

    return router
