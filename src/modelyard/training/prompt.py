"""``model.type: prompt`` runs: no gradient steps — the "training" is writing the prompt model and measuring it.

A prompt model is a template, verbalizers, an LM backbone and (for k-shot) a pool of labelled
examples drawn from the training split. The run directory has the same files as a fine-tuned run
(``metrics.json``, ``predictions.parquet``, ``report.html``, ``manifest.json``, ``model/``), so
``modelyard evaluate|predict|serve`` and ``modelyard.load`` work on it unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from modelyard._internal.io import read_json
from modelyard.config import Recipe
from modelyard.errors import ConfigError

# Texts scored between two progress updates (the LM is slow on CPU: show an ETA, not a frozen screen).
_CHUNK = 32


def prompt_settings(recipe: Recipe, labels: list[str]) -> dict[str, Any]:
    """Template source and verbalizers of a prompt recipe, checked against the data's labels."""
    p = recipe.model.prompt
    assert p is not None
    template = p.template
    if p.template_file is not None:
        path = recipe.resolve(p.template_file)
        if not path.is_file():
            raise ConfigError(f"model.prompt.template_file: {path} not found")
        template = path.read_text(encoding="utf-8")
    verbalizers = p.verbalizers or {label: [label] for label in labels}
    missing = [label for label in labels if label not in verbalizers]
    unknown = [label for label in verbalizers if label not in labels]
    if missing or unknown:
        raise ConfigError(
            "model.prompt.verbalizers must name every label of the data exactly once: "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"not in the data {unknown} (labels are {labels})" if unknown else "")
        )
    return {"template": template, "verbalizers": {label: list(verbalizers[label]) for label in labels}}


def backbone_spec(recipe: Recipe) -> str:
    """``bundled:NAME`` as is; a local directory made absolute so the saved model does not depend on the cwd."""
    spec = recipe.model.backbone
    if spec.startswith("bundled:"):
        return spec
    path = recipe.resolve(spec)
    return str(path.resolve()) if path.exists() else spec


def write_prompt_model(recipe: Recipe, labels: list[str], pool: Any, model_dir: Path) -> Path:
    """Save the prompt model a recipe describes (``pool``: labelled shot candidates, or None) to ``model_dir``."""
    from modelyard.llm.classifier import save_prompt_model

    p = recipe.model.prompt
    assert p is not None
    settings = prompt_settings(recipe, labels)
    save_prompt_model(
        model_dir,
        labels=labels,
        backbone=backbone_spec(recipe),
        template=settings["template"],
        verbalizers=settings["verbalizers"],
        shots_cfg={"k": p.shots, "method": p.shot_selection, "seed": p.shot_seed},
        pool=pool,
        cleaning=recipe.data.clean.model_dump(mode="json"),
        name=recipe.name,
        max_length=recipe.model.max_length,
        chat=p.chat,
        calibrate=p.calibrate,
        batch_size=p.batch_size,
        backend=p.backend,
        openai=p.openai.model_dump(mode="json") if p.openai else None,
    )
    return model_dir


