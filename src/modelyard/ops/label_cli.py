"""``modelyard label``: label a file with a model (``label SOURCE -i … -o …``, as before) and pick what a human
should label next (``label queue RUN --input unlabelled.csv --k 50``, :mod:`modelyard.ops.active`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from modelyard._internal.cli_errors import err_console, friendly_errors
from modelyard.errors import ModelyardError

DEFAULT_COMMAND = "file"


class _LabelGroup(TyperGroup):
    """A group whose first argument, when it is not a sub-command, belongs to ``label file``: so
    ``modelyard label RUN -i in.csv -o out.csv`` keeps working beside ``modelyard label queue RUN …``.

    Click has no default sub-command and the `click-default-group` package is not a dependency; this is the
    few lines it takes.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


label_app = typer.Typer(
    cls=_LabelGroup,
    help="Label a file with a model (`modelyard label RUN -i in.csv -o out.csv`), or queue the rows a human "
    "should label next (`modelyard label queue RUN --input unlabelled.csv --k 50`).",
    no_args_is_help=True,
)


def _is_multi_label(run_dir: Path) -> bool:
    """Whether the model of a run directory (or model directory) learns label sets."""
    from modelyard.models.loading import model_dir_of, read_model_meta

    try:
        return read_model_meta(model_dir_of(run_dir)).get("task") == "multi-label-classification"
    except (ModelyardError, OSError, ValueError):
        return False  # not a readable model: the command's own loading reports it


@label_app.command(DEFAULT_COMMAND)
@friendly_errors
def label_file_command(
    source: Annotated[Path, typer.Argument(help="A prompt recipe, or a run directory of any trained model.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Unlabelled CSV/TSV/JSONL/Parquet file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Labelled file (same formats).")],
    threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Keep rows with confidence ≥ this; the rest go to <output>.rejected.*"),
    ] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column (default: the recipe's, or `text`).")] = None,
) -> None:
    """Label a file with a model: label, confidence and per-class probabilities per row (also: `label SOURCE …`)."""
    from modelyard.training.prompt import label_file

    if source.is_dir() and _is_multi_label(source):
        raise ModelyardError(
            f"{source} is a multi-label model and `modelyard label` writes one label per row; use "
            f"`modelyard predict {source} -i {input} -o {output}` (pred: the label set joined by |)"
        )

    label_file(source, input, output, console=err_console, threshold=threshold, text_column=text_column)
    print(output)


@label_app.command("queue")
@friendly_errors
def label_queue_command(
    run: Annotated[str, typer.Argument(help="A finished run directory, or NAME@ALIAS from the registry.")],
    input: Annotated[
        Path, typer.Option("--input", "-i", help="Unlabelled CSV/TSV/JSONL/Parquet file (or a folder of .txt).")
    ],
    k: Annotated[int, typer.Option("--k", "-k", help="How many rows to queue.")] = 50,
    strategy: Annotated[
        str,
        typer.Option(
            help="margin (smallest top-1 − top-2 first), entropy, diverse (uncertain and spread over k clusters "
            "of embeddings), or random (seeded baseline)."
        ),
    ] = "margin",
    text_column: Annotated[
        str | None, typer.Option(help="Text column of --input (default: the run's, else `text`).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Queue file, format from its extension (default: <input>.queue.csv)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of `random` and `diverse`.")] = 0,
    store: Annotated[
        Path | None,
        typer.Option("--store", help="Registry store: texts with feedback there are not queued (and NAME@ALIAS)."),
    ] = None,
    db: Annotated[str | None, typer.Option("--db", help="Registry database URL (default: SQLite in store).")] = None,
    app: Annotated[
        str | None, typer.Option("--app", help="Registry app whose feedback counts (default: NAME of NAME@ALIAS).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per model call.")] = 256,
) -> None:
    """The rows a human should label next, most useful first; never one already labelled (splits, feedback)."""
    from modelyard.data import write_table
    from modelyard.ops.active import label_queue

    queue = label_queue(
        run,
        input,
        k=k,
        strategy=strategy,
        text_column=text_column,
        seed=seed,
        store=store,
        db=db,
        app=app,
        batch_size=batch_size,
        console=err_console,
    )
    out = output or input.with_name(f"{input.stem if input.is_file() else input.name}.queue.csv")
    write_table(queue.frame, out)
    _report(queue, out)
    print(out)


def _report(queue: Any, out: Path) -> None:
    c = queue.counts
    left = ", ".join(
        f"{n} {what}"
        for what, n in (
            ("already in the run's splits", c["in_splits"]),
            ("with feedback", c["with_feedback"]),
            ("repeated", c["duplicates"]),
            ("empty", c["empty"]),
        )
        if n
    )
    err_console.print(
        f"{c['input_rows']} rows read; {c['candidates']} ranked" + (f" (left out: {left})" if left else ""),
        highlight=False,
    )
    if queue.embedding:
        err_console.print(f"diverse: clusters of {queue.embedding}", highlight=False)
    for row in queue.frame.head(5).itertuples():
        text = str(row.text).replace("\n", " ")
        err_console.print(
            f"  row {row.row}: {row.pred} ({row.confidence:.2f}, margin {row.margin:.2f}) · {text[:70]!r}",
            highlight=False,
            markup=False,
        )
    err_console.print(f"wrote {c['queued']} rows ({queue.strategy}) to {out}", highlight=False)
