"""The ``modelyard`` command line: verbs → entry functions, nothing else.

Human-readable output goes to stderr; each verb prints its main result (a run directory, an
output path) as the last line of stdout, so ``RUN=$(modelyard train r.yaml | tail -n1)`` works.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from modelyard._internal.cli_errors import err_console, friendly_errors
from modelyard._internal.layout import METRICS, RECIPE
from modelyard.errors import ModelyardError
from modelyard.ops.cli import (
    doctor_command,
    fetch_bundled_command,
    keys_app,
    monitor_command,
    registry_app,
    retrain_command,
)
from modelyard.ops.data_cli import data_app
from modelyard.ops.federate import federate_command
from modelyard.ops.generate import generate_command
from modelyard.ops.label_cli import label_app
from modelyard.ops.predictions_cli import predictions_app
from modelyard.ops.redact import redact_command
from modelyard.ops.runs_cli import runs_app

app = typer.Typer(
    name="modelyard",
    help="One recipe from labelled text to a trained, measured, served model — offline first.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# err_console and friendly_errors live in _internal.cli_errors, shared with the ops sub-apps (ops.cli).


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of an error (also: MODELYARD_DEBUG=1).")
    ] = False,
) -> None:
    """One recipe from labelled text to a trained, measured, served model — offline first."""
    if debug:
        import os

        from modelyard._internal.cli_errors import DEBUG_ENV

        os.environ[DEBUG_ENV] = "1"


@app.command()
@friendly_errors
def init(
    data: Annotated[Path, typer.Option("--data", help="Labelled data: a file, a folder, or bundled:NAME.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the recipe.")] = Path(RECIPE),
    task: Annotated[
        str, typer.Option("--task", help="auto (from the data), text-classification or image-classification.")
    ] = "auto",
    budget: Annotated[
        str, typer.Option("--budget", help="Training time on this machine: 10m, 1h, best (or e.g. 30m, 2h).")
    ] = "10m",
    explain: Annotated[
        bool, typer.Option("--explain", help="Print the analysis and the choice; write nothing.")
    ] = False,
    text_column: Annotated[str | None, typer.Option(help="The text column (default: guessed).")] = None,
    label_column: Annotated[str | None, typer.Option(help="The label column (default: guessed).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing recipe.")] = False,
) -> None:
    """Read the data, then write the recipe a knowledgeable engineer would start from (reasons as comments)."""
    from modelyard._internal.io import atomic_write_text
    from modelyard.data import read_table
    from modelyard.data.profile import describe, looks_headerless, profile_table
    from modelyard.starter import (
        choose_recipe,
        image_starter_recipe,
        is_image_source,
        machine_speed,
        text_starter_recipe,
    )

    if task not in ("auto", "text-classification", "image-classification"):
        raise ModelyardError(f"--task '{task}' is not supported; use auto, text-classification or image-classification")
    if output.exists() and not force and not explain:
        raise ModelyardError(f"{output} exists; pass --force to overwrite it")
    if task == "image-classification" or (task == "auto" and is_image_source(str(data))):
        if explain:
            err_console.print(f"{data}: images → an image-classification recipe (model.type cnn-small)")
            return
        atomic_write_text(output, image_starter_recipe(str(data), output))
        print(output)
        return
    header = True
    if str(data).startswith("bundled:"):
        from modelyard.data.sources import load_bundled

        frame = load_bundled(str(data))[0]
    else:
        frame = read_table(data)
        if not data.is_dir() and looks_headerless(frame):  # the first row is data: columns are named 1, 2, 3, …
            header = False
            frame = read_table(data, header=False)
    for col in (text_column, label_column):
        if col is not None and col not in frame.columns:
            raise ModelyardError(f"{data}: no column '{col}'; columns: {', '.join(map(str, frame.columns))}")
    prof = profile_table(frame, str(data), text_column, label_column)
    speed = machine_speed()
    if explain:
        for line in describe(prof):
            print(line)
        print(f"machine: {speed[1]}; budget {budget}")
        choice = choose_recipe(prof, budget, speed[0])
        print(f"recipe: model.type {choice.recipe['model']['type']}")
        for reason in choice.reasons:
            print(f"  - {reason}")
        return
    rel = _relative_to(data.resolve(), output.resolve().parent) if data.exists() else str(data)
    atomic_write_text(output, text_starter_recipe(prof, rel, output, budget, speed, header=header))
    labels = (
        f"{len(prof.label_columns)} 0/1 label columns"
        if prof.label_columns
        else f"label column '{prof.label_column}'"
        + (f", labels joined by '{prof.label_separator}'" if prof.label_separator else "")
    )
    err_console.print(f"wrote {output} (text column '{prof.text_column}', {labels})")
    print(output)


def _relative_to(path: Path, base: Path) -> str:
    import os

    try:
        return os.path.relpath(path, base)
    except ValueError:  # different drives on Windows
        return str(path)


@app.command(context_settings={"allow_extra_args": False})
@friendly_errors
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.epochs=1 data.sample=2000.")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue an interrupted run (its .incomplete directory).")
    ] = None,
) -> None:
    """Train a model from a recipe; prints the run directory on the last stdout line."""
    from modelyard.config import load_recipe
    from modelyard.training.run import train as run_train

    cfg = load_recipe(recipe, overrides or [])
    _sigterm_as_interrupt()
    run_dir = run_train(cfg, resume=resume, console=err_console)
    print(run_dir)


def _sigterm_as_interrupt() -> None:
    """Treat SIGTERM (kill, CI timeouts, schedulers) like Ctrl-C, so training stops through its cleanup path:
    an unfinished run keeps its last checkpoint for --resume, or is removed if it has none."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@app.command()
