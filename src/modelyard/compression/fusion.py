"""Transformer graph fusions (ONNX Runtime's ``onnxruntime.transformers`` optimizer) on an fp32 export.

For BERT-family encoders the optimizer replaces op-by-op subgraphs with ONNX Runtime's fused CPU kernels
(``SkipLayerNormalization`` = residual Add + LayerNorm, ``BiasGelu`` = bias Add + erf GELU, ``Attention`` =
Q/K/V projections + scaled dot-product + softmax, ``EmbedLayerNormalization`` = the three embedding lookups + their
sum + LayerNorm). The optimizer's ``Attention`` patterns predate transformers 5's mask code, so the dynamo export's
masks are first rewritten into BERT's classic form (:func:`canonical_padding_masks`), and its embedding pattern
does not match the dynamo export's position/token-type buffers, so that block is fused here
(:func:`fuse_embeddings`). The fused graph is the ``onnx``
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


def canonical_padding_masks(model: Any, mask_input: str = "attention_mask") -> int:
    """Rewrite the exported padding-mask subgraph into the form ONNX Runtime's attention fusion matches.

    transformers 5's eager attention builds its additive mask as ``Where(cond, 0, min)`` from a chain of
    Range/GreaterOrEqual/And/GatherND nodes (the dynamo export of ``create_bidirectional_mask``), which the
    optimizer's ``Attention`` patterns do not recognise. For an encoder that mask is the padding mask:
    0 where ``attention_mask[b, k]`` is 1, ``min`` where it is 0. Every ``Softmax(Add(scores, Where(…)))``
    whose ``Where`` picks a scalar 0 or a scalar ≤ -1e4 and depends on no graph input but ``mask_input`` gets
    that mask as ``Mul(Sub(1, Cast(Unsqueeze(Unsqueeze(attention_mask)))), min)`` — BERT's classic form — and
    the old subgraph is dropped. Whether this is right for a given export is not assumed: the fused graph
    is kept only if it passes the parity check against torch (:func:`fuse_checked`).

    Returns:
        How many attention masks were rewritten (0: the graph is unchanged).
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if mask_input not in {i.name for i in graph.input}:
        return 0
    producers = {out: node for node in graph.node for out in node.output}
    inits = {init.name: init for init in graph.initializer}

    def const(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = producers.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def graph_inputs_of(name: str) -> set[str]:
        seen, stack, found = set(), [name], set()
        while stack:
            cur = stack.pop()
            if cur in seen or not cur:
                continue
            seen.add(cur)
            node = producers.get(cur)
            if node is None:
                if cur not in inits:
                    found.add(cur)
                continue
            stack.extend(node.input)
        return found

    fill_name, fills = "modelyard_padding_mask", []
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        add = producers.get(softmax.input[0])
        if add is None or add.op_type != "Add":
            continue
        for slot, name in enumerate(add.input):
            where = producers.get(name)
            if where is None or where.op_type != "Where":
                continue
            keep, fill = const(where.input[1]), const(where.input[2])
            if keep is None or fill is None or keep.size != 1 or fill.size != 1 or fill.dtype != np.float32:
                continue
            if float(keep.item()) != 0.0 or float(fill.item()) > -1e4:
                continue
            if graph_inputs_of(where.input[0]) != {mask_input}:
                continue
            add.input[slot] = fill_name
            fills.append(float(fill.item()))
            scale = producers.get(add.input[1 - slot]) if len(add.input) == 2 else None
            if scale is not None and scale.op_type == "Mul":
                # scores * (1/√d) → scores / √d: the optimizer takes an Add's first Mul parent for the mask
                # and matches BERT's scaled scores as a Div (its path for a Mul scale expects SDPA's Sqrt)
                _scale_as_div(scale, const, producers, graph, numpy_helper)
    if not fills:
        return 0
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([1], dtype=np.int64), "modelyard_axis_1"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "modelyard_axis_2"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "modelyard_one"),
            numpy_helper.from_array(np.array(min(fills), dtype=np.float32), "modelyard_mask_fill"),
        ]
    )
    mask_nodes = [
        helper.make_node("Unsqueeze", [mask_input, "modelyard_axis_1"], ["modelyard_mask_u1"], "/mask/Unsqueeze"),
        helper.make_node(
            "Unsqueeze", ["modelyard_mask_u1", "modelyard_axis_2"], ["modelyard_mask_u2"], "/mask/Unsqueeze_1"
        ),
        helper.make_node("Cast", ["modelyard_mask_u2"], ["modelyard_mask_f"], "/mask/Cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["modelyard_one", "modelyard_mask_f"], ["modelyard_mask_inv"], "/mask/Sub"),
        helper.make_node("Mul", ["modelyard_mask_inv", "modelyard_mask_fill"], [fill_name], "/mask/Mul"),
    ]
    # first in the graph (they read only a graph input and initializers), so the order stays topological;
    # the Add nodes were edited above, before this copy
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*mask_nodes, *nodes])
    _drop_dead_nodes(graph)
    return len(fills)


