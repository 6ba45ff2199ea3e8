"""Outlier channels of MatMul inputs kept in fp32 while the rest of the product runs in int8.

Transformer encoders have a few hidden channels whose activations are 5–20× larger than the rest (after
LayerNorm and GELU; Dettmers et al., "LLM.int8()", 2022; Bondarenko et al., 2021). Dynamic int8 quantization
(onnxruntime's ``quantize_dynamic``) quantizes each activation tensor with one scale, so those few channels set the
step for all of them and the small values lose most of their resolution. On the quickstart MiniLM run that alone
takes argmax agreement with fp32 from ~0.995 down to 0.989.

The remedy of LLM.int8(), *mixed-precision decomposition*, rewritten as plain ONNX nodes so that the stock
quantizer and CPU kernels run it unchanged (neither onnxruntime's quantizer nor any library we build on does this
for ONNX graphs; SmoothQuant, which onnxruntime offers through Intel Neural Compressor for *static* quantization,
made agreement worse here because migrating the outliers into the weights breaks per-channel weight scales)::

    Y = X · W      →      Y = MatMul(X ⊙ m, W ⊙ mᵀ)   +   MatMul(Gather(X, O), W[O])
                               └─ int8 (quantized) ─┘      └─ fp32, k ≪ K columns ─┘

``O`` are the input channels whose calibration range exceeds ``threshold`` × the median channel's range, ``m`` is
0 on them and 1 elsewhere. The two products sum to ``X · W`` exactly in fp32; after quantization the int8 part
sees activations without the outliers. On MiniLM-L6 that is ~16 of 384–1536 channels per graph and costs ~0.1 ms
at batch 1 (three small nodes per MatMul).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: Suffix of the fp32 side-product nodes; the int8 ladder excludes them from quantization by this name.
OUTLIER_SUFFIX = "_outliers/MatMul"
#: Calibration texts run one at a time (no padding rows in the statistics) to measure the channel ranges.
RANGE_ROWS = 256


def _weighted_matmuls(graph: Any) -> list[Any]:
    """MatMul nodes whose second input is a 2-D initializer (the dense layers; not attention's score products)."""
    dims = {i.name: len(i.dims) for i in graph.initializer}
    return [n for n in graph.node if n.op_type == "MatMul" and dims.get(n.input[1]) == 2]


def channel_ranges(path: Path, ids: list[list[int]], rows: int = RANGE_ROWS) -> dict[str, np.ndarray]:
    """Per-channel max |activation| of every dense MatMul's input over the first ``rows`` token sequences."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(path))
    inputs = sorted({n.input[0] for n in _weighted_matmuls(model.graph)})
    if not inputs or not ids:
        return {}
    for name in inputs:
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    # no graph optimisation: fused kernels could swallow the intermediate tensors we read out
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name for i in session.get_inputs()}
    ranges: dict[str, np.ndarray] = {}
    for seq in ids[:rows]:
        arr = np.asarray([seq], dtype=np.int64)
        feed = {"input_ids": arr, "attention_mask": np.ones_like(arr)}
        values = session.run(inputs, {k: v for k, v in feed.items() if k in feeds})
        for name, value in zip(inputs, values, strict=True):
            per_channel = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            ranges[name] = per_channel if name not in ranges else np.maximum(ranges[name], per_channel)
    return ranges


def outlier_channels(ranges: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the channels whose range exceeds ``threshold`` × the median channel's range.

    Examples:
        >>> outlier_channels(np.array([1.0, 1.2, 0.9, 9.0, 1.1]), 6.0).tolist()
        [3]
    """
    return np.flatnonzero(ranges > threshold * float(np.median(ranges)))


def split_outliers(source: Path, dest: Path, ranges: dict[str, np.ndarray], threshold: float) -> dict[str, Any]:
    """Write ``source`` with every dense MatMul decomposed as in the module docstring; return what was split.

    The result is ``{"threshold", "matmuls", "channels", "fp32_nodes"}``: how many MatMuls had outlier channels,
    how many channels in all, and the names of the fp32 side products (to exclude from quantization).
    """
    import onnx
    from onnx import helper, numpy_helper

    from modelyard.compression.fusion import replace_nodes

    model = onnx.load(str(source))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    # protobuf hands out a new wrapper object per access, so nodes are identified by their output name
    targets = {n.output[0] for n in _weighted_matmuls(graph) if n.input[0] in ranges}
    nodes: list[Any] = []
    fp32_nodes: list[str] = []
    channels = 0
    for node in graph.node:
        picked = outlier_channels(ranges[node.input[0]], threshold) if node.output[0] in targets else np.array([])
        if not len(picked):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]]).copy()
        if weight.dtype != np.float32:
            nodes.append(node)
            continue
        x, out, base = node.input[0], node.output[0], node.name or node.output[0]
        side = weight[picked].copy()
        weight[picked] = 0.0  # the int8 part no longer sees them: per-channel weight scales ignore these rows
        mask = np.ones(weight.shape[0], dtype=np.float32)
        mask[picked] = 0.0
        # a weight shared by two MatMuls would be zeroed for both: give this node its own copy
        w_name = f"{base}_inliers_weight"
        graph.initializer.extend(
            [
                numpy_helper.from_array(weight, w_name),
                numpy_helper.from_array(mask, f"{base}_inliers_mask"),
                numpy_helper.from_array(picked.astype(np.int64), f"{base}_outliers_index"),
                numpy_helper.from_array(side, f"{base}_outliers_weight"),
            ]
        )
        nodes += [
            helper.make_node("Mul", [x, f"{base}_inliers_mask"], [f"{base}_inliers_in"], name=f"{base}_inliers"),
            helper.make_node(
                "Gather", [x, f"{base}_outliers_index"], [f"{base}_outliers_in"], name=f"{base}_outliers", axis=-1
            ),
            helper.make_node(
                "MatMul",
                [f"{base}_outliers_in", f"{base}_outliers_weight"],
                [f"{base}_outliers_out"],
                name=base + OUTLIER_SUFFIX,
            ),
        ]
        node.input[0], node.input[1], node.output[0] = f"{base}_inliers_in", w_name, f"{base}_inliers_out"
        nodes.append(node)  # keeps its name, so the ladder's node patterns still find it
        total = helper.make_node("Add", [f"{base}_inliers_out", f"{base}_outliers_out"], [out], name=f"{base}_sum")
        nodes.append(total)
        fp32_nodes.append(base + OUTLIER_SUFFIX)
        channels += len(picked)
    replace_nodes(graph, nodes)  # the original weights of split MatMuls are no longer read: dropped
    onnx.save(model, str(dest))
    return {"threshold": threshold, "matmuls": len(fp32_nodes), "channels": channels, "fp32_nodes": fp32_nodes}
