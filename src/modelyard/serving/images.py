"""Image requests for ``POST /v1/predict`` when the served model classifies images.

Two request shapes:

* ``multipart/form-data`` with one or more file parts (any field name; ``file``/``files``/``image``);
* ``application/json`` ``{"images": ["<base64>", …]}`` (a ``data:image/…;base64,`` prefix is allowed).

The answer has the text endpoint's shape: ``{"predictions": [{"label", "scores"}], "model": {...}}``.

Limits (``serve`` section) and their errors, each ``{"error": {"code", "message", ...}}`` naming the
image and the limit: body over the cap → 413 ``body_too_large``; more than ``max_images_per_request``
→ 413 ``too_many_images``; a file over ``max_image_bytes`` → 413 ``image_too_large``; more than
``max_image_pixels`` → 413 ``image_too_many_pixels`` (checked from the header, before decoding, so a
decompression bomb is never expanded); not an image (or a format outside PNG/JPEG/GIF/BMP/WebP/TIFF)
→ 415 ``unsupported_image``; no images, bad base64 or a text request to an image model → 422.

It is pure ASGI middleware placed before the JSON body guard (which only admits JSON): it answers
``POST /v1/predict`` itself once an image model is loaded and passes everything else through, so the
text endpoint and its schema stay untouched. Predictions go through the same micro-batcher (and so
the same model lock, queue limit and batching metrics) as texts: the batcher carries decoded arrays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import time
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.config import ServeConfig
from modelyard.serving.http_errors import ApiError, error_response, submit_batch

IMAGE_FORMATS = frozenset({"PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "MPO"})


def is_image_model(classifier: Any) -> bool:
    """Whether a loaded classifier takes images."""
    return getattr(classifier, "task", None) == "image-classification"


def body_limit(cfg: ServeConfig) -> int:
    """Largest image request body: every image at its limit, base64-inflated, plus form overhead."""
    return max(cfg.max_body_bytes, cfg.max_images_per_request * (cfg.max_image_bytes * 4 // 3 + 1024) + 65536)


def _decode_base64(item: Any, index: int) -> bytes:
    if not isinstance(item, str):
        raise ApiError(422, "invalid_request", f"images[{index}] must be a base64 string", index=index)
    if item.startswith("data:"):
        item = item.partition(",")[2]
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_base64", f"images[{index}] is not valid base64", index=index) from None


def describe_image(data: bytes, img: Any) -> str:
    """What the prediction log stores for an image instead of a text: type, size and content hash.

    Example:
        >>> describe_image(png_bytes, Image.open(io.BytesIO(png_bytes)))  # doctest: +SKIP
        'image/png 28x28 sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'
    """
    return f"{_mime(img)} {img.width}x{img.height} sha256:{hashlib.sha256(data).hexdigest()}"


# an optional OOD score and flag follow when the server runs with serve.ood_from (serving/ood.py)
_DESCRIPTION = re.compile(r"^image/[\w.+-]+ \d+x\d+ sha256:([0-9a-f]{64})(?: ood=\S+ ood_flagged=[01])?$")


def described_sha256(description: str) -> str | None:
    """The sha256 in a :func:`describe_image` description, or ``None`` when the text is not one.

    Example:
        >>> described_sha256("image/png 28x28 sha256:" + "ab" * 32) == "ab" * 32
        True
        >>> described_sha256("a review") is None
        True
    """
    match = _DESCRIPTION.match(description or "")
    return match.group(1) if match else None


def feedback_image(item: str, expected_sha256: str, cfg: ServeConfig) -> tuple[bytes, str]:
    """The image sent back with feedback: base64 → bytes, which must hash to the logged prediction's sha256.

    Returns:
        ``(bytes, media type)``.

    Raises:
        ApiError: 422 ``invalid_base64``, 422 ``image_mismatch`` (another image than the one predicted),
            413 ``image_too_large``.
    """
    data = _decode_base64(item, 0)
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ApiError(
            422,
            "image_mismatch",
            "body.image is not the image of this prediction (its sha256 differs); send the same bytes you sent "
            "to /v1/predict",
        )
    img = open_image(data, "body.image", cfg, 0)  # the same bytes passed these checks at predict time
    return data, _mime(img)


def _mime(img: Any) -> str:
    from PIL import Image

    return Image.MIME.get(img.format or "", f"image/{(img.format or 'unknown').lower()}")


def open_image(data: bytes, where: str, cfg: ServeConfig, index: int) -> Any:
    """Check one encoded image against the limits and decode it with Pillow.

    Raises:
        ApiError: 413 (too large: bytes or pixels) or 415 (not a supported image).
    """
    from PIL import Image, UnidentifiedImageError

    if len(data) > cfg.max_image_bytes:
        raise ApiError(
            413,
            "image_too_large",
            f"{where} has {len(data)} bytes; the limit is {cfg.max_image_bytes} (max_image_bytes)",
            limit=cfg.max_image_bytes,
            index=index,
        )
    if not data:
        raise ApiError(422, "invalid_request", f"{where} is empty", index=index)
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ApiError(
            413, "image_too_many_pixels", f"{where} has too many pixels (max_image_pixels)", index=index
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ApiError(
            415,
            "unsupported_image",
            f"{where} is not an image (supported: {', '.join(sorted(IMAGE_FORMATS - {'MPO'}))})",
            index=index,
        ) from None
    if img.format not in IMAGE_FORMATS:
        raise ApiError(
            415,
            "unsupported_image",
            f"{where} is a {img.format} image; supported: {', '.join(sorted(IMAGE_FORMATS - {'MPO'}))}",
            index=index,
        )
    pixels = img.width * img.height
    if pixels > cfg.max_image_pixels:
        raise ApiError(
            413,
            "image_too_many_pixels",
            f"{where} is {img.width}×{img.height} = {pixels} pixels; the limit is {cfg.max_image_pixels} "
            "(max_image_pixels)",
            limit=cfg.max_image_pixels,
            index=index,
        )
    try:
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ApiError(415, "unsupported_image", f"{where} is a damaged image ({err})", index=index) from None
    return img


class ImageRequestMiddleware:
    """Answers ``POST /v1/predict`` with image requests when the loaded model is an image classifier.

    Args:
        app: The wrapped ASGI app.
        runtime: The server's ``ModelRuntime`` (readiness, the loaded classifier).
        batcher: The server's ``MicroBatcher``.
        cfg: Serving limits.
        path: The prediction route.
    """

    def __init__(
        self, app: ASGIApp, runtime: Any, batcher: Any, cfg: ServeConfig, path: str = "/v1/predict", ood: Any = None
    ) -> None:
        self.app, self.runtime, self.batcher, self.cfg, self.path = app, runtime, batcher, cfg, path
        self.ood = ood  # serving/ood.py OodFlagger (serve.ood_from), or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        loaded = self.runtime.loaded
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if loaded is None or not is_image_model(loaded.classifier):
            if media_type == "multipart/form-data":
                try:
                    self.runtime.require_ready()
                    raise ApiError(
                        415,
                        "unsupported_media_type",
                        'this model classifies texts; send application/json {"texts": [...]}',
                    )
                except ApiError as err:
                    await _respond_error(err, scope, receive, send)
                    return
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            body = await self._read_body(headers, receive)
            if body is None:
                return  # the client went away
            images, descriptions = await self._parse(media_type, body, scope)
            response = await self._predict(images, loaded, descriptions, scope, started)
        except ApiError as err:
            await _respond_error(err, scope, receive, send)
            return
        from fastapi.responses import JSONResponse

        await JSONResponse(response)(scope, receive, send)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | None:
        limit = body_limit(self.cfg)
        too_large = ApiError(
            413,
            "body_too_large",
            f"request body exceeds the limit of {limit} bytes for image requests; send fewer or smaller images",
            limit=limit,
        )
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _parse(self, media_type: str, body: bytes, scope: Scope) -> tuple[list[Any], list[str]]:
        cfg = self.cfg
        items: list[tuple[bytes, str]] = []
        if media_type == "multipart/form-data":
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if sent:
                    return {"type": "http.disconnect"}
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            request = Request(scope, replay)
            try:
                form = await request.form(max_files=cfg.max_images_per_request + 1, max_fields=100)
            except Exception as err:  # starlette raises its own MultiPartException / HTTPException
                raise ApiError(422, "invalid_request", f"cannot parse the multipart body: {err}") from None
            for _, value in form.multi_items():
                if hasattr(value, "read"):
                    items.append((await value.read(), f"file '{value.filename or '?'}'"))
        elif media_type == "application/json":
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ApiError(422, "invalid_json", f"request body is not valid JSON: {err}") from None
            if not isinstance(payload, dict) or "images" not in payload:
                raise ApiError(
                    422,
                    "invalid_request",
                    'this model classifies images; send {"images": ["<base64>", ...]} or a multipart file upload',
                )
            raw = payload["images"]
            if not isinstance(raw, list):
                raise ApiError(422, "invalid_request", "images must be a list of base64 strings")
            if len(raw) > cfg.max_images_per_request:
                raise _too_many(len(raw), cfg)
            items = [(_decode_base64(item, i), f"images[{i}]") for i, item in enumerate(raw)]
        else:
            got = f"'{media_type}'" if media_type else "no Content-Type"
            raise ApiError(
                415, "unsupported_media_type", f"expected multipart/form-data or application/json, got {got}"
            )
        if not items:
            raise ApiError(422, "invalid_request", "no images in the request; send at least one")
        if len(items) > cfg.max_images_per_request:
            raise _too_many(len(items), cfg)
        images = [open_image(data, where, cfg, i) for i, (data, where) in enumerate(items)]
        return images, [describe_image(data, img) for (data, _), img in zip(items, images, strict=True)]

    async def _predict(
        self, images: list[Any], loaded: Any, descriptions: list[str], scope: Scope, started: float
    ) -> dict[str, Any]:
        clf = loaded.classifier
        arrays = [clf.to_array(im) for im in images]
        rows = await submit_batch(self.batcher, arrays)
        labels = loaded.labels
        probs = np.vstack(rows)
        predictions: list[dict[str, Any]] = [
            {"label": labels[int(row.argmax())], "scores": dict(zip(labels, row.tolist(), strict=True))}
            for row in probs
        ]
        if self.ood is not None:
            from starlette.concurrency import run_in_threadpool

            flags = await run_in_threadpool(self.ood.flags, arrays)
            if flags is not None:
                from modelyard.serving.ood import logged

                for pred, flag in zip(predictions, flags, strict=True):
                    pred["ood"] = flag
                descriptions = [logged(d, f) for d, f in zip(descriptions, flags, strict=True)]
        # The production server logs every prediction and returns its id (serving/production.py), like for
        # texts; an image is logged as its description (type, size, sha256), never its pixels (a client that
        # gives feedback may send the image back with it: serving/production.py).
        hook = getattr(getattr(scope.get("app"), "state", None), "prediction_hook", None)
        if hook is not None:
            ids = hook(Request(scope), descriptions, probs, loaded, time.perf_counter() - started, mask=False)
            for pred, pred_id in zip(predictions, ids, strict=True):
                pred["id"] = pred_id
        return {"predictions": predictions, "model": loaded.info}


def _too_many(n: int, cfg: ServeConfig) -> ApiError:
    return ApiError(
        413,
        "too_many_images",
        f"the request has {n} images; the limit is {cfg.max_images_per_request} per request "
        "(max_images_per_request); split them over several requests",
        limit=cfg.max_images_per_request,
    )


async def _respond_error(err: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    extra = getattr(err, "extra", {}) or {}
    response = error_response(err.status_code, err.code, err.message, headers=getattr(err, "headers", None), **extra)
    await response(scope, receive, send)