@friendly_errors
def tune(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file with a `tune.space` section.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. data.sample=2000.")] = None,
    trials: Annotated[
        int | None, typer.Option("--trials", min=1, help="Trials in total (default: tune.trials).")
    ] = None,
    backend: Annotated[str, typer.Option("--backend", help="optuna (default) or ray (local Ray Tune).")] = "optuna",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted search (remaining trials only).")
    ] = False,
) -> None:
    """Hyper-parameter search over the recipe's `tune.space`; prints the tune directory on the last stdout line."""
    from modelyard.config import load_recipe
    from modelyard.tuning import tune as run_tune

    if backend not in ("optuna", "ray"):
        raise ModelyardError(f"--backend '{backend}' is not one of optuna, ray")
    cfg = load_recipe(recipe, overrides or [])
    _sigterm_as_interrupt()
    try:
        out = run_tune(cfg, trials=trials, backend=backend, resume=resume, console=err_console)
    except KeyboardInterrupt:
        raise ModelyardError(f"search interrupted; continue it with: modelyard tune {recipe} --resume") from None
    print(out)  # the search already printed the best recipe and the report paths


@app.command()
@friendly_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    data: Annotated[
        Path | None, typer.Option("--data", help="Any labelled file; default: the run's test split.")
    ] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column in --data (default: the recipe's).")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column in --data (default: the recipe's).")] = None,
) -> None:
    """Compute metrics.json and report.html for a run's splits or for a labelled file."""
    from modelyard.evaluation.evaluate import evaluate as run_evaluate
    from modelyard.models.loading import require_classifier

    require_classifier(run_dir, "evaluate")
    out_dir, _ = run_evaluate(run_dir, data, text_column=text_column, label_column=label_column, console=err_console)
    print(out_dir / METRICS)


