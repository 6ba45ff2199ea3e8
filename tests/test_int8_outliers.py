"""Outlier channels kept in fp32 inside an int8 MatMul (compression/outliers.py): exact in fp32, better in int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

K, N, VOCAB = 32, 16, 50
OUTLIERS = [3, 7]


def _graph(path: Path, seed: int = 0) -> Path:
    """input_ids → embedding (two channels 40× larger, as after a transformer's LayerNorm) → MatMul → mean → logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    table = rng.normal(size=(VOCAB, K)).astype(np.float32)
    table[:, OUTLIERS] *= 40.0
    weight = rng.normal(scale=0.2, size=(K, N)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["hidden"], name="embed"),
            helper.make_node("MatMul", ["hidden", "weight"], ["projected"], name="/layer.0/output/dense/MatMul"),
            helper.make_node("ReduceMean", ["projected", "axes"], ["logits"], name="pool", keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", N])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def _run(path: Path, ids: list[list[int]]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], {"input_ids": np.asarray([x], dtype=np.int64)})[0] for x in ids])


def test_outlier_channels_are_found_split_exactly_and_cut_the_int8_error(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from modelyard.compression.outliers import OUTLIER_SUFFIX, channel_ranges, split_outliers

    source = _graph(tmp_path / "model.onnx")
    rng = np.random.default_rng(1)
    ids = [rng.integers(0, VOCAB, size=int(rng.integers(3, 12))).tolist() for _ in range(200)]
    ranges = channel_ranges(source, ids[:100])
    assert list(ranges) == ["hidden"] and ranges["hidden"].shape == (K,)

    facts = split_outliers(source, tmp_path / "split.onnx", ranges, threshold=6.0)
    assert facts == {
        "threshold": 6.0,
        "matmuls": 1,
        "channels": len(OUTLIERS),
        "fp32_nodes": ["/layer.0/output/dense/MatMul" + OUTLIER_SUFFIX],
    }
    # in fp32 the decomposition is the same function
    reference = _run(source, ids)
    np.testing.assert_allclose(_run(tmp_path / "split.onnx", ids), reference, atol=1e-4)

    # int8: the plain graph quantizes the outliers with everything else; the split one keeps them fp32
    only_matmuls = {"weight_type": QuantType.QInt8, "per_channel": True, "op_types_to_quantize": ["MatMul"]}
    quantize_dynamic(str(source), str(tmp_path / "plain.int8.onnx"), **only_matmuls)
    quantize_dynamic(
        str(tmp_path / "split.onnx"),
        str(tmp_path / "split.int8.onnx"),
        **only_matmuls,
        nodes_to_exclude=facts["fp32_nodes"],
    )
    plain_err = np.abs(_run(tmp_path / "plain.int8.onnx", ids) - reference).mean()
    split_err = np.abs(_run(tmp_path / "split.int8.onnx", ids) - reference).mean()
    assert split_err < plain_err / 5, (split_err, plain_err)


def test_no_outliers_means_no_split(tmp_path: Path) -> None:
    from modelyard.compression.outliers import channel_ranges, split_outliers

    source = _graph(tmp_path / "model.onnx")
    ranges = channel_ranges(source, [[1, 2, 3], [4, 5]])
    facts = split_outliers(source, tmp_path / "split.onnx", ranges, threshold=1e6)
    assert facts["matmuls"] == facts["channels"] == 0 and facts["fp32_nodes"] == []


@pytest.mark.parametrize(("threshold", "expected"), [(6.0, [3]), (0.5, [0, 1, 2, 3, 4]), (100.0, [])])
def test_outlier_channels_are_relative_to_the_median_range(threshold: float, expected: list[int]) -> None:
    from modelyard.compression.outliers import outlier_channels

    assert outlier_channels(np.array([1.0, 1.2, 0.9, 9.0, 1.1]), threshold).tolist() == expected


def test_outlier_levels_come_right_after_all_int8_and_loosen_the_threshold() -> None:
    from modelyard.compression.build import INT8_LADDER, OUTLIER_LEVELS

    names = [name for name, _ in INT8_LADDER]
    assert names[:3] == ["all-int8", "outliers-fp32", "more-outliers-fp32"]
    assert dict(INT8_LADDER)["outliers-fp32"] == () == dict(INT8_LADDER)["more-outliers-fp32"]
    assert OUTLIER_LEVELS["outliers-fp32"] > OUTLIER_LEVELS["more-outliers-fp32"] > 1.0
