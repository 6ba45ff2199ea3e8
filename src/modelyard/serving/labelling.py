"""The console's "Label next" panel: an admin labels texts one at a time; each answer is feedback for ``retrain``.

Two admin endpoints (admin scope, like every ``/admin/`` path; the console sends the pasted key as a bearer
header, so there is no cookie to forge and no CSRF token to check):

* ``POST /admin/v1/label/queue`` takes a CSV (as text in the JSON body: the file the admin picked in the page,
  typically written by ``modelyard label queue``, most useful row first) and answers its rows in file order,
  less the texts that already have feedback for this app and repeated texts, so an interrupted session resumes
  by uploading the same file again. The server keeps no queue: the page holds it.
* ``POST /admin/v1/label`` stores one answer. Feedback refers to a logged prediction, so the server first
  scores the text with the served model and logs that prediction through the prediction store (text
  encrypted at rest, PII masked under ``serve.mask_pii``, exactly as ``/v1/predict`` logs one), with
  ``key_id`` ``label:<admin key id>`` (:data:`~modelyard.registry.predictions.LABELLED_KEY_PREFIX`), then the
  feedback row, in one transaction, before answering. ``registry.feedback`` — what ``modelyard retrain``
  reads — returns it like any other feedback; the monitor, the traffic charts and the recent-predictions list
  leave these rows out (they are a person's labels, not traffic).

Skipping a text is the page's business: nothing is stored.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelyard._internal.labels import join_label_set
from modelyard.config import ServeConfig
from modelyard.registry.logkeys import LogKeyError
from modelyard.registry.models import utcnow
from modelyard.registry.predictions import LABELLED_KEY_PREFIX
from modelyard.registry.store import Registry
from modelyard.serving.http_errors import ApiError
from modelyard.serving.predlog import LABEL_CHARS, log_label, mask_pii
from modelyard.serving.schemas import ErrorResponse

MAX_QUEUE_ROWS = 5000
"""Most rows ``POST /admin/v1/label/queue`` answers (the page shows one at a time)."""

_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No API key, an unknown/revoked one, or an expired one."},
    403: {"model": ErrorResponse, "description": "The key lacks the `admin` scope (`forbidden`)."},
}


class LabelQueueRequest(BaseModel):
    """Body of ``POST /admin/v1/label/queue``."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"csv": "row,text\n12,a film I cannot decide on\n"}]}
    )
    csv: str = Field(..., min_length=1, description="The queue as CSV text with a header row (at most the body limit).")
    text_column: str = Field("text", min_length=1, max_length=256, description="The column holding the texts.")


class LabelQueueItem(BaseModel):
    """One text to label."""

    row: int = Field(..., description="The file's `row` column when it has one (`label queue` output), else 1-based.")
    text: str
    pred: str | None = Field(None, description="The `pred` column of the file, when it has one.")
    score: float | None = Field(None, description="The `score` column of the file, when it has one.")


class LabelQueueResponse(BaseModel):
    """Body of ``POST /admin/v1/label/queue``: the rows to label, in file order."""

    app: str
    labels: list[str] = Field(..., description="The served model's labels: the answers the panel offers.")
    multi_label: bool = Field(..., description="Answers are label sets (`labels`) rather than one `label`.")
    rows_in_file: int
    already_labelled: int = Field(..., description="Rows left out: their text already has feedback for this app.")
    duplicates: int = Field(..., description="Rows left out: the same text earlier in the file.")
    empty: int = Field(..., description="Rows left out: no text.")
    too_long: int = Field(..., description="Rows left out: longer than `max_chars_per_text`.")
    truncated: bool = Field(..., description=f"More than {MAX_QUEUE_ROWS} rows were left; the first ones are here.")
    items: list[LabelQueueItem]