def predict_with_progress(clf: Any, texts: list[str], console: Console, what: str) -> np.ndarray:
    """``clf.predict_proba`` in chunks behind a progress bar with ETA."""
    out = np.zeros((len(texts), len(clf.labels)), dtype=np.float64)
    columns = (
        TextColumn(f"[bold]{what}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(what, total=len(texts))
        t0, tenth = time.perf_counter(), 0
        for start in range(0, len(texts), _CHUNK):
            chunk = texts[start : start + _CHUNK]
            out[start : start + len(chunk)] = clf.predict_proba(chunk)
            bar.update(task, advance=len(chunk))
            done = start + len(chunk)
            if not console.is_terminal and done * 10 // len(texts) > tenth:
                # no live bar in logs/CI: a plain line every ~10% keeps progress (and the ETA) visible
                tenth = done * 10 // len(texts)
                rate = done / max(time.perf_counter() - t0, 1e-9)
                bar.console.print(
                    f"{what}: {done}/{len(texts)} · {rate:.1f} texts/s · ETA {(len(texts) - done) / rate:.0f}s"
                )
    return out


def fit_prompt_run(recipe: Recipe, data: Any, run_id: str, run_dir: Path, console: Console, t0: float) -> dict:
    """Write ``model/`` for a prompt recipe, score valid and test, write metrics, predictions, report, manifest."""
    from modelyard.evaluation.metrics import compute_metrics, mean_nll
    from modelyard.llm.classifier import load_prompt_model
    from modelyard.training.finetune import prediction_frame, write_oneshot_outputs

    p = recipe.model.prompt
    assert p is not None
    labels = list(data.labels)
    settings = prompt_settings(recipe, labels)
    pool = data.train[["text", "label"]].reset_index(drop=True) if p.shots else None
    write_prompt_model(recipe, labels, pool, run_dir / "model")
    clf = load_prompt_model(run_dir / "model")
    console.print(
        f"[bold]prompt model[/] {recipe.model.backbone} · {p.shots}-shot ({p.shot_selection}) · "
        f"verbalizers {settings['verbalizers']}"
    )
    index = {label: i for i, label in enumerate(labels)}
    metrics: dict[str, Any] = {}
    frames = []
    seconds: dict[str, float] = {}
    for split in ("valid", "test"):
        frame = getattr(data, split)
        texts = frame["text"].tolist()
        y = np.array([index[x] for x in frame["label"]], dtype=np.int64)
        s0 = time.perf_counter()
        probs = predict_with_progress(clf, texts, console, f"score {split}")
        seconds[split] = time.perf_counter() - s0
        metrics[split] = compute_metrics(y, probs, labels, loss=mean_nll(probs, y))
        frames.append(prediction_frame(split, texts, y, probs, labels))
    n_scored = sum(len(getattr(data, s)) for s in ("valid", "test"))
    per_example_ms = 1000.0 * sum(seconds.values()) / max(n_scored, 1)
    info = {
        "run": run_id,
        "recipe name": recipe.name,
        "model": f"prompt · {recipe.model.backbone}",
        "shots": f"{p.shots} ({p.shot_selection})",
        "verbalizers": settings["verbalizers"],
        "scoring time per example (ms)": round(per_example_ms, 1),
        "data": recipe.data.path,
        "train (shot pool) / valid / test": " / ".join(str(len(getattr(data, s))) for s in ("train", "valid", "test")),
    }
    write_oneshot_outputs(
        run_dir,
        recipe,
        run_id,
        t0,
        data,
        metrics=metrics,
        frames=frames,
        info=info,
        seed={"shots": p.shot_seed, "data": recipe.data.seed},
        train_seconds=0.0,
        device=clf.device if hasattr(clf, "device") else "cpu",
        precision="fp32",
        model={
            "type": "prompt",
            "backbone": recipe.model.backbone,
            "meta": read_json(run_dir / "model" / "modelyard.json"),
        },
        scoring_seconds={k: round(v, 2) for k, v in seconds.items()},
        scoring_ms_per_example=round(per_example_ms, 2),
    )
    return metrics


# ---------------------------------------------------------------------- modelyard prompt try


def prompt_try(recipe: Recipe, *, sample: int, console: Console, show: int = 10) -> dict[str, Any]:
    """Run the recipe's prompt on ``sample`` labelled validation examples; print accuracy and mistakes.

    The shot pool is the training split, so the examples scored are never shots. Every try is appended
    to ``<output_dir>/prompts/history.jsonl`` (template, verbalizers, shots, accuracy) so template
    versions can be compared; the last tries are printed as a table.
    """
    import hashlib
    import json
    import tempfile

    from rich.table import Table

    from modelyard.data import prepare_data
    from modelyard.evaluation.metrics import compute_metrics
    from modelyard.llm.classifier import load_prompt_model

    if recipe.model.type != "prompt":
        raise ConfigError(f"`modelyard prompt try` needs model.type 'prompt' (the recipe has '{recipe.model.type}')")
    if sample < 1:
        raise ConfigError(f"--sample must be >= 1, got {sample}")
    p = recipe.model.prompt
    assert p is not None
    data = prepare_data(recipe.data, recipe.base_dir)
    labels = list(data.labels)
    settings = prompt_settings(recipe, labels)
    frame = data.valid if len(data.valid) else data.test
    frame = frame.sample(n=min(sample, len(frame)), random_state=recipe.data.seed).reset_index(drop=True)
    with tempfile.TemporaryDirectory(prefix="modelyard-prompt-") as tmp:
        write_prompt_model(
            recipe,
            labels,
            data.train[["text", "label"]].reset_index(drop=True) if p.shots else None,
            Path(tmp) / "model",
        )
        clf = load_prompt_model(Path(tmp) / "model")
        texts = frame["text"].tolist()
        t0 = time.perf_counter()
        probs = predict_with_progress(clf, texts, console, "prompt try")
        seconds = time.perf_counter() - t0
        template_source = clf.template_source if hasattr(clf, "template_source") else settings["template"]
        index = {label: i for i, label in enumerate(labels)}
        y = np.array([index[x] for x in frame["label"]], dtype=np.int64)
        metrics = compute_metrics(y, probs, labels)
        pred = probs.argmax(axis=1)
        wrong = np.flatnonzero(pred != y)
        wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:show]  # most confident mistakes first
        rendered = clf.render_prompts([texts[i] for i in wrong]) if len(wrong) else []

    table = Table(title=f"{len(wrong)} most confident of {int((pred != y).sum())} mistakes", show_lines=True)
    for col in ("gold", "predicted", "p", "rendered prompt"):
        table.add_column(col, overflow="fold")
    for i, prompt in zip(wrong, rendered, strict=True):
        table.add_row(labels[y[i]], labels[pred[i]], f"{probs[i, pred[i]]:.3f}", prompt)
    if len(wrong):
        console.print(table)

    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "recipe": recipe.name,
        "template_sha256": hashlib.sha256((template_source or "").encode("utf-8")).hexdigest()[:12],
        "template": template_source,
        "verbalizers": settings["verbalizers"],
        "shots": p.shots,
        "shot_selection": p.shot_selection,
        "chat": p.chat,
        "backbone": recipe.model.backbone,
        "n": len(texts),
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "seconds": round(seconds, 2),
    }
    history_path = recipe.resolve(recipe.output_dir) / "prompts" / "history.jsonl"
    history_path.parent.mkdir(parents=True, exist_ok=True)
    with history_path.open("a", encoding="utf-8") as fh:  # append-only log; one line per try
        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
    from modelyard.training.finetune import read_jsonl

    past = [r for r in read_jsonl(history_path) if r.get("recipe") == recipe.name][-8:]
    versions = Table(title=f"prompt versions of {recipe.name} ({history_path})")
    for col in ("time", "template", "shots", "verbalizers", "n", "accuracy", "macro-F1"):
        versions.add_column(col, justify="right" if col in ("shots", "n", "accuracy", "macro-F1") else "left")
    for r in past:
        versions.add_row(
            r["time"],
            r["template_sha256"],
            f"{r['shots']} {r['shot_selection']}",
            json.dumps(r["verbalizers"], ensure_ascii=False),
            str(r["n"]),
            f"{r['accuracy']:.4f}",
            f"{r['macro_f1']:.4f}",
        )
    console.print(versions)
    console.print(
        f"accuracy {metrics['accuracy']:.4f} · macro-F1 {metrics['macro_f1']:.4f} on {len(texts)} validation "
        f"examples · {1000 * seconds / max(len(texts), 1):.0f} ms per example"
    )
    return entry


