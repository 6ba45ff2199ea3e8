"""User-facing errors.

Every error a user can fix by editing a file, a recipe or a request is a :class:`ModelyardError`.
The CLI prints its message as one line and exits with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class ModelyardError(Exception):
    """An actionable problem with the user's input (file, recipe, data, request)."""


class ConfigError(ModelyardError):
    """The recipe or an override is invalid; the message names the key and the fix."""


class DataError(ModelyardError):
    """The data cannot be used; the message names the file, row or column and the fix."""


class ModelError(ModelyardError):
    """A backbone or saved model cannot be found or loaded."""
