"""Run orchestration behind ``modelyard train``: a new run, a resumed run, a one-shot fit, an atomic finish.

    train(recipe)
      ├─ prepare data + the kind's own checks   (everything that can fail on user input, before a directory)
      ├─ <output_dir>/<run-id>.incomplete        recipe.yaml, data_report.json, splits/, fingerprints.json
      ├─ kind trains in the loop?  → loop.FineTuneRecipe: setup → train → finalize (checkpoints, --resume)
      │  else one-shot fit         → kind.fit(ctx) → probabilities → the same metrics/predictions/report
      ├─ manifest.json, report.html
      ├─ train.report_to: MLflow / TensorBoard get params, metrics, manifest tags, artefacts (training.tracking)
      └─ rename to <output_dir>/<run-id>

The kind (``recipe.model.type``) is looked up in :mod:`modelyard.kinds`; nothing here names a kind.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from modelyard._internal.io import atomic_write_text, read_json, write_json
from modelyard._internal.layout import (
    CHECKPOINTS_DIR,
    DATA_REPORT,
    FINGERPRINTS,
    HISTORY,
    INCOMPLETE,
    LABELS,
    MANIFEST,
    METRICS,
    MODEL_DIR,
    REPORT,
)
from modelyard._internal.rundir import discard_run, finish_run, run_manifest, start_run
from modelyard._internal.runtime import pick_device
from modelyard._internal.storage import storage_errors
from modelyard.config import Recipe
from modelyard.data import prepare_data, prepare_multilabel
from modelyard.data.images import prepare_images, write_image_splits
from modelyard.errors import ModelyardError
from modelyard.evaluation.image_report import add_mistake_grid
from modelyard.evaluation.predictions import print_metrics
from modelyard.evaluation.report import write_report
from modelyard.evaluation.scoring import write_scored
from modelyard.kinds import FitContext, get_kind
from modelyard.rundir import RunDir
from modelyard.training.distill import add_teacher_labelled
from modelyard.training.distributed import Heartbeats, World, current_world, launched, require_distributed
from modelyard.training.generative import GenerativeRecipe
from modelyard.training.launch import launch
from modelyard.training.loop import FineTuneRecipe, TrainingInterrupted
from modelyard.training.multilabel import print_multilabel_metrics, write_multilabel_run
from modelyard.training.privacy import require_privacy
from modelyard.training.text_augment import augment_record, check_text_augment
from modelyard.training.tracking import Tracking, require_trackers, status_of, tracking_uri

__all__ = ["TrainingInterrupted", "load_splits", "print_data_report", "train"]


def train(
    recipe: Recipe,
    *,
    resume: Path | None = None,
    console: Console | None = None,
    stop_after_step: int | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    data: Any = None,
    tracking_parent: str | None = None,
) -> Path:
    """Train a recipe into a new run directory (or resume an unfinished one) and return its path.

    ``data`` (a :class:`~modelyard.data.PreparedData`, e.g. :func:`load_splits` of another run) trains
    on those exact splits instead of preparing ``recipe.data`` — how distillation and retraining
    compare like with like.

    The run lives in ``<output_dir>/<run-id>.incomplete`` until everything is written, then is
    renamed to ``<output_dir>/<run-id>``. A failure before the first checkpoint removes it; a later
    interruption keeps it (with ``checkpoints/last``) for ``--resume``. ``on_epoch_end(epoch, entry)``
    is called after each epoch's validation; an exception it raises propagates and the run directory
    is discarded (it was stopped on purpose, e.g. a pruned tuning trial, so there is nothing to resume).

    ``train.report_to`` also reports the run to MLflow/TensorBoard (:mod:`modelyard.training.tracking`);
    ``tracking_parent`` (an MLflow run id) makes it a nested run, as tuning does with its trials.

    Raises:
        ModelyardError: bad data, recipe or backbone (nothing is left behind), or an interruption.
    """
    console = console or Console(stderr=True)
    t0 = time.time()
    require_trackers(recipe.train.report_to)  # a missing tracker package fails before any work
    require_privacy(recipe, get_kind(recipe.model.type))  # train.privacy: a loop classifier, opacus installed
    require_distributed(recipe, get_kind(recipe.model.type))  # distributed: loop classifiers, no DP-SGD
    if recipe.distributed.backend != "none" and not launched():  # start the ranks; each comes back in here
        if on_epoch_end is not None:  # a tuning trial that is itself a distributed run
            console.print("[yellow]note: per-epoch reports and pruning are off for a distributed run[/]")
        return launch(recipe, train_rank, resume=resume, data=data, stop_after_step=stop_after_step, console=console)
    world = current_world(recipe.distributed)
    world.join(pick_device(recipe.train.device))  # a rank of a torchrun / Ray Train job: its process group
    if not world.is_main:  # rank 0 alone reports, writes the run directory and talks to trackers
        console = Console(stderr=True, quiet=True)
    heartbeats = Heartbeats(world) if world.active else None
    if resume is not None:
        run_dir, recipe, data = _reopen(Path(resume), recipe, console)
        run_id = run_dir.name.removesuffix(INCOMPLETE)
        require_trackers(recipe.train.report_to)
    else:
        # Everything that can fail on user input fails here, before a directory exists.
        kind = get_kind(recipe.model.type)
        if data is None:
            data = (
                prepare_images(recipe.data, recipe.base_dir)
                if kind.modality == "image"
                else prepare_multilabel(recipe.data, recipe.base_dir)
                if recipe.task == "multi-label-classification"
                else prepare_data(recipe.data, recipe.base_dir)
            )
        if kind.prepare is not None:
            kind.prepare(recipe.model, recipe, list(data.labels))
        if recipe.train.distill is not None and recipe.train.distill.unlabelled is not None:
            data = add_teacher_labelled(recipe, data, str(pick_device(recipe.train.device)), console)
        check_text_augment(recipe, kind, data)  # train.augment.text: lexicons, masked LM, language
        print_data_report(console, data.report)
        run_id, run_dir = _start(recipe, data, kind, world)
    kind = get_kind(recipe.model.type)
    console.print(f"run [bold]{run_id}[/] → {run_dir}")
    tracking = (
        Tracking.for_recipe(recipe, run_dir, console, parent_run_id=tracking_parent)
        if world.is_main
        else Tracking([], console)
    )
    if not kind.trains_in_loop:
        if resume is not None:
            raise ModelyardError(f"{kind.name} runs have no training steps to resume (a one-shot fit); start a new run")
        return _one_shot_run(recipe, data, run_id, run_dir, console, t0, tracking)

    ft: Any = None
    generative = kind.can("generative")
    try:
        ft = (
            GenerativeRecipe(recipe, run_dir, data, console)
            if generative
            else FineTuneRecipe(recipe, run_dir, data, console, world=world, heartbeats=heartbeats)
        )
        with world.failures_named(heartbeats):  # a rank that died or stalled: one error naming it, no hang
            ft.setup()
            if resume is not None:
                ft.load_checkpoint()
            resume_step = ft.state.global_step if resume is not None else None
            tracking.start(run_id, recipe, run_dir.with_name(run_id), resume_step=resume_step)
            ft.train(stop_after_step=stop_after_step, on_epoch_end=on_epoch_end, on_log=tracking.log_progress)
        if not world.is_main:
            return run_dir.with_name(run_id)  # where rank 0 finishes the run (it evaluates and writes the outputs)
        metrics = ft.finalize()
        _record_privacy(ft, console)
        if generative:
            ft.write_report_and_manifest(run_id, t0, resumed_from=str(resume) if resume else None)
        else:
            _write_report_and_manifest(ft, run_id, t0, resumed_from=str(resume) if resume else None)
        if not recipe.train.keep_checkpoints:
            shutil.rmtree(RunDir(run_dir).checkpoints_dir, ignore_errors=True)
        tracking.complete(run_dir, step=ft.state.global_step)
        final = finish_run(run_dir)
    except BaseException as err:
        if not world.is_main:
            raise  # rank 0 decides what happens to the run directory
        tracking.finish("KILLED" if ft is not None and ft.stopped_by_hook else status_of(err))
        # kept minimal (plain path checks): this also runs when memory is exhausted
        resumable = (run_dir / CHECKPOINTS_DIR / "last" / "trainer_state.json").is_file()
        if ft is not None and ft.stopped_by_hook:
            discard_run(run_dir)
        elif resumable:
            console.print(f"[yellow]run interrupted; resume with: modelyard train RECIPE --resume {run_dir}[/]")
            if isinstance(err, KeyboardInterrupt):
                raise TrainingInterrupted(f"interrupted; resume with --resume {run_dir}") from None
        elif resume is None:
            discard_run(run_dir)
        raise
    if generative:
        ft.print_final(metrics)
        console.print(f"report: {final / REPORT}")
    else:
        _print_final(console, recipe, metrics, final)
    return final


def train_rank(payload: dict[str, Any], data: Any) -> str:
    """One rank of a job that :func:`~modelyard.training.launch.launch` started: the same ``train``, ranked."""
    import yaml

    from modelyard.config.recipe import recipe_from_dict

    recipe = recipe_from_dict(yaml.safe_load(payload["recipe"]), base_dir=Path(payload["base_dir"]))
    console = Console(stderr=True, quiet=os.environ.get("RANK", "0") != "0")
    resume = Path(payload["resume"]) if payload["resume"] else None
    return str(train(recipe, resume=resume, console=console, stop_after_step=payload["stop_after_step"], data=data))


def _start(recipe: Recipe, data: Any, kind: Any, world: World) -> tuple[str, Path]:
    """Create the run directory with its inputs (rank 0) and share its path with every rank.

    Ranks prepare the data themselves (the same recipe and seed give the same splits); their fingerprints are
    compared, so a rank that read different data (another file at that path on another machine) fails now.
    """
    shared: dict[str, Any] = {}
    if world.is_main:
        try:
            # a one-shot fit has nothing to resume: staged hidden, so even a SIGKILL leaves nothing visible
            run_id, run_dir = start_run(recipe.resolve(recipe.output_dir), resumable=kind.trains_in_loop)
            try:
                with storage_errors("the run's recipe and splits", run_dir, "output_dir"):
                    write_run_inputs(run_dir, recipe, data)
            except BaseException:
                discard_run(run_dir)  # nothing trained yet: no half-written run directory is left
                raise
            shared = {"run_id": run_id, "run_dir": str(run_dir)}
        except Exception as err:
            world.from_main({"error": str(err)})  # the other ranks stop with the same reason instead of waiting
            raise
    shared = world.from_main(shared)
    if "error" in shared:
        raise ModelyardError(f"rank 0 could not create the run directory: {shared['error']}")
    fingerprints = world.gather_json(data.fingerprints)
    for rank, seen in enumerate(fingerprints):
        if seen != fingerprints[0]:
            if world.is_main:
                discard_run(Path(shared["run_dir"]))
            raise ModelyardError(
                f"rank {rank} prepared different data than rank 0 (fingerprints {seen} vs {fingerprints[0]}); "
                "every machine must see the same data files at the recipe's paths"
            )
    return shared["run_id"], Path(shared["run_dir"])


def _print_final(console: Console, recipe: Recipe, metrics: dict[str, Any], final: Path) -> None:
    if recipe.task == "multi-label-classification":
        print_multilabel_metrics(console, metrics)
    else:
        print_metrics(console, metrics)
    console.print(f"report: {final / REPORT}")


def _one_shot_run(
    recipe: Recipe, data: Any, run_id: str, run_dir: Path, console: Console, t0: float, tracking: Tracking
) -> Path:
    """A run whose kind fits in one call (tf-idf, prompt, ensemble): fit, then the same outputs as the loop."""
    kind = get_kind(recipe.model.type)
    assert kind.fit is not None
    try:
        tracking.start(run_id, recipe, run_dir.with_name(run_id))
        ctx = FitContext(
            recipe=recipe,
            data=data,
            run_dir=run_dir,
            model_dir=run_dir / MODEL_DIR,
            console=console,
            # ensemble members trained here are nested under this run in MLflow
            train_member=lambda sub, sub_data: train(
                _as_member(sub, recipe), data=sub_data, console=console, tracking_parent=tracking.mlflow_run_id
            ),
        )
        result = kind.fit(ctx)
        if recipe.task == "multi-label-classification":
            metrics = write_multilabel_run(run_dir, recipe, run_id, t0, data, result)
        else:
            metrics = write_fit_outputs(run_dir, recipe, run_id, t0, data, result.probs, result.info, result.manifest)
        tracking.complete(run_dir, step=0)
        final = finish_run(run_dir)
    except BaseException as err:
        tracking.finish(status_of(err))
        discard_run(run_dir)  # nothing to resume: a one-shot fit starts over
        raise
    _print_final(console, recipe, metrics, final)
    return final


def _as_member(sub: Recipe, recipe: Recipe) -> Recipe:
    """A member run reports to its parent's MLflow store and experiment (its own output_dir would pick another)."""
    if "mlflow" in sub.train.report_to:
        sub.train.tracking_uri = tracking_uri(recipe)
        sub.train.experiment = recipe.train.experiment or recipe.name
    return sub


