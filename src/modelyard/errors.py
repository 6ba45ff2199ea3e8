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


class StorageError(ModelyardError):
    """The machine refused a write or read: disk full, read-only or missing path, permission, damaged file.

    The message names the path and what to do (free space, choose another location, re-run, restore).
    """


class ResourceError(ModelyardError):
    """The machine ran out of a resource the work needs (memory, a port, a GPU); the message says what to lower."""
