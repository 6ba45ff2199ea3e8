"""Build one compressed variant into a directory (the caller makes it appear atomically: storage.atomic_dir).

Each builder writes ``variant.json`` (method, source sha256, method details) next to its files.
Nothing is pickled: weights are safetensors or ONNX protobuf, metadata is JSON.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modelyard._internal.io import read_json, sha256_file, write_json
from modelyard._internal.layout import HISTORY, METRICS, MODEL_DIR, MODEL_META, RECIPE, SPLITS_DIR
from modelyard.compression.fusion import fuse_checked, fusion_plan
from modelyard.compression.onnx_export import export_onnx, load_fp32, no_hf_progress_bars
from modelyard.compression.outliers import channel_ranges, split_outliers
from modelyard.compression.parity import (
    CONFIDENCE,
    agreement_entry,
    calibration_texts,
    onnx_logits,
    rows_needed,
    torch_logits,
)
from modelyard.compression.variants import ONNX_FILE, VARIANT_FILE
from modelyard.errors import ModelyardError

# Files of the source model directory copied next to an ONNX model (the text front end + labels).
_FRONT_END_FILES = (MODEL_META, "config.json")


def _variant_json(out: Path, method: str, source: Path, **details: Any) -> dict[str, Any]:
    spec = {
        "format": 1,
        "method": method,
        "source": "model/model.safetensors",
        "source_sha256": sha256_file(source / "model.safetensors"),
        "created_at": time.time(),
        **details,
    }
    write_json(out / VARIANT_FILE, spec)
    return spec


def _copy_front_end(source: Path, out: Path, tokenizer: Any, files: tuple[str, ...] = _FRONT_END_FILES) -> None:
    tokenizer.save_pretrained(out)
    for name in files:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)


# ---------------------------------------------------------------------- onnx


def build_onnx(
    source: Path,
    out: Path,
    *,
    tokenizer: Any,
    run_dir: Path | None = None,
    frontend: Any = None,
    log: Callable[[str], None] = print,
    **_: Any,
) -> dict[str, Any]:
    """fp32 ONNX model (transformer fusions applied where they keep parity) + tokenizer files + ``modelyard.json``.

    BERT-family encoders go through :func:`~modelyard.compression.fusion.fuse_checked`: the fused graph is
    kept only if it matches torch fp32 on the calibration texts within the ``onnx`` tolerance; ``variant.json``
    records the fused operators or ``"none (<reason>)"``.
    """
    import onnxruntime
    import torch

    exported = export_onnx(source, out / ONNX_FILE, log=log)
    ids, calibration, reference = [], None, None
    if fusion_plan(source)[0] is not None:  # texts and torch logits only for a graph that may be fused
        ids, calibration, reference = _calibration(source, run_dir, frontend, tokenizer)
    fusion = fuse_checked(source, out / ONNX_FILE, ids, reference, _pad_id(tokenizer), log=log)
    _copy_front_end(source, out, tokenizer)
    return _variant_json(
        out,
        "onnx",
        source,
        **exported,
        fusion=fusion,
        calibration=calibration,
        torch=torch.__version__,
        onnxruntime=onnxruntime.__version__,
    )


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _calibration(
    source: Path, run_dir: Path | None, frontend: Any, tokenizer: Any
) -> tuple[list[list[int]], dict[str, Any], np.ndarray | None]:
    """Token ids of the calibration texts (training split), their description, and torch fp32 logits on them.

    ``frontend`` (a :class:`~modelyard.models.text_classifier.Classifier` of the source) supplies cleaning
    and tokenization; outside ``compress`` the source's own is loaded.
    """
    texts, info = calibration_texts(run_dir)
    if not texts:
        return [], info, None
    if frontend is None:
        from modelyard.models.text_classifier import Classifier

        frontend = Classifier(source, device="cpu")
    ids = frontend.encode(texts)
    return ids, info, torch_logits(load_fp32(source), ids, _pad_id(tokenizer))


# Node-name patterns of the feed-forward MatMuls across encoder families (BERT/RoBERTa/ELECTRA, DistilBERT,
# GPT-style, LLaMA-style). Their inputs (GELU outputs, wide hidden) have the activation outliers that
# per-tensor uint8 dynamic quantization handles worst, so they are the first to stay fp32.
_FFN_OUT = re.compile(r"(/layer\.\d+/output/dense|/ffn/lin2|/fc2|/mlp/down_proj|/dense_4h_to_h)/MatMul$")
_FFN_IN = re.compile(r"/(intermediate/dense|ffn/lin1|fc1|mlp/up_proj|mlp/gate_proj|dense_h_to_4h)/MatMul$")
_ATTN_OUT = re.compile(r"/(attention/output/dense|attention/out_lin|attn/c_proj|self_attn/o_proj)/MatMul$")
# Accuracy-aware fallback ladder (the idea of Intel Neural Compressor's accuracy-driven tuning, reduced to
# the groups that matter for encoders): each step keeps more of the products in fp32. The two outlier levels
# keep only the input channels with outlier ranges in fp32 (compression/outliers.py; threshold × the median
# channel's range, see OUTLIER_LEVELS): on the quickstart MiniLM run they reach the agreement of ffn-fp32 at
# little more than the all-int8 latency, so they come before the levels that keep whole MatMuls in fp32.
INT8_LADDER: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...] = (
    ("all-int8", ()),
    ("outliers-fp32", ()),
    ("more-outliers-fp32", ()),
    ("ffn-out-fp32", (_FFN_OUT,)),
    ("ffn-fp32", (_FFN_OUT, _FFN_IN)),
    ("ffn+attn-out-fp32", (_FFN_OUT, _FFN_IN, _ATTN_OUT)),
)
OUTLIER_LEVELS = {"outliers-fp32": 6.0, "more-outliers-fp32": 3.0}
DEFAULT_MIN_AGREEMENT = 0.99


def build_onnx_int8(
    source: Path,
    out: Path,
    *,
    tokenizer: Any,
    run_dir: Path | None = None,
    frontend: Any = None,
    per_channel: bool = True,
    min_agreement: float | None = DEFAULT_MIN_AGREEMENT,
    log: Callable[[str], None] = print,
    **_: Any,
) -> dict[str, Any]:
    """Dynamic int8 quantization (onnxruntime) of the fused fp32 export; only the int8 model is kept.

    Per-channel weight scales: on the Rotten Tomatoes MiniLM run they raised argmax agreement with
    fp32 from 96.4% (per-tensor) to 98.6% at the same size; ``reduce_range`` lowered it. Dynamic rather than
    static: ``benchmarks/int8_choices.py`` found no static scheme (QDQ or QOperator, u8s8 or s8s8, calibrated on
    training texts) both faster and as faithful on that run (README, "CPU inference").

    The fp32 export is first fused as for the ``onnx`` variant (:func:`~modelyard.compression.fusion.fuse_checked`,
    kept only if it keeps parity with torch), and the fused graph is quantized.

    Accuracy-aware: when the run has a training split and ``min_agreement`` is set, each level of
    :data:`INT8_LADDER` is tried in turn on the calibration texts (a seeded sample of up to
    :data:`~modelyard.compression.parity.CALIBRATION_ROWS` *training* texts; never valid or test), and the
    first level whose one-sided 95% Clopper–Pearson lower bound of argmax agreement with torch fp32 is
    ≥ ``min_agreement`` is kept — a bound, not the point estimate, so that the level holds on texts it was
    not chosen on (:func:`~modelyard.compression.parity.agreement_lower_bound`). Every level's n, agreement,
    lower bound and verdict are recorded in ``variant.json``. If none passes, the most conservative level
    is kept, ``calibration.passed`` is false and the miss is logged. The test split stays the honest
    hold-out that ``compression.json`` reports.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from modelyard.compression.cpu import cpu_summary

    out = out.resolve()  # the quantizer runs from a scratch cwd below
    fp32 = out / "model.fp32.onnx"
    exported = export_onnx(source, fp32, log=log)
    pad_id = _pad_id(tokenizer)
    ids, calibration, reference = _calibration(source, run_dir, frontend, tokenizer)
    fusion = fuse_checked(source, fp32, ids, reference, pad_id, log=log)
    if not min_agreement:
        reference = None
    # onnxruntime's recommended pre-processing (graph optimisation + shape inference) lets the
    # quantizer see fused MatMul/Gemm nodes with known shapes; fall back to the fp32 graph if it fails.
    prep = out / "model.prep.onnx"
    candidate = out / "model.candidate.onnx"
    tried: list[dict[str, Any]] = []
    # onnxruntime's symbolic shape inference dumps `sym_shape_infer_temp.onnx` (+ external data) into
    # the current directory when it gives up; run the quantizer from a scratch directory so nothing
    # lands in the user's working tree.
    with tempfile.TemporaryDirectory() as scratch, _chdir(Path(scratch)):
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
            quant_input, preprocessed = prep, True
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation, never a reason to fail
            quant_input, preprocessed = fp32, False
        names = [n.name for n in onnx.load(str(quant_input)).graph.node if n.op_type in ("MatMul", "Gemm")]
        levels = INT8_LADDER if reference is not None else INT8_LADDER[:1]
        log(f"onnx-int8: onnxruntime's int8 kernels on this CPU: {cpu_summary()['int8_kernels']}")
        ranges = channel_ranges(quant_input, ids) if reference is not None else {}
        chosen, split_facts = None, None
        for level, patterns in levels:
            exclude = [n for n in names if any(p.search(n) for p in patterns)]
            if patterns and not exclude:
                continue  # this architecture has no such nodes: the level would repeat the previous one
            graph, split = quant_input, None
            if level in OUTLIER_LEVELS:
                graph = out / "model.split.onnx"
                split = split_outliers(quant_input, graph, ranges, OUTLIER_LEVELS[level])
                if not split["matmuls"] or (split_facts and split["channels"] == split_facts["channels"]):
                    # no outlier channels (or the same ones again): the level would repeat another; say so
                    why = "no outlier channels" if not split["matmuls"] else "the same channels as the level before"
                    tried.append({"level": level, "skipped": why})
                    continue
                split_facts = split
            quantize_dynamic(
                str(graph),
                str(candidate),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                nodes_to_exclude=exclude + (split["fp32_nodes"] if split else []),
            )
            entry: dict[str, Any] = {"level": level, "fp32_nodes": len(exclude)}
            if split:
                entry["outliers"] = {k: split[k] for k in ("threshold", "matmuls", "channels")}
            if reference is not None:
                entry |= agreement_entry(onnx_logits(candidate, ids, pad_id), reference, float(min_agreement or 0))
                log(
                    f"onnx-int8: {level}: agreement with torch fp32 on {entry['n']} training texts "
                    f"{entry['agreement']:.4f}, 95% lower bound {entry['lower_bound']:.4f} "
                    f"(want ≥ {min_agreement}): {'accepted' if entry['accepted'] else 'refused'}"
                )
            tried.append(entry)
            os.replace(candidate, out / ONNX_FILE)
            chosen = entry
            if reference is None or entry["accepted"]:
                break
    assert chosen is not None
    if reference is not None:
        calibration |= {
            "confidence": CONFIDENCE,
            "rule": "first level whose one-sided Clopper-Pearson lower bound of argmax agreement with torch "
            "fp32 is >= min_agreement",
            "passed": bool(chosen["accepted"]),
        }
        if not chosen["accepted"]:
            few = calibration["n"] < rows_needed(float(min_agreement or 0))
            log(
                f"onnx-int8: no level reached a lower bound ≥ {min_agreement} on {calibration['n']} training texts"
                + (f" (fewer than the {rows_needed(float(min_agreement or 0))} any level would need)" if few else "")
                + f"; kept the most conservative level, {chosen['level']}"
            )
    fp32.unlink()
    prep.unlink(missing_ok=True)
    (out / "model.split.onnx").unlink(missing_ok=True)
    for extra in out.glob("*.onnx.data"):  # external-data leftovers of the fp32 export
        extra.unlink()
    _copy_front_end(source, out, tokenizer)
    return _variant_json(
        out,
        "onnx-int8",
        source,
        **exported,
        fusion=fusion,
        weight_type="QInt8",
        per_channel=per_channel,
        preprocessed=preprocessed,
        level=chosen["level"],
        min_agreement=min_agreement,
        calibration=calibration if reference is not None else None,
        levels_tried=tried,
        onnxruntime=onnxruntime.__version__,
        cpu=cpu_summary(),  # the int8 kernel path the level was chosen with (an AVX2 machine may choose another)
    )