@app.command()
@friendly_errors
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    input: Annotated[
        Path, typer.Option("--input", "-i", help="CSV/TSV/JSONL/Parquet file with texts; images: a file or folder.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file; format from its extension.")],
    text_column: Annotated[str | None, typer.Option(help="Text column (default: the recipe's).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
) -> None:
    """Batch prediction: the input rows plus pred, confidence and prob_<label> columns.

    Multi-label models: pred is the predicted label set joined by | (empty: none), one prob_<label> per label,
    no confidence column.
    """
    from modelyard._internal.labels import add_label_set_columns, add_prediction_columns
    from modelyard.data import read_table, write_table
    from modelyard.errors import DataError
    from modelyard.models.loading import load, require_classifier

    require_classifier(run_dir, "predict")
    clf = load(run_dir, batch_size=batch_size)
    if getattr(clf, "task", None) == "image-classification":  # --input is an image file or a folder of images
        from modelyard.models.image_classifier import predict_files

        frame = predict_files(clf, input)  # type: ignore[arg-type]
        write_table(frame, output)
        err_console.print(f"wrote {len(frame)} predictions to {output}")
        print(output)
        return
    frame = read_table(input)
    # a folder of .txt files is read into a `text` column (and `file`), whatever the recipe's column was called
    col = text_column or ("text" if input.is_dir() else clf.meta.get("text_column", "text"))
    if col not in frame.columns:
        raise DataError(
            f"{input}: text column '{col}' not found; columns found: {', '.join(map(str, frame.columns))}; "
            "pass --text-column"
        )
    probs = clf.predict_proba(frame[col].astype(str).tolist())
    if getattr(clf, "multi_label", False):
        add_label_set_columns(frame, clf.labels, probs, clf.thresholds)
    else:
        add_prediction_columns(frame, clf.labels, probs)
    write_table(frame, output)
    err_console.print(f"wrote {len(frame)} predictions to {output}")
    print(output)


@app.command()
@friendly_errors
def serve(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="serve.KEY=VALUE overrides of the run's serve section, e.g. serve.max_batch_size=64."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface (default 127.0.0.1 — loopback only).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: the recipe's serve.port, 8000).")] = None,
    runtime: Annotated[
        str,
        typer.Option(
            help="torch (default), a variant made by `modelyard compress` (onnx, onnx-int8, …), or auto: the "
            "fastest runtime that passed parity in the run's compression.json."
        ),
    ] = "torch",
    store: Annotated[
        Path | None, typer.Option("--store", help="Registry store for NAME@ALIAS and API keys (default ~/.modelyard).")
    ] = None,
    db: Annotated[str | None, typer.Option("--db", help="Registry database URL (default: SQLite in store).")] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="uvicorn (one process) or ray: a Ray Serve deployment of --replicas copies of the same app "
            "(pip install 'modelyard[ray]')."
        ),
    ] = "uvicorn",
    replicas: Annotated[int, typer.Option(min=1, help="--backend ray: how many replicas serve requests.")] = 1,
    ray_address: Annotated[
        str | None,
        typer.Option(help="--backend ray: an existing Ray cluster (auto, ray://host:10001); default: a local one."),
    ] = None,
) -> None:
    """Serve a run directory or NAME@ALIAS from the registry (POST /v1/predict, /healthz, /readyz, /docs, /metrics)."""
    from modelyard.serving.targets import Target

    target = Target(str(run_dir), runtime=runtime, overrides=list(overrides or []), store=_opt(store), db=db)
    if backend not in ("uvicorn", "ray"):
        raise ModelyardError(f"--backend must be uvicorn or ray (got {backend!r})")
    if replicas != 1 and backend != "ray":
        raise ModelyardError("--replicas needs --backend ray (one uvicorn process serves one replica)")
    if backend == "ray":
        from modelyard.ops.monitor import monitor
        from modelyard.serving.ray_serve import serve_on_ray

        say = lambda line: err_console.print(line, markup=False, highlight=False)  # noqa: E731
        serve_on_ray(
            target, replicas=replicas, host=host, port=port, address=ray_address, drift_monitor=monitor, say=say
        )
        return
    if target.is_registry:  # NAME@production: registry, API keys, log, hot swap
        from modelyard.ops.monitor import monitor
        from modelyard.serving.production import serve_registry

        # The console's POST /admin/v1/drift runs the monitor; serving can't import ops, so it is passed in.
        serve_registry(
            str(run_dir), store=store, db=db, host=host, port=port, drift_monitor=monitor, overrides=overrides
        )
        return
    from modelyard.rundir import RunDir
    from modelyard.serving.targets import build_app, run_loader

    cfg = RunDir(run_dir).serve_settings(overrides)
    say = lambda line: err_console.print(line, markup=False, highlight=False)  # noqa: E731
    if cfg.auth:  # serve.auth: true → API keys from the registry
        from modelyard.serving.production import run_app

        run_app(build_app(target, say=say), cfg, host, port)
        return
    from modelyard.serving import serve as run_serve

    run_serve(run_loader(run_dir, runtime, say=say), cfg, host=host, port=port)


