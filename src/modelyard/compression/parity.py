"""Parity of a compressed graph with its fp32 source, judged on texts the choice did not come from.

Two pieces:

* **Calibration texts** (:func:`calibration_texts`): a seeded sample of up to :data:`CALIBRATION_ROWS` texts of
  the run's *training* split. Builders choose among their options (the onnx-int8 ladder level, a fused vs
  unfused graph) on these; the validation split stays the trainer's and the test split stays the honest
  hold-out that ``compression.json`` reports.
* **A lower confidence bound** (:func:`agreement_lower_bound`) instead of a point estimate. The int8 ladder used
  to accept a level when its argmax agreement on the 300-row validation split was ≥ 0.99; a level whose true
  agreement was 0.987 passed that way (its test agreement was 0.9867). With the one-sided 95% Clopper–Pearson
  bound the level is accepted only when the data make agreement < target unlikely: 300/300 agreeing rows
  give a bound of 0.9901, 299/300 only 0.9843, while 2,990/3,000 give 0.9943.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelyard._internal.layout import SPLITS_DIR

#: The parity of a same-model fp32 graph (``onnx``, fused or not) with torch: identical argmax, logits within 1e-3.
#: One definition for the build's fusion check and ``compress``'s table (``TOLERANCES["onnx"]``).
ONNX_TOLERANCE = {"min_agreement": 1.0, "max_abs_logit_diff": 1e-3}

# Up to this many training texts are drawn for calibration: enough for a 95% lower bound ≥ 0.99 at a true
# agreement of ~0.995 (2,985/3,000 → 0.9922), and a few seconds of MiniLM-L6 forward passes on 2 CPU cores.
CALIBRATION_ROWS = 3000
CALIBRATION_SEED = 0
CONFIDENCE = 0.95


def agreement_lower_bound(agree: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper–Pearson lower bound of the agreement rate after ``agree`` of ``n`` rows agreed.

    The exact (beta-quantile) bound: with probability ≥ ``confidence`` the true rate is at least this
    high. It is conservative for every ``n`` (unlike the normal approximation, which breaks down near 1,
    exactly where parity targets live), and 0.0 when nothing agreed or there are no rows.

    Examples:
        >>> round(agreement_lower_bound(299, 300), 4)  # point estimate 0.9967 ≥ 0.99, bound below it
        0.9843
        >>> round(agreement_lower_bound(2990, 3000), 4)
        0.9943
    """
    from scipy.stats import beta

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n < 0 or not 0 <= agree <= n:
        raise ValueError(f"need 0 <= agree <= n, got agree={agree}, n={n}")
    if agree == 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, agree, n - agree + 1))


def rows_needed(target: float, confidence: float = CONFIDENCE) -> int:
    """The fewest rows for which full agreement reaches a lower bound ≥ ``target`` (0.99 at 95%: 299)."""
    import math

    return math.ceil(math.log(1.0 - confidence) / math.log(target))


def calibration_texts(
    run_dir: Path | None, rows: int = CALIBRATION_ROWS, seed: int = CALIBRATION_SEED
) -> tuple[list[str], dict[str, Any]]:
    """A seeded sample of up to ``rows`` texts of the run's training split (never valid or test).

    Returns:
        ``(texts, info)``; ``info`` (``{"split": "train", "n": …, "of": …, "seed": …}``) goes into
        ``variant.json``. No texts (and ``info["n"] == 0``) when the run has no training split.
    """
    import pandas as pd

    path = None if run_dir is None else Path(run_dir) / SPLITS_DIR / "train.parquet"
    if path is None or not path.is_file():
        return [], {"split": "train", "n": 0, "of": 0, "seed": seed}
    texts = pd.read_parquet(path, columns=["text"])["text"].astype(str).tolist()
    pick = np.sort(np.random.default_rng(seed).permutation(len(texts))[: min(rows, len(texts))])
    return [texts[i] for i in pick], {"split": "train", "n": int(len(pick)), "of": len(texts), "seed": seed}


def torch_logits(model: Any, ids: list[list[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits of a ``transformers`` sequence classifier (fp32, CPU) on pre-tokenized ``ids``, in input order."""
    import torch

    from modelyard._internal.batching import pad_batch, sorted_batches

    out: np.ndarray | None = None
    with torch.inference_mode():
        for idx in sorted_batches([len(x) for x in ids], batch_size):
            logits = model(**pad_batch([ids[i] for i in idx], pad_id)).logits.float().numpy()
            if out is None:
                out = np.zeros((len(ids), logits.shape[1]), dtype=np.float32)
            out[idx] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def onnx_logits(path: Path, ids: list[list[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits of an ONNX classifier graph (onnxruntime, CPU) on pre-tokenized ``ids``, in input order."""
    from modelyard._internal.batching import pad_batch_numpy, sorted_batches
    from modelyard.compression.variants import _OrtModel

    model = _OrtModel(path)
    out: np.ndarray | None = None
    for idx in sorted_batches([len(x) for x in ids], batch_size):
        logits = model.logits(*pad_batch_numpy([ids[i] for i in idx], pad_id))
        if out is None:
            out = np.zeros((len(ids), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def agreement_entry(got: np.ndarray, reference: np.ndarray, target: float) -> dict[str, Any]:
    """``{"n", "agree", "agreement", "lower_bound", "accepted"}`` of ``got`` against ``reference`` (argmax)."""
    hits = int(np.sum(got.argmax(axis=1) == reference.argmax(axis=1)))
    n = int(len(reference))
    lower = agreement_lower_bound(hits, n)
    return {
        "n": n,
        "agree": hits,
        "agreement": hits / n if n else 0.0,
        "lower_bound": round(lower, 6),
        "accepted": bool(n and lower >= target),
    }
