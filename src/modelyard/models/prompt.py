"""``model.type: prompt``: zero/few-shot classification with a generative LM — no gradient steps.

A prompt model is a template, verbalizers, an LM backbone and (for k-shot) a pool of labelled
examples drawn from the training split. Its "training" (a one-shot fit) writes the prompt model and
scores valid and test, so the run directory has the same files as a fine-tuned run and
``modelyard evaluate|predict|serve`` and ``modelyard.load`` work on it unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from modelyard._internal.io import read_json
from modelyard._internal.layout import MODEL_META
from modelyard.config import ModelSettings, PromptConfig
from modelyard.errors import ConfigError
from modelyard.kinds import FitContext, FitResult, ModelKind, register_kind
from modelyard.llm.cache import resolve_lm
from modelyard.llm.classifier import SHOTS_FILE, load_prompt_model, save_prompt_model

# Texts scored between two progress updates (the LM is slow on CPU: show an ETA, not a frozen screen).
_CHUNK = 32


class PromptSettings(ModelSettings):
    """A generative LM asked to classify by a prompt (`prompt`): zero- or few-shot, no gradient steps."""

    type: Literal["prompt"] = "prompt"
    backbone: str = Field(
        "bundled:smollm2-135m-instruct",
        description="The generative LM: `bundled:NAME` (bundled:smollm2-135m-instruct, bundled:gemma3-270m), a "
        "local Hugging Face or GGUF path (relative to the recipe's folder), or the served model's name with "
        "`prompt.backend: openai`.",
    )
    max_length: int = Field(128, ge=8, le=8192, description="Tokens kept per input text inside the prompt.")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="Template, verbalizers, shots, backend.")


def prompt_settings(recipe: Any, labels: list[str], model: PromptSettings | None = None) -> dict[str, Any]:
    """Template source and verbalizers of a prompt recipe (or of ``model``, e.g. an ensemble's member), checked
    against the data's labels."""
    p = (model or recipe.model).prompt
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


def backbone_spec(recipe: Any) -> str:
    """``bundled:NAME`` as is; a local directory made absolute so the saved model does not depend on the cwd."""
    spec = recipe.model.backbone
    if spec.startswith("bundled:"):
        return spec
    path = recipe.resolve(spec)
    return str(path.resolve()) if path.exists() else spec


def write_prompt_model(recipe: Any, labels: list[str], pool: Any, model_dir: Path) -> Path:
    """Save the prompt model a recipe describes (``pool``: labelled shot candidates, or None) to ``model_dir``."""
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


def predict_with_progress(clf: Any, texts: list[str], console: Any, what: str) -> np.ndarray:
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


def fit_prompt_run(ctx: FitContext) -> FitResult:
    """Write ``model/`` for a prompt recipe and score valid and test (behind a progress bar with ETA)."""
    recipe, data, console, model_dir = ctx.recipe, ctx.data, ctx.console, ctx.model_dir
    p = recipe.model.prompt
    assert p is not None
    labels = list(data.labels)
    settings = prompt_settings(recipe, labels)
    pool = data.train[["text", "label"]].reset_index(drop=True) if p.shots else None
    write_prompt_model(recipe, labels, pool, model_dir)
    clf = load_prompt_model(model_dir)
    console.print(
        f"[bold]prompt model[/] {recipe.model.backbone} · {p.shots}-shot ({p.shot_selection}) · "
        f"verbalizers {settings['verbalizers']}"
    )
    probs: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for split in ("valid", "test"):
        s0 = time.perf_counter()
        probs[split] = predict_with_progress(clf, getattr(data, split)["text"].tolist(), console, f"score {split}")
        seconds[split] = time.perf_counter() - s0
    n_scored = sum(len(getattr(data, s)) for s in ("valid", "test"))
    per_example_ms = 1000.0 * sum(seconds.values()) / max(n_scored, 1)
    info = {
        "model": f"prompt · {recipe.model.backbone}",
        "shots": f"{p.shots} ({p.shot_selection})",
        "verbalizers": settings["verbalizers"],
        "scoring time per example (ms)": round(per_example_ms, 1),
        "data": recipe.data.path,
        "train (shot pool) / valid / test": " / ".join(str(len(getattr(data, s))) for s in ("train", "valid", "test")),
    }
    manifest = {
        "seed": {"shots": p.shot_seed, "data": recipe.data.seed},
        "train_seconds": 0.0,
        "device": clf.device if hasattr(clf, "device") else "cpu",
        "precision": "fp32",
        "model": {"type": "prompt", "backbone": recipe.model.backbone, "meta": read_json(model_dir / MODEL_META)},
        "scoring_seconds": {k: round(v, 2) for k, v in seconds.items()},
        "scoring_ms_per_example": round(per_example_ms, 2),
    }
    return FitResult(probs=probs, info=info, manifest=manifest)


def _prepare(cfg: PromptSettings, recipe: Any, labels: list[str]) -> None:
    prompt_settings(recipe, labels, cfg)  # template/verbalizer errors before a run directory exists
    if cfg.prompt.backend == "local":
        resolve_lm(cfg.backbone, recipe.base_dir)  # builds the safetensors cache once


def _load(model_dir: Path, meta: dict[str, Any], *, device: str = "auto", batch_size: int = 64) -> Any:
    return load_prompt_model(model_dir)


def _lm_files(model_dir: Path, meta: dict[str, Any]) -> list[Path]:
    """The language model's safetensors files (resolved by name; kept outside ``model/``)."""
    if meta.get("backend", "local") != "local":
        return []
    return list(Path(resolve_lm(str(meta["backbone"]), model_dir.parent)).rglob("*.safetensors"))


def _check_artifacts(model_dir: Path, meta: dict[str, Any]) -> None:
    """The registry's admission check: the JSON settings are complete and the shot pool is a readable parquet table.

    A prompt model holds no weights of its own (its LM is resolved by name at load time): ``modelyard.json``
    carries the template, verbalizers and shot settings, and ``shots.parquet`` (when ``shots.k > 0``) the labelled
    examples. The pool is read with pyarrow and must hold only text columns, among them ``text`` and ``label``: a
    column of any other type (a Python-object extension type is a pickle) is refused, as are labels the model
    does not predict and fewer rows than ``shots.k``.

    Raises:
        ValueError: naming the setting or file and the problem.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = meta.get("labels")
    if not isinstance(labels, list) or len(labels) < 2:
        raise ValueError(f"{MODEL_META}: a prompt model needs a list of at least two labels")
    for key in ("backbone", "template"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise ValueError(f"{MODEL_META}: `{key}` must be a non-empty string")
    verbalizers = meta.get("verbalizers")
    if not isinstance(verbalizers, dict) or sorted(verbalizers) != sorted(labels):
        raise ValueError(f"{MODEL_META}: `verbalizers` must name every label exactly once ({labels})")
    shots = meta.get("shots")
    k = shots.get("k") if isinstance(shots, dict) else None
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"{MODEL_META}: `shots.k` must be a count >= 0")
    pool = model_dir / SHOTS_FILE
    if not pool.is_file():
        if k > 0:
            raise ValueError(f"shots.k is {k} but there is no {SHOTS_FILE} (the shot pool)")
        return
    try:
        table = pq.read_table(pool)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise ValueError(f"{SHOTS_FILE} is not a readable parquet table ({err})") from None
    for f in table.schema:
        if not (pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_string_view(f.type)):
            raise ValueError(f"{SHOTS_FILE}: column '{f.name}' has type {f.type}; a shot pool holds only text columns")
    if not {"text", "label"} <= set(table.column_names):
        raise ValueError(f"{SHOTS_FILE} needs columns text and label (has {', '.join(table.column_names)})")
    if table.num_rows < k:
        raise ValueError(f"{SHOTS_FILE} has {table.num_rows} examples, fewer than shots.k={k}")
    if unknown := sorted(set(table.column("label").to_pylist()) - set(labels)):
        raise ValueError(f"{SHOTS_FILE} has labels the model does not predict: {unknown[:5]}")


KIND = register_kind(
    ModelKind(
        name="prompt",
        settings=PromptSettings,
        modality="text",
        fit=fit_prompt_run,
        prepare=_prepare,
        load=_load,
        check_artifacts=_check_artifacts,
        display_name=lambda cfg: cfg.backbone,
        # an ensemble member too: a zero-shot prompt blended with a student it taught (small data, README)
        supports=frozenset({"distill_teacher", "ensemble_member"}),
        external_files=_lm_files,
    )
)
