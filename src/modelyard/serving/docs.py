"""The API docs, ``GET /docs`` (Swagger UI), served by the server itself: no CDN, no other origin.

Swagger UI's script, style sheet and icon are files of the ``fastapi-offline`` package (a modelyard
dependency from PyPI, which ships them as package data); the page and its start-up script are
modelyard's own (``docs/index.html``, ``docs/swagger-init.js``). The page therefore runs under the
console's Content-Security-Policy (:mod:`.headers`): no inline script or style, nothing loaded or
fetched from another origin, and the start-up script leaves out Swagger UI's online validator (which
would send the OpenAPI document to validator.swagger.io).

Who may read the docs (``/docs``, its assets and ``/openapi.json``) is the ``serve.docs`` setting:

* ``public`` (default): anyone; they describe the API and hold no data;
* ``key``: any valid API key (no particular scope), checked by the API-key middleware
  (:mod:`.security`), so the server must check keys (``NAME@ALIAS``, or ``serve.auth: true``);
* ``off``: not served; every docs path answers 404, with or without a key.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Literal

from fastapi import FastAPI
from fastapi.responses import Response

from modelyard.errors import ModelyardError
from modelyard.serving.headers import SECURITY_HEADERS

DocsMode = Literal["public", "key", "off"]

DOCS_URL = "/docs"
OPENAPI_URL = "/openapi.json"
VENDOR_PACKAGE = "fastapi_offline"
"""The PyPI package (``fastapi-offline``) whose ``static/`` folder holds Swagger UI's files."""

_OWN = {
    "/docs": ("index.html", "text/html; charset=utf-8"),
    "/docs/swagger-init.js": ("swagger-init.js", "text/javascript; charset=utf-8"),
}
_VENDOR = {
    "/docs/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "/docs/swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8"),
    "/docs/favicon.png": ("favicon.png", "image/png"),
}
DOCS_FILES = {**_OWN, **_VENDOR}
"""Path → (file, media type) of the docs page and every file it loads."""

DOCS_PATHS = frozenset({*DOCS_FILES, OPENAPI_URL})
"""Every path whose access ``serve.docs`` decides."""

# Swagger UI's files are large (~1.7 MB) and change only with the package: let browsers keep them a day.
_VENDOR_HEADERS = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=86400"}


def public_docs_paths(mode: DocsMode) -> frozenset[str]:
    """The docs paths the API-key check lets through: all of them unless ``mode`` is ``key``.

    With ``off`` they are let through too, to answer 404 (no such route) to everyone.
    """
    return frozenset() if mode == "key" else DOCS_PATHS


@functools.cache
def _read(path: str) -> bytes:
    if path in _OWN:
        return resources.files("modelyard.serving").joinpath("docs", _OWN[path][0]).read_bytes()
    return resources.files(VENDOR_PACKAGE).joinpath("static", _VENDOR[path][0]).read_bytes()


def install_docs(app: FastAPI, mode: DocsMode) -> None:
    """Add ``GET /docs`` and the files it loads to ``app`` (nothing for ``off``).

    ``/openapi.json`` itself is FastAPI's (``openapi_url`` of the app); who may read any of them is
    decided by the API-key middleware from :func:`public_docs_paths`.

    Args:
        app: The app being built by :func:`modelyard.serving.create_app`.
        mode: ``serve.docs``.

    Raises:
        ModelyardError: ``fastapi-offline`` is not installed (a dependency of modelyard).
    """
    if mode == "off":
        return
    try:  # fail when the app is built, not at the first visit, when the package is missing
        _read("/docs/swagger-ui.css")
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise ModelyardError(
            f"the API docs need Swagger UI's files from the fastapi-offline package ({err}); "
            "pip install 'fastapi-offline>=1.7.7' (a modelyard dependency), or set serve.docs: off"
        ) from None

    def serve_file(path: str, media: str) -> Callable[[], Awaitable[Response]]:
        headers = _VENDOR_HEADERS if path in _VENDOR else SECURITY_HEADERS

        async def serve() -> Response:
            return Response(_read(path), media_type=media, headers=headers)

        return serve

    for path, (_, media) in DOCS_FILES.items():
        app.add_api_route(path, serve_file(path, media), methods=["GET"], include_in_schema=False)
