"""``modelyard serve RUN --runtime auto``: the fastest runtime that passed its parity check, from ``compression.json``.

``modelyard compress`` measures every variant side by side with the fp32 torch source (parity, accuracy,
latency). The choice reads that table, so it is made on measurements of this run, not on rules of thumb:

* eligible are the source (``torch``) and the variants whose parity was *checked* and passed (``onnx``,
  ``onnx-int8``); ``prune`` and ``distill`` change the model (their agreement is reported, not checked), so they
  are never picked silently;
* a variant whose files are missing, damaged or older than the model is skipped (and the reason says so);
* among the eligible, the lowest p50 latency at batch 1 wins (a tie goes to the lower p50 at batch 32).

``serve`` passes ``measure=True``: when more than one runtime is eligible they are timed again here, interleaved
(:func:`measure_runtimes`), and the fastest *on the serving machine* wins — a run compressed on an AVX-512 VNNI
machine may be served on an AVX2 one where int8 pays less, and one compress run's timings drift by ±30% on a
shared 2-core machine (its table and a later benchmark disagreed on onnx vs onnx-int8 for a small BERT).

Without a ``compression.json`` (or for a multi-label model, which the variants cannot serve yet) the answer is
``torch`` with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard._internal.io import read_json
from modelyard._internal.labels import MULTI_LABEL
from modelyard._internal.layout import MODEL_DIR, MODEL_META
from modelyard.errors import ModelyardError

COMPRESSION_FILE = "compression.json"
SOURCE_ROW = "torch-fp32"  # the source's row in compression.json; served as runtime "torch"


def _candidates(run_dir: Path, table: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    from modelyard.compression.variants import check_variant

    tolerances = table.get("tolerances") or {}
    eligible, skipped = [], []
    for row in table.get("rows") or []:
        method = str(row.get("method"))
        runtime = "torch" if method == SOURCE_ROW else method
        checked = (tolerances.get(method) or {}).get("min_agreement") is not None
        if not checked:
            skipped.append(f"{runtime} (changes the model: agreement reported, not checked)")
            continue
        if not row.get("parity_ok"):
            skipped.append(f"{runtime} (failed parity: agreement {row.get('agreement')})")
            continue
        if not isinstance(row.get("p50_ms_b1"), int | float):
            skipped.append(f"{runtime} (no latency measured)")
            continue
        if runtime != "torch":
            try:
                check_variant(run_dir, runtime)
            except ModelyardError as err:
                skipped.append(f"{runtime} ({err})")
                continue
        eligible.append({**row, "runtime": runtime})
    return eligible, skipped


def choose_runtime(run_dir: str | Path, *, measure: bool = False) -> tuple[str, str]:
    """``(runtime, reason)``: the runtime ``serve --runtime auto`` uses for ``run_dir`` and why, in one line.

    With ``measure``, two or more eligible runtimes are timed again on this machine (:func:`measure_runtimes`)
    and the measured fastest wins.
    """
    run_dir = Path(run_dir)
    meta_path = run_dir / MODEL_DIR / MODEL_META
    if meta_path.is_file() and read_json(meta_path).get("task") == MULTI_LABEL:
        return "torch", "a multi-label model: the compressed runtimes cannot serve label sets yet"
    path = run_dir / COMPRESSION_FILE
    if not path.is_file():
        hint = f"modelyard compress {run_dir} --methods onnx,onnx-int8"
        return "torch", f"no {COMPRESSION_FILE} (make variants with: {hint})"
    try:
        table = read_json(path)
    except (OSError, ValueError) as err:
        return "torch", f"{path} is unreadable ({err}); rerun modelyard compress {run_dir}"
    eligible, skipped = _candidates(run_dir, table)
    if not eligible:
        why = "no runtime in compression.json passed parity"
        return "torch", why + (f"; skipped: {'; '.join(skipped)}" if skipped else "")
    if measure and len(eligible) > 1:
        timings = measure_runtimes(run_dir, [r["runtime"] for r in eligible])
        if timings:
            best_runtime = min(timings, key=timings.__getitem__)
            listed = ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(timings.items(), key=lambda kv: kv[1]))
            reason = (
                f"fastest of the runtimes that passed parity in {COMPRESSION_FILE}, measured here "
                f"(p50 at batch 1, interleaved): {listed}"
            )
            if skipped:
                reason += f"; skipped: {'; '.join(skipped)}"
            return best_runtime, reason
    best = min(eligible, key=lambda r: (r["p50_ms_b1"], r.get("p50_ms_b32") or float("inf")))
    torch_row = next((r for r in eligible if r["runtime"] == "torch"), None)
    speed = ""
    if torch_row is not None and best is not torch_row and best["p50_ms_b1"] > 0:
        speed = f", {torch_row['p50_ms_b1'] / best['p50_ms_b1']:.2f}× torch"
    reason = (
        f"fastest runtime that passed parity in {COMPRESSION_FILE}: p50 {best['p50_ms_b1']:.1f} ms at batch 1{speed}, "
        f"agreement {best.get('agreement', float('nan')):.4f} on the test split"
    )
    if skipped:
        reason += f"; skipped: {'; '.join(skipped)}"
    return best["runtime"], reason


def measure_runtimes(run_dir: Path, runtimes: list[str], rounds: int = 4, per_round: int = 8) -> dict[str, float]:
    """Median ms of one single-text prediction per runtime, measured interleaved on the run's training texts.

    Each runtime is loaded and warmed up; then ``rounds`` times every runtime predicts the same ``per_round``
    texts one by one, so a slow moment of a shared machine hits all of them alike. Runtimes that fail to load
    are left out (the table's choice then applies to the rest). Texts come from the training split (seeded),
    as for the parity checks; none when the run has no splits (then nothing is measured).
    """
    import statistics
    import time

    from modelyard.compression.parity import calibration_texts
    from modelyard.compression.variants import load_variant

    texts, _ = calibration_texts(run_dir, rows=per_round)
    if not texts:
        return {}
    loaded: dict[str, Any] = {}
    for runtime in runtimes:
        try:
            model = load_variant(run_dir, runtime)
            for text in texts[:3]:
                model.predict_proba([text])
        except (ModelyardError, OSError, ValueError, RuntimeError):
            continue
        loaded[runtime] = model
    times: dict[str, list[float]] = {name: [] for name in loaded}
    for _ in range(rounds):
        for name, model in loaded.items():
            for text in texts:
                start = time.perf_counter()
                model.predict_proba([text])
                times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(ts) for name, ts in times.items() if ts}