# ---------------------------------------------------------------------- prune


def prunable_linears(model: Any) -> list[tuple[str, Any]]:
    """The encoder's ``nn.Linear`` layers (attention + feed-forward); embeddings, pooler and head excluded."""
    import torch

    base = model.base_model
    out = [
        (name, m)
        for name, m in base.named_modules()
        if isinstance(m, torch.nn.Linear) and any(part in name.split(".") for part in ("encoder", "transformer"))
    ]
    if not out:
        raise ModelyardError(f"found no encoder Linear layers to prune in {type(model).__name__}")
    return out


def weight_sparsity(weights: list[np.ndarray]) -> float:
    """Fraction of exactly-zero entries over a list of arrays."""
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.size for w in weights)
    return zeros / total if total else 0.0


def build_prune(
    source: Path,
    out: Path,
    *,
    tokenizer: Any,
    run_dir: Path,
    sparsity: float = 0.3,
    recovery_steps: int = 50,
    recovery_lr: float | None = None,
    log: Callable[[str], None] = print,
    **_: Any,
) -> dict[str, Any]:
    """Global L1 magnitude pruning of encoder Linear weights, a short masked recovery fine-tune, save."""
    import pandas as pd
    import torch
    from torch.nn.utils import prune

    from modelyard._internal.batching import length_grouped_batches, pad_batch
    from modelyard.config import load_recipe
    from modelyard.training.batch_sources import encode

    if not 0.0 <= sparsity < 1.0:
        raise ModelyardError(f"sparsity must be in [0, 1), got {sparsity}")
    if recovery_steps < 0:
        raise ModelyardError(f"recovery_steps must be >= 0, got {recovery_steps}")
    recipe = load_recipe(run_dir / RECIPE)
    seed = recipe.train.seed
    lr = recovery_lr if recovery_lr is not None else recipe.train.learning_rate * 0.1
    torch.manual_seed(seed)
    model = load_fp32(source)
    linears = prunable_linears(model)
    params = [(m, "weight") for _, m in linears]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)

    if recovery_steps:
        meta = read_json(source / MODEL_META)
        label_index = {lab: i for i, lab in enumerate(meta["labels"])}
        frame = pd.read_parquet(run_dir / SPLITS_DIR / "train.parquet")
        ids = encode(tokenizer, frame["text"].tolist(), int(meta["max_length"]))
        y_all = np.array([label_index[x] for x in frame["label"]], dtype=np.int64)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        model.train()
        step, epoch, losses = 0, 0, []
        while step < recovery_steps:
            for idx in length_grouped_batches([len(x) for x in ids], recipe.train.batch_size, seed + epoch):
                batch = pad_batch([ids[i] for i in idx], pad_id)
                # The pruning masks stay registered: weight = weight_orig * weight_mask on every forward,
                # so pruned entries stay zero while the surviving weights adapt.
                loss = torch.nn.functional.cross_entropy(model(**batch).logits, torch.as_tensor(y_all[idx]))
                loss.backward()
                if recipe.train.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                step += 1
                if step % 10 == 0 and step < recovery_steps:
                    log(f"prune: recovery step {step}/{recovery_steps} · loss {np.mean(losses[-10:]):.4f}")
                if step >= recovery_steps:
                    break
            epoch += 1
        log(f"prune: {recovery_steps} recovery steps at lr {lr:g}, loss {losses[0]:.4f} → {np.mean(losses[-5:]):.4f}")
    for module, name in params:
        prune.remove(module, name)
    model.eval()
    achieved = weight_sparsity([m.weight.detach().numpy() for _, m in linears])
    log(f"prune: sparsity {achieved:.4f} (target {sparsity}) over {len(linears)} encoder Linear weights")
    with no_hf_progress_bars():
        model.save_pretrained(out, safe_serialization=True)
    _copy_front_end(source, out, tokenizer, files=(MODEL_META,))
    return _variant_json(
        out,
        "prune",
        source,
        target_sparsity=sparsity,
        achieved_sparsity=achieved,
        pruned_layers=[name for name, _ in linears],
        recovery_steps=recovery_steps,
        recovery_lr=lr,
    )