def write_fit_outputs(
    run_dir: Path,
    recipe: Recipe,
    run_id: str,
    t0: float,
    data: Any,
    probs: dict[str, np.ndarray],
    info: dict[str, Any],
    manifest_fields: dict[str, Any],
) -> dict[str, Any]:
    """Metrics, predictions, an empty history, the report and the manifest of a one-shot fit.

    The metrics of every one-shot kind are computed here, the same way (log-loss = mean NLL of the
    predicted probabilities), from the valid/test probabilities the kind returned.
    """
    labels = list(data.labels)
    index = {label: i for i, label in enumerate(labels)}
    scored = {}
    for split in ("valid", "test"):
        frame = getattr(data, split)
        y = np.array([index[x] for x in frame["label"]], dtype=np.int64)
        scored[split] = (frame["text"].tolist(), y, probs[split])
    sizes = " / ".join(str(len(getattr(data, s))) for s in ("train", "valid", "test"))
    report_info = {"run": run_id, "recipe name": recipe.name, **info}
    report_info.setdefault("data", recipe.data.path)
    if not any(k.endswith("/ valid / test") for k in report_info):
        report_info["train / valid / test"] = sizes
    write_json(run_dir / HISTORY, [])
    metrics, _ = write_scored(run_dir, f"{recipe.name} · {run_id}", labels, scored, [], [], report_info)
    manifest = run_manifest(
        recipe,
        run_id,
        t0,
        data_fingerprints=data.fingerprints,
        data_sizes={s: len(getattr(data, s)) for s in ("train", "valid", "test")},
        **manifest_fields,
    )
    write_json(run_dir / MANIFEST, manifest)
    return metrics


