"""Names and paths inside the registry store: one strict name pattern, and joins that cannot escape the store.

App names end up in directory names and URLs, so anything that could be read as a path component
(``..``, ``%2e%2e``, ``%252e``, backslashes, absolute paths, ``file://``, NUL) is refused outright
rather than normalised: the pattern allows letters, digits and ``. _ -`` only, must start with a
letter or digit, and ``.``/``..`` alone are impossible because of that first character.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from modelyard.errors import ModelyardError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
ALIASES = ("production", "staging")


class RegistryError(ModelyardError):
    """A registry operation cannot be done; the message names the app, version or file and the fix."""


def validate_name(name: str, what: str = "app name") -> str:
    """Return ``name`` if it matches :data:`NAME_PATTERN`, else raise.

    Args:
        name: The candidate name (app, run, alias).
        what: What the name is, for the error message.

    Returns:
        ``name`` unchanged.

    Raises:
        RegistryError: The name is empty, too long, or holds a character outside ``A-Za-z0-9._-``.
    """
    if not isinstance(name, str) or _NAME.fullmatch(name) is None or ".." in name:
        shown = repr(name)[:80]
        raise RegistryError(
            f"invalid {what} {shown}: use 1-128 characters from A-Z a-z 0-9 . _ - starting with a letter or digit"
        )
    return name


def validate_alias(alias: str) -> str:
    """Return ``alias`` if it is one of :data:`ALIASES`.

    Raises:
        RegistryError: Any other alias.
    """
    if alias not in ALIASES:
        raise RegistryError(f"unknown alias {alias!r}; use one of {', '.join(ALIASES)}")
    return alias


def safe_join(root: Path, *parts: str) -> Path:
    """``root/part/…`` after validating every part as a name and checking the result stays under ``root``.

    Args:
        root: The store directory.
        *parts: Name components (each must pass :func:`validate_name`).

    Returns:
        The joined path (not necessarily existing).

    Raises:
        RegistryError: A part is not a valid name, or the path resolves outside ``root`` (a symlink).
    """
    for part in parts:
        validate_name(part, "path component")
    root_real = Path(os.path.realpath(root))
    path = root_real.joinpath(*parts)
    real = Path(os.path.realpath(path))
    if real != path or not real.is_relative_to(root_real):
        raise RegistryError(f"{path} resolves outside the registry store {root_real} (symlink?); refusing it")
    return path
