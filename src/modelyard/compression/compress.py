"""``modelyard compress``: build compressed variants of a run and measure them against the source.

Every variant and the fp32 source ("torch-fp32") are measured in one process, side by side, on the
run's test split: parity (argmax agreement, max |Δ logit|), accuracy / macro-F1, weight size and
CPU latency at batch 1 and 32. Results go to ``<run>/compression.json`` and ``compression.html``.

The builders make their own choices (whether a fused graph is kept, the onnx-int8 ladder level) on
calibration texts drawn from the *training* split (:mod:`modelyard.compression.parity`), so the test
split measured here is data no choice was made on.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from modelyard._internal.integrity import file_records
from modelyard._internal.io import atomic_write_text, read_json, write_json
from modelyard._internal.layout import MODEL_DIR, MODEL_META, REPORT, SPLITS_DIR
from modelyard._internal.storage import atomic_dir, ensure_free_space, run_lock, storage_errors
from modelyard.compression.parity import ONNX_TOLERANCE
from modelyard.compression.variants import (
    METHODS,
    ONNX_FILE,
    VARIANT_FILE,
    check_runtime,
    load_variant,
    source_model_dir,
    variant_dir,
)
from modelyard.errors import ModelyardError

SOURCE = "torch-fp32"
# Parity of a variant against the fp32 torch source on the test split. None = not checked (reported only).
# onnx-int8's level is chosen on training texts by a 95% lower confidence bound of agreement ≥ 0.99 (see
# build_onnx_int8); the test-split point estimate below is the honest check of that choice, never its input.
TOLERANCES: dict[str, dict[str, Any]] = {
    SOURCE: {"min_agreement": 1.0, "max_abs_logit_diff": 0.0, "note": "the reference"},
    "onnx": {
        **ONNX_TOLERANCE,
        "note": "same fp32 graph (fused where parity holds), different kernels",
    },
    "onnx-int8": {
        "min_agreement": 0.99,
        "max_abs_logit_diff": None,
        "note": "int8 MatMul weights; level chosen on training texts by a 95% lower bound ≥ 0.99",
    },
    "prune": {"min_agreement": None, "max_abs_logit_diff": None, "note": "agreement reported only"},
    "distill": {"min_agreement": None, "max_abs_logit_diff": None, "note": "a retrained student: agreement reported"},
}
ROW_KEYS = (
    "method",
    "runtime",
    "files",
    "size_mb",
    "size_kind",
    "agreement",
    "max_abs_logit_diff",
    "accuracy",
    "macro_f1",
    "accuracy_drop_points",
    "p50_ms_b1",
    "p95_ms_b1",
    "p50_ms_b32",
    "p95_ms_b32",
    "speedup_b1",
    "speedup_b32",
    "sparsity",
    "parity_ok",
)
LATENCY_BATCHES = (1, 32)
_WARMUP = 3


def parse_methods(methods: list[str] | tuple[str, ...] | str) -> list[str]:
    """Validate (and de-duplicate, keeping order) method names; accepts ``"a,b"`` too."""
    if isinstance(methods, str):
        methods = [m for m in methods.split(",")]
    out: list[str] = []
    for m in methods:
        m = m.strip()
        check_runtime(m, METHODS)
        if m not in out:
            out.append(m)
    if not out:
        raise ModelyardError(f"no compression method given; valid: {', '.join(METHODS)}")
    return out


def compress(
    run_dir: Path,
    methods: list[str] | tuple[str, ...] = METHODS,
    *,
    console: Console | None = None,
    sparsity: float = 0.3,
    recovery_steps: int = 50,
    latency_repeats: int = 50,
    recovery_lr: float | None = None,
    student_layers: int | None = None,
    distill_epochs: int | None = None,
) -> dict[str, Any]:
    """Build the requested variants under ``<run>/compressed/<method>/`` and measure them.

    Args:
        run_dir: a finished run directory (``model/`` + ``splits/``).
        methods: any of :data:`METHODS`.
        sparsity: target fraction of zeroed encoder Linear weights for ``prune``.
        recovery_steps: AdamW steps after pruning (masks kept); 0 skips recovery.
        latency_repeats: timed calls per variant and batch size (after warm-up).
        recovery_lr: learning rate of the recovery steps (default: a tenth of the recipe's).
        student_layers: encoder layers of the ``distill`` student (default: half the teacher's).
        distill_epochs: epochs of the student's training (default: the recipe's).

    Returns:
        The ``compression.json`` content (rows, tolerances, versions, threads).

    Raises:
        ModelyardError: unknown method, no trained model in ``run_dir``, bad options, another ``compress``
            running on the same run, or a fault of the machine (one line naming the path).
    """
    with run_lock(Path(run_dir), "compress"), storage_errors("compressed variants", Path(run_dir), "RUN"):
        return _compress(
            Path(run_dir),
            methods,
            console=console,
            sparsity=sparsity,
            recovery_steps=recovery_steps,
            latency_repeats=latency_repeats,
            recovery_lr=recovery_lr,
            student_layers=student_layers,
            distill_epochs=distill_epochs,
        )


def _compress(
    run_dir: Path,
    methods: list[str] | tuple[str, ...],
    *,
    console: Console | None,
    sparsity: float,
    recovery_steps: int,
    latency_repeats: int,
    recovery_lr: float | None,
    student_layers: int | None,
    distill_epochs: int | None,
) -> dict[str, Any]:
    import torch

    from modelyard.compression.build import BUILDERS, no_hf_progress_bars

    run_dir = Path(run_dir)
    methods = parse_methods(methods)
    source = source_model_dir(run_dir)
    if latency_repeats < 1:
        raise ModelyardError(f"latency_repeats must be >= 1, got {latency_repeats}")
    if "prune" in methods and not (0.0 <= sparsity < 1.0 and recovery_steps >= 0):
        raise ModelyardError(f"prune needs 0 <= sparsity < 1 and recovery_steps >= 0, got {sparsity}, {recovery_steps}")
    console = console or Console(stderr=True)
    texts, y, labels = _test_split(run_dir, source)

    with no_hf_progress_bars():
        reference = load_variant(run_dir, "torch")
    details: dict[str, dict[str, Any]] = {}
    for method in methods:
        t0 = time.perf_counter()
        console.print(f"[bold]compress[/] {method} …")
        # an export holds about the source's weights, and its builder a temporary copy beside them
        weights = sum(p.stat().st_size for p in source.glob("*.safetensors"))
        ensure_free_space(run_dir, 2 * weights, f"the {method} variant", "RUN")
        with atomic_dir(variant_dir(run_dir, method)) as tmp:
            details[method] = BUILDERS[method](
                source,
                tmp,
                tokenizer=reference.tokenizer,
                frontend=reference,
                run_dir=run_dir,
                sparsity=sparsity,
                recovery_steps=recovery_steps,
                recovery_lr=recovery_lr,
                student_layers=student_layers,
                distill_epochs=distill_epochs,
                log=console.print,
            )
            # every file's size and sha256, so a damaged variant is named at load time, never half-used
            spec = read_json(tmp / VARIANT_FILE)
            spec["files"] = file_records(tmp, "", skip=(VARIANT_FILE,))
            write_json(tmp / VARIANT_FILE, spec)
        console.print(f"  → {variant_dir(run_dir, method)} ({time.perf_counter() - t0:.1f}s)")

    with no_hf_progress_bars():
        clfs: dict[str, Any] = {SOURCE: reference} | {m: load_variant(run_dir, m) for m in methods}
    ref_logits = reference.predict_logits(texts)
    rows: list[dict[str, Any]] = []
    for name, clf in clfs.items():
        rows.append(_quality_row(name, clf, texts, y, labels, ref_logits, run_dir, details.get(name, {})))
    latencies = _latencies(clfs, texts, latency_repeats)
    base = rows[0]
    for row in rows:
        row.update(latencies[row["method"]])
        row["accuracy_drop_points"] = round(100.0 * (base["accuracy"] - row["accuracy"]), 4)
        for b in LATENCY_BATCHES:
            mine = row[f"p50_ms_b{b}"]
            row[f"speedup_b{b}"] = base[f"p50_ms_b{b}"] / mine if mine > 0 else None
    rows = [{k: _finite(row[k]) for k in ROW_KEYS} for row in rows]

    import onnx
    import onnxruntime
    import transformers

    result = {
        "format": 1,
        "run": run_dir.name,
        "created_at": time.time(),
        "split": "test",
        "n_examples": len(texts),
        "rows": rows,
        "tolerances": TOLERANCES,
        "settings": {
            "methods": methods,
            "sparsity": sparsity,
            "recovery_steps": recovery_steps,
            "student_layers": student_layers,
            "distill_epochs": distill_epochs,
            "latency_repeats": latency_repeats,
            "latency_batches": list(LATENCY_BATCHES),
            "latency_warmup": min(_WARMUP, latency_repeats),
            "latency_scope": "predict_proba end to end: normalise + tokenize + forward + softmax",
        },
        "versions": {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "threads": {"torch_intra_op": torch.get_num_threads(), "onnxruntime_intra_op": torch.get_num_threads()},
        "hardware": {"machine": platform.machine(), "processor": platform.processor() or None},
    }
    write_json(run_dir / "compression.json", result)
    page = render_html(result)
    atomic_write_text(run_dir / "compression.html", page)
    from modelyard.evaluation.report import add_stage_section

    add_stage_section(run_dir / REPORT, "compression", "Compression", page, link="compression.html")
    print_table(console, result)
    console.print(f"report: {run_dir / 'compression.html'}")
    return result


# ---------------------------------------------------------------------- measurements


def _test_split(run_dir: Path, source: Path) -> tuple[list[str], np.ndarray, list[str]]:
    import pandas as pd

    path = run_dir / SPLITS_DIR / "test.parquet"
    if not path.is_file():
        raise ModelyardError(f"{run_dir} has no splits/test.parquet to measure the variants on")
    frame = pd.read_parquet(path)
    if frame.empty:
        raise ModelyardError(f"{path} is empty; cannot measure the variants")
    labels = list(read_json(source / MODEL_META)["labels"])
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted(set(frame["label"]) - set(index))
    if unknown:
        raise ModelyardError(f"{path} has labels the model does not know: {unknown[:5]}")
    return frame["text"].astype(str).tolist(), np.array([index[x] for x in frame["label"]], dtype=np.int64), labels


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float64 (what ``Classifier.predict_proba`` returns)."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def variant_files(run_dir: Path, method: str) -> list[Path]:
    """The weight files of a variant (what ``size_mb`` counts)."""
    if method == SOURCE:
        return [run_dir / MODEL_DIR / "model.safetensors"]
    vdir = variant_dir(run_dir, method)
    if method in ("prune", "distill"):
        return sorted(vdir.glob("*.safetensors"))
    if method in ("onnx", "onnx-int8"):
        return [vdir / ONNX_FILE, *sorted(vdir.glob("*.onnx.data"))]
    return []


def _quality_row(
    name: str,
    clf: Any,
    texts: list[str],
    y: np.ndarray,
    labels: list[str],
    ref_logits: np.ndarray,
    run_dir: Path,
    detail: dict[str, Any],
) -> dict[str, Any]:
    from modelyard.compression.build import prunable_linears, weight_sparsity
    from modelyard.evaluation.metrics import compute_metrics

    logits = ref_logits if name == SOURCE else clf.predict_logits(texts)
    agreement = float(np.mean(logits.argmax(axis=1) == ref_logits.argmax(axis=1)))
    max_diff = float(np.max(np.abs(logits.astype(np.float64) - ref_logits.astype(np.float64))))
    metrics = compute_metrics(y, softmax(logits), labels)
    files = variant_files(run_dir, name)
    size, kind = sum(f.stat().st_size for f in files), "disk"
    sparsity = None
    if name == "prune":
        sparsity = detail.get("achieved_sparsity")
        if sparsity is None:
            sparsity = weight_sparsity([m.weight.detach().numpy() for _, m in prunable_linears(clf.model)])
    tol = TOLERANCES[name]
    ok = (tol["min_agreement"] is None or agreement >= tol["min_agreement"]) and (
        tol["max_abs_logit_diff"] is None or max_diff <= tol["max_abs_logit_diff"]
    )
    return {
        "method": name,
        "runtime": clf.info()["runtime"],
        "files": [str(f.relative_to(run_dir)) for f in files],
        "size_mb": size / 1e6,
        "size_kind": kind,
        "agreement": agreement,
        "max_abs_logit_diff": max_diff,
        "accuracy": float(metrics["accuracy"]),
        "macro_f1": float(metrics["macro_f1"]),
        "sparsity": sparsity,
        "parity_ok": bool(ok),
    }


def _latencies(clfs: dict[str, Any], texts: list[str], repeats: int) -> dict[str, dict[str, float]]:
    """p50/p95 ms of ``predict_proba`` per classifier and batch size, one classifier at a time.

    Not interleaved on purpose: torch's OpenMP pool and onnxruntime's pool both spin-wait for a while
    after each call, so alternating runtimes call by call makes each one wait for the other's spinning
    threads (measured: torch fp32 at batch 1 went from ~12 ms to ~230 ms on 2 cores). Each block starts
    with warm-up calls, which also absorb the previous runtime's spinning.
    """
    n = len(texts)
    out: dict[str, dict[str, float]] = {name: {} for name in clfs}
    for name, clf in clfs.items():
        for b in LATENCY_BATCHES:
            batches = [[texts[(r * b + j) % n] for j in range(b)] for r in range(repeats)]
            for r in range(min(_WARMUP, repeats)):
                clf.predict_proba(batches[r])
            times = []
            for chunk in batches:
                t0 = time.perf_counter()
                clf.predict_proba(chunk)
                times.append((time.perf_counter() - t0) * 1e3)
            out[name][f"p50_ms_b{b}"] = float(np.percentile(times, 50))
            out[name][f"p95_ms_b{b}"] = float(np.percentile(times, 95))
    return out


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------- output

_COLUMNS = (
    ("method", "method", "{}"),
    ("size_mb", "MB", "{:.1f}"),
    ("agreement", "agree", "{:.4f}"),
    ("max_abs_logit_diff", "max|Δlogit|", "{:.1e}"),
    ("accuracy", "acc", "{:.4f}"),
    ("macro_f1", "F1", "{:.4f}"),
    ("accuracy_drop_points", "Δacc pts", "{:+.2f}"),
    ("p50_ms_b1", "p50@1 ms", "{:.2f}"),
    ("p95_ms_b1", "p95@1 ms", "{:.2f}"),
    ("p50_ms_b32", "p50@32 ms", "{:.1f}"),
    ("p95_ms_b32", "p95@32 ms", "{:.1f}"),
    ("speedup_b1", "×@1", "{:.2f}"),
    ("speedup_b32", "×@32", "{:.2f}"),
    ("sparsity", "sparse", "{:.3f}"),
    ("parity_ok", "parity", "{}"),
)
# The terminal table leaves out the p95 columns (they are in compression.json/html).
_TERMINAL = ("p95_ms_b1", "p95_ms_b32", "macro_f1")


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    if key == "parity_ok":
        return "ok" if v else "FAIL"
    if key == "accuracy_drop_points":
        v = -v  # shown as the change: negative = accuracy lost
    return fmt.format(v)


def print_table(console: Console, result: dict[str, Any]) -> None:
    """The rows as a rich table."""
    from rich.table import Table

    threads = result["threads"]["torch_intra_op"]
    table = Table(title=f"compression · {result['n_examples']} test examples · {threads} CPU threads")
    columns = [c for c in _COLUMNS if c[0] not in _TERMINAL]
    for key, title, _ in columns:
        table.add_column(title, justify="left" if key == "method" else "right", no_wrap=key == "method")
    for row in result["rows"]:
        cells = [_cell(row, k, f) for k, _, f in columns]
        if not row["parity_ok"]:
            cells[-1] = "[red]FAIL[/]"
        table.add_row(*cells)
    console.print(table)


def render_html(result: dict[str, Any]) -> str:
    """Self-contained HTML table, from ``evaluation/templates/compression.html.j2`` (the report's autoescaping env)."""
    from modelyard.evaluation.html import environment

    rows = [{"cells": [_cell(r, k, f) for k, _, f in _COLUMNS], "ok": r["parity_ok"]} for r in result["rows"]]
    return (
        environment()
        .get_template("compression.html.j2")
        .render(
            run=result["run"],
            n=result["n_examples"],
            versions=result["versions"],
            threads=result["threads"]["torch_intra_op"],
            settings=result["settings"],
            titles=[t for _, t, _ in _COLUMNS],
            rows=rows,
            tolerances=result["tolerances"],
        )
    )