def _opt(path: Path | None) -> str | None:
    return str(path) if path is not None else None


@app.command()
@friendly_errors
def compress(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            help="Comma-separated: onnx, onnx-int8, prune, distill (distill trains a student: minutes, not seconds). "
            "The default builds the variants worth serving (same model, parity checked; serve --runtime auto picks "
            "the fastest that passed); prune (unstructured zeros: no faster on dense CPU kernels) and distill (a "
            "different, smaller model) are asked for by name.",
        ),
    ] = "onnx,onnx-int8",
    sparsity: Annotated[float, typer.Option(min=0.0, max=0.99, help="Fraction of weights `prune` removes.")] = 0.3,
    recovery_steps: Annotated[int, typer.Option(min=0, help="Fine-tune steps after pruning.")] = 50,
    latency_repeats: Annotated[int, typer.Option(min=1, help="Timed repetitions per latency figure.")] = 50,
    student_layers: Annotated[
        int | None, typer.Option(min=1, help="Encoder layers of the `distill` student (default: half).")
    ] = None,
    distill_epochs: Annotated[
        int | None, typer.Option(min=1, help="Training epochs of the `distill` student (default: the recipe's).")
    ] = None,
) -> None:
    """Quantize / export / prune / distil a run; parity, metrics, size and latency in compression.json + .html."""
    from modelyard._internal.rundir import find_run
    from modelyard.compression import compress as run_compress
    from modelyard.compression import parse_methods

    run = find_run(run_dir)
    run_compress(
        run,
        parse_methods(methods),
        console=err_console,
        sparsity=sparsity,
        recovery_steps=recovery_steps,
        latency_repeats=latency_repeats,
        student_layers=student_layers,
        distill_epochs=distill_epochs,
    )
    print(run / "compression.json")