def write_run_inputs(run_dir: Path, recipe: Recipe, data: Any) -> None:
    """recipe.yaml, data_report.json, splits/ and fingerprints.json, as every run has them (federated runs too)."""
    rd = RunDir(run_dir)
    atomic_write_text(rd.recipe_path, recipe.to_yaml())
    write_json(run_dir / DATA_REPORT, data.report)
    if get_kind(recipe.model.type).modality == "image":
        write_image_splits(rd.splits_dir, data)
    else:
        rd.splits_dir.mkdir()
        for name in ("train", "valid", "test"):
            getattr(data, name).to_parquet(rd.splits_dir / f"{name}.parquet", index=False)
        write_json(rd.splits_dir / LABELS, list(data.labels))
    write_json(run_dir / FINGERPRINTS, data.fingerprints)


def _reopen(run_dir: Path, recipe: Recipe, console: Console) -> tuple[Path, Recipe, Any]:
    """Reload an unfinished run: its own resolved recipe and saved splits, so nothing can drift."""
    rd = RunDir(run_dir)
    if not run_dir.is_dir():
        raise ModelyardError(f"--resume: run directory not found: {run_dir}")
    if not rd.is_incomplete:
        raise ModelyardError(f"--resume: {run_dir} is a finished run; start a new one instead")
    if not rd.resumable:
        raise ModelyardError(f"--resume: {run_dir} has no checkpoint to resume from")
    saved = rd.recipe()
    saved._base_dir = recipe.base_dir
    if saved.model_dump() != recipe.model_dump():
        console.print(
            "[yellow]note: the recipe differs from the one this run started with; "
            "resuming with the run's own recipe.yaml[/]"
        )
    return run_dir, saved, rd.splits()


