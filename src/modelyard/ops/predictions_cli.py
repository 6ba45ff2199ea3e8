"""``modelyard predictions purge|rotate-key|new-key|purges``: the prediction log at rest (wired into ``modelyard.cli``).

Logged inputs are encrypted with the log keys (:mod:`modelyard.registry.logkeys`); these commands rotate the
key, delete inputs for retention or on request (right to be forgotten), and list what was purged.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from modelyard._internal.cli_errors import err_console, friendly_errors
from modelyard.ops.cli import DbOpt, StoreOpt, _open

predictions_app = typer.Typer(
    help="The prediction log at rest: purge logged inputs, rotate the encryption key.", no_args_is_help=True
)


def parse_before(value: str) -> datetime:
    """``2024-05-01``, an ISO 8601 time (naive: UTC), or an age such as ``90d`` / ``12h`` → a UTC time.

    Raises:
        RegistryError: None of these forms.
    """
    from modelyard.registry.names import RegistryError
    from modelyard.registry.predictions import parse_since

    if value[-1:] in ("d", "h", "m", "s") and value[:-1].replace(".", "", 1).isdigit():
        since = parse_since(value)
        assert since is not None
        return since
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise RegistryError(
            f"--before {value!r} is not a date; use 2024-05-01, 2024-05-01T12:00:00+08:00 or an age such as 90d"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@predictions_app.command("purge")
@friendly_errors
def purge(
    before: Annotated[
        str | None,
        typer.Option("--before", help="Purge what was logged before: a date, an ISO time (UTC unless it says) or 90d."),
    ] = None,
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="Purge this prediction id (repeatable): one person's request.")
    ] = None,
    app: Annotated[str | None, typer.Option("--app", help="Only this app's rows.")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Recorded with the purge, e.g. the request.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")] = False,
    store: StoreOpt = None,
    db: DbOpt = None,
) -> None:
    """Delete logged predictions (their inputs), their feedback and feedback images; records who, when, what."""
    from modelyard.serving.images import described_sha256

    cutoff = parse_before(before) if before is not None else None
    reg = _open(store, db)
    result = reg.purge_predictions(
        before=cutoff, ids=ids or [], app=app, reason=reason, image_of=described_sha256, dry_run=dry_run
    )
    verb = "would purge" if dry_run else "purged"
    missing = f"; {result['not_found']} ids not found" if result["not_found"] else ""
    err_console.print(
        f"{verb} {result['predictions']} predictions, {result['feedback']} feedback rows, "
        f"{result['images']} feedback images{missing}",
        highlight=False,
    )
    if result["undecryptable"]:
        err_console.print(
            f"{result['undecryptable']} purged rows were under a log key not configured here: images sent back "
            "for them (if any) could not be identified; purge those with --before",
            highlight=False,
        )
    print(json.dumps(result, default=str))


@predictions_app.command("purges")
@friendly_errors
def list_purges(store: StoreOpt = None, db: DbOpt = None) -> None:
    """Print every recorded purge (who, when, criteria, counts) as JSON lines."""
    for row in _open(store, db).log_purges():
        print(json.dumps(row, default=str))


@predictions_app.command("rotate-key")
@friendly_errors
def rotate_key(
    generate: Annotated[
        bool,
        typer.Option(
            "--generate/--no-generate",
            help="Key file in use: first add a new key at its top (default). --no-generate: re-encrypt under the "
            "newest key already configured (always so with $MODELYARD_LOG_KEY).",
        ),
    ] = True,
    retire: Annotated[
        bool,
        typer.Option("--retire-old", help="Key file in use: afterwards keep only the newest key in it."),
    ] = False,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Rows per transaction.")] = 500,
    store: StoreOpt = None,
    db: DbOpt = None,
) -> None:
    """Re-encrypt every logged input under the newest log key (old keys' rows and rows stored in clear)."""
    import base64

    from modelyard.registry.logkeys import LogKeyError, new_key, write_key_file

    reg = _open(store, db)
    ring = reg.log_keys.keyring()
    if ring.newest_id is None:
        ring = reg.log_keys.for_writing()  # nothing configured: the registry's own key file, as the server would
    elif generate and ring.file is not None:
        write_key_file(ring.file, [base64.urlsafe_b64decode(new_key()), *ring.keys])
        ring = reg.log_keys.keyring()
        err_console.print(f"added new log key {ring.newest_id} at the top of {ring.file}", highlight=False)
    elif generate:
        err_console.print(
            f"keys come from {ring.source}: re-encrypting under its first key ({ring.newest_id}); to change keys, "
            "put a new one (`modelyard predictions new-key`) first in it",
            highlight=False,
        )
    result = reg.rotate_log_key(batch)
    err_console.print(
        f"re-encrypted {result['predictions']} predictions and {result['images']} feedback images under key "
        f"{result['key']}",
        highlight=False,
    )
    if result["unreadable"]:
        missing = ", ".join(f"{k} ({n} rows)" for k, n in result["unreadable"].items())
        raise LogKeyError(f"rows under keys not configured here were left as they are: {missing}; add those keys")
    if retire and ring.file is not None and len(ring.keys) > 1:
        again = reg.rotate_log_key(batch)  # rows a server logged under the old key before it saw the new one
        result["predictions"] += again["predictions"]
        result["images"] += again["images"]
        write_key_file(ring.file, ring.keys[:1])
        err_console.print(f"retired {len(ring.keys) - 1} old key(s) from {ring.file}", highlight=False)
    elif len(ring.ids) > 1:
        err_console.print("old keys still decrypt; remove them (or pass --retire-old) once backups are done")
    print(json.dumps(result))


@predictions_app.command("new-key")
@friendly_errors
def new_key_command(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write a new key file (mode 600) instead of printing.")
    ] = None,
) -> None:
    """Print a fresh log key (for $MODELYARD_LOG_KEY, newest first), or write it as a new key file."""
    import base64

    from modelyard.registry.logkeys import new_key, write_key_file
    from modelyard.registry.names import RegistryError

    key = new_key()
    if output is None:
        print(key)
        return
    try:
        write_key_file(output, [base64.urlsafe_b64decode(key)], exclusive=True)
    except FileExistsError:
        raise RegistryError(f"{output} exists; to add a key to it use `modelyard predictions rotate-key`") from None
    err_console.print(f"wrote a new log key file {output} (mode 600)", highlight=False)
    print(output)
