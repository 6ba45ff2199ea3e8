"""Transformer graph fusions (ONNX Runtime's ``onnxruntime.transformers`` optimizer) on an fp32 export.

For BERT-family encoders the optimizer replaces op-by-op subgraphs with ONNX Runtime's fused CPU kernels
(``SkipLayerNormalization`` = residual Add + LayerNorm, ``BiasGelu`` = bias Add + erf GELU, and where its
patterns match the graph, ``Attention`` and ``EmbedLayerNormalization``). The fused graph is the ``onnx``
variant and the input of int8 quantisation. It is kept only when it stays within the ``onnx`` tolerance
against torch fp32 on the calibration texts (max |Δ logit| ≤ 1e-3, argmax agreement 1.0); otherwise the
unfused export is kept and the reason recorded. Other model kinds (TextCNN, BiLSTM, …) are not fused.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modelyard._internal.io import read_json

# config.model_type → the optimizer's model_type. These encoders share BERT's block layout (post-LN, erf GELU);
# DistilBERT, RoBERTa, XLM-R, ELECTRA are what ONNX Runtime's own docs optimize with model_type="bert".
OPTIMIZER_MODEL_TYPES: dict[str, str] = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "distilbert": "bert",
    "electra": "bert",
    "ernie": "bert",
}


def fusion_plan(source: Path) -> tuple[str | None, int, int, str]:
    """``(optimizer model_type or None, num_heads, hidden_size, reason)`` for the source model's ``config.json``."""
    config = read_json(source / "config.json") if (source / "config.json").is_file() else {}
    kind = str(config.get("model_type", "unknown"))
    target = OPTIMIZER_MODEL_TYPES.get(kind)
    if target is None:
        return None, 0, 0, f"model_type {kind!r} is not a BERT-family encoder"
    heads = int(config.get("num_attention_heads") or config.get("n_heads") or 0)
    hidden = int(config.get("hidden_size") or config.get("dim") or 0)
    return target, heads, hidden, ""


@contextlib.contextmanager
def _quiet_optimizer() -> Iterator[None]:
    """The optimizer logs every pattern it tried at WARNING/INFO; keep only errors."""
    loggers = [logging.getLogger(name) for name in ("onnxruntime.transformers", "fusion", "onnx_model")]
    root_names = [name for name in logging.root.manager.loggerDict if name.startswith(("onnx", "fusion"))]
    loggers += [logging.getLogger(name) for name in root_names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def optimize_encoder(source: Path, path: Path, out: Path) -> dict[str, int]:
    """Run ONNX Runtime's transformer optimizer on ``path`` → ``out``; the fused operators it added.

    Returns:
        ``{op_type: count}`` of the fused operators (``get_fused_operator_statistics``) whose count rose over
        the input graph's (a ``LayerNormalization`` the exporter already emitted is not a fusion); empty
        when nothing fused.
    """
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    target, heads, hidden, reason = fusion_plan(source)
    if target is None:
        raise ValueError(reason)
    before = Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)
    with _quiet_optimizer():
        # opt_level None: the optimizer's default for "bert" (ONNX Runtime's basic, hardware-independent
        # graph optimisations first, then the Python fusions); use_gpu=False: CPU kernels only.
        model = optimize_model(str(path), model_type=target, num_heads=heads, hidden_size=hidden, use_gpu=False)
        stats = model.get_fused_operator_statistics()
        model.save_model_to_file(str(out))
    return {op: int(n) for op, n in stats.items() if n and int(n) > before.get(op, 0)}


def fuse_checked(
    source: Path,
    path: Path,
    ids: list[list[int]],
    reference: np.ndarray | None,
    pad_id: int,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any] | str:
    """Fuse the fp32 graph at ``path`` in place if the fused graph keeps parity with torch; what was done.

    Args:
        source: the source model directory (its ``config.json`` decides whether and how to fuse).
        path: the fp32 ONNX export; replaced by the fused graph when that one passes.
        ids: calibration token ids (training texts); ``reference``: torch fp32 logits on them.

    Returns:
        ``{"optimizer", "fused_operators", "parity": {...}}`` when the fused graph is kept, else the string
        ``"none (<reason>)"`` (the graph at ``path`` is then the unchanged export).
    """
    from modelyard.compression.compress import TOLERANCES
    from modelyard.compression.parity import onnx_logits

    target, _, _, reason = fusion_plan(source)
    if target is None:
        return f"none ({reason})"
    if reference is None or not ids:
        return "none (no training texts to check the fused graph's parity on)"
    fused = path.with_name(path.stem + ".fused.onnx")
    try:
        try:
            operators = optimize_encoder(source, path, fused)
        except Exception as err:  # noqa: BLE001 - fusion is an optimisation, never a reason to fail the build
            first = (str(err).strip().splitlines() or [""])[0][:200]
            log(f"onnx: graph fusion skipped: the optimizer failed ({type(err).__name__}: {first})")
            return f"none (the optimizer failed: {type(err).__name__}: {first})"
        if not operators:
            return "none (the optimizer matched no fusion pattern in this export)"
        got = onnx_logits(fused, ids, pad_id)
        tol = TOLERANCES["onnx"]
        diff = float(np.max(np.abs(got.astype(np.float64) - reference.astype(np.float64))))
        agreement = float(np.mean(got.argmax(axis=1) == reference.argmax(axis=1)))
        parity = {"n": len(ids), "split": "train", "max_abs_logit_diff": diff, "agreement": agreement}
        if diff > tol["max_abs_logit_diff"] or agreement < tol["min_agreement"]:
            why = (
                f"the fused graph broke parity with torch on {len(ids)} training texts: max |Δ logit| {diff:.2e} "
                f"(≤ {tol['max_abs_logit_diff']:g}), agreement {agreement:.4f} (≥ {tol['min_agreement']}); "
                f"fused {operators}"
            )
            log(f"onnx: kept the unfused graph because {why}")
            return f"none ({why})"
        os.replace(fused, path)
        # the fused graph carries its weights inline: an export's external-data file is now stale
        path.with_name(path.name + ".data").unlink(missing_ok=True)
        log(f"onnx: fused {operators}; max |Δ logit| vs torch {diff:.1e} on {len(ids)} training texts")
        return {"optimizer": f"onnxruntime.transformers ({target})", "fused_operators": operators, "parity": parity}
    finally:
        fused.unlink(missing_ok=True)