def load_splits(run_dir: Path) -> Any:
    """The exact train/valid/test splits a run was trained on (:meth:`RunDir.splits`)."""
    return RunDir(run_dir).splits()


def _record_privacy(ft: Any, console: Console) -> None:
    """``train.privacy``: the accountant's spent ε into ``metrics.json`` (key ``privacy``, beside the splits)."""
    dp = getattr(ft, "dp", None)
    if dp is None:
        return
    path = ft.run_dir / METRICS
    with storage_errors(METRICS, path, "output_dir"):
        write_json(path, read_json(path) | {"privacy": dp.summary()})
    console.print(f"[bold]{next(iter(dp.info()))}[/] {next(iter(dp.info().values()))}")


def _write_report_and_manifest(ft: FineTuneRecipe, run_id: str, t0: float, resumed_from: str | None) -> None:
    rd, recipe = RunDir(ft.run_dir), ft.recipe
    kind = ft.kind
    manifest = run_manifest(
        recipe,
        run_id,
        t0,
        seed={"train": recipe.train.seed, "data": recipe.data.seed},
        train_seconds=ft.state.train_seconds,
        device=ft.device,
        precision=str(ft.dtype or "fp32"),
        data_fingerprints=ft.data.fingerprints,
        data_sizes={k: len(v.labels) for k, v in ft.splits.items()},
        model={"type": recipe.model.type, "backbone": kind.name_of(recipe.model), "parameters": ft.n_params},
        resumed_from=resumed_from,
        epochs_completed=ft.state.epoch,
        best_epoch=ft.state.best_epoch,
        stopped_early=ft.state.stopped_early,
        total_steps=ft.state.global_step,
        distributed=ft.world.describe() | {"workers": ft.workers},
        world_size=ft.world.size,
        **({"privacy": ft.dp.summary()} if ft.dp else {}),
        **augment_record(ft),
    )
    write_json(rd.manifest_path, manifest)
    if ft.multi_label:
        return  # finalize wrote the multi-label report (per-label table, co-occurrence)
    write_report(
        rd.report_path,
        title=f"{recipe.name} · {run_id}",
        metrics={split: m for split, m in rd.metrics().items() if split != "privacy"},  # ε: in `info`
        labels=ft.labels,
        history=ft.state.history,
        steps=rd.steps(),
        predictions=rd.predictions(),
        info=ft.report_info() | {"train time (s)": manifest["train_time_s"]},
    )
    if kind.modality == "image":
        add_mistake_grid(rd.report_path, ft.splits["test"], ft.labels, rd.predictions_path)


def print_data_report(console: Console, report: dict[str, Any]) -> None:
    """One compact summary of what the data stage kept and dropped."""
    dropped = {k: v for k, v in report.get("dropped", {}).items() if v}
    sizes = report.get("split_sizes", {})
    console.print(
        f"[bold]data[/] {report.get('source')}: {report.get('rows_in')} rows in → {report.get('rows_out')} kept"
        + (f" (dropped: {', '.join(f'{k} {v}' for k, v in dropped.items())})" if dropped else "")
        + f" · classes {report.get('class_balance')} · split {sizes}"
    )
    if issues := report.get("label_issues"):  # data.clean.label_issues: report | drop (training split only)
        console.print(
            f"[bold]label issues[/] {issues['flagged']} of {issues['train_rows']} training rows flagged "
            f"({issues['source']}) · {'dropped' if issues['mode'] == 'drop' else 'kept (report only)'}; "
            "listed in data_report.json"
        )