def _scale_as_div(mul: Any, const: Callable[[str], Any], producers: dict[str, Any], graph: Any, nh: Any) -> None:
    """Turn ``Mul(MatMul(q, k), c)`` (c a positive scalar) into ``Div(MatMul(q, k), 1/c)`` in place."""
    for k in (0, 1):
        c = const(mul.input[k])
        source = producers.get(mul.input[1 - k])
        if c is None or c.size != 1 or float(c.item()) <= 0 or source is None or source.op_type != "MatMul":
            continue
        name = f"{mul.output[0]}_modelyard_divisor"
        graph.initializer.append(nh.from_array(np.array(1.0 / float(c.item()), dtype=c.dtype), name))
        scores = mul.input[1 - k]
        del mul.input[:]
        mul.input.extend([scores, name])
        mul.op_type = "Div"
        mul.name = mul.name[: -len("Mul")] + "Div" if mul.name.endswith("Mul") else mul.name + "_div"
        return


def _drop_dead_nodes(graph: Any) -> None:
    """Remove nodes none of whose outputs is used (repeatedly), then initializers nothing reads; keeps order."""
    outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    while True:
        used = outputs | {name for node in nodes for name in node.input}
        alive = [node for node in nodes if any(out in used for out in node.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    used = {name for node in nodes for name in node.input}
    inits = [init for init in graph.initializer if init.name in used]
    # rebuilt, not .remove()d: removing from a repeated field compares messages (whole weight tensors)
    kept_nodes = [type(n)() for n in nodes]
    for new, old in zip(kept_nodes, nodes, strict=True):
        new.CopyFrom(old)
    kept_inits = [type(i)() for i in inits]
    for new, old in zip(kept_inits, inits, strict=True):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)


def replace_nodes(graph: Any, nodes: list[Any]) -> None:
    """Make ``nodes`` (some of them the graph's own) the graph's node list, then drop what nothing uses any more.

    The nodes are copied before the field is cleared: wrappers of a cleared repeated field's elements go stale.
    """
    copies = [type(n)() for n in nodes]
    for new, old in zip(copies, nodes, strict=True):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(copies)
    _drop_dead_nodes(graph)


def unfuse_skip_layer_norm(model: Any) -> int:
    """Replace each ``SkipLayerNormalization`` by ``Add`` (bias) + ``Add`` (residual) + ``LayerNormalization``.

    Measured on onnxruntime 1.32 (2-core Xeon, hidden 384): its CPU ``SkipLayerNormalization`` kernel takes 72 µs
    for 25 rows where the three plain nodes take 17 µs, and 1.1 ms against 0.32 ms for 800 rows (batch 32) — so the
    fusion costs the quickstart MiniLM's int8 graph about a quarter of its time (batch 1: 2.44 → 1.80 ms; batch 32:
    102 → 73 ms). The optimizer still matches it (its ``Attention`` fusion starts from that pattern); it is taken
    apart afterwards, and sessions load with ``variants.DISABLED_OPTIMIZERS`` so ONNX Runtime does not fuse it back.
    Only nodes whose extra outputs (mean, inverse std, sum) nothing reads are replaced. Returns how many were.
    """
    from onnx import helper

    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "SkipLayerNormalization" or any(o and o in used for o in node.output[1:]):
            nodes.append(node)
            continue
        x, skip, gamma = node.input[0], node.input[1], node.input[2]
        beta = node.input[3] if len(node.input) > 3 else ""
        bias = node.input[4] if len(node.input) > 4 else ""
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        out = node.output[0]
        if bias:
            nodes.append(helper.make_node("Add", [x, bias], [f"{out}/biased"], name=f"{node.name}/bias"))
            x = f"{out}/biased"
        nodes.append(helper.make_node("Add", [x, skip], [f"{out}/residual"], name=f"{node.name}/residual"))
        norm_inputs = [f"{out}/residual", gamma] + ([beta] if beta else [])
        nodes.append(
            helper.make_node("LayerNormalization", norm_inputs, [out], name=f"{node.name}/norm", axis=-1, epsilon=eps)
        )
        count += 1
    if count:
        replace_nodes(graph, nodes)
    return count


def fuse_embeddings(model: Any) -> bool:
    """Replace the embedding block with ONNX Runtime's ``EmbedLayerNormalization`` where the optimizer could not.

    The optimizer's pattern expects position ids built by the classic exporter; the dynamo export slices a
    constant ``position_ids`` buffer and expands a constant ``token_type_ids`` buffer instead, so
    ``word + token type + position → LayerNorm`` (and the mask's ``ReduceSum`` that feeds ``Attention``) stay ~15
    small nodes. This rewrite checks *numerically* that the position indices are ``0 … L-1`` and the token type
    indices all 0 (the index subgraphs are evaluated for two input shapes), folds token type row 0 into the
    position table (the kernel adds no segment embedding when it gets no segment ids) and emits one fused node
    whose second output is the mask length ``Attention`` reads. Returns whether it fused; the caller's parity
    check against torch still decides whether the graph is kept.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    inits = {i.name: i for i in graph.initializer}
    inputs = {i.name for i in graph.input}
    if "input_ids" not in inputs:
        return False
    norms = [n for n in graph.node if n.op_type == "LayerNormalization" and n.input[0] in producers]
    for ln in norms:
        top = producers[ln.input[0]]
        if top.op_type != "Add":
            continue
        gathers = []
        for name in top.input:
            node = producers.get(name)
            if node is not None and node.op_type == "Add":
                gathers += [producers.get(x) for x in node.input]
            else:
                gathers.append(node)
        if len(gathers) != 3 or any(g is None or g.op_type != "Gather" or g.input[0] not in inits for g in gathers):
            continue
        word = next((g for g in gathers if g.input[1] == "input_ids"), None)
        others = [g for g in gathers if g is not word]
        if word is None or len(others) != 2 or len(ln.input) < 3 or not all(x in inits for x in ln.input[1:3]):
            continue
        # evaluate the two other index tensors for two input shapes: which is 0…L-1, which is all zeros
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        for g in others:
            probe.graph.output.append(helper.make_tensor_value_info(g.input[1], TensorProto.INT64, None))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            feeds = {i.name for i in session.get_inputs()}
            roles: list[set[str]] = [set(), set()]
            for shape in ((2, 7), (1, 13)):
                ids = np.ones(shape, dtype=np.int64)
                got = session.run(
                    None, {k: v for k, v in {"input_ids": ids, "attention_mask": ids}.items() if k in feeds}
                )
                for k, idx in enumerate(got):
                    idx = np.broadcast_to(idx, shape)
                    if np.array_equal(idx, np.broadcast_to(np.arange(shape[1]), shape)):
                        roles[k].add("position")
                    elif not idx.any():
                        roles[k].add("zeros")
                    else:
                        roles[k].add("other")
        except Exception:  # noqa: BLE001 - a graph we cannot probe is simply not fused
            return False
        if sorted(next(iter(r)) if len(r) == 1 else "?" for r in roles) != ["position", "zeros"]:
            continue
        position, segment = (others[0], others[1]) if roles[0] == {"position"} else (others[1], others[0])
        table = numpy_helper.to_array(inits[position.input[0]]) + numpy_helper.to_array(inits[segment.input[0]])[0]
        epsilon = next((a.f for a in ln.attribute if a.name == "epsilon"), 1e-5)
        # the Attention nodes' mask input: ReduceSum(Cast(attention_mask → int32), axis 1), the mask length
        attention = [n for n in graph.node if n.op_type == "Attention" and len(n.input) > 3 and n.input[3]]
        reduce = producers.get(attention[0].input[3]) if attention else None
        cast = producers.get(reduce.input[0]) if reduce is not None and reduce.op_type == "ReduceSum" else None
        if cast is None or cast.op_type != "Cast" or cast.input[0] != "attention_mask":
            return False
        nodes = [
            helper.make_node("Cast", ["input_ids"], ["input_ids_int32"], name="EmbedIdsCast", to=TensorProto.INT32),
            helper.make_node(
                "EmbedLayerNormalization",
                [
                    "input_ids_int32",
                    "",
                    word.input[0],
                    "embed_position_with_segment",
                    "",
                    ln.input[1],
                    ln.input[2],
                    cast.output[0],
                ],
                [ln.output[0], reduce.output[0]],
                name="EmbedLayerNormalization_0",
                domain="com.microsoft",
                epsilon=epsilon,
            ),
        ]
        graph.initializer.append(numpy_helper.from_array(table.astype(np.float32), "embed_position_with_segment"))
        # protobuf hands out a new wrapper per access: nodes are matched by their first output's name
        gone = {ln.output[0], reduce.output[0]}
        kept, cast_done = [], False
        for node in graph.node:
            if node.output[0] in gone:
                if node.output[0] == ln.output[0]:  # the fused node takes the LayerNorm's place
                    kept += ([] if cast_done else [cast]) + nodes
                    cast_done = True
                continue
            if node.output[0] == cast.output[0]:
                if cast_done:
                    continue
                cast_done = True
            kept.append(node)
        replace_nodes(graph, kept)
        return True
    return False


def optimize_encoder(
    source: Path, path: Path, out: Path, *, rewrite_masks: bool = True
) -> tuple[dict[str, int], int, int]:
    """Run ONNX Runtime's transformer optimizer on ``path`` → ``out``.

    With ``rewrite_masks`` the export's attention masks are first put in the form the ``Attention`` fusion
    matches (:func:`canonical_padding_masks`).

    Returns:
        ``({op_type: count}, masks rewritten, unfused)``: the fused operators the saved graph holds
        (``get_fused_operator_statistics``, counts that rose over the input graph's: a ``LayerNormalization`` the
        exporter already emitted is not a fusion; empty when nothing fused), how many attention masks were
        rewritten, and how many ``SkipLayerNormalization`` were taken apart again (:func:`unfuse_skip_layer_norm`).
    """
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    target, heads, hidden, reason = fusion_plan(source)
    if target is None:
        raise ValueError(reason)
    model = onnx.load(str(path))
    before = Counter(node.op_type for node in model.graph.node)
    rewritten = canonical_padding_masks(model) if rewrite_masks else 0
    staged = out.with_name(out.stem + ".in.onnx")
    try:
        if rewritten:
            onnx.save(model, str(staged))
        del model
        with _quiet_optimizer():
            # opt_level None: the optimizer's default for "bert" (ONNX Runtime's basic, hardware-independent
            # graph optimisations first, then the Python fusions); use_gpu=False: CPU kernels only.
            fused = optimize_model(
                str(staged if rewritten else path),
                model_type=target,
                num_heads=heads,
                hidden_size=hidden,
                use_gpu=False,
            )
            stats = fused.get_fused_operator_statistics()
            if not stats.get("EmbedLayerNormalization") and fuse_embeddings(fused.model):
                stats["EmbedLayerNormalization"] = 1
            unfused = unfuse_skip_layer_norm(fused.model)  # faster as plain nodes on ONNX Runtime's CPU kernels
            fused.save_model_to_file(str(out))
    finally:
        staged.unlink(missing_ok=True)
    operators = {op: int(n) for op, n in stats.items() if n and int(n) > before.get(op, 0)}
    if unfused:  # what the graph holds: the SkipLayerNormalization the optimizer matched is plain nodes again
        operators["SkipLayerNormalization"] = operators.get("SkipLayerNormalization", unfused) - unfused
    return {op: n for op, n in operators.items() if n}, rewritten, unfused


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

    Tries the fusions with the attention masks rewritten (so ``Attention`` can fuse) and, if that graph
    fails or breaks parity, without the rewrite; the first fused graph within the ``onnx`` tolerance
    (max |Δ logit| ≤ 1e-3, argmax agreement 1.0 against ``reference``) replaces ``path``.

    Args:
        source: the source model directory (its ``config.json`` decides whether and how to fuse).
        path: the fp32 ONNX export; replaced by the fused graph when that one passes.
        ids: calibration token ids (training texts); ``reference``: torch fp32 logits on them.

    Returns:
        ``{"optimizer", "fused_operators", "attention_masks_rewritten", "parity": {...}}`` when a fused graph
        is kept, else the string ``"none (<reason>)"`` (the graph at ``path`` is then the unchanged export).
    """
    from modelyard.compression.parity import ONNX_TOLERANCE, onnx_logits

    target, _, _, reason = fusion_plan(source)
    if target is None:
        return f"none ({reason})"
    if reference is None or not ids:
        return "none (no training texts to check the fused graph's parity on)"
    tol = ONNX_TOLERANCE
    fused = path.with_name(path.stem + ".fused.onnx")
    reasons: list[str] = []
    try:
        for rewrite in (True, False):
            try:
                operators, rewritten, unfused = optimize_encoder(source, path, fused, rewrite_masks=rewrite)
            except Exception as err:  # noqa: BLE001 - fusion is an optimisation, never a reason to fail the build
                first = (str(err).strip().splitlines() or [""])[0][:200]
                reasons.append(f"the optimizer failed: {type(err).__name__}: {first}")
                continue
            if not operators:
                reasons.append("the optimizer matched no fusion pattern in this export")
                break
            got = onnx_logits(fused, ids, pad_id)
            diff = float(np.max(np.abs(got.astype(np.float64) - reference.astype(np.float64))))
            agreement = float(np.mean(got.argmax(axis=1) == reference.argmax(axis=1)))
            if diff <= tol["max_abs_logit_diff"] and agreement >= tol["min_agreement"]:
                os.replace(fused, path)
                # the fused graph carries its weights inline: an export's external-data file is now stale
                path.with_name(path.name + ".data").unlink(missing_ok=True)
                log(f"onnx: fused {operators}; max |Δ logit| vs torch {diff:.1e} on {len(ids)} training texts")
                return {
                    "optimizer": f"onnxruntime.transformers ({target})",
                    "fused_operators": operators,
                    "attention_masks_rewritten": rewritten,
                    # matched, then left as Add + LayerNormalization: ONNX Runtime's CPU kernel for it is slower
                    "skip_layer_norm_unfused": unfused,
                    "parity": {"n": len(ids), "split": "train", "max_abs_logit_diff": diff, "agreement": agreement},
                    "tried": reasons,
                }
            reasons.append(
                f"the fused graph ({', '.join(operators)}) broke parity with torch on {len(ids)} training texts: "
                f"max |Δ logit| {diff:.2e} (≤ {tol['max_abs_logit_diff']:g}), agreement {agreement:.4f} "
                f"(≥ {tol['min_agreement']})"
            )
            if not rewritten:
                break  # without a rewrite the second try would build the very same graph
    finally:
        fused.unlink(missing_ok=True)
    why = "; then ".join(reasons)
    log(f"onnx: kept the unfused graph because {why}")
    return f"none ({why})"
