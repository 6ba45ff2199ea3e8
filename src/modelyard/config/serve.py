"""The `serve` section: batching, request limits, authentication and logging of the server."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelyard.config._base import _Stage


class ServeConfig(_Stage):
    """The HTTP server (`modelyard serve`)."""

    host: str = Field("127.0.0.1", description="Interface to bind; loopback unless you mean to expose it.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    max_batch_size: int = Field(32, ge=1, description="Most texts the micro-batcher merges into one forward pass.")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long the batcher waits to fill a batch while the model is idle (0: never; texts that "
        "arrive while the model is busy are batched anyway).",
    )
    max_texts_per_request: int = Field(64, ge=1, description="More texts in one request → HTTP 413.")
    max_chars_per_text: int = Field(10000, ge=1, description="A longer text → HTTP 413.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="A larger request body → HTTP 413.")
    max_queue: int = Field(4096, ge=1, description="Texts waiting for the model beyond this → HTTP 503.")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="A connection whose request line + headers are not complete this long "
        "after it opened (or after its first byte, for a kept-alive connection) is closed (slow-loris).",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A request body not complete this long after its headers: the "
        "connection is closed (the request is counted as 499 in /metrics).",
    )
    keep_alive_s: float = Field(5.0, gt=0, le=600, description="An idle kept-alive connection is closed after this.")
    max_connections: int = Field(
        512, ge=1, description="Open connections + requests in flight beyond this are answered 503 at once."
    )
    max_in_flight_per_key: int = Field(
        64, ge=1, description="Requests one API key may have in flight at once; more → HTTP 429 (with auth)."
    )
    max_header_bytes: int = Field(16384, ge=1024, description="Request line + headers larger than this → 400 + close.")
    auth: bool = Field(
        False,
        description="Require an API key (`modelyard keys create`) on every endpoint but /healthz and /readyz; "
        "always on when serving NAME@ALIAS from the registry.",
    )
    docs: Literal["public", "key", "off"] = Field(
        "public",
        description="Who may read the API docs (/docs, served from the server itself, and /openapi.json): "
        "`public` (they describe the API and hold no data), `key` (any valid API key; needs API keys: "
        "serve.auth or NAME@ALIAS), `off` (404).",
    )
    mask_pii: bool = Field(
        True,
        description="Redact personal data in logged texts with the PII engine (modelyard.privacy: phones, IDs, "
        "bank cards, e-mail, IPs, URL credentials, passports, addresses, names; English and Chinese), in the "
        "log's writer thread.",
    )
    log_inputs: Literal["encrypted", "plaintext"] = Field(
        "encrypted",
        description="How the prediction log keeps inputs (texts, image descriptions, feedback images): `encrypted` "
        "(AES-256-GCM with the log key: serve.log_key_file, $MODELYARD_LOG_KEY or $MODELYARD_LOG_KEY_FILE; without "
        "one, a key is generated in the registry folder as log.key, mode 600) or `plaintext` (only if you mean it).",
    )
    log_key_file: str | None = Field(
        None,
        description="Key file for the prediction log (urlsafe-base64 keys, one per line, newest first, mode 600; "
        "`modelyard predictions new-key` makes one). Default: $MODELYARD_LOG_KEY, $MODELYARD_LOG_KEY_FILE, "
        "then <registry>/log.key.",
    )
    ood_from: str | None = Field(
        None,
        description="Image models: a vae run (trained on the same data) whose out-of-distribution score flags "
        'inputs unlike the training data; each prediction gains "ood": {score, threshold, flagged}. Flagged '
        "inputs are still answered; `modelyard monitor` reports their share.",
    )
    max_images_per_request: int = Field(16, ge=1, description="Image models: more images in one request → HTTP 413.")
    max_image_bytes: int = Field(
        2_000_000, ge=1024, description="Image models: a larger image file (encoded bytes) → HTTP 413."
    )
    max_image_pixels: int = Field(
        16_000_000, ge=64, description="Image models: an image with more pixels (width × height) → HTTP 413."
    )