@app.command()
@friendly_errors
def explain(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    text: Annotated[list[str] | None, typer.Option("--text", help="A text to explain (repeatable).")] = None,
    input: Annotated[
        Path | None, typer.Option("--input", "-i", help="Texts: .txt (one per line) or CSV/TSV/JSONL/Parquet.")
    ] = None,
    method: Annotated[str, typer.Option(help="ig (integrated gradients), attention (rollout) or occlusion.")] = "ig",
    target: Annotated[str | None, typer.Option(help="Explain this label (default: the predicted one).")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file (default: <run>/explanations/).")
    ] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column of --input (default: the recipe's).")] = None,
    n_steps: Annotated[int, typer.Option(min=2, help="Integrated-gradients steps.")] = 32,
) -> None:
    """Token/word attributions (Chinese aware) rendered as an HTML heat map, plus JSON beside it."""
    from modelyard.explain import METHODS, explain_run
    from modelyard.models.loading import load

    if method not in METHODS:
        raise ModelyardError(f"--method '{method}' is not one of {', '.join(METHODS)}")
    if (text is None) == (input is None):
        raise ModelyardError("pass either --text (repeatable) or --input FILE")
    clf = load(run_dir)
    texts = list(text or [])
    if input is not None:
        if input.suffix.lower() == ".txt":
            if not input.is_file():
                raise ModelyardError(f"input file not found: {input}")
            texts = [line for line in input.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            from modelyard.data import read_table

            frame = read_table(input)
            col = text_column or clf.meta.get("text_column", "text")
            if col not in frame.columns:
                raise ModelyardError(
                    f"{input}: text column '{col}' not found; columns found: {', '.join(map(str, frame.columns))}"
                )
            texts = frame[col].astype(str).tolist()
    if not texts:
        raise ModelyardError("no texts to explain")
    if target is not None and target not in clf.labels:
        raise ModelyardError(f"--target '{target}' is not a label of this model ({', '.join(clf.labels)})")
    path, explanations = explain_run(run_dir, texts, method, output, target=target, n_steps=n_steps, classifier=clf)
    for e in explanations[:20]:
        top = ", ".join(f"{u} {a:+.3f}" for u, a in e.ranked()[:3])
        err_console.print(f"{e.label} ({e.scores[e.label]:.3f}) · {e.text[:60]!r} · top: {top}", highlight=False)
    print(path)


@app.command()
@friendly_errors
def quickstart(
    output_dir: Annotated[Path, typer.Option(help="Where the run directory goes.")] = Path("runs"),
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Overrides for the bundled recipe, e.g. data.sample=1000.")
    ] = None,
    smoke_serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Smoke-test the HTTP server.")] = True,
) -> None:
    """The flagship example: bundled Rotten Tomatoes + bundled MiniLM → train, evaluate, smoke-serve."""
    from modelyard.quickstart import run_quickstart

    run_dir = run_quickstart(output_dir, overrides or [], smoke_serve=smoke_serve, console=err_console)
    print(run_dir)


prompt_app = typer.Typer(help="Prompt engineering for `model.type: prompt` recipes.", no_args_is_help=True)
app.add_typer(prompt_app, name="prompt")


@prompt_app.command("try")
@friendly_errors
def prompt_try(
    recipe: Annotated[Path, typer.Argument(help="A recipe with model.type: prompt.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. model.prompt.shots=4.")] = None,
    sample: Annotated[int, typer.Option("--sample", min=1, help="Labelled validation examples to score.")] = 50,
    show: Annotated[int, typer.Option("--show", min=0, help="Mistakes to print with their rendered prompt.")] = 10,
) -> None:
    """Score the prompt on N labelled examples: accuracy, mistakes with rendered prompts, prompts/history.jsonl."""
    from modelyard.config import load_recipe
    from modelyard.training.prompt import prompt_try as run_try

    run_try(load_recipe(recipe, overrides or []), sample=sample, console=err_console, show=show)


@app.command()
@friendly_errors
def compare(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe YAML files; the first one's data section splits.")],
    data: Annotated[
        str | None, typer.Option("--data", help="Labelled file or bundled:NAME for every recipe (default: first's).")
    ] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for leaderboard.* and runs/.")] = Path(
        "leaderboard"
    ),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override for every recipe, e.g. --set train.epochs=1.")
    ] = None,
    latency_texts: Annotated[int, typer.Option(min=1, help="Test texts timed one by one (latency p50).")] = 50,
) -> None:
    """Train recipes on the identical split; write leaderboard.md/.json/.html (accuracy, F1, time, size, latency)."""
    from modelyard.ops.compare import compare as run_compare

    run_compare(
        list(recipes), data=data, output=output, overrides=set_, latency_texts=latency_texts, console=err_console
    )
    print(output / "leaderboard.md")


@app.command()
@friendly_errors
def pretrain(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file with a `pretrain` section.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. pretrain.epochs=1.")] = None,
) -> None:
    """Masked-language-model pretraining of a small BERT (or continued pretraining); prints the backbone dir."""
    from modelyard.config import load_recipe
    from modelyard.training.pretrain import pretrain as run_pretrain

    cfg = load_recipe(recipe, overrides or [])
    _sigterm_as_interrupt()
    print(run_pretrain(cfg, console=err_console))


@app.command()
def version() -> None:
    """Print the modelyard version."""
    from modelyard import __version__

    print(__version__)


# Registry, API keys, retraining and drift monitoring: the operations sub-apps (modelyard.ops.cli).
app.add_typer(registry_app, name="registry")
app.add_typer(keys_app, name="keys")
app.add_typer(runs_app, name="runs")
app.add_typer(predictions_app, name="predictions")
app.add_typer(data_app, name="data")  # `data audit RECIPE`: label-noise detection (ops/data_cli.py)
# `label RUN -i … -o …` (label a file) and `label queue RUN` (active learning): ops/label_cli.py
app.add_typer(label_app, name="label")
app.command("retrain")(retrain_command)
app.command("monitor")(monitor_command)
app.command("generate")(generate_command)
app.command("redact")(redact_command)
app.command("federate")(federate_command)
# Installing as a package: the bundled weights/data, and a check of the whole installation.
app.command("fetch-bundled")(fetch_bundled_command)
app.command("doctor")(doctor_command)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