class LabelRequest(BaseModel):
    """Body of ``POST /admin/v1/label``: a person's label for a text (``label``, or ``labels`` for multi-label)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "a quiet, odd film", "label": "pos"}]}
    )
    text: str = Field(..., min_length=1, description="The text, as shown (at most `max_chars_per_text`).")
    label: str | None = Field(None, min_length=1, max_length=256, description="The label (one of the model's).")
    labels: list[str] | None = Field(
        None, max_length=1000, description="Multi-label models, instead of `label`: the label set (`[]`: none)."
    )

    @model_validator(mode="after")
    def _label_or_labels(self) -> LabelRequest:
        if (self.label is None) == (self.labels is None):
            raise ValueError("send exactly one of `label` (one label) or `labels` (a multi-label model's set)")
        return self


class LabelResponse(BaseModel):
    """Body of an accepted ``POST /admin/v1/label``."""

    status: str = Field(..., description="`stored`: the prediction row and its feedback are written.")
    prediction_id: str = Field(..., description="The logged row the feedback refers to.")
    label: str | None = None
    labels: list[str] | None = None
    model_label: str = Field(..., description="What the served model predicted for the text.")


def _text_key(text: str) -> str:
    """The feedback builder's key (``ops.feedback_data.text_key``: NFKC, whitespace collapsed); serving sits below
    ``ops``, so the two-line rule is repeated here (a test checks they agree)."""
    import unicodedata

    return " ".join(unicodedata.normalize("NFKC", str(text)).split())


def _parse_queue(body: LabelQueueRequest) -> Any:
    import pandas as pd

    try:
        frame = pd.read_csv(io.StringIO(body.csv), dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as err:
        raise ApiError(422, "invalid_request", f"body.csv: not a readable CSV ({err})") from None
    if body.text_column not in frame.columns:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise ApiError(
            422,
            "invalid_request",
            f"body.csv: no text column '{body.text_column}'; columns found: {found}; set body.text_column",
        )
    if frame.empty:
        raise ApiError(422, "invalid_request", "body.csv: the file holds a header but no rows")
    return frame


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None  # NaN, inf → None


def label_router(registry: Registry, app_name: str, cfg: ServeConfig, encrypt: bool = True) -> APIRouter:
    """``POST /admin/v1/label/queue`` and ``POST /admin/v1/label`` (the admin scope is enforced by the auth layer).

    Args:
        registry: Where the answers go (prediction store: a prediction row + its feedback).
        app_name: The served app (the feedback's app).
        cfg: Serve settings (text length limit, ``mask_pii``).
        encrypt: Encrypt the logged text (``serve.log_inputs: encrypted``).
    """
    router = APIRouter()

    @router.post(
        "/admin/v1/label/queue",
        tags=["admin"],
        summary='"Label next": read a queue CSV (e.g. from `modelyard label queue`), less texts with feedback',
        response_model=LabelQueueResponse,
        responses={
            **_AUTH_ERRORS,
            409: {"model": ErrorResponse, "description": "Logged feedback cannot be decrypted here (`log_key`)."},
            422: {"model": ErrorResponse, "description": "Not a CSV, no text column, no rows (`invalid_request`)."},
            503: {"model": ErrorResponse, "description": "The model is not loaded yet (`model_not_ready`)."},
        },
    )
    async def label_queue(body: LabelQueueRequest, http_request: Request) -> LabelQueueResponse:
        loaded = http_request.app.state.runtime.require_ready()
        frame = _parse_queue(body)
        try:
            feedback = await asyncio.to_thread(registry.feedback, app_name)
        except LogKeyError as err:
            raise ApiError(409, "log_key", f"the feedback of '{app_name}' cannot be read here: {err}") from None
        done = {_text_key(r["text"]) for r in feedback}
        counts = {"already_labelled": 0, "duplicates": 0, "empty": 0, "too_long": 0}
        seen: set[str] = set()
        items: list[LabelQueueItem] = []
        truncated = False
        for i, rec in enumerate(frame.to_dict(orient="records")):
            text = str(rec[body.text_column])
            key = _text_key(text)
            if not key:
                counts["empty"] += 1
            elif len(text) > cfg.max_chars_per_text:
                counts["too_long"] += 1
            elif key in done:
                counts["already_labelled"] += 1
            elif key in seen:
                counts["duplicates"] += 1
            elif len(items) >= MAX_QUEUE_ROWS:
                truncated = True
            else:
                seen.add(key)
                row = _number(rec.get("row"))
                pred = rec.get("pred")
                items.append(
                    LabelQueueItem(
                        row=int(row) if row is not None else i + 1,
                        text=text,
                        pred=str(pred) if pred not in (None, "") else None,
                        score=_number(rec.get("score")),
                    )
                )
        return LabelQueueResponse(
            app=app_name,
            labels=list(loaded.labels),
            multi_label=loaded.multi_label,
            rows_in_file=len(frame),
            truncated=truncated,
            items=items,
            **counts,
        )

    @router.post(
        "/admin/v1/label",
        tags=["admin"],
        summary='"Label next": store a person\'s label for a text as feedback (`modelyard retrain` learns from it)',
        status_code=201,
        response_model=LabelResponse,
        response_model_exclude_none=True,
        responses={
            **_AUTH_ERRORS,
            413: {"model": ErrorResponse, "description": "The text is over `max_chars_per_text` (`text_too_long`)."},
            422: {
                "model": ErrorResponse,
                "description": "Neither or both of `label`/`labels`, an unknown label, `labels` for a single-label "
                "model or `label` for a multi-label one (`invalid_request`).",
            },
            503: {"model": ErrorResponse, "description": "The model is not loaded yet (`model_not_ready`)."},
        },
    )
    async def label_text(body: LabelRequest, http_request: Request) -> LabelResponse:
        runtime = http_request.app.state.runtime
        loaded = runtime.require_ready()
        labels = list(loaded.labels)
        if len(body.text) > cfg.max_chars_per_text:
            raise ApiError(
                413,
                "text_too_long",
                f"body.text has {len(body.text)} characters; the limit is {cfg.max_chars_per_text}",
                limit=cfg.max_chars_per_text,
            )
        if not body.text.strip():
            raise ApiError(422, "invalid_request", "body.text: empty text")
        if loaded.multi_label and body.labels is None:
            raise ApiError(422, "invalid_request", "body.label: this model predicts label sets; send `labels`")
        if not loaded.multi_label and body.labels is not None:
            raise ApiError(422, "invalid_request", "body.labels: this model predicts one label; send `label`")
        for i, lab in enumerate(body.labels if body.labels is not None else [body.label]):
            if lab not in labels:
                field = "label" if body.labels is None else f"labels[{i}]"
                raise ApiError(
                    422, "invalid_request", f"body.{field}: {lab!r} is not a label of the model; use {labels}"
                )
        answer_set = None if body.labels is None else [lab for lab in labels if lab in set(body.labels)]
        stored = body.label if answer_set is None else join_label_set(answer_set)
        assert stored is not None
        if len(stored) > LABEL_CHARS:
            raise ApiError(422, "invalid_request", f"body.labels: too many labels to record ({LABEL_CHARS} characters)")
        start = time.perf_counter()
        probs = await asyncio.to_thread(runtime.predict, [body.text])
        seconds = time.perf_counter() - start
        text = await asyncio.to_thread(mask_pii, body.text) if cfg.mask_pii else body.text
        key = getattr(http_request.state, "api_key", None)
        key_id = key.key_id if key is not None else None
        pid, now = str(uuid.uuid4()), utcnow()
        model_label = loaded.label_strings(probs)[0]
        row = {
            "id": pid,
            "at": now,
            "app": app_name,
            "version": loaded.info.get("version"),
            "key_id": LABELLED_KEY_PREFIX + (key_id or "-"),
            "text": text,
            "label": log_label(model_label),
            "scores": dict(zip(labels, (float(p) for p in probs[0]), strict=True)),
            "latency_ms": seconds * 1000.0,
        }
        feedback = {"at": now, "prediction_id": pid, "app": app_name, "key_id": key_id, "label": stored}
        await asyncio.to_thread(registry.log_predictions, [row], [feedback], (), encrypt)
        return LabelResponse(
            status="stored", prediction_id=pid, label=body.label, labels=answer_set, model_label=model_label
        )

    return router
