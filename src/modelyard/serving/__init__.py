"""HTTP serving: ``create_app`` builds the FastAPI app, ``serve`` runs it with uvicorn.

Endpoints: ``POST /v1/predict``, ``GET /v1/model``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics`` (Prometheus), ``GET /docs`` (Swagger UI served by the app itself, :mod:`.docs`) and
``/openapi.json``; who may read the docs is ``serve.docs`` (``public``, ``key`` or ``off``).
"""

from __future__ import annotations

from modelyard.serving.app import Classifier, create_app, serve

__all__ = ["Classifier", "create_app", "serve"]
