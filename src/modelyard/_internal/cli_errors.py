"""What every ``modelyard`` command shares: the stderr console and the error-to-exit-status wrapper.

Kept apart from :mod:`modelyard.cli` so that the sub-apps in :mod:`modelyard.ops.cli` can use it
without importing the main CLI module (which imports them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from modelyard.errors import ModelyardError

err_console = Console(stderr=True)
"""Human-readable output of every command (stdout carries only each command's result)."""

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn user-fixable errors into one line on stderr and exit status 2 (no traceback).

    Args:
        fn: A command function.

    Returns:
        ``fn`` wrapped: :class:`~modelyard.errors.ModelyardError` → exit 2, Ctrl-C → exit 130.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ModelyardError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
