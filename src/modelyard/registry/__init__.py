"""Model registry (storage only): versions copied into a store, aliases, audit trail, API keys, prediction log.

``open_registry(store, db)`` returns a :class:`Registry` holding three stores over one database
(``versions``, ``api_keys``, ``prediction_log``). What is done with them (the ``modelyard registry``,
``keys``, ``retrain`` and ``monitor`` commands, retraining, drift monitoring) lives in
:mod:`modelyard.ops`.
"""

from __future__ import annotations

from modelyard.registry.keys import KeyInfo, KeyStore
from modelyard.registry.names import NAME_PATTERN, RegistryError, safe_join, validate_name
from modelyard.registry.predictions import PredictionStore
from modelyard.registry.store import Registry, open_registry
from modelyard.registry.versions import VersionInfo, VersionStore

__all__ = [
    "NAME_PATTERN",
    "KeyInfo",
    "KeyStore",
    "PredictionStore",
    "Registry",
    "RegistryError",
    "VersionInfo",
    "VersionStore",
    "open_registry",
    "safe_join",
    "validate_name",
]
