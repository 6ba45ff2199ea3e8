"""Personal data in texts: detection and redaction for English and Chinese (phones, IDs, cards, names, addresses …).

Built on Microsoft Presidio's analyzer and anonymizer, with modelyard's own recognizers (mainland resident IDs,
phones and addresses, validated cards, Chinese and English names) and an NLP engine that needs no model download.
Used by ``modelyard redact`` (:mod:`modelyard.ops.redact`), ``data.clean.pii`` (the data stage) and the
prediction log (``serving/predlog.py``). Importing this package is cheap: Presidio loads when an engine is built.
"""

from __future__ import annotations

from modelyard.privacy.engine import (
    ENTITY_TYPES,
    LANGS,
    MODES,
    Entity,
    PiiEngine,
    RedactionSummary,
    get_engine,
    hash_token,
    redact_texts,
)

__all__ = [
    "ENTITY_TYPES",
    "LANGS",
    "MODES",
    "Entity",
    "PiiEngine",
    "RedactionSummary",
    "get_engine",
    "hash_token",
    "redact_texts",
]
