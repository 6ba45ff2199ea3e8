"""``modelyard data audit``: the typer sub-app over :mod:`modelyard.ops.audit`.

Progress and the summary go to stderr; the output folder is the last stdout line (like ``train``'s run folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelyard._internal.cli_errors import err_console, friendly_errors

data_app = typer.Typer(help="Checks of a recipe's labelled data: `audit` finds rows whose label looks wrong.")


@data_app.callback()
def _data() -> None:
    """Checks of a recipe's labelled data."""  # a callback keeps `audit` a sub-command even while it is the only one


@data_app.command("audit")
@friendly_errors
def audit_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file; its data section is read as training reads it.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. data.sample=2000.")] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Cross-validation folds.")] = 5,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="tfidf (char + word n-grams; any language), embeddings (MiniLM, English) or both (their mean).",
        ),
    ] = "tfidf",
    output: Annotated[
        Path | None, typer.Option("--output", help="Output folder (default: <output_dir>/<name>-audit).")
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Issues shown here and on the HTML page.")] = 20,
) -> None:
    """Find rows whose label looks wrong (cross-validated model + confident learning, cleanlab).

    Writes label_issues.csv (most suspicious first: input row, file, split, text, given and suggested label,
    score), audit.json and label_issues.html. Use it in training with data.clean.label_issues: report | drop.
    """
    from rich.table import Table

    from modelyard.config import load_recipe
    from modelyard.ops.audit import AUDIT_HTML, audit

    cfg = load_recipe(recipe, overrides or [])
    out_dir, summary, issues = audit(cfg, folds=folds, model=model, output=output, top=top, console=err_console)
    table = Table(title=f"most suspicious {min(top, len(issues))} of {len(issues)} flagged rows")
    for col in ("row", "split", "given", "suggested", "score", "text"):
        table.add_column(col, overflow="fold", justify="right" if col in ("row", "score") else "left")
    for r in issues.head(top).itertuples(index=False):
        table.add_row(str(r.row), r.split, r.given_label, r.suggested_label, f"{r.score:.4f}", r.text[:120])
    err_console.print(table)
    shares = ", ".join(f"{lb} {c['estimated_noise_rate']:.1%}" for lb, c in summary["per_class"].items())
    err_console.print(
        f"{summary['issues']} of {summary['rows_audited']} rows flagged · cross-validated accuracy "
        f"{summary['cv_accuracy']:.3f} · estimated noise rate per class: {shares}"
    )
    err_console.print(f"report: {out_dir / AUDIT_HTML}")
    print(out_dir)