# ---------------------------------------------------------------------- distill


def encoder_layers(model: Any) -> Any:
    """The ``nn.ModuleList`` of transformer blocks of a sequence classifier (BERT/RoBERTa/ELECTRA/DistilBERT…)."""
    import torch

    base = model.base_model
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList) and len(obj):
            return obj
    raise ModelyardError(f"cannot find the encoder layers of {type(model).__name__} to build a smaller student")


def student_layer_indices(n_layers: int, keep: int | None) -> list[int]:
    """Which teacher layers initialise the student: every other one by default (as DistilBERT), always the top."""
    keep = max(1, n_layers // 2) if keep is None else keep
    if not 1 <= keep < n_layers:
        raise ModelyardError(f"a distilled student needs 1 <= layers < {n_layers} (the teacher's), got {keep}")
    # evenly spaced, ending at the top layer: 6 → 3 keeps [1, 3, 5]; 12 → 4 keeps [2, 5, 8, 11]
    return [round((i + 1) * n_layers / keep) - 1 for i in range(keep)]


def build_distill(
    source: Path,
    out: Path,
    *,
    tokenizer: Any,
    run_dir: Path,
    student_layers: int | None = None,
    distill_epochs: int | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    log: Callable[[str], None] = print,
    **_: Any,
) -> dict[str, Any]:
    """A student with fewer encoder layers, initialised from the teacher's, distilled with the training loop.

    The student keeps the teacher's embeddings, head and a subset of its layers (``student_layers``,
    default half), then trains with the run's own recipe and exact splits (``train.distill``: teacher
    soft labels at ``temperature``, mixed with gold labels by ``alpha``) for ``distill_epochs``
    (default: the recipe's epochs). Only the student's ``model/`` is kept.
    """
    import torch
    from rich.console import Console

    from modelyard.config import load_recipe, recipe_from_dict
    from modelyard.training.run import load_splits, train

    recipe = load_recipe(run_dir / RECIPE)
    model = load_fp32(source)
    layers = encoder_layers(model)
    picks = student_layer_indices(len(layers), student_layers)
    kept = torch.nn.ModuleList([layers[i] for i in picks])
    parent = model.base_model
    for attr in ("encoder", "transformer"):
        holder = getattr(parent, attr, None)
        if holder is not None and getattr(holder, "layer", None) is layers:
            holder.layer = kept
            break
    else:
        raise ModelyardError(f"cannot replace the encoder layers of {type(model).__name__}")
    for i, layer in enumerate(kept):  # attention modules that cache their layer index (KV caches) need it fixed
        attn = getattr(getattr(layer, "attention", None), "self", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = i
    model.config.num_hidden_layers = len(picks)
    log(f"distill: student keeps teacher layers {picks} of {len(layers)}")

    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=".distill-"))
    try:
        student_dir = scratch / "student"
        with no_hf_progress_bars():
            model.save_pretrained(student_dir, safe_serialization=True)
        tokenizer.save_pretrained(student_dir)
        raw = recipe.model_dump(mode="json")
        raw["model"]["backbone"] = str(student_dir)
        raw["model"]["type"] = "hf-encoder"
        raw["train"]["distill"] = {"teacher": str(source), "temperature": temperature, "alpha": alpha}
        if distill_epochs is not None:
            raw["train"]["epochs"] = distill_epochs
        raw["train"]["keep_checkpoints"] = False
        raw["output_dir"] = str(scratch / "runs")
        student_recipe = recipe_from_dict(raw, base_dir=recipe.base_dir, source=f"{run_dir}/recipe.yaml (distill)")
        t0 = time.perf_counter()
        student_run = train(student_recipe, data=load_splits(run_dir), console=Console(stderr=True))
        seconds = time.perf_counter() - t0
        for f in (student_run / MODEL_DIR).iterdir():
            shutil.copy2(f, out / f.name)
        meta = read_json(out / MODEL_META)
        meta["backbone"] = f"distilled from {read_json(source / 'modelyard.json').get('backbone')} ({picks})"
        write_json(out / MODEL_META, meta)
        metrics = read_json(student_run / METRICS)
        history = read_json(student_run / HISTORY)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _variant_json(
        out,
        "distill",
        source,
        teacher_layers=len(layers),
        student_layers=len(picks),
        initialised_from_layers=picks,
        epochs=student_recipe.train.epochs,
        temperature=temperature,
        alpha=alpha,
        train_seconds=round(seconds, 1),
        student_valid_accuracy=metrics["valid"]["accuracy"],
        history=history,
    )


BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "onnx": build_onnx,
    "onnx-int8": build_onnx_int8,
    "prune": build_prune,
    "distill": build_distill,
}


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    """``contextlib.chdir`` for Python 3.10 (process-wide: only used by the offline compress verb)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)
