"""Request/response schemas of the HTTP API (pydantic v2).

These models are the contract published at ``/openapi.json``; size limits that depend on the
server's :class:`~modelyard.config.ServeConfig` (texts per request, characters per text) are
checked by the endpoint and answered with HTTP 413, so they are described here in prose rather
than as schema constraints (a schema violation is a 422).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PredictRequest(BaseModel):
    """Body of ``POST /v1/predict``."""

    # Unknown keys are rejected so a typo (`text` for `texts`) fails loudly instead of being ignored.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"texts": ["a good film", "a dull, overlong mess"]}]},
    )

    texts: list[str] = Field(
        ...,
        description="Texts to classify, answered in the same order. At least 1; at most the server's "
        "`max_texts_per_request` (else HTTP 413), each at most `max_chars_per_text` characters (else 413).",
        json_schema_extra={"minItems": 1},
    )

    @field_validator("texts")
    @classmethod
    def _not_empty(cls, texts: list[str]) -> list[str]:
        # A custom validator (rather than Field(min_length=1)) so the 422 says what to do in our words.
        if not texts:
            raise ValueError("must contain at least 1 text")
        for i, text in enumerate(texts):
            check_unicode(text, f"texts[{i}]")
        return texts


def check_unicode(text: str, where: str) -> str:
    """Refuse lone UTF-16 surrogates (``"\\ud800"`` in JSON): no UTF-8 encoder (tokenizer, database) accepts them.

    Without this check one such text fails the tokenizer on the whole micro-batch, i.e. every other
    client's request batched with it (a 500 for all of them).

    Raises:
        ValueError: Naming the field and the character position (a 422 for the client).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{where} has a lone UTF-16 surrogate at character {err.start}; send valid Unicode text"
        ) from None
    return text


class Prediction(BaseModel):
    """The model's answer for one text."""

    label: str = Field(..., description="The most probable label.")
    scores: dict[str, float] = Field(..., description="Probability of every label; they sum to 1.")
    id: str | None = Field(
        None, description="Prediction id (UUIDv4) for `POST /v1/feedback`; set when the server logs predictions."
    )


class LabelSetPrediction(BaseModel):
    """A multi-label model's answer for one text: a set of labels (possibly empty)."""

    labels: list[str] = Field(
        ...,
        description="The predicted labels: those whose score reaches the model's threshold for that label, in the "
        "model's label order; `[]` when none does.",
    )
    scores: dict[str, float] = Field(
        ..., description="Independent probability of every label (each in [0, 1]; they do not sum to 1)."
    )
    id: str | None = Field(
        None, description="Prediction id (UUIDv4) for `POST /v1/feedback`; set when the server logs predictions."
    )


class PredictResponse(BaseModel):
    """Body of a successful ``POST /v1/predict``."""

    predictions: list[Prediction | LabelSetPrediction] = Field(
        ...,
        description="One prediction per input text, in input order: `{label, scores, id}` from a single-label "
        "model, `{labels, scores, id}` from a multi-label model (`GET /v1/model`: `multi_label`).",
    )
    model: dict[str, Any] = Field(..., description="The serving model's `info()` (name, run id, labels …).")


class ExplainRequest(BaseModel):
    """Body of ``POST /v1/explain``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "a good film", "method": "ig"}]},
    )

    text: str = Field(..., description="The text to explain; at most `max_chars_per_text` characters (else 413).")
    method: Literal["ig", "attention", "occlusion"] = Field(
        "ig",
        description="`ig`: integrated gradients (signed); `occlusion`: probability drop when a word is masked "
        "(signed); `attention`: attention rollout (>= 0, sums to 1, ignores `target`).",
    )
    target: str | None = Field(None, description="Label to explain; default: the predicted label.")

    @field_validator("text")
    @classmethod
    def _valid_unicode(cls, text: str) -> str:
        return check_unicode(text, "text")


class Explanation(BaseModel):
    """Per-word attributions of one text (see ``modelyard.explain.Explanation``)."""

    text: str = Field(..., description="The text as sent.")
    label: str = Field(..., description="The predicted label.")
    target: str = Field(..., description="The label explained.")
    scores: dict[str, float] = Field(..., description="Probability of every label.")
    method: str = Field(..., description="ig, attention or occlusion.")
    units: list[str] = Field(..., description="Words, punctuation marks and single CJK characters, in order.")
    attributions: list[float] = Field(
        ..., description="One per unit; positive supports `target` (ig, occlusion); attention: >= 0, sums to 1."
    )
    normalized_text: str = Field(..., description="The text after the model's cleaning; `spans` index into it.")
    spans: list[tuple[int, int]] = Field(..., description="`[start, end)` of every unit in `normalized_text`.")
    truncated: bool = Field(..., description="The text exceeded the model's max_length; later words are absent.")
    convergence_delta: float | None = Field(None, description="ig only: integral approximation error.")


class ExplainResponse(BaseModel):
    """Body of a successful ``POST /v1/explain``."""

    explanation: Explanation
    model: dict[str, Any] = Field(..., description="The serving model's `info()`.")


class ErrorDetail(BaseModel):
    """One problem found while validating a request."""

    loc: list[str | int] = Field(..., description="Where the problem is, e.g. ['body', 'texts', 0].")
    msg: str = Field(..., description="What is wrong.")
    type: str = Field(..., description="Machine-readable pydantic error type.")


class ErrorBody(BaseModel):
    """The ``error`` object of every non-2xx response."""

    code: str = Field(
        ...,
        description="Stable machine-readable code: invalid_request, invalid_json, too_many_texts, "
        "text_too_long, body_too_large, unsupported_media_type, model_not_ready, overloaded, "
        "shutting_down, prediction_failed, explain_unsupported, explain_failed, not_found, method_not_allowed, "
        "bad_request, internal_error; with API keys: unauthorized, key_expired, forbidden, rate_limited; "
        "production server: prediction_not_found, job_not_found, drift_unavailable, job_timed_out; image models: "
        "too_many_images, image_too_large, image_too_many_pixels, unsupported_image, invalid_base64.",
    )
    message: str = Field(..., description="Human-readable explanation, naming the field and the fix.")
    limit: int | None = Field(None, description="The limit that was exceeded (413 responses).")
    index: int | None = Field(None, description="Index of the offending text (text_too_long).")
    details: list[ErrorDetail] | None = Field(None, description="Every validation problem (422 responses).")


class ErrorResponse(BaseModel):
    """Body of every error response."""

    error: ErrorBody


class ReadyResponse(BaseModel):
    """Body of ``GET /readyz``."""

    status: str = Field(..., description="ready, loading, error or shutting_down.")
    model: dict[str, Any] | None = Field(None, description="The model's `info()` once ready.")
    detail: str | None = Field(None, description="Why loading failed (status `error`).")
