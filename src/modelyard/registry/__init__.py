"""Model registry: versions copied into a store, aliases, audit trail, API keys, prediction log.

``open_registry(store, db)`` returns a :class:`Registry`; the CLI is ``modelyard registry …`` and
``modelyard keys …`` (``modelyard.registry.cli``).
"""

from __future__ import annotations

from modelyard.registry.names import NAME_PATTERN, RegistryError, safe_join, validate_name
from modelyard.registry.store import KeyInfo, Registry, VersionInfo, open_registry

__all__ = [
    "NAME_PATTERN",
    "KeyInfo",
    "Registry",
    "RegistryError",
    "VersionInfo",
    "open_registry",
    "safe_join",
    "validate_name",
]
