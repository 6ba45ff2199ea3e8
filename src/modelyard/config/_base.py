"""The base of every recipe section: unknown keys are errors, assignments are validated."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
