"""``modelyard runs list|show|compare``: the typer sub-app over :mod:`modelyard.ops.runs`.

Tables go to stdout (they are these commands' result); ``--json`` prints JSON instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from modelyard._internal.cli_errors import friendly_errors
from modelyard.errors import ModelyardError

runs_app = typer.Typer(
    help="Past runs without MLflow: list a runs folder, show one run, compare runs as a leaderboard.",
    no_args_is_help=True,
)

DirArg = Annotated[Path, typer.Argument(help="Folder of run directories (a recipe's output_dir).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _out() -> Console:
    """stdout; wide when it is not a terminal (a pipe, a file, tests), so no column is cut."""
    return Console(width=None if sys.stdout.isatty() else 200)


@runs_app.command("list")
@friendly_errors
def list_runs(folder: DirArg = Path("runs"), as_json: JsonOpt = False) -> None:
    """Finished runs in FOLDER, newest first: id, name, model type, test accuracy and macro-F1, train time, date."""
    from modelyard.ops.runs import runs_table, scan_runs

    rows = scan_runs(folder)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    _out().print(runs_table(rows, f"runs in {folder} ({len(rows)})"))


@runs_app.command("show")
@friendly_errors
def show(
    run: Annotated[str, typer.Argument(help="A run directory, or a run id inside --dir.")],
    folder: Annotated[Path, typer.Option("--dir", help="Where run ids are looked up.")] = Path("runs"),
    as_json: JsonOpt = False,
) -> None:
    """One run: what ran (manifest summary) and its valid/test metrics."""
    from modelyard.ops.runs import resolve_run, show_run

    lines, table, raw = show_run(resolve_run(run, folder))
    if as_json:
        print(json.dumps(raw, indent=2))
        return
    out = _out()
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        out.print(f"[bold]{key:<{width}}[/]  {value}", highlight=False)
    out.print(table)


@runs_app.command("compare")
@friendly_errors
def compare(
    runs: Annotated[list[str] | None, typer.Argument(help="Run directories or run ids (in --dir).")] = None,
    all_in: Annotated[
        Path | None, typer.Option("--all", help="Compare every finished run in this folder.", show_default=False)
    ] = None,
    folder: Annotated[Path, typer.Option("--dir", help="Where run ids are looked up.")] = Path("runs"),
    sort: Annotated[str, typer.Option("--sort", help="Rank by this: test_macro_f1, valid_accuracy, …")] = (
        "test_macro_f1"
    ),
    as_json: JsonOpt = False,
) -> None:
    """A leaderboard of runs ranked by --sort (best first; lower is better for loss, log_loss, ece, time)."""
    from modelyard.ops.runs import leaderboard, leaderboard_table, resolve_run, run_row, scan_runs

    if bool(runs) == (all_in is not None):
        raise ModelyardError("name the runs to compare, or pass --all FOLDER (not both)")
    rows = scan_runs(all_in) if all_in is not None else [run_row(resolve_run(r, folder)) for r in runs or []]
    ranked = leaderboard(rows, sort)
    if as_json:
        print(json.dumps(ranked, indent=2))
        return
    _out().print(leaderboard_table(ranked, sort))
