"""``modelyard compare``: train several recipes on the identical split and write a leaderboard.

The split is prepared once (from the first recipe's ``data`` section, with ``--data`` replacing its path),
so every model trains, validates and is tested on the same rows. Each recipe still applies its own text
cleaning (e.g. jieba segmentation for a word-level model) to those rows. For every run the leaderboard
shows test accuracy and macro-F1, training time, parameters, model size on disk and CPU latency at batch 1
(p50), as ``leaderboard.md``, ``leaderboard.json`` and a self-contained ``leaderboard.html``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup
from rich.console import Console

from modelyard._internal.io import atomic_write_text, read_json, write_json
from modelyard._internal.layout import MANIFEST, METRICS, MODEL_DIR
from modelyard.errors import ConfigError
from modelyard.kinds import kind_of_meta

COLUMNS = (
    ("model", "model"),
    ("type", "type"),
    ("accuracy", "test accuracy"),
    ("macro_f1", "test macro-F1"),
    ("train_time_s", "train time (s)"),
    ("parameters", "parameters"),
    ("size_mb", "size (MB)"),
    ("latency_p50_ms", "CPU latency p50 @ batch 1 (ms)"),
)


def model_size_mb(clf: Any, run_dir: Path) -> float:
    """Megabytes of the files a model needs: ``model/`` plus what its kind keeps outside (a prompt model's LM)."""
    files = [p for p in (Path(run_dir) / MODEL_DIR).rglob("*") if p.is_file()]
    meta = getattr(clf, "meta", {}) or {}
    kind = kind_of_meta(meta) if meta else None
    if kind is not None and kind.external_files is not None:
        files += kind.external_files(Path(run_dir) / MODEL_DIR, meta)
    return sum(p.stat().st_size for p in files) / 1e6


def latency_p50_ms(clf: Any, texts: list[str], n: int = 50) -> float:
    """Median milliseconds of ``clf.predict_proba([text])`` over the first ``n`` texts, after one warm-up call."""
    if not texts:
        return float("nan")
    clf.predict_proba(texts[:1])
    times = []
    for text in texts[:n]:
        s = time.perf_counter()
        clf.predict_proba([text])
        times.append((time.perf_counter() - s) * 1e3)
    return float(np.percentile(times, 50))


def _reclean(data: Any, clean: Any) -> Any:
    """The same rows with one recipe's text cleaning applied (identical split, per-model normalisation)."""
    from dataclasses import replace

    from modelyard.data.cleaning import clean_text

    frames = {}
    for name in ("train", "valid", "test"):
        frame = getattr(data, name)
        frames[name] = frame.assign(text=[clean_text(str(t), clean) for t in frame["text"]])
    return replace(data, **frames)


def _row_name(recipe: Any, path: Path, seen: set[str]) -> str:
    name = recipe.name if recipe.name != "text-classifier" else path.stem
    base, i = name, 2
    while name in seen:
        name, i = f"{base}-{i}", i + 1
    seen.add(name)
    return name


def compare(
    recipe_paths: list[Path],
    *,
    data: str | None,
    output: Path,
    overrides: list[str] | None = None,
    latency_texts: int = 50,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train every recipe on one shared split and write ``leaderboard.{md,json,html}`` into ``output``.

    Args:
        recipe_paths: Recipe files; the first one's ``data`` section defines the split.
        data: A data file or ``bundled:NAME`` replacing ``data.path`` (relative paths resolve against the
            current directory); None keeps the first recipe's.
        output: Directory for the leaderboard files and the runs (``output/runs``).
        overrides: ``key=value`` overrides applied to every recipe (e.g. ``train.epochs=1``).
        latency_texts: Test texts timed one by one for the latency column.

    Returns:
        The leaderboard as written to ``leaderboard.json``.

    Raises:
        ConfigError: no recipes, or a recipe that can't be loaded.
        ModelyardError: data or training failures (from the data stage and ``train``).
    """
    from modelyard.config import load_recipe
    from modelyard.data import prepare_data
    from modelyard.models.loading import load
    from modelyard.training.run import train

    console = console or Console(stderr=True)
    if not recipe_paths:
        raise ConfigError("modelyard compare needs at least one recipe")
    output = Path(output)
    extra = list(overrides or [])
    recipes = [load_recipe(p, extra + [f"output_dir={(output / 'runs').resolve()}"]) for p in recipe_paths]
    first = recipes[0]
    data_cfg = first.data.model_copy(deep=True)
    if data is not None:
        data_cfg.path = data if data.startswith("bundled:") else str(Path(data).expanduser().resolve())
    if data_cfg.clean.chinese is not None:
        # The shared split is segmentation-free; each recipe segments (or not) with its own cleaning.
        data_cfg.clean.chinese = data_cfg.clean.chinese.model_copy(update={"segment": "none"})
    console.print(f"[bold]compare[/] {len(recipes)} recipe(s) on {data_cfg.path}")
    shared = prepare_data(data_cfg, first.base_dir)
    test_texts = shared.test["text"].tolist()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path, recipe in zip(recipe_paths, recipes, strict=True):
        name = _row_name(recipe, Path(path), seen)
        console.rule(f"{name} ({recipe.model.type})")
        recipe.data.path = data_cfg.path
        run_dir = train(recipe, data=_reclean(shared, recipe.data.clean), console=console)
        metrics = read_json(run_dir / METRICS)
        manifest = read_json(run_dir / MANIFEST)
        clf = load(run_dir, device="cpu")
        rows.append(
            {
                "model": name,
                "recipe": str(Path(path)),
                "type": recipe.model.type,
                "run_dir": str(run_dir),
                "accuracy": metrics["test"]["accuracy"],
                "macro_f1": metrics["test"]["macro_f1"],
                "valid_accuracy": metrics["valid"]["accuracy"],
                "valid_macro_f1": metrics["valid"]["macro_f1"],
                "train_time_s": manifest.get("train_time_s"),
                "wall_time_s": manifest.get("wall_time_s"),
                "parameters": (manifest.get("model") or {}).get("parameters"),
                "size_mb": round(model_size_mb(clf, run_dir), 3),
                "latency_p50_ms": round(latency_p50_ms(clf, test_texts, latency_texts), 3),
            }
        )
        del clf
    rows.sort(key=lambda r: (-r["macro_f1"], -r["accuracy"]))
    board = {
        "data": data_cfg.path,
        "split_sizes": {s: len(getattr(shared, s)) for s in ("train", "valid", "test")},
        "labels": list(shared.labels),
        "latency_texts": min(latency_texts, len(test_texts)),
        "rows": rows,
    }
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "leaderboard.json", board)
    atomic_write_text(output / "leaderboard.md", render_markdown(board))
    atomic_write_text(output / "leaderboard.html", render_html(board))
    console.print(render_markdown(board))
    return board


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("accuracy", "macro_f1"):
        return f"{value:.4f}"
    if key == "parameters":
        return f"{int(value):,}"
    if key in ("train_time_s", "size_mb", "latency_p50_ms"):
        return f"{value:.1f}" if value >= 1 else f"{value:.3f}"
    return str(value)


def render_markdown(board: dict[str, Any]) -> str:
    """The leaderboard as a Markdown table (best macro-F1 first)."""
    sizes = board["split_sizes"]
    lines = [
        f"# Leaderboard · {board['data']}",
        "",
        f"Identical split for every model: train {sizes['train']} / valid {sizes['valid']} / test {sizes['test']}; "
        f"latency = median of {board['latency_texts']} single-text predictions on CPU.",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for r in board["rows"]:
        lines.append("| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


# (vertical offset, row key, legend label, colour) of the two bars drawn per model
_BARS = ((-0.2, "accuracy", "test accuracy", "#9ecae9"), (0.2, "macro_f1", "test macro-F1", "#4c78a8"))


def _scores_figure(rows: list[dict[str, Any]]) -> Markup | None:
    """Horizontal bars of test accuracy and macro-F1 per model (inline SVG), or None without rows."""
    from modelyard.evaluation.html import fig_text, figure_env, new_figure, svg

    if not rows:
        return None
    names = [fig_text(r["model"]) for r in rows]
    y = np.arange(len(rows))
    with figure_env("leaderboard"):
        fig = new_figure(7.0, 1.2 + 0.45 * len(rows))
        ax = fig.add_subplot()
        for offset, key, label, color in _BARS:
            values = [float(r[key]) if r.get(key) is not None else 0.0 for r in rows]
            bars = ax.barh(y + offset, values, height=0.38, color=color, label=label)
            ax.bar_label(bars, fmt="%.4f", fontsize=7, padding=2)  # the table's rounding
        ax.set_yticks(y, names)
        ax.invert_yaxis()  # best model on top, like the table
        ax.set_xlim(0, 1.15)  # room for the value labels right of a bar at 1.0
        ax.set_xlabel("score on the test split")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        return svg(fig)


def render_html(board: dict[str, Any]) -> str:
    """A self-contained HTML page with the leaderboard table and a bar chart of the test scores.

    Rendered from ``templates/leaderboard.html.j2`` with the evaluation report's jinja2 environment
    (autoescaping on), so every model name and path is escaped in one place.
    """
    from modelyard.evaluation.html import environment

    return (
        environment()
        .get_template("leaderboard.html.j2")
        .render(
            data=str(board["data"]),
            sizes=board["split_sizes"],
            latency_texts=board["latency_texts"],
            titles=[title for _, title in COLUMNS],
            rows=[[_cell(k, r.get(k)) for k, _ in COLUMNS] for r in board["rows"]],
            figure=_scores_figure(board["rows"]),
        )
    )
