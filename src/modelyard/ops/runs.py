"""``modelyard runs list|show|compare``: past runs and a leaderboard from the run folders alone (no MLflow).

A row per finished run directory (``manifest.json`` + ``metrics.json``): id, recipe name, model type,
valid/test metrics, train time, parameters, when it finished. ``.incomplete`` runs and hidden folders are
skipped; other folders that hold no run (``tune-*``, ``mlartifacts``) are left out; a run whose files are
missing or damaged is listed with a note instead of numbers — one bad folder never stops a listing.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from modelyard._internal.layout import INCOMPLETE, MANIFEST, METRICS, MODEL_DIR, RECIPE
from modelyard.errors import ModelyardError
from modelyard.evaluation.metrics import HEADLINE
from modelyard.rundir import RunDir

# Row keys that can sort a leaderboard: split_metric for every headline metric, plus these.
EXTRA_KEYS = ("train_time_s", "parameters", "finished_at")
LOWER_IS_BETTER = ("log_loss", "ece", "loss", "train_time_s", "parameters")
SORT_KEYS = tuple(f"{s}_{m}" for s in ("test", "valid") for m in HEADLINE) + EXTRA_KEYS


def _looks_like_run(path: Path) -> bool:
    return any((path / name).exists() for name in (MANIFEST, METRICS, RECIPE, MODEL_DIR))


def run_row(path: Path) -> dict[str, Any]:
    """One run as a flat dict (the ``--json`` form); ``note`` says what is wrong with a damaged run."""
    rd = RunDir(path)
    row: dict[str, Any] = {"run_id": rd.run_id, "path": str(path), "note": None}
    try:
        manifest = rd.manifest()
        metrics = rd.metrics()
    except (ModelyardError, OSError, ValueError) as err:
        row["note"] = f"unreadable run: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        return row
    model = manifest.get("model") or {}
    row |= {
        "name": manifest.get("name"),
        "model_type": model.get("type"),
        "backbone": model.get("backbone"),
        "parameters": model.get("parameters"),
        "train_time_s": manifest.get("train_time_s"),
        "finished_at": manifest.get("finished_at"),
        "best_epoch": manifest.get("best_epoch"),
    }
    for split in ("valid", "test"):
        values = metrics.get(split) or {}
        for name in HEADLINE:
            value = values.get(name)
            row[f"{split}_{name}"] = value if isinstance(value, (int, float)) else None
    return row


def scan_runs(folder: Path) -> list[dict[str, Any]]:
    """The runs directly under ``folder``, newest first.

    Raises:
        ModelyardError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelyardError(f"runs folder not found: {folder} (pass the output_dir of your recipes)")
    rows = [
        run_row(p)
        for p in sorted(folder.iterdir())
        if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(INCOMPLETE) and _looks_like_run(p)
    ]
    # newest first: the finish time, else the run id (a UTC timestamp)
    return sorted(rows, key=lambda r: (r.get("finished_at") or 0, r["run_id"]), reverse=True)


def resolve_run(ref: str, folder: Path) -> Path:
    """A run given as a path, or as a run id inside ``folder``."""
    path = Path(ref)
    if path.is_dir():
        return path
    if (Path(folder) / ref).is_dir():
        return Path(folder) / ref
    raise ModelyardError(f"run not found: {ref} (neither a folder nor a run id in {folder})")


