"""What every ``modelyard`` command shares: the stderr console and the error-to-exit-status wrapper.

Kept apart from :mod:`modelyard.cli` so that the sub-apps in :mod:`modelyard.ops.cli` can use it
without importing the main CLI module (which imports them).

Exit statuses: 0 success; 2 an expected failure (bad input, a fault of the machine: one line on stderr, no
traceback); 1 an unexpected error (a short line plus the file holding the full traceback; ``modelyard --debug``
or ``MODELYARD_DEBUG=1`` prints it inline instead); 130 interrupted.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from modelyard.errors import ModelyardError

err_console = Console(stderr=True)
"""Human-readable output of every command (stdout carries only each command's result)."""

F = TypeVar("F", bound=Callable[..., Any])
DEBUG_ENV = "MODELYARD_DEBUG"


def debug_enabled() -> bool:
    """Whether tracebacks are shown inline (``modelyard --debug`` or ``MODELYARD_DEBUG=1``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def expected_failure(err: BaseException) -> str | None:
    """The one-line message of a failure the user (or their machine) caused, or ``None`` for a bug.

    Beyond :class:`~modelyard.errors.ModelyardError`: storage faults from any library (disk full, read-only,
    permission, I/O error), running out of memory, and a missing optional dependency.
    """
    if isinstance(err, ModelyardError):
        return str(err)
    from modelyard._internal.storage import describe_storage_error

    storage = describe_storage_error(err)
    if storage is not None:
        return storage
    memory = out_of_memory(err)
    if memory is not None:
        return memory
    if isinstance(err, ModuleNotFoundError) and err.name:
        from modelyard._internal.packages import install_hint

        return f"the optional package '{err.name}' is not installed; {install_hint(err.name)}"
    return None


def out_of_memory(err: BaseException) -> str | None:
    """One line for an allocation failure (Python, the torch CPU allocator, CUDA), else ``None``."""
    text = str(err)
    cpu = isinstance(err, MemoryError) or any(
        words in text
        for words in ("can't allocate memory", "Cannot allocate memory", "std::bad_alloc", "failed to map segment")
    )
    gpu = type(err).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text
    if not (cpu or gpu):
        return None
    where = "GPU" if gpu else "memory"
    return (
        f"ran out of {where} ({type(err).__name__}); lower train.batch_size (or train.eval_batch_size) and "
        "model.max_length, or pass --batch-size to predict; for a GPU also try train.precision=bf16"
    )


def crash_log(err: BaseException, log_dir: Path | None = None) -> Path | None:
    """Write the full traceback of an unexpected error to a log file; its path (``None`` if nothing is writable)."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in (log_dir, Path(tempfile.gettempdir())):
        if folder is None:
            continue
        try:
            path = Path(folder) / f"modelyard-crash-{stamp}-{os.getpid()}.log"
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def report_failure(err: BaseException) -> int:
    """Print a failure the CLI way and return the exit status (2 expected, 1 unexpected)."""
    message = expected_failure(err)
    if debug_enabled():  # the standard library's rendering: no imports needed (memory may be exhausted)
        sys.stderr.write("".join(traceback.format_exception(type(err), err, err.__traceback__)))
    if message is not None:
        # escaped: messages hold brackets that are not markup, e.g. pip install "modelyard[mlflow]"
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        return 2
    where = None if debug_enabled() else crash_log(err)
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    tail = (
        f"; the full traceback is in {where} (or run with --debug); please report it"
        if where is not None
        else ("" if debug_enabled() else "; run with --debug for the traceback")
    )
    err_console.print(
        f"[bold red]unexpected error:[/] {escape(type(err).__name__ + (': ' + first if first else '') + tail)}",
        highlight=False,
        soft_wrap=True,
    )
    return 1


def friendly_errors(fn: F) -> F:
    """Turn every failure into one line on stderr and an exit status (see the module docstring).

    Args:
        fn: A command function.

    Returns:
        ``fn`` wrapped.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except Exception as err:  # noqa: BLE001 - the CLI's last line of defence: one line, never a stack
            raise typer.Exit(report_failure(err)) from None

    return wrapper  # type: ignore[return-value]