# ---------------------------------------------------------------------- modelyard label


def label_file(
    source: str | Path,
    input_path: Path,
    output_path: Path,
    *,
    console: Console,
    threshold: float | None = None,
    text_column: str | None = None,
) -> dict[str, Any]:
    """Label an unlabelled file with a model (a prompt run/recipe or any run): label, confidence, probabilities.

    ``source`` is a run directory or a prompt recipe (a temporary prompt model is built from it).
    Rows whose confidence is below ``threshold`` keep ``accepted = False`` and are written to
    ``<output stem>.rejected<suffix>`` instead of the output, so the output can train a student directly.
    """
    import tempfile

    from modelyard.data.sources import read_table, write_table
    from modelyard.errors import DataError
    from modelyard.inference import load

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {threshold}")
    source = Path(source)
    with tempfile.TemporaryDirectory(prefix="modelyard-label-") as tmp:
        if source.is_file():
            from modelyard.config import load_recipe

            recipe = load_recipe(source)
            if recipe.model.type != "prompt":
                raise ConfigError(
                    f"{source}: `modelyard label RECIPE` needs a prompt recipe; to label with a trained model pass "
                    "its run directory"
                )
            text_column = text_column or recipe.data.text_column
            model_dir = _prompt_model_from_recipe(recipe, Path(tmp) / "model")
            clf = load(model_dir)
        else:
            clf = load(source)
            text_column = text_column or "text"
        frame = read_table(input_path)
        if text_column not in frame.columns:
            raise DataError(
                f"{input_path}: no text column '{text_column}' (columns: {', '.join(map(str, frame.columns))}); "
                "pass --text-column"
            )
        texts = frame[text_column].fillna("").astype(str).tolist()
        probs = predict_with_progress(clf, texts, console, "label")
    labels = list(clf.labels)
    out = frame.copy()
    out["label"] = [labels[i] for i in probs.argmax(axis=1)]
    out["confidence"] = probs.max(axis=1)
    for j, lab in enumerate(labels):
        out[f"prob_{lab}"] = probs[:, j]
    out["accepted"] = True if threshold is None else out["confidence"] >= threshold
    kept = out[out["accepted"]]
    rejected = out[~out["accepted"]]
    write_table(kept, output_path)
    rejected_path = None
    if len(rejected):
        rejected_path = output_path.with_name(f"{output_path.stem}.rejected{output_path.suffix}")
        write_table(rejected, rejected_path)
    summary = {
        "rows": len(out),
        "accepted": len(kept),
        "rejected": len(rejected),
        "threshold": threshold,
        "label_counts": kept["label"].value_counts().to_dict(),
        "mean_confidence": float(out["confidence"].mean()) if len(out) else None,
        "output": str(output_path),
        "rejected_output": str(rejected_path) if rejected_path else None,
    }
    console.print(
        f"labelled {len(out)} rows → {output_path} ({len(kept)} accepted"
        + (f", {len(rejected)} below confidence {threshold} → {rejected_path}" if len(rejected) else "")
        + f") · labels {summary['label_counts']}"
    )
    return summary


def _prompt_model_from_recipe(recipe: Recipe, model_dir: Path) -> Path:
    """A prompt model directory from a recipe; the data is read only when shots or labels need it."""

    from modelyard.data import prepare_data

    p = recipe.model.prompt
    assert p is not None
    pool = None
    if p.verbalizers and not p.shots and not recipe.data.labels:
        labels = list(p.verbalizers)
    elif recipe.data.labels and not p.shots:
        labels = list(recipe.data.labels)
    else:
        data = prepare_data(recipe.data, recipe.base_dir)
        labels = list(data.labels)
        pool = data.train[["text", "label"]].reset_index(drop=True) if p.shots else None
    return write_prompt_model(recipe, labels, pool, model_dir)