def leaderboard(rows: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """Rows ranked by ``sort`` (best first; runs without the value last), each with its ``rank``.

    Raises:
        ModelyardError: ``sort`` is not a row key.
    """
    if sort not in SORT_KEYS:
        raise ModelyardError(f"--sort {sort}: not a metric of a run; use one of {', '.join(SORT_KEYS)}")
    metric = sort.split("_", 1)[1] if sort.startswith(("test_", "valid_")) else sort
    lower = metric in LOWER_IS_BETTER

    def key(row: dict[str, Any]) -> tuple[int, float]:
        value = row.get(sort)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return (1, 0.0)
        return (0, value if lower else -value)

    ranked = sorted(rows, key=key)
    return [{"rank": i + 1, **row} for i, row in enumerate(ranked)]


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _when(timestamp: Any) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M") if timestamp else "-"


def runs_table(rows: list[dict[str, Any]], title: str) -> Table:
    """``runs list``: id, name, type, test accuracy/macro-F1, train time, date (notes for damaged runs)."""
    table = Table(title=title)
    for col in ("run", "name", "type", "test acc", "test macro-F1", "train time (s)", "finished"):
        table.add_column(col, justify="right" if col.startswith(("test", "train")) else "left")
    for r in rows:
        if r["note"]:
            table.add_row(r["run_id"], f"[red]{r['note']}[/]", "", "", "", "", "")
            continue
        table.add_row(
            r["run_id"],
            str(r["name"] or "-"),
            str(r["model_type"] or "-"),
            _num(r["test_accuracy"]),
            _num(r["test_macro_f1"]),
            _num(r["train_time_s"], 1),
            _when(r["finished_at"]),
        )
    return table


def leaderboard_table(ranked: list[dict[str, Any]], sort: str) -> Table:
    """``runs compare``: rank, run, name, type, valid/test accuracy and macro-F1, the sort column, time, size."""
    metric_cols = ["valid_accuracy", "valid_macro_f1", "test_accuracy", "test_macro_f1"]
    if sort not in metric_cols and sort not in EXTRA_KEYS:
        metric_cols.append(sort)
    table = Table(title=f"leaderboard · sorted by {sort}")
    table.add_column("#", justify="right")
    for col in ("run", "name", "type"):
        table.add_column(col)
    for col in (*metric_cols, "train_time_s", "parameters"):
        label = {"train_time_s": "train time (s)"}.get(col, col.replace("_", " ")) + (" ▼" if col == sort else "")
        table.add_column(label, justify="right")
    for r in ranked:
        if r["note"]:
            table.add_row(str(r["rank"]), r["run_id"], f"[red]{r['note']}[/]", *[""] * (len(metric_cols) + 3))
            continue
        table.add_row(
            str(r["rank"]),
            r["run_id"],
            str(r["name"] or "-"),
            str(r["model_type"] or "-"),
            *(_num(r.get(c)) for c in metric_cols),
            _num(r["train_time_s"], 1),
            _num(r["parameters"]),
        )
    return table


def show_run(path: Path) -> tuple[list[tuple[str, str]], Table, dict[str, Any]]:
    """``runs show``: the manifest's summary lines, the metrics table per split, and both as JSON."""
    rd = RunDir.finished(path)
    manifest, metrics = rd.manifest(), rd.metrics()
    model = manifest.get("model") or {}
    seed = manifest.get("seed")
    sizes = manifest.get("data_sizes") or {}
    lines = [
        ("run", str(manifest.get("run_id"))),
        ("name", str(manifest.get("name"))),
        ("task", str(manifest.get("task"))),
        ("model", f"{model.get('type')} · {model.get('backbone') or '-'} · {_num(model.get('parameters'))} params"),
        ("data", " / ".join(f"{k} {v}" for k, v in sizes.items()) or "-"),
        ("seed", ", ".join(f"{k} {v}" for k, v in seed.items()) if isinstance(seed, dict) else str(seed)),
        ("started", _when(manifest.get("started_at"))),
        ("finished", _when(manifest.get("finished_at"))),
        ("train time (s)", _num(manifest.get("train_time_s"), 1)),
        ("epochs", f"{manifest.get('epochs_completed')} (best {manifest.get('best_epoch')})"),
        ("device", f"{(manifest.get('hardware') or {}).get('device', '-')} · {manifest.get('precision')}"),
        ("git commit", str(manifest.get("git_commit") or "-")),
        ("path", str(rd.path)),
    ]
    if isinstance(privacy := manifest.get("privacy"), dict):  # train.privacy: the accountant's spent ε
        eps = "∞" if privacy.get("epsilon_infinite") else _num(privacy.get("epsilon"))
        lines.insert(-2, ("privacy", f"ε {eps} · δ {privacy.get('delta')} · {privacy.get('steps')} DP-SGD steps"))
    table = Table(title="metrics")
    table.add_column("split")
    for name in HEADLINE:
        table.add_column(name, justify="right")
    for split, values in metrics.items():
        if isinstance(values, dict) and any(n in values for n in HEADLINE):  # splits, not e.g. "federation"
            table.add_row(split, *(_num(values.get(n)) if values.get(n) is not None else "-" for n in HEADLINE))
    return lines, table, {"manifest": manifest, "metrics": metrics}
